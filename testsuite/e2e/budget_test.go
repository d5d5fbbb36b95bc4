package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/internal/budget"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// One download budget per server for the whole fleet (issue 14 §4): three
// worker processes run two exports from one server at once. The server
// admits K downloads at a time (more get 429) and so does the servers file:
// the server never sees more than K, so never answers 429 for it, every
// worker does at least a fifth of the files, and one worker killed with
// SIGKILL mid-run gives its slots back when its lease expires. Both
// exports land the exact set.
func TestFleetSharesOneDownloadBudget(t *testing.T) {
	requireE2E(t)
	const k, perFile = 4, 20
	workerBin := buildBinary(t, "./worker")
	// Slow bodies (about 0.2 s a file), so the three workers' downloads
	// overlap at the server all the time. Small files travel in batches
	// (DownloadBatch): about 300 files make enough batches for each
	// worker to get its share.
	srv := fhirServer(t, testsuite.Options{Patients: 60, ResourcesPerFile: perFile, LargeAttachments: -1,
		MaxConcurrentDownloads: k, RetryAfter: time.Second, Faults: "file=slow(bps=80000)"})
	out := t.TempDir()
	serversFile := filepath.Join(t.TempDir(), "servers.json")
	cfg, _ := json.Marshal(map[string]any{"servers": []map[string]any{{"name": "ehr", "baseURL": srv.BaseURL(), "maxConcurrentDownloads": k}}})
	if err := os.WriteFile(serversFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	queue := "e2e-fleet-" + time.Now().Format("150405.000")

	type proc struct {
		cmd  *exec.Cmd
		log  *syncBuffer
		done bool
	}
	var procs []*proc
	for range 3 {
		p := &proc{log: &syncBuffer{}}
		p.cmd = exec.Command(workerBin, "-temporal-address", dev.FrontendHostPort(), "-task-queue", queue, "-output", out,
			"-servers", serversFile, "-metrics-addr", "", "-log-level", "info", "-budget-lease-ttl", "6s")
		p.cmd.Stderr = p.log
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	t.Cleanup(func() {
		for _, p := range procs {
			if !p.done {
				p.cmd.Process.Kill()
				p.cmd.Wait()
			}
		}
	})
	// Files staged by a worker: one log line per single download, one per
	// batch with its file count.
	batchFiles := regexp.MustCompile(`msg="batch staged" .*?\bfiles=(\d+)`)
	staged := func(p *proc) int {
		l := p.log.String()
		n := strings.Count(l, `msg="file staged"`)
		for _, m := range batchFiles.FindAllStringSubmatch(l, -1) {
			k, _ := strconv.Atoi(m[1])
			n += k
		}
		return n
	}

	// A window of 16 makes batches of the smallest size (4 files).
	opts := workflows.Options{Concurrency: 16, HeartbeatTimeout: "10s"}
	runs := []interface{ GetID() string }{}
	var wg sync.WaitGroup
	results := make([]workflows.ExportResult, 2)
	errs := make([]error, 2)
	for i := range 2 {
		run := start(t, queue, workflows.ExportInput{Server: "ehr", Output: filepath.Join(out, fmt.Sprint(i)), Options: opts})
		runs = append(runs, run)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			errs[i] = run.Get(ctx, &results[i])
		}()
	}

	// Kill the third worker once it has done a fifth of the files, in the
	// middle of its next downloads.
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	total := 2 * expectedFiles(want, perFile) // both exports have the same files
	victim := procs[2]
	waitFor(t, 60*time.Second, "the third worker to do a fifth of the files", func() bool {
		return staged(victim) >= (total+4)/5
	})
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.cmd.Wait()
	victim.done = true
	killedAt := time.Now()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("export %s: %v", runs[i].GetID(), err)
		}
	}
	t.Logf("both exports committed %v after the kill", time.Since(killedAt).Round(time.Second))
	for _, res := range results {
		assertExact(t, res, want)
	}

	st := srv.Stats()
	counts := []int{staged(procs[0]), staged(procs[1]), staged(procs[2])}
	t.Logf("%d files in all; staged per worker %v; server high-water %d concurrent downloads (cap %d), %d rejected; retries %d+%d",
		total, counts, st.ConcurrentDownloadsHighWater, k, st.DownloadsRejected, results[0].Totals.Retries, results[1].Totals.Retries)
	if st.ConcurrentDownloadsHighWater > k {
		t.Errorf("the server saw %d downloads at once, more than the fleet's budget of %d", st.ConcurrentDownloadsHighWater, k)
	}
	if st.ConcurrentDownloadsHighWater < k {
		t.Errorf("the server never saw more than %d of the budget's %d downloads at once: the test did not load it", st.ConcurrentDownloadsHighWater, k)
	}
	if st.DownloadsRejected != 0 {
		t.Errorf("%d downloads got 429 for exceeding the server's %d concurrent downloads", st.DownloadsRejected, k)
	}
	for i, n := range counts {
		if n*5 < total {
			t.Errorf("worker %d staged %d of %d files, less than a fifth", i+1, n, total)
		}
	}
	if st.Kickoffs != 2 {
		t.Errorf("kickoffs = %d, want 2", st.Kickoffs)
	}
	if results[0].Totals.Retries+results[1].Totals.Retries == 0 {
		t.Error("no download was retried: the kill interrupted none")
	}
	// The budget is a workflow per server, found by its name.
	desc, err := tclient.DescribeWorkflowExecution(context.Background(), budget.WorkflowID(queue, "ehr"), "")
	if err != nil {
		t.Fatalf("the server's limiter workflow: %v", err)
	}
	if typ := desc.GetWorkflowExecutionInfo().GetType().GetName(); typ != budget.WorkflowName {
		t.Errorf("limiter workflow type %q", typ)
	}
	t.Logf("the limiter's history (this run): %d events for %d downloads", desc.GetWorkflowExecutionInfo().GetHistoryLength(), total)
	tclient.TerminateWorkflow(context.Background(), budget.WorkflowID(queue, "ehr"), "", "test over")
}

// expectedFiles is the number of output files of an export: each type's
// resources in files of at most perFile.
func expectedFiles(want testsuite.Expected, perFile int) int {
	n := 0
	for _, c := range want.Counts {
		n += (c + perFile - 1) / perFile
	}
	return n
}
