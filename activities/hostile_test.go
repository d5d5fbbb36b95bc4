package activities

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/internal/bulk"
)

// downloadWorkflow runs DownloadFile with a retry policy, the way the chunk
// workflow does: heartbeat details of one attempt reach the next.
func downloadWorkflow(ctx workflow.Context, in DownloadInput, attempts int32) (FileResult, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute, HeartbeatTimeout: time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 1, MaximumAttempts: attempts, NonRetryableErrorTypes: NonRetryable},
	})
	var a *Activities
	var r FileResult
	err := workflow.ExecuteActivity(ctx, a.DownloadFile, in).Get(ctx, &r)
	return r, err
}

// runDownload downloads file index of f's staged plan with up to attempts tries.
func (f *fixture) runDownload(index int, attempts int32, layout Layout) (FileResult, error) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterActivity(f.acts)
	env.RegisterWorkflow(downloadWorkflow)
	env.ExecuteWorkflow(downloadWorkflow, DownloadInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Index: index, Layout: layout}, attempts)
	if !env.IsWorkflowCompleted() {
		f.t.Fatal("workflow did not complete")
	}
	var r FileResult
	if err := env.GetWorkflowResult(&r); err != nil {
		return r, err
	}
	return r, nil
}

// hostile is a file server whose answer depends on the attempt (1-based).
func (f *fixture) hostile(h func(w http.ResponseWriter, r *http.Request, attempt int)) *atomic.Int32 {
	var n atomic.Int32
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h(w, r, int(n.Add(1)))
	})
	return &n
}

func lines(ids ...string) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(obs(id))
		b.WriteByte('\n')
	}
	return b.String()
}

func seq(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("o%04d", from+i)
	}
	return out
}

// cutAfter sends a 200 with the full Content-Length but only the first n
// bytes of body, then closes the connection: a reset mid-file.
func cutAfter(w http.ResponseWriter, body string, n int, header http.Header) {
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+ndjson\r\nContent-Length: %d\r\n", len(body))
	for k, vs := range header {
		for _, v := range vs {
			fmt.Fprintf(buf, "%s: %s\r\n", k, v)
		}
	}
	buf.WriteString("\r\n")
	buf.WriteString(body[:n])
	buf.Flush()
}

// A file regenerated between attempts (new ETag, same count, resources in
// another order) is never spliced onto the staged part of the old one:
// the resume sends If-Range, and whatever the server does with it, the
// staged file ends as exactly one version.
func TestResumeOntoRegeneratedFile(t *testing.T) {
	v1 := lines(seq(0, 200)...)
	v2 := lines(append(seq(100, 100), seq(0, 100)...)...) // regenerated: same ids, other order
	for _, tc := range []struct {
		name        string
		etag        bool // the server sends ETags
		honourIf    bool // the server implements If-Range
		wantIfRange bool
		wantRange   bool
	}{
		{name: "server honours If-Range", etag: true, honourIf: true, wantIfRange: true, wantRange: true},
		{name: "server ignores If-Range", etag: true, wantIfRange: true, wantRange: true},
		{name: "no validator: no resume", etag: false, wantRange: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.acts.CheckpointBytes = 1 << 10
			var second http.Header
			f.hostile(func(w http.ResponseWriter, r *http.Request, attempt int) {
				if attempt == 1 {
					h := http.Header{}
					if tc.etag {
						h.Set("ETag", `"v1"`)
					}
					cutAfter(w, v1, len(v1)*2/3, h)
					return
				}
				if attempt == 2 {
					second = r.Header.Clone()
				}
				if tc.etag {
					w.Header().Set("ETag", `"v2"`)
				}
				rg := r.Header.Get("Range")
				if rg != "" && (!tc.honourIf || r.Header.Get("If-Range") == `"v2"`) {
					start, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
					w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(v2)-1, len(v2)))
					w.WriteHeader(206)
					w.Write([]byte(v2[start:]))
					return
				}
				w.Write([]byte(v2))
			})
			f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 200, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
			r, err := f.runDownload(0, 5, Layout{})
			if err != nil {
				t.Fatal(err)
			}
			if got := f.staged(r.Path); got != v2 {
				t.Fatalf("staged file is not the regenerated version: %d bytes, %d lines (want %d bytes)", len(got), strings.Count(got, "\n"), len(v2))
			}
			if r.Resumed {
				t.Error("result says resumed: bytes of the old version were kept")
			}
			if second == nil {
				t.Fatal("no second request")
			}
			if got := second.Get("If-Range"); (got == `"v1"`) != tc.wantIfRange {
				t.Errorf("second request If-Range %q, want it: %v", got, tc.wantIfRange)
			}
			if got := second.Get("Range"); (got != "") != tc.wantRange {
				t.Errorf("second request Range %q, want one: %v", got, tc.wantRange)
			}
		})
	}
}

