package activities

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/internal/budget"
	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/throttle"
)

// issue 16 §7: a capability file URL (requiresAccessToken false) that fails
// with an HTTP status when opened must not reach the activity's error (and
// so Temporal history), its logs or the audit trail with its path or query:
// both may be the secret.
func TestCapabilityURLRedactedWhenOpeningFails(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusGone)
		w.Write([]byte("gone"))
	}))
	defer srv.Close()
	out := t.TempDir()
	var logs bytes.Buffer
	reg, _ := servers.Load("")
	acts := New(reg, out, slog.New(slog.NewTextHandler(&logs, nil)))
	s, _ := acts.sinkFor("")
	secretURL := srv.URL + "/cap/PathSecret123/Observation.ndjson?sig=QuerySecret456"
	if err := writeJSON(context.Background(), s, "run", PlanObject, &plan{TransactionTime: "2026-01-01T00:00:00Z", RequiresAccessToken: false,
		Files: []plannedFile{{Kind: KindOutput, Type: "Observation", URL: secretURL, Count: 1, HasCount: true, Path: "Observation/Observation-0001.ndjson"}}}); err != nil {
		t.Fatal(err)
	}
	var env testsuite.WorkflowTestSuite
	aenv := env.NewTestActivityEnvironment()
	aenv.RegisterActivity(acts)
	_, err := aenv.ExecuteActivity(acts.DownloadFile, DownloadInput{ServerRef: ServerRef{BaseURL: srv.URL}, Target: Target{Run: "run"}, Index: 0})
	if err == nil || !strings.Contains(err.Error(), "410") || !strings.Contains(err.Error(), "(capability URL ") {
		t.Fatalf("err = %v, want the 410 with the URL redacted", err)
	}
	var audit bytes.Buffer
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "_audit") {
			b, _ := os.ReadFile(p)
			audit.Write(b)
		}
		return nil
	})
	if audit.Len() == 0 || logs.Len() == 0 {
		t.Fatalf("no audit trail (%d bytes) or logs (%d bytes) to check", audit.Len(), logs.Len())
	}
	for where, text := range map[string]string{"error": err.Error(), "logs": logs.String(), "audit": audit.String()} {
		for _, secret := range []string{"PathSecret123", "QuerySecret456", "/cap/"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s holds %q: %s", where, secret, text)
			}
		}
	}
}

// Failures that are transient by nature but mean the server will not get
// better, repeated, become permanent within a few attempts (issue 12 §3,
// issue 16 §4); a kick-off that got no answer has its own type, so the
// workflow can decide whether a retry may start a second export.
func TestAttemptBudgets(t *testing.T) {
	refused := &bulk.Error{Op: "kickoff", URL: "https://ehr.example.org/fhir/$export", Kind: bulk.KindTransient,
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}
	stalled := &bulk.Error{Op: "status", Kind: bulk.KindTransient, Err: fmt.Errorf("%w: no bytes for 1m0s", bulk.ErrStalled)}
	unanswered := &bulk.Error{Op: "kickoff", Kind: bulk.KindTransient, Err: fmt.Errorf("%w: no bytes for 1m0s", bulk.ErrStalled)}
	reset := &bulk.Error{Op: "status", Kind: bulk.KindTransient, Err: errors.New("connection reset by peer")}
	tests := []struct {
		name         string
		err          error
		attempt      int32
		typ          string
		nonRetryable bool
		delay        time.Duration
	}{
		{"refused 1", refused, 1, ErrTransient, false, 10 * time.Second},
		{"refused 3", refused, 3, ErrTransient, false, 40 * time.Second},
		{"refused 4", refused, 4, ErrPermanent, true, 0},
		{"stalled 2", stalled, 2, ErrTransient, false, 0},
		{"stalled 3", stalled, 3, ErrPermanent, true, 0},
		{"kick-off unanswered", unanswered, 1, ErrKickoffUnanswered, false, 0},
		{"other transient: no budget here", reset, 30, ErrTransient, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ae *temporal.ApplicationError
			if !errors.As(temporalErrorAt(tt.attempt, tt.err), &ae) {
				t.Fatal("not an application error")
			}
			if ae.Type() != tt.typ || ae.NonRetryable() != tt.nonRetryable || ae.NextRetryDelay() != tt.delay {
				t.Errorf("type %s nonRetryable %v delay %v, want %s %v %v (%v)", ae.Type(), ae.NonRetryable(), ae.NextRetryDelay(), tt.typ, tt.nonRetryable, tt.delay, ae)
			}
			if tt.nonRetryable && !strings.Contains(ae.Error(), "giving up") {
				t.Errorf("message does not say why it gave up: %v", ae)
			}
		})
	}
}

