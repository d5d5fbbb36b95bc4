package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

func TestSystemExportExactSet(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 200, ResourcesPerFile: 500, ExportDuration: 2 * time.Second, RetryAfter: time.Second})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{Concurrency: 4}})
	want, err := srv.Expected(testsuite.Query{Level: "system"})
	if err != nil {
		t.Fatal(err)
	}
	assertExact(t, res, want)
	if res.Totals.Resources["Patient"] != 200 {
		t.Errorf("Patient total %d, want 200", res.Totals.Resources["Patient"])
	}
	if res.Polls < 2 {
		t.Errorf("polls = %d: the export lasted 2s with Retry-After 1s", res.Polls)
	}
	if !res.JobDeleted {
		t.Error("the server job was not deleted")
	}
	st := srv.Stats()
	if st.Kickoffs != 1 {
		t.Errorf("kickoffs = %d, want exactly 1", st.Kickoffs)
	}
	if st.Requests["delete"] != 1 {
		t.Errorf("DELETE requests = %d, want 1", st.Requests["delete"])
	}
	if hw := st.ConcurrentDownloadsHighWater; hw > 4 {
		t.Errorf("%d downloads at once, concurrency was 4", hw)
	}
	// No staging left behind, and the run is where the result says.
	if _, err := os.Stat(filepath.Join(out, ".staging", res.Run)); !os.IsNotExist(err) {
		t.Errorf("staging left behind: %v", err)
	}
}

func TestGroupExport(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 60})
	queue, _ := startWorker(t, t.TempDir())
	group := srv.GroupIDs()[0]
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Level: "group", Group: group})
	want, err := srv.Expected(testsuite.Query{Level: "group", GroupID: group})
	if err != nil {
		t.Fatal(err)
	}
	assertExact(t, res, want)
	all, _ := srv.Expected(testsuite.Query{Level: "system"})
	if want.Counts["Patient"] >= all.Counts["Patient"] {
		t.Errorf("group has %d of %d patients: not a subset, the test proves little", want.Counts["Patient"], all.Counts["Patient"])
	}
}

func TestTypeAndSinceExportWithDeletions(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 80})
	queue, _ := startWorker(t, t.TempDir())
	since := srv.Now()
	srv.Mutate(time.Hour, 40, 15)
	types := []string{"Patient", "Observation", "Condition"}
	in := workflows.ExportInput{BaseURL: srv.BaseURL(), Types: types, Since: since.UTC().Format(time.RFC3339Nano)}
	res := runExport(t, queue, in)
	want, err := srv.Expected(testsuite.Query{Level: "system", Types: types, Since: since})
	if err != nil {
		t.Fatal(err)
	}
	rep := assertExact(t, res, want)
	for typ := range rep.IDs {
		found := false
		for _, w := range types {
			found = found || w == typ
		}
		if !found {
			t.Errorf("type %s exported, _type did not ask for it", typ)
		}
	}
	var wantDeleted int64
	for typ, ids := range want.Deleted {
		wantDeleted += int64(len(ids))
		if res.Totals.Deleted[typ] != int64(len(ids)) {
			t.Errorf("deleted %s: %d, want %d", typ, res.Totals.Deleted[typ], len(ids))
		}
	}
	if wantDeleted == 0 {
		t.Error("no deletions expected: the mutation did not exercise deleted[]")
	}
}

func TestCancelDeletesJobAndCommitsNothing(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 20, ExportDuration: time.Hour, RetryAfter: time.Second})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL()})
	deadline := time.Now().Add(30 * time.Second)
	for srv.Stats().Requests["status"] < 1 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if err := tclient.CancelWorkflow(context.Background(), run.GetID(), ""); err != nil {
		t.Fatal(err)
	}
	var res workflows.ExportResult
	err := run.Get(context.Background(), &res)
	if err == nil {
		t.Fatal("a cancelled export reported success")
	}
	if srv.Stats().Requests["delete"] < 1 {
		t.Error("cancel did not DELETE the server job")
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if e.Name() != ".staging" && e.Name() != "_audit" {
			t.Errorf("cancelled run left %s in the output", e.Name())
		}
	}
	// The audit trail of a cancelled run is kept: kick-off, polls, DELETE.
	if trail, _ := filepath.Glob(filepath.Join(out, "_audit", "*", "*.ndjson")); len(trail) == 0 {
		t.Error("no audit trail for the cancelled run")
	}
}

// _elements flows to the server; its resources come back tagged SUBSETTED,
// so the run carries no data-minimisation warning.
func TestElementsAreSubsetted(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 10, LargeAttachments: -1})
	queue, _ := startWorker(t, t.TempDir())
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: []string{"Observation"}, Elements: []string{"status"}})
	if res.Totals.ResourceCount() == 0 || res.Totals.Unsubsetted != 0 {
		t.Fatalf("%d resources, %d without SUBSETTED", res.Totals.ResourceCount(), res.Totals.Unsubsetted)
	}
	for _, w := range res.Warnings {
		if strings.Contains(w, "SUBSETTED") || strings.Contains(w, "not requested") {
			t.Errorf("unexpected warning: %s", w)
		}
	}
}
