package activities

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/internal/servers"
)

// pollOnce serves a finished export whose manifest is manifest and returns
// PollStatus's result (or error) and its serialized size.
func pollOnce(t *testing.T, manifest func(base string) string) (PollResult, int, error) {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(manifest(srv.URL)))
	}))
	defer srv.Close()
	reg, _ := servers.Load("")
	acts := New(reg, t.TempDir(), nil)
	var env testsuite.WorkflowTestSuite
	aenv := env.NewTestActivityEnvironment()
	aenv.RegisterActivity(acts)
	v, err := aenv.ExecuteActivity(acts.PollStatus, PollInput{ServerRef: ServerRef{BaseURL: srv.URL}, Target: Target{Run: "run"}, StatusURL: srv.URL + "/status/1"})
	if err != nil {
		return PollResult{}, 0, err
	}
	var r PollResult
	if err := v.Get(&r); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(r)
	return r, len(b), nil
}

// Issue 16 §5: a manifest with 100,000 distinct types made the status
// result 6.3 MB, which Temporal refused. The result now carries a bounded
// summary whatever the manifest holds; the files stay in the staged plan.
func TestPollResultStaysSmallForHugeManifests(t *testing.T) {
	const types = 100000
	r, size, err := pollOnce(t, func(base string) string {
		var b strings.Builder
		b.WriteString(`{"transactionTime":"2026-01-01T00:00:00Z","request":"` + base + `/$export","requiresAccessToken":true,"error":[],"output":[`)
		for i := range types {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"type":"T%s","url":"%s/f/%d.ndjson"}`, typeName(i), base, i)
		}
		b.WriteString(`]}`)
		return b.String()
	})
	if err != nil {
		t.Fatal(err)
	}
	if size > 64<<10 {
		t.Errorf("PollStatus result is %d bytes for %d types; want a bounded summary", size, types)
	}
	if r.Plan.Files != types || r.Plan.GroupsOmitted != types || len(r.Plan.Groups) != 0 || r.Plan.Digest == "" {
		t.Errorf("plan: %d files, %d groups omitted, %d groups, digest %q", r.Plan.Files, r.Plan.GroupsOmitted, len(r.Plan.Groups), r.Plan.Digest)
	}
}

// typeName makes distinct letters-only type names: T + base-26 digits.
func typeName(i int) string {
	s := ""
	for {
		s = string(rune('a'+i%26)) + s
		i /= 26
		if i == 0 {
			return s
		}
	}
}

// A summary that would still be too large (a server-supplied field of
// megabytes) is a clear, non-retryable error naming the cause.
func TestOversizedManifestSummaryIsPermanent(t *testing.T) {
	_, _, err := pollOnce(t, func(base string) string {
		return `{"transactionTime":"2026-01-01T00:00:00Z` + strings.Repeat("0", 400<<10) + `","request":"x","requiresAccessToken":true,"output":[]}`
	})
	if err == nil || !strings.Contains(err.Error(), "PayloadTooLarge") || !strings.Contains(err.Error(), "transactionTime") {
		t.Fatalf("want a PayloadTooLarge error naming transactionTime, got %v", err)
	}
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || !ae.NonRetryable() {
		t.Errorf("an oversized summary must not be retried: %v", err)
	}
}

// Polls without Retry-After have a floor and back off: jitter never turns
// into a burst of millisecond polls.
func TestPollWaitHasAFloorAndBacksOff(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Progress", "working")
		w.WriteHeader(http.StatusAccepted) // no Retry-After
	}))
	defer srv.Close()
	reg, _ := servers.Load("")
	acts := New(reg, t.TempDir(), nil)
	var env testsuite.WorkflowTestSuite
	wait := func(poll int) time.Duration {
		aenv := env.NewTestActivityEnvironment()
		aenv.RegisterActivity(acts)
		v, err := aenv.ExecuteActivity(acts.PollStatus, PollInput{ServerRef: ServerRef{BaseURL: srv.URL}, Target: Target{Run: "run"}, StatusURL: srv.URL + "/status/1", Poll: poll})
		if err != nil {
			t.Fatal(err)
		}
		var r PollResult
		if err := v.Get(&r); err != nil {
			t.Fatal(err)
		}
		return r.Wait
	}
	for range 50 {
		if w := wait(0); w < time.Second {
			t.Fatalf("first poll waits %s: want at least 1s", w)
		}
		if w := wait(6); w < 30*time.Second {
			t.Fatalf("seventh poll waits %s: want at least half the 1-minute ceiling", w)
		}
	}
}
