package activities

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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

// A server-supplied field of megabytes never reaches history: a huge
// transactionTime is refused as not an instant, with a clipped message, and
// a result that would still be too large is a clear, non-retryable error.
func TestOversizedManifestSummaryIsPermanent(t *testing.T) {
	_, _, err := pollOnce(t, func(base string) string {
		return `{"transactionTime":"2026-01-01T00:00:00Z` + strings.Repeat("0", 400<<10) + `","request":"x","requiresAccessToken":true,"output":[]}`
	})
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || !ae.NonRetryable() || ae.Type() != "InvalidManifest" {
		t.Fatalf("want a non-retryable InvalidManifest error, got %v", err)
	}
	if len(err.Error()) > 2048 {
		t.Errorf("the error carries %d bytes of the server's text into history", len(err.Error()))
	}

	big := PollResult{Done: true, Plan: &Plan{TransactionTime: "2026-01-01T00:00:00Z", Warnings: []string{strings.Repeat("w", maxPollResult)}}}
	err = checkPollResultSize(big)
	if !errors.As(err, &ae) || !ae.NonRetryable() || ae.Type() != "PayloadTooLarge" || !strings.Contains(err.Error(), "bytes in workflow history") {
		t.Errorf("want a non-retryable PayloadTooLarge error saying why, got %v", err)
	}
	if err := checkPollResultSize(PollResult{Done: true, Plan: &Plan{}}); err != nil {
		t.Errorf("a small result: %v", err)
	}
}
