package workflows_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/internal/bulkworker"
)

// Every history in testdata, recorded from real runs, must replay against
// the current workflow code: a change that would break running exports
// fails here. testdata/v0 was recorded by the code before the first
// GetVersion patch (version N); testdata/corpus/<path>/ holds one
// directory per path of the workflow, re-recorded with `make replay-record`
// (testsuite/e2e TestReplayCorpus). See docs/versioning.md.
func TestRecordedHistoriesReplay(t *testing.T) {
	var files []string
	err := filepath.WalkDir("testdata", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".json") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]bool{}
	for _, f := range files {
		paths[filepath.Dir(f)] = true
	}
	// The corpus covers every path named in issue 13 §2; a missing one is a
	// path whose histories nobody replays.
	for _, want := range []string{"success", "can-while-polling", "can-between-chunks", "refresh-expired-links", "lost-job-re-export",
		"cancel-mid-download", "failure-cleanup", "incremental-watermark", "set-concurrency", "upgrade-mid-download", "parallel-chunks", "batch-small-files"} {
		if !paths[filepath.Join("testdata", "corpus", want)] {
			t.Errorf("the replay corpus has no %q histories: run `make replay-record`", want)
		}
	}
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			h, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(h.Events) < 10 {
				t.Fatalf("%s holds %d events: not a real run", file, len(h.Events))
			}
			// Child IDs derive from the workflow ID and run ID: replay under the originals.
			id := h.Events[0].GetWorkflowExecutionStartedEventAttributes().GetWorkflowId()
			rp := worker.NewWorkflowReplayer()
			bulkworker.RegisterWorkflows(rp)
			if err := rp.ReplayWorkflowHistoryWithOptions(nil, h, worker.ReplayWorkflowHistoryOptions{OriginalExecution: workflow.Execution{ID: id}}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
