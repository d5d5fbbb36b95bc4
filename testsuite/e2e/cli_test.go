package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	sdktest "go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
)

// The CLI as a user runs it: `starter export --fhir-url ... --out DIR --wait`
// against the test server and a worker process, then `starter status`.
func TestStarterExportWait(t *testing.T) {
	requireE2E(t)
	starter := buildBinary(t, "./starter")
	workerBin := buildBinary(t, "./worker")
	srv := fhirServer(t, testsuite.Options{Patients: 30})
	queue := "e2e-cli"
	// Payloads encrypted, as docs/security.md advises: status without the
	// key must say it cannot decode, not that the export failed.
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(t.TempDir(), "codec.key")
	os.WriteFile(keyFile, key, 0o600)
	w := exec.Command(workerBin, "-temporal-address", dev.FrontendHostPort(), "-task-queue", queue, "-log-level", "warn", "-codec-key-file", keyFile)
	w.Stderr = os.Stderr
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Process.Kill(); w.Wait() })

	out := t.TempDir()
	common := []string{"-temporal-address", dev.FrontendHostPort(), "-task-queue", queue, "--codec-key-file", keyFile}
	args := append([]string{"export", "--fhir-url", srv.BaseURL(), "--out", out, "--types", "Patient,Observation", "--id", "cli-export-1", "--wait"}, common...)
	cmd := exec.Command(starter, args...)
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("starter export: %v\nstdout:\n%s", err, stdout)
	}
	text := string(stdout)
	for _, want := range []string{"Started export cli-export-1", "Export committed", "Patient", "transactionTime"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	dir := filepath.Join(out, "cli-export-1")
	rep, err := verify.Run(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system", Types: []string{"Patient", "Observation"}})
	for typ, n := range want.Counts {
		if rep.Manifest.Totals.Resources[typ] != int64(n) || len(rep.IDs[typ]) != n {
			t.Errorf("%s: manifest %d, files %d, expected %d", typ, rep.Manifest.Totals.Resources[typ], len(rep.IDs[typ]), n)
		}
	}

	// status --json of the finished run.
	cmd = exec.Command(starter, append([]string{"status", "--json"}, append(common, "cli-export-1")...)...)
	stdout, err = cmd.Output()
	if err != nil {
		t.Fatalf("starter status: %v\n%s", err, stdout)
	}
	var st struct {
		Result struct {
			Status string `json:"status"`
			Totals struct {
				Files int `json:"files"`
			} `json:"totals"`
		} `json:"result"`
	}
	if err := json.Unmarshal(stdout, &st); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, stdout)
	}
	if st.Result.Status != "committed" || st.Result.Totals.Files != len(rep.Manifest.Files) {
		t.Errorf("status = %+v", st)
	}

	// A bad invocation fails with a clear message and exit code 2.
	cmd = exec.Command(starter, append([]string{"export", "--fhir-url", srv.BaseURL(), "--since", "yesterday"}, common...)...)
	errOut, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(errOut), "not a FHIR instant") {
		t.Errorf("bad --since: exit %d, output %s", cmd.ProcessState.ExitCode(), errOut)
	}

	// §1: the ID of a committed export is refused at once (reuse policy
	// FAILED_ONLY), pointing at the committed run; nothing starts.
	before, _ := tclient.DescribeWorkflowExecution(context.Background(), "cli-export-1", "")
	code, o, e := runStarter(t, starter, append([]string{"export", "--fhir-url", srv.BaseURL(), "--out", out, "--types", "Patient,Observation", "--id", "cli-export-1", "--wait"}, common...)...)
	if code != 2 || !strings.Contains(e, "export cli-export-1 already committed to "+dir) || !strings.Contains(e, "leave --id out") {
		t.Errorf("re-run of a committed ID: exit %d\nstdout %s\nstderr %s", code, o, e)
	}
	after, _ := tclient.DescribeWorkflowExecution(context.Background(), "cli-export-1", "")
	if after.GetWorkflowExecutionInfo().GetExecution().GetRunId() != before.GetWorkflowExecutionInfo().GetExecution().GetRunId() {
		t.Error("a committed export's ID started a new run")
	}

	// §5: status without the codec key cannot decode the result: it says
	// so and how to give the key, never "failed, nothing was committed".
	noKey := []string{"status", "cli-export-1"}
	code, o, e = runStarter(t, starter, append(noKey, "-temporal-address", dev.FrontendHostPort())...)
	if code != 2 || !strings.Contains(o, "cli-export-1: completed") || !strings.Contains(e, "cannot be decoded") || !strings.Contains(e, "--codec-key-file") ||
		strings.Contains(e, "failed") || strings.Contains(e, "Nothing was committed") {
		t.Errorf("status without the key: exit %d\nstdout %s\nstderr %s", code, o, e)
	}

	// §5: cancel of a committed export says so, non-zero.
	code, o, e = runStarter(t, starter, append([]string{"cancel", "cli-export-1"}, common...)...)
	if code == 0 || !strings.Contains(e, "already ended (completed)") {
		t.Errorf("cancel of a committed export: exit %d\nstdout %s\nstderr %s", code, o, e)
	}
}