// issue 13 §4 (2): waiting for a download slot heartbeats the resume point
// an earlier attempt left, never an empty checkpoint over it.
func TestAcquireKeepsResumePoint(t *testing.T) {
	var b budget.Local
	held, err := b.Acquire(context.Background(), "ehr", 1)
	if err != nil {
		t.Fatal(err)
	}
	resume := checkpoint{Token: "partial-object", Size: 4096, Offset: 4096, Resources: 7, Progress: 4096}
	var mu sync.Mutex
	var beats []checkpoint
	done := make(chan error, 1)
	go func() {
		beat := func(cp checkpoint) {
			mu.Lock()
			beats = append(beats, cp)
			mu.Unlock()
		}
		slot, err := acquire(context.Background(), &b, "ehr", 1, 10*time.Millisecond, func() { beat(resume) })
		if err == nil {
			slot.Release(throttle.Success)
		}
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	held.Release(throttle.Success)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(beats) == 0 {
		t.Fatal("no heartbeats while waiting")
	}
	for _, b := range beats {
		if b.Token != resume.Token || b.Offset != resume.Offset || b.Resources != resume.Resources {
			t.Fatalf("heartbeat %+v while waiting, want the resume point %+v", b, resume)
		}
	}
}

// issue 13 §4 (1): a 429 with Retry-After on a file is waited out inside
// the attempt, so it does not use up one of the file's attempts.
func TestFile429WaitedWithinTheAttempt(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Write([]byte(obs("1") + "\n"))
	})
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 1, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
	res, err := f.download(0)
	if err != nil {
		t.Fatalf("err = %v, want the 429 waited out in the same attempt", err)
	}
	if res.Resources != 1 || res.Attempt != 1 || calls.Load() != 2 {
		t.Errorf("resources %d attempt %d calls %d", res.Resources, res.Attempt, calls.Load())
	}
}

func TestRateLimitWaitIsBounded(t *testing.T) {
	rl := &bulk.Error{Op: "download", StatusCode: 429, Kind: bulk.KindRateLimited, RetryAfter: 10 * time.Minute}
	if w, ok := rateLimitWait(context.Background(), rl, 0, time.Now()); !ok || w != 10*time.Minute {
		t.Errorf("first wait %v %v", w, ok)
	}
	if _, ok := rateLimitWait(context.Background(), rl, 25*time.Minute, time.Now()); ok {
		t.Error("waited past maxRateLimitWait")
	}
	if _, ok := rateLimitWait(context.Background(), &bulk.Error{Kind: bulk.KindTransient}, 0, time.Now()); ok {
		t.Error("waited on a non-429")
	}
}

// issue 13 §4 (3): a 403 on a file is an expired link only when the links
// can expire; otherwise it is a permission failure naming the scopes.
func TestForbiddenFile(t *testing.T) {
	forbidden := func() error {
		return &bulk.Error{Op: "download", URL: "https://ehr.example.org/files/1", StatusCode: 403, Kind: bulk.KindFileGone}
	}
	tests := []struct {
		name string
		p    plan
		want bulk.ErrorKind
	}{
		{"token, no expiry", plan{RequiresAccessToken: true}, bulk.KindPermanent},
		{"token, expiry ahead", plan{RequiresAccessToken: true, Expires: time.Now().Add(time.Hour)}, bulk.KindPermanent},
		{"token, expired", plan{RequiresAccessToken: true, Expires: time.Now().Add(-time.Minute)}, bulk.KindFileGone},
		{"signed capability URL", plan{RequiresAccessToken: false}, bulk.KindFileGone},
	}
	for _, tt := range tests {
		err := forbiddenFile(forbidden(), &tt.p)
		if bulk.KindOf(err) != tt.want {
			t.Errorf("%s: kind %v, want %v (%v)", tt.name, bulk.KindOf(err), tt.want, err)
		}
		if tt.want == bulk.KindPermanent && !strings.Contains(err.Error(), "check the client's scopes") {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	gone := &bulk.Error{Op: "download", StatusCode: 410, Kind: bulk.KindFileGone}
	if bulk.KindOf(forbiddenFile(gone, &plan{RequiresAccessToken: true})) != bulk.KindFileGone {
		t.Error("410 must stay FileGone")
	}
}