// The same file served unchanged resumes from its checkpoint (the If-Range
// path does not cost the resume itself).
func TestResumeSameVersion(t *testing.T) {
	v1 := lines(seq(0, 200)...)
	f := newFixture(t)
	f.acts.CheckpointBytes = 1 << 10
	f.hostile(func(w http.ResponseWriter, r *http.Request, attempt int) {
		if attempt == 1 {
			cutAfter(w, v1, len(v1)*2/3, http.Header{"Etag": {`"v1"`}})
			return
		}
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(v1))
	})
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 200, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
	r, err := f.runDownload(0, 5, Layout{})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.staged(r.Path); got != v1 || !r.Resumed {
		t.Fatalf("resumed %v, staged %d bytes (want %d)", r.Resumed, len(got), len(v1))
	}
}

// wantFailure checks a download error's Temporal type, retryability and text.
func wantFailure(t *testing.T, err error, typ string, nonRetryable bool, msgs ...string) {
	t.Helper()
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v, want an application error", err)
	}
	if ae.Type() != typ || ae.NonRetryable() != nonRetryable {
		t.Fatalf("type %s nonRetryable %v, want %s %v: %v", ae.Type(), ae.NonRetryable(), typ, nonRetryable, err)
	}
	for _, m := range msgs {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("message %q lacks %q", err, m)
		}
	}
}

// Resource ids must be unique within a file: a duplicate is retried once
// from the start (a file regenerated mid-download heals), the same
// duplicate twice in a row is permanent. The message names lines, not ids.
func TestDuplicateResourceIDs(t *testing.T) {
	dup := lines("a", "b", "c", "b") // count matches the manifest
	good := lines("a", "b", "c", "d")
	for _, tc := range []struct {
		name     string
		bodies   []string // per attempt; the last repeats
		wantErr  bool
		attempts int32
	}{
		{name: "heals on retry", bodies: []string{dup, good}, attempts: 2},
		{name: "same twice: permanent", bodies: []string{dup}, wantErr: true, attempts: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			n := f.hostile(func(w http.ResponseWriter, r *http.Request, attempt int) {
				w.Write([]byte(tc.bodies[min(attempt, len(tc.bodies))-1]))
			})
			f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 4, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
			r, err := f.runDownload(0, 10, Layout{})
			if got := n.Load(); got != tc.attempts {
				t.Errorf("%d attempts, want %d", got, tc.attempts)
			}
			if !tc.wantErr {
				if err != nil || f.staged(r.Path) != good {
					t.Fatalf("err %v, staged %q", err, f.staged(r.Path))
				}
				return
			}
			wantFailure(t, err, ErrInvalidContent, true, "lines 2 and 4 hold the same resource id", "the same on the previous attempt")
			if strings.Contains(err.Error(), `"b"`) {
				t.Errorf("the id itself is in the message: %v", err)
			}
		})
	}
}

