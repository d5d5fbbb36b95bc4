package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

func history(t *testing.T, id string) *historypb.History {
	t.Helper()
	it := tclient.GetWorkflowHistory(context.Background(), id, "", false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	h := &historypb.History{}
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		h.Events = append(h.Events, ev)
	}
	return h
}

// A real run's histories (the export and its chunk) replay against the
// current code. With BULKFLOW_RECORD_HISTORY=1 they are also written to
// workflows/testdata, where the unit tests replay them on every run, so a
// non-deterministic change to the workflows fails `go test ./workflows`.
func TestRealHistoryReplays(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 10, ExportDuration: 1500 * time.Millisecond, RetryAfter: time.Second,
		LargeAttachments: -1, Faults: "file:Patient=truncate-lines(n=1)@1"})
	queue, _ := startWorker(t, t.TempDir())
	// A fixed ID: replaying needs the original one (child IDs derive from it).
	run, err := tclient.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: workflows.ReplaySampleID, TaskQueue: queue},
		workflows.BulkExportWorkflow, workflows.ExportInput{BaseURL: srv.BaseURL(), Run: "replay", Options: workflows.Options{FilesPerChunk: 8}})
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	parent := history(t, run.GetID())
	// The chunk's ID carries the parent run's identity: read it from history.
	var chunkID string
	for _, ev := range parent.Events {
		if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil && chunkID == "" {
			chunkID = a.GetWorkflowExecution().GetWorkflowId()
		}
	}
	child := history(t, chunkID)
	if len(child.Events) == 0 {
		t.Fatal("no chunk history")
	}
	rp := worker.NewWorkflowReplayer()
	bulkworker.RegisterWorkflows(rp)
	for name, h := range map[string]*historypb.History{"export": parent, "chunk": child} {
		id := run.GetID()
		if name == "chunk" {
			id = chunkID
		}
		if err := rp.ReplayWorkflowHistoryWithOptions(nil, h, worker.ReplayWorkflowHistoryOptions{OriginalExecution: workflow.Execution{ID: id}}); err != nil {
			t.Errorf("%s history does not replay: %v", name, err)
		}
	}
	if os.Getenv("BULKFLOW_RECORD_HISTORY") == "1" {
		for name, h := range map[string]*historypb.History{"export": parent, "chunk": child} {
			b, err := protojson.MarshalOptions{Indent: "  "}.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join("..", "..", "workflows", "testdata", name+"-history.json")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("recorded %s (%d events)", p, len(h.Events))
		}
	}
}
