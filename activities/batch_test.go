package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// batchFixture serves /f<i> with files of n Observations each; broken[i]
// makes file i answer 500 (retryable) or an invalid line (permanent), and
// hits counts requests per file.
type batchFixture struct {
	t      *testing.T
	acts   *Activities
	out    string
	srv    *httptest.Server
	aenv   *testsuite.TestActivityEnvironment
	mu     sync.Mutex
	hits   map[string]int
	broken map[string]string // path -> "500" or "invalid"
}

func newBatchFixture(t *testing.T, files int) *batchFixture {
	f := &batchFixture{t: t, out: t.TempDir(), hits: map[string]int{}, broken: map[string]string{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.hits[r.URL.Path]++
		b := f.broken[r.URL.Path]
		f.mu.Unlock()
		switch b {
		case "500":
			http.Error(w, "try later", http.StatusInternalServerError)
			return
		case "invalid":
			w.Write([]byte(obs("x") + "\nnot json\n"))
			return
		case "short":
			w.Write([]byte(obs(r.URL.Path[1:]+"-a") + "\n"))
			return
		}
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		fmt.Fprintf(w, "%s\n%s\n", obs(r.URL.Path[1:]+"-a"), obs(r.URL.Path[1:]+"-b"))
	}))
	t.Cleanup(f.srv.Close)
	reg, _ := servers.Load("")
	f.acts = New(reg, f.out, nil)
	var ps []plannedFile
	for i := range files {
		ps = append(ps, plannedFile{Kind: KindOutput, Type: "Observation", URL: fmt.Sprintf("%s/f%d", f.srv.URL, i), Count: 2, HasCount: true,
			Path: fmt.Sprintf("Observation/Observation-%04d.ndjson", i+1)})
	}
	s, err := f.acts.sinkFor("")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeJSON(context.Background(), s, "run", PlanObject, &plan{TransactionTime: "2026-01-01T00:00:00Z", RequiresAccessToken: true, Files: ps}); err != nil {
		t.Fatal(err)
	}
	var env testsuite.WorkflowTestSuite
	f.aenv = env.NewTestActivityEnvironment()
	f.aenv.RegisterActivity(f.acts)
	return f
}

func (f *batchFixture) batch(first, n int) BatchResult {
	f.t.Helper()
	v, err := f.aenv.ExecuteActivity(f.acts.DownloadBatch, BatchInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, First: first, Count: n})
	if err != nil {
		f.t.Fatal(err)
	}
	var r BatchResult
	if err := v.Get(&r); err != nil {
		f.t.Fatal(err)
	}
	return r
}

// Issue 14 §1: a batch validates, stages and audits every file on its own.
// A file that fails is reported with its error type (not the batch's
// failure) and the others are staged; each staged file's full record,
// parts included, is what RecordChunk hands the commit, as for a file
// downloaded alone.
func TestDownloadBatchRecordsEveryFileOnItsOwn(t *testing.T) {
	f := newBatchFixture(t, 4)
	f.broken["/f2"] = "invalid"
	r := f.batch(0, 4)
	if len(r.Files) != 3 || len(r.Failed) != 1 {
		t.Fatalf("files %+v failed %+v, want 3 staged and 1 failed", r.Files, r.Failed)
	}
	if r.Failed[0].Index != 2 || r.Failed[0].Type != ErrInvalidContent || !strings.Contains(r.Failed[0].Error, "line 2") {
		t.Fatalf("failed %+v, want file 2 as InvalidContent naming its line", r.Failed[0])
	}
	for _, fr := range r.Files {
		if fr.Index == 2 || fr.Resources != 2 || fr.SHA256 == "" || fr.Parts != nil || !isBatchRecord(fr.Record) {
			t.Fatalf("result %+v: want 2 resources, a hash, parts by reference to the batch record", fr)
		}
	}
	if err := f.acts.RecordChunk(context.Background(), RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: r.Files}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(f.out, ".staging", "run", "work", "chunks", "000000.json"))
	if err != nil {
		t.Fatal(err)
	}
	var recs []FileResult
	if err := json.Unmarshal(b, &recs); err != nil {
		t.Fatal(err)
	}
	for i, rec := range recs {
		want := r.Files[i]
		if rec.Index != want.Index || len(rec.Parts) != 1 || rec.Parts[0].Path != want.Path || rec.Parts[0].SHA256 != want.SHA256 || rec.Record != "" {
			t.Fatalf("chunk record %d = %+v, want file %d's own full record", i, rec, want.Index)
		}
		staged, err := os.ReadFile(filepath.Join(f.out, ".staging", "run", "data", filepath.FromSlash(rec.Path)))
		if err != nil || int64(len(staged)) != rec.Bytes {
			t.Fatalf("staged %s: %d bytes (%v), record says %d", rec.Path, len(staged), err, rec.Bytes)
		}
	}
	// One audit fragment for the batch, one event per request.
	var events []map[string]any
	filepath.WalkDir(f.out, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "_audit") {
			b, _ := os.ReadFile(p)
			for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				var ev map[string]any
				if json.Unmarshal([]byte(l), &ev) == nil {
					events = append(events, ev)
				}
			}
		}
		return nil
	})
	got := map[string]int{}
	for _, ev := range events {
		if id, _ := ev["eventId"].(string); strings.HasPrefix(id, "download_") {
			got[id]++
		}
	}
	if got["download_complete"] != 3 || got["download_error"] != 1 {
		t.Fatalf("audit events %v (of %d), want 3 download_complete and 1 download_error", got, len(events))
	}
}

