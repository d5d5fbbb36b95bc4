package e2e

import (
	"context"
	"testing"

	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// corpusAttachments (TestReplayCorpus "attachments"): an export with
// attachments "fetch", one file per chunk and a 20-event threshold, so it
// continues as new between chunks and between attachment chunks: the
// replay corpus then holds the attachments phase and its patch marker.
func corpusAttachments(t *testing.T) []string {
	srv := corpusServer(t, testsuite.Options{Patients: 20, ResourcesPerFile: 10, Attachments: true})
	queue, _ := startWorker(t, t.TempDir())
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: attachmentTypes, Attachments: "fetch",
		Options: workflows.Options{FilesPerChunk: 1, MaxHistoryEvents: 20}})
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system", Types: attachmentTypes})
	rep := assertExact(t, res, want)
	if rep.Manifest.Attachments == nil || rep.Manifest.Attachments.Files == 0 {
		t.Errorf("no attachment stored: %+v", rep.Manifest.Attachments)
	}
	if n := runCount(t, run.GetID()); n < 3 {
		t.Errorf("%d runs: one-file chunks and a 20-event threshold must continue as new", n)
	}
	return []string{run.GetID()}
}
