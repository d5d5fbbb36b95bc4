package e2e

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

func requireE2E(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: needs the Temporal dev server")
	}
}

func fhirServer(t *testing.T, opts testsuite.Options) *testsuite.Server {
	t.Helper()
	srv, err := testsuite.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

var queueSeq atomic.Int64

// startWorker runs an in-process worker on a fresh task queue.
func startWorker(t *testing.T, output string) (string, worker.Worker) {
	t.Helper()
	queue := fmt.Sprintf("e2e-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), queueSeq.Add(1))
	reg, _ := servers.Load("")
	w := bulkworker.New(tclient, queue, activities.New(reg, output, slog.New(slog.DiscardHandler)), 16)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return queue, w
}

func start(t *testing.T, queue string, in workflows.ExportInput) client.WorkflowRun {
	t.Helper()
	id := fmt.Sprintf("%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano())
	run, err := tclient.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: id, TaskQueue: queue,
		TypedSearchAttributes: workflows.StartSearchAttributes(in)}, workflows.BulkExportWorkflow, in)
	if err != nil {
		t.Fatal(err)
	}
	return run
}

func runExport(t *testing.T, queue string, in workflows.ExportInput) workflows.ExportResult {
	t.Helper()
	run := start(t, queue, in)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var res workflows.ExportResult
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("export %s failed: %v", run.GetID(), err)
	}
	return res
}

// assertExact checks that the committed run verifies against its manifest
// and holds exactly the expected (type, id) set: nothing lost, nothing doubled.
func assertExact(t *testing.T, res workflows.ExportResult, want testsuite.Expected) *verify.Report {
	t.Helper()
	if res.Status != "committed" {
		t.Fatalf("status %q", res.Status)
	}
	rep, err := verify.Run(res.Location, true)
	if err != nil {
		t.Fatalf("verify %s: %v", res.Location, err)
	}
	if rep.Duplicates != 0 {
		t.Errorf("%d duplicated resources", rep.Duplicates)
	}
	// Nothing in the run folder that the manifest does not list.
	listed := map[string]bool{"_manifest.json": true}
	for _, f := range rep.Manifest.Files {
		listed[f.Path] = true
	}
	if a := rep.Manifest.Attachments; a != nil {
		listed[a.Index] = true
		for _, r := range rep.Attachments {
			if r.Status == activities.AttachmentStored {
				listed[r.Path] = true
			}
		}
	}
	filepath.WalkDir(res.Location, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(res.Location, p)
			if !listed[filepath.ToSlash(rel)] {
				t.Errorf("stray file in the committed run: %s", rel)
			}
		}
		return nil
	})
	var types []string
	for typ := range want.IDs {
		types = append(types, typ)
	}
	for typ := range rep.IDs {
		if _, ok := want.IDs[typ]; !ok {
			types = append(types, typ)
		}
	}
	sort.Strings(types)
	var total int
	for _, typ := range types {
		got, exp := rep.IDs[typ], want.IDs[typ]
		total += len(exp)
		missing, extra := 0, 0
		for id := range exp {
			if _, ok := got[id]; !ok {
				missing++
			}
		}
		for id := range got {
			if _, ok := exp[id]; !ok {
				extra++
			}
		}
		if missing > 0 || extra > 0 {
			t.Errorf("%s: %d exported, %d expected: %d missing, %d unexpected", typ, len(got), len(exp), missing, extra)
		}
		if res.Totals.Resources[typ] != int64(len(exp)) {
			t.Errorf("%s: result says %d, expected %d", typ, res.Totals.Resources[typ], len(exp))
		}
	}
	if total == 0 {
		t.Fatal("the expected set is empty: the test would prove nothing")
	}
	return rep
}

func startWorker2(t *testing.T, queue, output string) {
	t.Helper()
	reg, _ := servers.Load("")
	w := bulkworker.New(tclient, queue, activities.New(reg, output, slog.New(slog.DiscardHandler)), 16)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
}

// startWorkerWith runs an in-process worker whose activities are adjusted by tune.
func startWorkerWith(t *testing.T, output string, tune func(*activities.Activities)) string {
	t.Helper()
	queue := fmt.Sprintf("e2e-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), queueSeq.Add(1))
	reg, _ := servers.Load("")
	acts := activities.New(reg, output, slog.New(slog.DiscardHandler))
	tune(acts)
	w := bulkworker.New(tclient, queue, acts, 16)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return queue
}
