package e2e

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite"
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
