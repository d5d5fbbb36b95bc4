package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// buildBinary builds one of bulkflow's commands for a test.
func buildBinary(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// A worker process is killed (SIGKILL) while it downloads; a second worker
// finishes the same run with exactly the expected set.
func TestWorkerKilledMidDownload(t *testing.T) {
	requireE2E(t)
	workerBin := buildBinary(t, "./worker")
	// Every file's first attempt is slow, so the first worker is surely mid-body when killed.
	srv := fhirServer(t, testsuite.Options{Patients: 40, ResourcesPerFile: 400, LargeAttachments: -1, Faults: "file=slow(bps=60000)@1"})
	out := t.TempDir()
	queue := "e2e-kill-" + time.Now().Format("150405.000")
	cmd := exec.Command(workerBin, "-temporal-address", dev.FrontendHostPort(), "-task-queue", queue, "-output", out, "-log-level", "error")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{HeartbeatTimeout: "3s", Concurrency: 4}})
	deadline := time.Now().Add(60 * time.Second)
	for srv.Stats().Requests["file"] < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if srv.Stats().Requests["file"] < 2 {
		t.Fatal("the first worker never started downloading")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true
	served := srv.Stats().FilesServed

	// The second worker, in this process, on the same queue.
	startWorker2(t, queue, out)
	var res workflows.ExportResult
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("export after the kill: %v", err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	st := srv.Stats()
	if st.Kickoffs != 1 {
		t.Errorf("kickoffs = %d: the restart must not start a second export", st.Kickoffs)
	}
	if res.Totals.Files <= int(served) {
		t.Errorf("the first worker had served %d of %d files before the kill: nothing was interrupted", served, res.Totals.Files)
	}
	if res.Totals.Retries == 0 {
		t.Error("no download was retried: the kill did not interrupt one")
	}
}

// Faults a real EHR produces, each on some attempt: the run still lands the
// exact set, and each fault really fired.
func TestFaultMatrixExactSet(t *testing.T) {
	requireE2E(t)
	script := strings.Join([]string{
		"kickoff=busy(retry-after=1)@1",                  // "export already running"
		"status=transient@2",                             // 503 + transient OperationOutcome
		"status=429(retry-after=1)@3",                    // polled too fast
		"file:Observation=truncate-midline@1",            // 200 with a cut last line
		"file:Condition=truncate-lines(n=3)@1",           // 200, cut at a line boundary
		"file:Encounter=reset@1",                         // connection reset mid-body
		"file:Procedure=html(code=502)@1",                // gateway page
		"file:Immunization=transient@1",                  // 503 transient
		"file:MedicationRequest=force-gzip",              // gzip although not asked... or asked
		"file:AllergyIntolerance=429(retry-after=1)@1-2", // throttled
	}, ";")
	srv := fhirServer(t, testsuite.Options{Patients: 50, ExportDuration: 1500 * time.Millisecond, RetryAfter: time.Second, Faults: script})
	queue, _ := startWorker(t, t.TempDir())
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL()})
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	fired := srv.Stats().FaultsFired
	for _, rule := range strings.Split(script, ";") {
		if fired[strings.TrimSpace(rule)] == 0 {
			t.Errorf("fault %q never fired: the test did not exercise it", rule)
		}
	}
	if srv.Stats().Kickoffs != 1 {
		t.Errorf("kickoffs = %d, want 1", srv.Stats().Kickoffs)
	}
}

// A download reset mid-body resumes with Range from its last checkpoint and
// ends byte-identical to an uninterrupted download.
func TestResumeWithRange(t *testing.T) {
	requireE2E(t)
	// Identity bodies: a resume needs a strong validator of the identity
	// representation (the gzip-coded one has its own ETag, RFC 9110 8.8.3).
	opts := testsuite.Options{Patients: 60, RangeRequests: true, LargeAttachments: -1, NoGzip: true}
	// The reference: the same data, no faults.
	clean := fhirServer(t, opts)
	queue, _ := startWorker(t, t.TempDir())
	ref := runExport(t, queue, workflows.ExportInput{BaseURL: clean.BaseURL(), Types: []string{"Observation"}})

	opts.Faults = "file:Observation=reset(bytes=300000)@1"
	srv := fhirServer(t, opts)
	out := t.TempDir()
	queue2 := startWorkerWith(t, out, func(a *activities.Activities) { a.CheckpointBytes = 64 << 10 })
	res := runExport(t, queue2, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: []string{"Observation"}})
	want, _ := srv.Expected(testsuite.Query{Level: "system", Types: []string{"Observation"}})
	rep := assertExact(t, res, want)
	if srv.Stats().RangeRequests == 0 {
		t.Fatal("no Range request reached the server: the retry started over")
	}
	refRep, err := verify.Run(ref.Location, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range rep.Manifest.Files {
		if g := refRep.Manifest.Files[i]; g.SHA256 != f.SHA256 || g.Bytes != f.Bytes {
			t.Errorf("%s: resumed %d bytes sha %s, uninterrupted %d bytes sha %s", f.Path, f.Bytes, f.SHA256[:12], g.Bytes, g.SHA256[:12])
		}
	}
}