// The same wrong count on two attempts in a row: the server produces the
// file that way, so the second is permanent and names both counts; a count
// that changes keeps being retried.
func TestSameCountMismatchTwiceIsPermanent(t *testing.T) {
	for _, layout := range []Layout{{}, {Format: "parquet"}} {
		t.Run("format="+layout.Format, func(t *testing.T) {
			f := newFixture(t)
			n := f.hostile(func(w http.ResponseWriter, r *http.Request, attempt int) {
				w.Write([]byte(lines(seq(0, 3)...)))
			})
			f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 5, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
			_, err := f.runDownload(0, 10, layout)
			wantFailure(t, err, ErrInvalidContent, true, "3 resources received, the manifest says 5", "the same on the previous attempt")
			if got := n.Load(); got != 2 {
				t.Errorf("%d attempts, want 2", got)
			}
		})
	}
	t.Run("changing counts are retried", func(t *testing.T) {
		f := newFixture(t)
		n := f.hostile(func(w http.ResponseWriter, r *http.Request, attempt int) {
			w.Write([]byte(lines(seq(0, min(attempt, 5))...)))
		})
		f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 5, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
		if _, err := f.runDownload(0, 10, Layout{}); err != nil {
			t.Fatal(err)
		}
		if got := n.Load(); got != 5 {
			t.Errorf("%d attempts, want 5", got)
		}
	})
}

