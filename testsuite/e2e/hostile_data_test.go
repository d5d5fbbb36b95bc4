package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// The server regenerates a file between a reset attempt and its resume
// (same resources and count, another order, new ETag): the resume's
// If-Range does not match, the server sends the whole new file, and the run
// commits exactly the expected resources, none doubled or missing. Before
// If-Range the splice had duplicated and missing resources with a matching
// count (issue 16 §1).
func TestResumeOntoRegeneratedFile(t *testing.T) {
	requireE2E(t)
	opts := testsuite.Options{Patients: 60, RangeRequests: true, LargeAttachments: -1, NoGzip: true,
		Faults: "file:Observation=reset(bytes=300000)@1; file:Observation=regenerate@2-"}
	srv := fhirServer(t, opts)
	queue := startWorkerWith(t, t.TempDir(), func(a *activities.Activities) { a.CheckpointBytes = 64 << 10 })
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: []string{"Observation"}})
	want, _ := srv.Expected(testsuite.Query{Level: "system", Types: []string{"Observation"}})
	assertExact(t, res, want)
	st := srv.Stats()
	if st.IfRangeMismatches == 0 {
		t.Fatal("no resume with a stale If-Range reached the server: the test did not exercise the regenerated file")
	}
	if st.RangeRequests != 0 {
		t.Errorf("%d ranges of the regenerated file were served: bytes of two versions were spliced", st.RangeRequests)
	}
}

// A file that comes back with the same wrong count on two attempts in a row
// fails the run after those two attempts (not ten over 20 minutes), naming
// both counts.
func TestSameWrongCountFailsFast(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 30, LargeAttachments: -1, Faults: "file:Condition=truncate-lines(n=2)"})
	queue, _ := startWorker(t, t.TempDir())
	began := time.Now()
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: []string{"Condition"}})
	err := run.Get(context.Background(), nil)
	if err == nil {
		t.Fatal("the export committed a file whose count never matched")
	}
	took := time.Since(began)
	for _, w := range []string{"resources received, the manifest says", "the same on the previous attempt"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if n := srv.Stats().FaultsFired["file:Condition=truncate-lines(n=2)"]; n != 2 {
		t.Errorf("the file was fetched %d times, want 2", n)
	}
	t.Logf("failed after %s", took.Round(time.Second))
	if took > time.Minute {
		t.Errorf("took %s to fail", took)
	}
}

// A partial export (the server lists failures in error[]) commits by
// default (TestFaultManifests/error-array); with strict it fails, saying
// why, and commits nothing.
func TestStrictFailsPartialExport(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 10, LargeAttachments: -1, Faults: "manifest=errors(n=3)"})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: []string{"Patient"}, Strict: true})
	err := run.Get(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "strict mode") || !strings.Contains(err.Error(), "error/fatal issue") {
		t.Fatalf("err = %v, want the strict-mode failure", err)
	}
	if m, _ := filepath.Glob(filepath.Join(out, "*", "_manifest.json")); len(m) != 0 {
		t.Errorf("a strict run with failures committed %v", m)
	}
}
