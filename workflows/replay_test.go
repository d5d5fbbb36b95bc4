package workflows_test

import (
	"os"
	"testing"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/workflows"
)

// Histories recorded from a real end-to-end run (testsuite/e2e,
// TestRealHistoryReplays with BULKFLOW_RECORD_HISTORY=1) must replay against
// the current workflow code: a change that would break running exports fails here.
func TestRecordedHistoriesReplay(t *testing.T) {
	for _, tc := range []struct{ file, id string }{
		{"testdata/export-history.json", workflows.ReplaySampleID},
		{"testdata/chunk-history.json", workflows.ReplaySampleID + "/chunk-00000"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			h, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(h.Events) < 10 {
				t.Fatalf("%s holds %d events: not a real run", tc.file, len(h.Events))
			}
			rp := worker.NewWorkflowReplayer()
			bulkworker.RegisterWorkflows(rp)
			if err := rp.ReplayWorkflowHistoryWithOptions(nil, h, worker.ReplayWorkflowHistoryOptions{OriginalExecution: workflow.Execution{ID: tc.id}}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