func gzipped(t *testing.T, write func(w *gzip.Writer)) []byte {
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	write(zw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// A decompression bomb (a small gzip body inflating to one endless line)
// fails at the line cap, at once and for good, saying so.
func TestLineOverCapIsPermanent(t *testing.T) {
	bomb := gzipped(t, func(w *gzip.Writer) {
		w.Write([]byte(obs("1") + "\n"))
		chunk := bytes.Repeat([]byte("A"), 1<<20)
		for i := 0; i < 64; i++ { // 64 MiB of one line
			w.Write(chunk)
		}
	})
	for _, layout := range []Layout{{}, {Format: "parquet"}} {
		t.Run("format="+layout.Format, func(t *testing.T) {
			f := newFixture(t)
			f.acts.MaxLineBytes = 1 << 20
			n := f.hostile(func(w http.ResponseWriter, r *http.Request, attempt int) {
				w.Header().Set("Content-Encoding", "gzip")
				w.Write(bomb)
			})
			f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 2, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
			_, err := f.runDownload(0, 10, layout)
			wantFailure(t, err, ErrInvalidContent, true, "line 2 is longer than the 1 MiB cap")
			if strings.Contains(err.Error(), "body ended after") {
				t.Errorf("misleading message: %v", err)
			}
			if got := n.Load(); got != 1 {
				t.Errorf("%d attempts, want 1", got)
			}
		})
	}
}

// A file with more resources than its manifest count stops at the first
// extra line, before staging it, and is not retried.
func TestMoreResourcesThanManifestCount(t *testing.T) {
	for _, layout := range []Layout{{}, {Format: "parquet"}} {
		t.Run("format="+layout.Format, func(t *testing.T) {
			f := newFixture(t)
			var served atomic.Int64
			n := f.hostile(func(w http.ResponseWriter, r *http.Request, attempt int) {
				line := []byte(obs("x") + "\n")
				for i := 0; i < 100000 && r.Context().Err() == nil; i++ {
					line = []byte(obs(fmt.Sprintf("o%d", i)) + "\n")
					if _, err := w.Write(line); err != nil {
						return
					}
					served.Add(1)
				}
			})
			f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 3, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
			_, err := f.runDownload(0, 10, layout)
			wantFailure(t, err, ErrInvalidContent, true, "more resources than the manifest's count of 3", "line 4 is resource 4")
			if got := n.Load(); got != 1 {
				t.Errorf("%d attempts, want 1", got)
			}
			if got := f.staged("Observation/Observation-0001.ndjson"); got != "" {
				t.Errorf("a failed file left %d staged bytes", len(got))
			}
		})
	}
}

// error[] entries: their count is the number of resources that failed
// (not the file's lines), so it is not checked; the failures are reported,
// and fail the file only in strict mode.
func TestErrorFilePartialSuccess(t *testing.T) {
	oo := `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"14095 resources failed"}]}` + "\n"
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprint("strict=", strict), func(t *testing.T) {
			f := newFixture(t)
			f.bodies["/e"] = oo
			f.stage(plannedFile{Kind: KindError, Type: "OperationOutcome", URL: f.srv.URL + "/e", Count: 14095, HasCount: true, Path: "_errors/OperationOutcome-0001.ndjson"})
			r, err := f.runDownload(0, 10, Layout{Strict: strict})
			if strict {
				wantFailure(t, err, ErrPermanent, true, "14095 resource(s) it could not export", "strict mode")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Failed != 14095 || r.Severity["error"] != 1 || r.Resources != 1 {
				t.Errorf("result %+v", r)
			}
		})
	}
}

// Tombstone ids are FHIR ids: "..", slashes or long junk fail the file.
func TestTombstoneIDsValidated(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{{"abc-1.2", true}, {"..", false}, {".", false}, {"a b", false}, {strings.Repeat("x", 65), false}, {"a%2F..", false}} {
		f := newFixture(t)
		f.bodies["/d"] = `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/` + tc.id + `"}}]}` + "\n"
		f.stage(plannedFile{Kind: KindDeleted, Type: "Bundle", URL: f.srv.URL + "/d", Path: "_deleted/Bundle-0001.ndjson"})
		r, err := f.runDownload(0, 3, Layout{})
		if tc.ok {
			if err != nil || r.Deleted["Patient"] != 1 {
				t.Errorf("id %q: err %v, deleted %v", tc.id, err, r.Deleted)
			}
			continue
		}
		if err == nil {
			t.Errorf("id %q accepted", tc.id)
			continue
		}
		wantFailure(t, err, ErrInvalidContent, true, "not a FHIR id", "line 1")
	}
}

var _ = httptest.NewServer
var _ = context.Background

// Server timestamps: garbage transactionTime fails the plan; one in the
// future is a warning and flags the plan so the watermark stays; an Expires
// already past is dropped with a warning.
func TestBuildPlanTimestamps(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, tt    string
		expires     time.Time
		wantErr     string
		wantAhead   bool
		wantExpires time.Time
		wantWarn    string
	}{
		{name: "ok", tt: "2026-06-01T11:59:00Z", expires: now.Add(time.Hour), wantExpires: now.Add(time.Hour)},
		{name: "garbage", tt: "yesterday", wantErr: "not a FHIR instant"},
		{name: "no zone", tt: "2026-06-01T11:59:00", wantErr: "not a FHIR instant"},
		{name: "year 0001", tt: "0001-01-01T00:00:00Z", wantErr: "not a FHIR instant"},
		{name: "within skew", tt: "2026-06-01T12:04:00Z"},
		{name: "future", tt: "2099-01-01T00:00:00Z", wantAhead: true, wantWarn: "watermark is not advanced"},
		{name: "Expires 1970", tt: "2026-06-01T11:59:00Z", expires: time.Unix(0, 0), wantWarn: "Expires header (1970-01-01T00:00:00Z) had already passed"},
		{name: "Expires behind our clock", tt: "2026-06-01T11:59:00Z", expires: now.Add(-time.Minute), wantWarn: "had already passed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := buildPlan(&bulk.Manifest{TransactionTime: tc.tt}, tc.expires, now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sum := summarize(p)
			if sum.TransactionTimeAhead != tc.wantAhead || !sum.Expires.Equal(tc.wantExpires) {
				t.Errorf("ahead %v expires %v, want %v %v", sum.TransactionTimeAhead, sum.Expires, tc.wantAhead, tc.wantExpires)
			}
			if got := strings.Join(sum.Warnings, "\n"); (tc.wantWarn == "") != (got == "") || !strings.Contains(got, tc.wantWarn) {
				t.Errorf("warnings %q, want %q", got, tc.wantWarn)
			}
		})
	}
}

