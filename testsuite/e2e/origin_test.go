package e2e

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// Issue 16 §2 and §7 end to end: a kick-off whose Content-Location points at
// another origin fails at once, and that origin never hears from the worker;
// a capability URL that fails with 410 never reaches Temporal history.
func TestHostileOrigins(t *testing.T) {
	var foreignHits, foreignTokens atomic.Int64
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		foreignHits.Add(1)
		if r.Header.Get("Authorization") != "" {
			foreignTokens.Add(1)
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer foreign.Close()
	runFaultTable(t, []faultCase{{
		name:   "foreign-content-location",
		bearer: true,
		wrap: func(next http.Handler, fired *atomic.Int64) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !strings.HasSuffix(r.URL.Path, "/$export") {
					next.ServeHTTP(w, r)
					return
				}
				rec := httptest.NewRecorder()
				next.ServeHTTP(rec, r)
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				if loc, err := url.Parse(rec.Header().Get("Content-Location")); err == nil && loc.Path != "" {
					fired.Add(1)
					w.Header().Set("Content-Location", foreign.URL+loc.Path)
				}
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
			})
		},
		wantErr: []string{"status URL (Content-Location)", "allowedOrigins"},
		check: func(t *testing.T, r *faultRun) {
			if n := foreignHits.Load(); n != 0 {
				t.Errorf("the foreign origin got %d requests (%d with the token)", n, foreignTokens.Load())
			}
			if r.elapsed > time.Minute {
				t.Errorf("took %s to fail", r.elapsed)
			}
		},
	}, {
		name:    "capability-url-gone",
		opts:    testsuite.Options{Faults: "manifest=capability-urls; file:Patient=gone"},
		wantErr: []string{"giving up"},
		check: func(t *testing.T, r *faultRun) {
			hist, failures := historyBytes(t, r.id)
			if len(failures) == 0 {
				t.Fatal("no failure in history: the 410 never reached it")
			}
			if i := bytes.Index(hist, []byte("/_cap/")); i >= 0 {
				t.Errorf("history holds a capability URL path: ...%s...", hist[max(0, i-80):min(len(hist), i+80)])
			}
			if !bytes.Contains(hist, []byte("(capability URL ")) {
				t.Error("no redacted capability URL in history: did the 410 fail the file?")
			}
		},
	}})
}

// Issue 12 §3 end to end: a wrong URL fails the export with the real cause
// in minutes, not after ~3.6 h of retries: plain HTTP on an https URL at
// once, a refused connection after a few quick attempts.
func TestUnreachableServerFailsFast(t *testing.T) {
	requireE2E(t)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(plain.Close) // not defer: the subtests run in parallel, after this function returns
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, tc := range []struct {
		name, base, want string
		within           time.Duration
	}{
		{"https-to-http", "https://" + plain.Listener.Addr().String() + "/fhir", "answered plain HTTP on an https:// URL", 30 * time.Second},
		{"connection-refused", "http://" + closed + "/fhir", "connection refused by " + closed, 3 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			queue, _ := startWorker(t, t.TempDir())
			run := start(t, queue, workflows.ExportInput{BaseURL: tc.base})
			ctx, cancel := context.WithTimeout(context.Background(), tc.within+time.Minute)
			defer cancel()
			began := time.Now()
			err := run.Get(ctx, nil)
			took := time.Since(began)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("after %s: %v, want a failure saying %q", took, err, tc.want)
			}
			if took > tc.within {
				t.Errorf("took %s to fail, want under %s", took, tc.within)
			}
			t.Logf("failed after %s", took.Round(time.Second))
		})
	}
}