// runStarter runs the starter binary and returns its exit code and output.
func runStarter(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("starter %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// §1 and §3 against a task queue no worker polls, so exports stay running:
// a taken ID is refused unless the input is identical (then attached), two
// default IDs never collide, --wait says no worker polls and Ctrl-C says
// the export keeps running, and cancel refuses an export that has ended.
func TestStarterIDsAndWaitingWithoutWorker(t *testing.T) {
	requireE2E(t)
	starter := buildBinary(t, "./starter")
	queue := fmt.Sprintf("e2e-cli-noworker-%d", queueSeq.Add(1))
	common := []string{"--temporal-address", dev.FrontendHostPort(), "--task-queue", queue}
	url := "http://127.0.0.1:9/fhir"
	export := func(extra ...string) (int, string, string) {
		return runStarter(t, starter, append(append([]string{"export", "--fhir-url", url}, common...), extra...)...)
	}
	t.Cleanup(func() {
		for _, id := range []string{"cli-taken", "cli-wait"} {
			tclient.TerminateWorkflow(context.Background(), id, "", "test cleanup")
		}
	})

	code, stdout, stderr := export("--types", "Patient", "--id", "cli-taken")
	if code != 0 || !strings.Contains(stdout, "Started export cli-taken") {
		t.Fatalf("first start: exit %d\n%s%s", code, stdout, stderr)
	}
	first, err := tclient.DescribeWorkflowExecution(context.Background(), "cli-taken", "")
	if err != nil {
		t.Fatal(err)
	}
	// A different request under a running ID: refused, nothing started.
	code, stdout, stderr = export("--types", "Observation", "--id", "cli-taken")
	if code != 2 || !strings.Contains(stderr, "already running a different export (it differs in: types)") || strings.Contains(stdout, "Started") {
		t.Errorf("different input under a running ID: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	// The same request: attached, and said so.
	code, stdout, stderr = export("--types", "Patient", "--id", "cli-taken")
	if code != 0 || !strings.Contains(stdout, "already running with the same input: attached") {
		t.Errorf("identical input: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	now, _ := tclient.DescribeWorkflowExecution(context.Background(), "cli-taken", "")
	if now.GetWorkflowExecutionInfo().GetExecution().GetRunId() != first.GetWorkflowExecutionInfo().GetExecution().GetRunId() {
		t.Error("a second run was started under the running ID")
	}

	// Default IDs: two starts in a row never share one.
	ids := map[string]bool{}
	for range 2 {
		code, stdout, stderr := export("--types", "Patient", "--json")
		var o struct{ WorkflowID string }
		if code != 0 || json.Unmarshal([]byte(stdout), &o) != nil || o.WorkflowID == "" {
			t.Fatalf("default ID start: exit %d\n%s%s", code, stdout, stderr)
		}
		ids[o.WorkflowID] = true
		t.Cleanup(func() { tclient.TerminateWorkflow(context.Background(), o.WorkflowID, "", "test cleanup") })
	}
	if len(ids) != 2 {
		t.Errorf("two starts share the default ID: %v", ids)
	}

	// --wait with nobody polling: said after ~12 s, still waiting; Ctrl-C
	// says the export goes on and how to watch it again.
	cmd := exec.Command(starter, append([]string{"export", "--fhir-url", url, "--id", "cli-wait", "--wait"}, common...)...)
	var errb syncBuffer
	cmd.Stderr = &errb
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	want := "No worker is polling task queue " + queue + "; start one with: go run ./worker --task-queue " + queue
	deadline := time.Now().Add(40 * time.Second)
	for !strings.Contains(errb.String(), want) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(errb.String(), want) {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("no word about the missing worker within 40 s:\n%s", errb.String())
	}
	if cmd.ProcessState != nil {
		t.Fatal("--wait stopped waiting after the no-worker warning")
	}
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 130 || !strings.Contains(errb.String(), "Export cli-wait keeps running; watch it again with: starter status cli-wait --follow") {
		t.Errorf("Ctrl-C: exit %d\n%s", code, errb.String())
	}
	d, _ := tclient.DescribeWorkflowExecution(context.Background(), "cli-wait", "")
	if d.GetWorkflowExecutionInfo().GetStatus() != enums.WORKFLOW_EXECUTION_STATUS_RUNNING {
		t.Errorf("Ctrl-C of --wait changed the export: %v", d.GetWorkflowExecutionInfo().GetStatus())
	}
	// status of it, ID first and flags after: running, and no worker.
	code, stdout, stderr = runStarter(t, starter, append([]string{"status", "cli-wait"}, common...)...)
	if code != 0 || !strings.Contains(stdout, "cli-wait: running") || !strings.Contains(stdout, "No worker is polling task queue "+queue) {
		t.Errorf("status: exit %d\n%s%s", code, stdout, stderr)
	}

	// cancel of an export that has ended: said, non-zero.
	tclient.TerminateWorkflow(context.Background(), "cli-taken", "", "test")
	code, stdout, stderr = runStarter(t, starter, append([]string{"cancel", "cli-taken"}, common...)...)
	if code == 0 || !strings.Contains(stderr, "export cli-taken already ended (terminated); there is nothing to cancel") {
		t.Errorf("cancel of a terminated export: exit %d\n%s%s", code, stdout, stderr)
	}
}

// syncBuffer is a bytes.Buffer safe for a process writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// §5: Temporal going away during --wait is "Temporal unreachable", exit 4
// (the export is still running), not a failed export.
func TestStarterWaitTemporalUnreachable(t *testing.T) {
	requireE2E(t)
	starter := buildBinary(t, "./starter")
	cli, err := temporalCLI()
	if err != nil {
		t.Fatal(err)
	}
	own, err := sdktest.StartDevServer(context.Background(), sdktest.DevServerOptions{
		ExistingPath:  cli,
		ClientOptions: &client.Options{Logger: sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler))},
		LogLevel:      "error",
		Stdout:        io.Discard,
		Stderr:        io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			own.Stop()
		}
	})
	cmd := exec.Command(starter, "export", "--fhir-url", "http://127.0.0.1:9/fhir", "--id", "cli-gone", "--wait",
		"--temporal-address", own.FrontendHostPort(), "--task-queue", "nobody")
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), "Started export cli-gone") && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	own.Stop()
	stopped = true
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("--wait still running 90 s after Temporal went away:\n%s%s", out.String(), errb.String())
	}
	code := cmd.ProcessState.ExitCode()
	if code != 4 || !strings.Contains(errb.String(), "Temporal unreachable") || !strings.Contains(errb.String(), "Export cli-gone is still running") ||
		strings.Contains(errb.String(), "failed") || strings.Contains(errb.String(), "Nothing was committed") {
		t.Errorf("exit %d\nstdout %s\nstderr %s", code, out.String(), errb.String())
	}
}

