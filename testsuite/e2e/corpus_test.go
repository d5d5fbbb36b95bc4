package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// corpusDir is where `make replay-record` writes the corpus that
// workflows/replay_test.go replays on every `go test ./workflows/`.
const corpusDir = "../../workflows/testdata/corpus"

// TestReplayCorpus runs every path of the export workflow for real (dev
// server, test FHIR server, real files), checks each outcome, and replays
// every history it made (each continue-as-new run and each chunk) against
// the current code. With BULKFLOW_RECORD_CORPUS=1 (`make replay-record`) it
// also writes them to workflows/testdata/corpus/<path>/.
func TestReplayCorpus(t *testing.T) {
	requireE2E(t)
	for _, sc := range []struct {
		name string
		run  func(t *testing.T) []string // the export workflow IDs to keep
	}{
		{"success", corpusSuccess},
		{"can-while-polling", corpusCANWhilePolling},
		{"can-between-chunks", corpusCANBetweenChunks},
		{"refresh-expired-links", corpusRefresh},
		{"lost-job-re-export", corpusLostJob},
		{"cancel-mid-download", corpusCancel},
		{"failure-cleanup", corpusFailure},
		{"incremental-watermark", corpusIncremental},
		{"set-concurrency", corpusSetConcurrency},
		{"upgrade-mid-download", corpusUpgrade},
		{"parallel-chunks", corpusParallelChunks},
		{"batch-small-files", corpusBatch},
		{"attachments", corpusAttachments}, // attachments_corpus_test.go
	} {
		t.Run(sc.name, func(t *testing.T) {
			ids := sc.run(t)
			var all []namedHistory
			for _, id := range ids {
				all = append(all, exportHistories(t, id)...)
			}
			// Serialised before the replay: replaying applies search
			// attribute upserts to the history's start event in place.
			files := map[string][]byte{}
			for _, h := range all {
				b, err := protojson.MarshalOptions{Indent: "  "}.Marshal(h.h)
				if err != nil {
					t.Fatal(err)
				}
				files[h.name] = b
			}
			rp := worker.NewWorkflowReplayer()
			bulkworker.RegisterWorkflows(rp)
			for _, h := range all {
				if err := rp.ReplayWorkflowHistoryWithOptions(nil, h.h, worker.ReplayWorkflowHistoryOptions{OriginalExecution: workflow.Execution{ID: h.id}}); err != nil {
					t.Errorf("%s does not replay: %v", h.name, err)
				}
			}
			if os.Getenv("BULKFLOW_RECORD_CORPUS") == "1" && !t.Failed() {
				dir := filepath.Join(corpusDir, sc.name)
				os.RemoveAll(dir)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				for name, b := range files {
					if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				t.Logf("recorded %d histories in %s", len(all), dir)
			}
		})
	}
}

type namedHistory struct {
	name, id string
	h        *historypb.History
}

// exportHistories fetches every run of an export (its continue-as-new
// chain, oldest first) and every chunk workflow those runs started.
func exportHistories(t *testing.T, id string) []namedHistory {
	t.Helper()
	var runs []*historypb.History
	for runID := ""; ; {
		h := runHistory(t, id, runID)
		runs = append([]*historypb.History{h}, runs...)
		runID = h.Events[0].GetWorkflowExecutionStartedEventAttributes().GetContinuedExecutionRunId()
		if runID == "" {
			break
		}
	}
	var out []namedHistory
	chunks := 0
	for i, h := range runs {
		out = append(out, namedHistory{fmt.Sprintf("export-run%d", i+1), id, h})
		for _, ev := range h.Events {
			if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil {
				chunks++
				ex := a.GetWorkflowExecution()
				out = append(out, namedHistory{fmt.Sprintf("export-run%d-chunk%02d", i+1, chunks), ex.GetWorkflowId(), runHistory(t, ex.GetWorkflowId(), ex.GetRunId())})
			}
		}
	}
	return out
}

func runHistory(t *testing.T, id, runID string) *historypb.History {
	t.Helper()
	it := tclient.GetWorkflowHistory(context.Background(), id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	h := &historypb.History{}
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		h.Events = append(h.Events, ev)
	}
	if len(h.Events) == 0 {
		t.Fatalf("no history for %s/%s", id, runID)
	}
	return h
}

// corpusServer is a small, fast test server: the corpus stays small.
func corpusServer(t *testing.T, o testsuite.Options) *testsuite.Server {
	if o.Patients == 0 {
		o.Patients = 10
	}
	o.LargeAttachments = -1
	return fhirServer(t, o)
}

func runCount(t *testing.T, id string) int {
	n := 0
	for runID := ""; ; n++ {
		h := runHistory(t, id, runID)
		runID = h.Events[0].GetWorkflowExecutionStartedEventAttributes().GetContinuedExecutionRunId()
		if runID == "" {
			return n + 1
		}
	}
}

func corpusSuccess(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{ExportDuration: 1500 * time.Millisecond, RetryAfter: 500 * time.Millisecond})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{FilesPerChunk: 4}})
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	return []string{run.GetID()}
}