// A retried batch (its worker died) skips the files an earlier attempt
// staged and recorded: only the file that had failed is fetched again, and
// the result still lists every file of the batch.
func TestDownloadBatchRetrySkipsRecordedFiles(t *testing.T) {
	f := newBatchFixture(t, 4)
	f.broken["/f1"] = "500"
	first := f.batch(0, 4)
	if len(first.Files) != 3 || len(first.Failed) != 1 || first.Failed[0].Index != 1 {
		t.Fatalf("first attempt: files %+v failed %+v", first.Files, first.Failed)
	}
	delete(f.broken, "/f1")
	// The retry sees the heartbeat its earlier attempt left.
	f.aenv.SetHeartbeatDetails(batchBeat{Done: 4, Attempt: 1})
	second := f.batch(0, 4)
	if len(second.Files) != 4 || len(second.Failed) != 0 {
		t.Fatalf("retry: files %+v failed %+v, want all 4", second.Files, second.Failed)
	}
	for _, p := range []string{"/f0", "/f2", "/f3"} {
		if f.hits[p] != 1 {
			t.Errorf("%s fetched %d times, want once: the retry must skip recorded files", p, f.hits[p])
		}
	}
	if f.hits["/f1"] < 2 {
		t.Errorf("/f1 fetched %d times, want again on the retry", f.hits["/f1"])
	}
	byIndex := map[int]FileResult{}
	for _, r := range first.Files {
		byIndex[r.Index] = r
	}
	for _, r := range second.Files {
		if old, ok := byIndex[r.Index]; ok && old.SHA256 != r.SHA256 {
			t.Errorf("file %d: hash %s, the recorded one is %s", r.Index, r.SHA256, old.SHA256)
		}
	}
}

// A file whose count is wrong in its batch, and wrong the same way on its
// retry alone, fails for good there (the server produces it that way), as
// two attempts of DownloadFile would: the batch's try counts.
func TestBatchFailureSignatureCarriesToTheRetry(t *testing.T) {
	f := newBatchFixture(t, 3)
	f.broken["/f1"] = "short"
	r := f.batch(0, 3)
	if len(r.Failed) != 1 || r.Failed[0].Type != ErrTruncatedFile || r.Failed[0].Signature == "" {
		t.Fatalf("failed %+v, want file 1 as a retryable count mismatch with its signature", r.Failed)
	}
	var env testsuite.WorkflowTestSuite
	aenv := env.NewTestActivityEnvironment()
	aenv.RegisterActivity(f.acts)
	_, err := aenv.ExecuteActivity(f.acts.DownloadFile, DownloadInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Index: 1,
		PriorFailure: r.Failed[0].Signature})
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || !ae.NonRetryable() || !strings.Contains(err.Error(), "the same on the previous attempt") {
		t.Fatalf("err = %v, want a permanent failure saying it repeated", err)
	}
}

// The local sink stages a batch's files without an fsync each and makes
// them durable together; a name whose writer aborted is skipped, and names
// are checked as Create checks them.
func TestSyncStagedGroup(t *testing.T) {
	l, err := sink.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w, err := l.CreateUnsynced(ctx, "run", "Observation/a.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("{}\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	aborted, _ := l.CreateUnsynced(ctx, "run", "Observation/b.ndjson")
	aborted.Abort()
	if err := l.SyncStaged(ctx, "run", []string{"Observation/a.ndjson", "Observation/b.ndjson"}); err != nil {
		t.Fatal(err)
	}
	if err := l.SyncStaged(ctx, "run", []string{"../escape"}); err == nil {
		t.Fatal("SyncStaged accepted a name outside the run")
	}
	rc, err := l.Open(ctx, "run", "Observation/a.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
}

// BenchmarkDownloadBatch: the worker's cost per small file in a batch (100
// files of 100 Observations each per op), for profiles of the per-file
// overhead.
func BenchmarkDownloadBatch(b *testing.B) {
	var body strings.Builder
	for i := range 100 {
		body.WriteString(obs(fmt.Sprintf("o%d-%s", i, strings.Repeat("x", 600))) + "\n")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(body.String())) }))
	defer srv.Close()
	out := b.TempDir()
	reg, _ := servers.Load("")
	acts := New(reg, out, nil)
	var ps []plannedFile
	for i := range 100 {
		ps = append(ps, plannedFile{Kind: KindOutput, Type: "Observation", URL: fmt.Sprintf("%s/f%d", srv.URL, i), Count: 100, HasCount: true,
			Path: fmt.Sprintf("Observation/Observation-%04d.ndjson", i+1)})
	}
	s, _ := acts.sinkFor("")
	writeJSON(context.Background(), s, "run", PlanObject, &plan{TransactionTime: "2026-01-01T00:00:00Z", RequiresAccessToken: true, Files: ps})
	var env testsuite.WorkflowTestSuite
	aenv := env.NewTestActivityEnvironment()
	aenv.RegisterActivity(acts)
	b.SetBytes(int64(body.Len()) * 100)
	for b.Loop() {
		if _, err := aenv.ExecuteActivity(acts.DownloadBatch, BatchInput{ServerRef: ServerRef{BaseURL: srv.URL}, Target: Target{Run: "run"}, First: 0, Count: 100}); err != nil {
			b.Fatal(err)
		}
	}
}
