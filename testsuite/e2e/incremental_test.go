package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// Incremental exports against the test server's mutation clock:
// run 1 full; updates and deletes; run 2 gets exactly the changed resources
// and the deletions; run 3 with no change commits an empty run; run 4 fails
// after more changes and leaves the watermark alone; run 5 gets everything
// since run 3, so nothing is skipped.
func TestIncrementalWithMutationClock(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 50, LargeAttachments: -1})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	in := workflows.ExportInput{BaseURL: srv.BaseURL(), Incremental: true}

	// Run 1: no watermark yet, a full export.
	r1 := runExport(t, queue, in)
	full, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, r1, full)
	if r1.Since != "" || r1.Watermark == "" {
		t.Fatalf("run 1: since %q, watermark %q; want a full export that sets the watermark", r1.Since, r1.Watermark)
	}
	if _, err := os.Stat(filepath.Join(out, "_state", r1.Watermark)); err != nil {
		t.Fatalf("watermark object: %v", err)
	}

	// Run 2: exactly what changed, and the deletions.
	srv.Mutate(time.Hour, 25, 8)
	r2 := runExport(t, queue, in)
	if r2.Since != r1.TransactionTime || r2.SinceFrom != "watermark" {
		t.Fatalf("run 2: since %q from %q, want run 1's transactionTime %q", r2.Since, r2.SinceFrom, r1.TransactionTime)
	}
	t1, _ := time.Parse(time.RFC3339Nano, r1.TransactionTime)
	changed, _ := srv.Expected(testsuite.Query{Level: "system", Since: t1})
	assertExact(t, r2, changed)
	if n := r2.Totals.ResourceCount(); n == 0 || n > 25 {
		t.Errorf("run 2 exported %d resources for 25 updates", n)
	}
	var deleted int64
	for _, n := range r2.Totals.Deleted {
		deleted += n
	}
	if deleted != 8 {
		t.Errorf("run 2 deletions %d, want 8", deleted)
	}

	// Run 3: nothing changed: an empty run is still committed and advances the watermark.
	r3 := runExport(t, queue, in)
	if r3.Since != r2.TransactionTime || r3.Totals.ResourceCount() != 0 || r3.Status != "committed" {
		t.Errorf("run 3: since %q (want %q), %d resources, %s", r3.Since, r2.TransactionTime, r3.Totals.ResourceCount(), r3.Status)
	}

	// Run 4 fails (a file the server keeps cutting short) after more changes.
	srv.Mutate(time.Hour, 10, 2)
	srv.SetFaults("file=truncate-lines(n=1)")
	in4 := in
	in4.Options.MaxFileAttempts = 2
	run4 := start(t, queue, in4)
	if err := run4.Get(context.Background(), nil); err == nil {
		t.Fatal("run 4 should have failed")
	}
	srv.SetFaults("")

	// Run 5: since run 3 (the last that landed), so run 4's changes are not lost.
	r5 := runExport(t, queue, in)
	if r5.Since != r3.TransactionTime {
		t.Fatalf("run 5: since %q, want run 3's %q: the failed run moved the watermark", r5.Since, r3.TransactionTime)
	}
	t3, _ := time.Parse(time.RFC3339Nano, r3.TransactionTime)
	changed5, _ := srv.Expected(testsuite.Query{Level: "system", Since: t3})
	assertExact(t, r5, changed5)
}