func corpusCANWhilePolling(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{ExportDuration: 3 * time.Second, RetryAfter: 300 * time.Millisecond})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{MaxHistoryEvents: 20}})
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if n := runCount(t, run.GetID()); n < 3 {
		t.Errorf("%d runs: a 20-event threshold over ~10 polls must continue as new while polling", n)
	}
	if srv.Stats().Kickoffs != 1 {
		t.Errorf("%d kick-offs: a continued run must poll the same job", srv.Stats().Kickoffs)
	}
	return []string{run.GetID()}
}

func corpusCANBetweenChunks(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{FilesPerChunk: 2, MaxHistoryEvents: 20}})
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if n := runCount(t, run.GetID()); n < 2 {
		t.Errorf("%d runs: chunks of 2 files and a 20-event threshold must continue as new between chunks", n)
	}
	return []string{run.GetID()}
}

// parallel-chunks (issue 14 §3): three chunks of two files side by side,
// one download each, on a slow server so that they overlap; a 40-event
// threshold makes the runs continue as new mid-window (the window drains
// first). The commit is the exact set.
func corpusParallelChunks(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{Faults: "file=slow(bps=20000)"})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(),
		Options: workflows.Options{FilesPerChunk: 2, ParallelChunks: 3, Concurrency: 1, MaxHistoryEvents: 40}})
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if n := runCount(t, run.GetID()); n < 2 {
		t.Errorf("%d runs: a 40-event threshold must continue as new mid-window", n)
	}
	// One download per chunk: more than one at once means chunks overlapped.
	if hw := srv.Stats().ConcurrentDownloadsHighWater; hw < 2 || hw > 3 {
		t.Errorf("%d downloads at once: want 2 or 3 (3 chunks side by side, 1 download each)", hw)
	}
	return []string{run.GetID()}
}

func corpusRefresh(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{Faults: "file:Observation=gone@1"})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL()})
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if !strings.Contains(strings.Join(res.Warnings, "\n"), "fresh links") || res.Restarts != 0 {
		t.Errorf("warnings %q, restarts %d: want a manifest refresh", res.Warnings, res.Restarts)
	}
	return []string{run.GetID()}
}

func corpusLostJob(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{ExportDuration: time.Second, RetryAfter: 300 * time.Millisecond,
		Faults: "file:Observation=gone@1; manifest=notfound@2-"})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL()})
	waitFor(t, time.Minute, "the second kick-off", func() bool { return srv.Stats().Kickoffs >= 2 })
	srv.SetFaults("")
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if res.Restarts != 1 {
		t.Errorf("restarts %d, want 1", res.Restarts)
	}
	return []string{run.GetID()}
}

// cancel-mid-download: the cancel waits for the downloads in flight, and
// nothing at all remains under staging afterwards.
func corpusCancel(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{Patients: 30, ResourcesPerFile: 300, Faults: "file=slow(bps=40000)"})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{Concurrency: 4, HeartbeatTimeout: "4s"}})
	waitFor(t, time.Minute, "finished downloads", func() bool { return srv.Stats().FilesServed >= 2 })
	if err := tclient.CancelWorkflow(context.Background(), run.GetID(), ""); err != nil {
		t.Fatal(err)
	}
	err := run.Get(context.Background(), nil)
	var ce *temporal.CanceledError
	if !errors.As(err, &ce) {
		t.Fatalf("want a cancelled export, got %v", err)
	}
	// The summary counts the files that had finished, and only those.
	var res workflows.ExportResult
	if err := ce.Details(&res); err != nil {
		t.Fatal(err)
	}
	if served := srv.Stats().FilesServed; res.Status != "cancelled" || res.Totals.Files == 0 || int64(res.Totals.Files) > served {
		t.Errorf("cancelled summary: status %q, %d files; the server had served %d whole files", res.Status, res.Totals.Files, served)
	}
	time.Sleep(3 * time.Second) // a late writer would land now
	var left []string
	filepath.WalkDir(filepath.Join(out, ".staging"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("%d files left under staging after the cancel, e.g. %s", len(left), left[0])
	}
	return []string{run.GetID()}
}

func corpusFailure(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{Faults: "file:Patient=truncate-lines(n=1)"})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{MaxFileAttempts: 2}})
	if err := run.Get(context.Background(), nil); err == nil {
		t.Fatal("an export whose file is always short succeeded")
	}
	assertNothingCommitted(t, out)
	if srv.Stats().Requests["delete"] < 1 {
		t.Error("the failed export did not DELETE its job")
	}
	return []string{run.GetID()}
}