// A file answers 410 (its link expired): bulkflow re-fetches the manifest
// for fresh links and completes with the exact set, without a second export.
func TestExpiredFileLinkIsRefreshed(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 30, LargeAttachments: -1, Faults: "file:Observation=gone@1"})
	queue, _ := startWorker(t, t.TempDir())
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL()})
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if srv.Stats().Kickoffs != 1 || res.Restarts != 0 {
		t.Errorf("kickoffs %d, restarts %d: an expired link needs no new export", srv.Stats().Kickoffs, res.Restarts)
	}
	if !strings.Contains(strings.Join(res.Warnings, "\n"), "fresh links") {
		t.Errorf("warnings %q do not report the refresh", res.Warnings)
	}
}

// The server loses the job while files are downloading (the manifest
// re-fetch answers 404): the export is run again, the result says so, and
// the output is the exact set. A late writer of the abandoned plan (a file
// it stages after the restart) is never committed (issue 13 §3).
func TestLostJobIsRunAgain(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 30, LargeAttachments: -1, ExportDuration: 2 * time.Second, RetryAfter: 500 * time.Millisecond,
		Faults: "file:Observation=gone@1; manifest=notfound@2-"})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL()})
	// The second job must work: clear the faults once it is kicked off.
	deadline := time.Now().Add(time.Minute)
	for srv.Stats().Kickoffs < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	srv.SetFaults("")
	// The restart dropped the first plan's staging; once the new plan is
	// staged, play a late writer of the first plan (generation 0, staging
	// under data/) finishing a file of a current name and one of its own.
	stray := `{"resourceType":"Patient","id":"late-writer"}` + "\n"
	var runs []string // .staging/_aux holds audit fragments, not a run
	for len(runs) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		all, _ := filepath.Glob(filepath.Join(out, ".staging", "*"))
		for _, d := range all {
			if !strings.HasPrefix(filepath.Base(d), "_") {
				runs = append(runs, d)
			}
		}
	}
	if len(runs) != 1 {
		t.Fatalf("staging holds %v, want the one run", runs)
	}
	for _, name := range []string{"Patient/Patient-0001.ndjson", "Patient/Stray-0001.ndjson"} {
		p := filepath.Join(runs[0], "data", filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(stray), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	var res workflows.ExportResult
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if res.Restarts != 1 || srv.Stats().Kickoffs != 2 {
		t.Errorf("restarts %d, kickoffs %d; want 1 and 2", res.Restarts, srv.Stats().Kickoffs)
	}
	if !strings.Contains(strings.Join(res.Warnings, "\n"), "run again") {
		t.Errorf("warnings %q do not say the export was run again", res.Warnings)
	}
	rep, _ := verify.Run(res.Location, false)
	if !strings.Contains(strings.Join(rep.Manifest.Warnings, "\n"), "run again") {
		t.Errorf("_manifest.json warnings %q do not say so either", rep.Manifest.Warnings)
	}
	if _, err := os.Stat(filepath.Join(res.Location, "Patient", "Stray-0001.ndjson")); !os.IsNotExist(err) {
		t.Errorf("a stray of the abandoned plan was committed (%v)", err)
	}
	if b, _ := os.ReadFile(filepath.Join(res.Location, "Patient", "Patient-0001.ndjson")); strings.Contains(string(b), "late-writer") {
		t.Error("the abandoned plan's late writer replaced a committed file")
	}
	if _, err := os.Stat(filepath.Join(out, ".staging", filepath.Base(res.Location))); !os.IsNotExist(err) {
		t.Errorf("staging left after the commit (%v)", err)
	}
}
