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
// server with stand-in activities: the per-file cost of a chunk and the
// per-chunk cost of the parent, from real event counts, must keep the
// largest chunk and a 20,000-file export's parent within Temporal's limits
// (workflows.Test20000Files checks the 40 chunks of 500 downloads each).
func TestHistoryStaysBoundedOnARealServer(t *testing.T) {
	requireE2E(t)
	const files, perChunk = 1000, 500
	queue := "e2e-history"
	w := worker.New(tclient, queue, worker.Options{MaxConcurrentActivityExecutionSize: 64})
	bulkworker.RegisterWorkflows(w)
	reg := func(name string, fn any) { w.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name}) }
	reg("CheckTarget", func(context.Context, activities.CheckTargetInput) error { return nil })
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
	// No size hints: one DownloadFile per file, the per-file history cost
	// this test bounds (batches only make it smaller).
	reg("ChunkHints", func(context.Context, activities.ChunkHintsInput) (activities.ChunkHints, error) {
		return activities.ChunkHints{}, nil
	})
	reg("DownloadBatch", func(_ context.Context, in activities.BatchInput) (activities.BatchResult, error) {
		var r activities.BatchResult
		for i := in.First; i < in.First+in.Count; i++ {
			r.Files = append(r.Files, activities.FileResult{Index: i, Kind: activities.KindOutput, Type: "Observation", Path: fmt.Sprintf("Observation/%d", i), Resources: 1, Bytes: 10, Attempt: 1})
		}
		return r, nil
	})
	reg("RecordChunk", func(context.Context, activities.RecordChunkInput) error { return nil })
	reg("Commit", func(context.Context, activities.CommitInput) (activities.CommitResult, error) {
		return activities.CommitResult{Location: "/x"}, nil
	})
	reg("FetchAttachments", func(context.Context, activities.FetchAttachmentsInput) (activities.FetchAttachmentsResult, error) {
		return activities.FetchAttachmentsResult{}, nil
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
	// count returns a run's events and the child workflows it started (found
	// in its history, whatever their IDs look like).
	count := func(id, runID string) (int, [][2]string) {
		it := tclient.GetWorkflowHistory(ctx, id, runID, false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		n := 0
		var children [][2]string
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatal(err)
			}
			n++
			if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil {
				children = append(children, [2]string{a.GetWorkflowExecution().GetWorkflowId(), a.GetWorkflowExecution().GetRunId()})
			}
		}
		return n, children
	}
	parentID := res.Run // the run name is the workflow ID here
	chunks := files / perChunk
	parent, children := count(parentID, "")
	t.Logf("parent: %d events for %d chunks", parent, chunks)
	if len(children) != chunks {
		t.Fatalf("the parent started %d child workflows, want %d", len(children), chunks)
	}
	// The parent's history grows with chunks, not files: a 20,000-file
	// export (40 chunks) must stay far below the continue-as-new threshold
	// (5,000 events) without relying on it.
	if perChunkCost := float64(parent) / float64(chunks); perChunkCost*40 > 2500 {
		t.Errorf("parent: %d events for %d chunks (%.0f per chunk): a 40-chunk export would need %.0f", parent, chunks, perChunkCost, perChunkCost*40)
	}
	for c, child := range children {
		n, _ := count(child[0], child[1])
		perFile := float64(n) / perChunk
		t.Logf("chunk %d: %d events for %d files (%.2f per file)", c, n, perChunk, perFile)
		// Every download costs at least its scheduled, started and completed
		// events; at most 5 per file keeps the largest chunk allowed
		// (filesPerChunk 2,000) below Temporal's 10,240-event history warning.
		if n < 3*perChunk {
			t.Errorf("chunk %d: %d events for %d downloads: fewer than 3 per download, the count is wrong", c, n, perChunk)
		}
		if n > 5*perChunk {
			t.Errorf("chunk %d: %d events, %.2f per file: a 2,000-file chunk would pass Temporal's 10,240-event warning", c, n, perFile)
		}
	}
}