func corpusIncremental(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{})
	queue, _ := startWorker(t, t.TempDir())
	in := workflows.ExportInput{BaseURL: srv.BaseURL(), Incremental: true}
	r1 := start(t, queue, in)
	var res1, res2 workflows.ExportResult
	if err := r1.Get(context.Background(), &res1); err != nil {
		t.Fatal(err)
	}
	srv.Mutate(time.Hour, 5, 2)
	r2 := start(t, queue, in)
	if err := r2.Get(context.Background(), &res2); err != nil {
		t.Fatal(err)
	}
	if res2.SinceFrom != "watermark" || res2.Since != res1.TransactionTime {
		t.Errorf("run 2: since %q from %q, want %q from the watermark", res2.Since, res2.SinceFrom, res1.TransactionTime)
	}
	return []string{r1.GetID(), r2.GetID()}
}

func corpusSetConcurrency(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{Patients: 20, ResourcesPerFile: 200, Faults: "file=slow(bps=100000)"})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{Concurrency: 4}})
	waitFor(t, time.Minute, "downloads", func() bool { return srv.Stats().Requests["file"] >= 1 })
	h, err := tclient.UpdateWorkflow(context.Background(), client.UpdateWorkflowOptions{WorkflowID: run.GetID(), UpdateName: workflows.SetConcurrencyUpdate,
		Args: []any{2}, WaitForStage: client.WorkflowUpdateStageCompleted})
	if err != nil {
		t.Fatal(err)
	}
	var prev int
	if err := h.Get(context.Background(), &prev); err != nil || prev != 4 {
		t.Fatalf("setConcurrency: previous %d, %v", prev, err)
	}
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	return []string{run.GetID()}
}

// upgrade-mid-download: a worker that takes the old branch of every patch
// (as version N of the code did) downloads part of an export and stops; a
// worker with today's code finishes it. The steps taken before the upgrade
// keep their old form (chunk IDs without the run's identity); the steps
// after it take the new one (the server's job deleted before the commit).
func corpusUpgrade(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{Patients: 30, ResourcesPerFile: 300, Faults: "file=slow(bps=100000)"})
	out := t.TempDir()
	queue := fmt.Sprintf("e2e-upgrade-%d", queueSeq.Add(1))
	reg, _ := servers.Load("")
	old := worker.New(tclient, queue, worker.Options{
		PreferredVersionProvider: func(worker.PreferredVersionProviderInput) *worker.VersionPreference {
			return &worker.VersionPreference{Version: workflow.DefaultVersion}
		},
	})
	bulkworker.Register(old, activities.New(reg, out, slog.New(slog.DiscardHandler)))
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{FilesPerChunk: 3, Concurrency: 3, HeartbeatTimeout: "3s"}})
	waitFor(t, time.Minute, "the first chunk", func() bool { return srv.Stats().FilesServed >= 4 })
	old.Stop()
	startWorker2(t, queue, out)
	var res workflows.ExportResult
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := run.Get(ctx, &res); err != nil {
		for _, h := range exportHistories(t, run.GetID()) {
			var last []string
			for _, ev := range h.h.Events[max(0, len(h.h.Events)-6):] {
				last = append(last, ev.GetEventType().String())
			}
			t.Logf("%s: %d events, last %v", h.name, len(h.h.Events), last)
		}
		t.Fatalf("export after the upgrade: %v", err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if !res.JobDeleted {
		t.Error("the job was not deleted")
	}
	h := runHistory(t, run.GetID(), "")
	var order []string
	for _, ev := range h.Events {
		if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil {
			order = append(order, a.GetActivityType().GetName())
		}
		if a := ev.GetStartChildWorkflowExecutionInitiatedEventAttributes(); a != nil {
			if id := a.GetWorkflowId(); !strings.HasSuffix(id, fmt.Sprintf("chunk-%05d", 0)) && strings.Contains(id, "chunk-00000") {
				t.Errorf("chunk 0 was started by the old code but has the new ID %s", id)
			}
		}
	}
	got := strings.Join(order, ",")
	if !strings.HasSuffix(got, "DeleteJob,Commit") {
		t.Errorf("activities %s: after the upgrade the job must be deleted before the commit", got)
	}
	return []string{run.GetID()}
}

// chunkIDs lists the workflow IDs of the chunks an export's latest run
// started, in order. Chunk IDs carry the parent run's identity
// (workflows.chunkID), so tests read them from history.
func chunkIDs(t *testing.T, exportID string) []string {
	t.Helper()
	var ids []string
	for _, ev := range runHistory(t, exportID, "").Events {
		if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil {
			ids = append(ids, a.GetWorkflowExecution().GetWorkflowId())
		}
	}
	return ids
}

// corpusBatch: small Observation files share DownloadBatch activities
// (issue 14 §1); the first file's first body is cut, so it fails in its
// batch and is retried alone through DownloadFile.
func corpusBatch(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{Patients: 20, ResourcesPerFile: 20, Faults: "file:Observation.1=truncate-lines(n=1)@1"})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: []string{"Observation"}, Options: workflows.Options{Concurrency: 2}})
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system", Types: []string{"Observation"}})
	assertExact(t, res, want)
	if res.Totals.Retries == 0 {
		t.Fatal("no file was retried: the history does not show a batch member retried alone")
	}
	return []string{run.GetID()}
}
