package e2e

import (
	"context"
	"fmt"
	"testing"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/worker"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/workflows"
)

// The real history size of a large manifest, measured on a real Temporal
// server with stand-in activities: no run may come near Temporal's limits,
// and each child's history must follow the per-file cost the time-skipping
// test (workflows.Test20000Files) uses to bound a 20,000-file export.
func TestHistoryStaysBoundedOnARealServer(t *testing.T) {
	requireE2E(t)
	const files, perChunk = 1000, 500
	queue := "e2e-history"
	w := worker.New(tclient, queue, worker.Options{MaxConcurrentActivityExecutionSize: 64})
	bulkworker.RegisterWorkflows(w)
	reg := func(name string, fn any) { w.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name}) }
	reg("Kickoff", func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		return activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil
	})
	reg("PollStatus", func(context.Context, activities.PollInput) (activities.PollResult, error) {
		return activities.PollResult{Done: true, Plan: &activities.Plan{TransactionTime: "2026-01-01T00:00:00Z", Files: files,
			Groups: []activities.Group{{Kind: activities.KindOutput, Type: "Observation", First: 0, Count: files}}}}, nil
	})
	reg("DownloadFile", func(_ context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		return activities.FileResult{Index: in.Index, Kind: activities.KindOutput, Type: "Observation", Path: fmt.Sprintf("Observation/%d", in.Index), Resources: 1, Bytes: 10, Attempt: 1}, nil
	})
	reg("RecordChunk", func(context.Context, activities.RecordChunkInput) error { return nil })
	reg("Commit", func(context.Context, activities.CommitInput) (activities.CommitResult, error) {
		return activities.CommitResult{Location: "/x"}, nil
	})
	reg("DeleteJob", func(context.Context, activities.DeleteJobInput) error { return nil })
	reg("Abort", func(context.Context, activities.Target) error { return nil })
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	res := runExport(t, queue, workflows.ExportInput{BaseURL: "https://ehr.example/fhir", Options: workflows.Options{Concurrency: 32, FilesPerChunk: perChunk}})
	if res.Totals.Files != files {
		t.Fatalf("%d files, want %d", res.Totals.Files, files)
	}
	ctx := context.Background()
	count := func(id string) int {
		it := tclient.GetWorkflowHistory(ctx, id, "", false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		n := 0
		for it.HasNext() {
			if _, err := it.Next(); err != nil {
				t.Fatal(err)
			}
			n++
		}
		return n
	}
	parentID := res.Run // the run name is the workflow ID here
	parent := count(parentID)
	t.Logf("parent: %d events", parent)
	if parent > 200 {
		t.Errorf("parent history %d events for %d chunks", parent, files/perChunk)
	}
	for c, id := range chunkIDs(t, parentID) {
		n := count(id)
		t.Logf("chunk %d: %d events for %d files", c, n, perChunk)
		if bound := 3 + 6*(perChunk+1); n > bound {
			t.Errorf("chunk %d: %d events, above the model's bound %d that the 20,000-file test relies on", c, n, bound)
		}
	}
}