// §3: while a step is retried, status shows the attempt, the next retry and
// the last error, read from Temporal's pending activities (it works even
// while the workflow's progress query has nothing to say about it).
func TestStarterStatusShowsRetries(t *testing.T) {
	requireE2E(t)
	starter := buildBinary(t, "./starter")
	queue, _ := startWorker(t, t.TempDir())
	common := []string{"--temporal-address", dev.FrontendHostPort(), "--task-queue", queue}
	// Nothing listens on port 9: every kick-off attempt is refused.
	code, o, e := runStarter(t, starter, append([]string{"export", "--fhir-url", "http://127.0.0.1:9/fhir", "--id", "cli-retrying"}, common...)...)
	if code != 0 {
		t.Fatalf("start: exit %d\n%s%s", code, o, e)
	}
	t.Cleanup(func() { tclient.TerminateWorkflow(context.Background(), "cli-retrying", "", "test cleanup") })
	var last string
	for deadline := time.Now().Add(40 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		_, o, e = runStarter(t, starter, append([]string{"status", "cli-retrying"}, common...)...)
		last = o + e
		if strings.Contains(o, "retrying kick-off: attempt ") && strings.Contains(o, "refused") {
			return
		}
		if !strings.Contains(o, "running") {
			break // failed fast: the retry window closed before we looked
		}
	}
	t.Errorf("status never showed the kick-off being retried with its error:\n%s", last)
}

// §3: the worker binary refuses to start on an unset tokenEnv, before it
// dials Temporal, saying what to fix (exit 2).
func TestWorkerRefusesUnresolvableCredentials(t *testing.T) {
	requireE2E(t)
	workerBin := buildBinary(t, "./worker")
	dir := t.TempDir()
	file := filepath.Join(dir, "servers.json")
	os.WriteFile(file, []byte(`{"servers":[{"name":"epic","baseURL":"https://ehr.example.org/fhir","auth":{"type":"bearer","tokenEnv":"BULKFLOW_E2E_UNSET_TOKEN"}}]}`), 0o600)
	cmd := exec.Command(workerBin, "-servers", file, "-output", dir, "-temporal-address", "127.0.0.1:1", "-metrics-addr", "")
	cmd.Env = append(os.Environ(), "BULKFLOW_E2E_UNSET_TOKEN=")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), "environment variable BULKFLOW_E2E_UNSET_TOKEN is empty or unset: set it in the worker's environment") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}