// A run whose transactionTime is in the future commits, says why the
// watermark stayed, and leaves it alone.
func TestCommitLeavesWatermarkForFutureTransactionTime(t *testing.T) {
	for _, tc := range []struct {
		name   string
		plan   Plan
		wantWM bool
	}{
		{"normal", Plan{TransactionTime: "2026-01-01T00:00:00Z"}, true},
		{"flagged at poll time", Plan{TransactionTime: "2026-01-01T00:00:00Z", TransactionTimeAhead: true}, false},
		{"future at commit", Plan{TransactionTime: "2099-01-01T00:00:00Z"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := context.Background()
			if err := f.acts.RecordChunk(ctx, RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0}); err != nil {
				t.Fatal(err)
			}
			key := NewWatermarkKey("ehr", "", "", "", nil, nil, nil, nil, false)
			res, err := f.acts.Commit(ctx, CommitInput{Target: Target{Run: "run"}, Chunks: 1, Plan: tc.plan, Request: map[string]any{},
				Watermark: &WatermarkUpdate{Key: key}})
			if err != nil {
				t.Fatal(err)
			}
			s, _ := f.acts.sinkFor("")
			wm, _ := readWatermark(ctx, s, key.Name())
			if (wm != nil) != tc.wantWM || (res.Watermark != "") != tc.wantWM {
				t.Fatalf("watermark %+v (result %q), want one: %v", wm, res.Watermark, tc.wantWM)
			}
			b, _ := os.ReadFile(res.Manifest)
			if !tc.wantWM && !strings.Contains(string(b), "watermark was not advanced") {
				t.Errorf("the run manifest does not say why the watermark stayed: %s", b)
			}
		})
	}
}

// A partial export (the server lists failures in error[]) commits what
// succeeded and names the failures in _manifest.json.
func TestPartialExportCommitsAndNamesFailures(t *testing.T) {
	f := newFixture(t)
	f.bodies["/o"] = lines("1", "2")
	f.bodies["/e"] = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing"}]}` + "\n"
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/o", Count: 2, HasCount: true, Path: "Observation/Observation-0001.ndjson"},
		plannedFile{Kind: KindError, Type: "OperationOutcome", URL: f.srv.URL + "/e", Count: 7, HasCount: true, Path: "_errors/OperationOutcome-0001.ndjson"})
	var files []FileResult
	for i := 0; i < 2; i++ {
		r, err := f.download(i)
		if err != nil {
			t.Fatal(err)
		}
		r.Index = i
		files = append(files, r)
	}
	ctx := context.Background()
	f.acts.RecordChunk(ctx, RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: files})
	res, err := f.acts.Commit(ctx, CommitInput{Target: Target{Run: "run"}, Chunks: 1, Plan: Plan{TransactionTime: "2026-01-01T00:00:00Z", Files: 2}, Request: map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	var m RunManifest
	b, _ := os.ReadFile(res.Manifest)
	json.Unmarshal(b, &m)
	if m.Totals.Failed != 7 || m.Totals.Resources["Observation"] != 2 || m.Totals.Issues["error"] != 1 {
		t.Errorf("totals %+v", m.Totals)
	}
	if !strings.Contains(strings.Join(m.Warnings, "\n"), "could not export 7 resource(s)") {
		t.Errorf("warnings %q", m.Warnings)
	}
}

// BenchmarkIDSet measures the memory the unique-id check costs per
// resource (docs/configuration.md, worker memory).
func BenchmarkIDSet(b *testing.B) {
	const n = 1_000_000
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := newIDSet(plannedFile{Kind: KindOutput, Path: "p", Count: n, HasCount: true})
		for j := 0; j < n; j++ {
			s.add("Observation-"+strconv.Itoa(j), int64(j+1))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/id")
		runtime.KeepAlive(s)
	}
}

// A manifest entry with a bad type must not carry its capability URL (the
// secret is in the path) or an unbounded server string into the error, which
// lands in Temporal history.
func TestBuildPlanErrorRedactsCapabilityURL(t *testing.T) {
	m := &bulk.Manifest{TransactionTime: "2026-01-01T00:00:00Z", RequiresAccessToken: false,
		Output: []bulk.FileItem{{Type: "not a type " + strings.Repeat("x", 5000), URL: "https://files.example.org/_cap/SECRETPATH/Patient.ndjson?sig=SECRETSIG"}}}
	_, err := buildPlan(m, time.Time{}, time.Now())
	if err == nil {
		t.Fatal("a bad type must be refused")
	}
	msg := err.Error()
	for _, secret := range []string{"SECRETPATH", "SECRETSIG"} {
		if strings.Contains(msg, secret) {
			t.Errorf("error carries the capability URL's secret %q: %s", secret, msg)
		}
	}
	if len(msg) > 1000 {
		t.Errorf("error is %d bytes: the server's type string must be clipped", len(msg))
	}
}
