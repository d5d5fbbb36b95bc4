package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
	w := exec.Command(workerBin, "-temporal-address", dev.FrontendHostPort(), "-task-queue", queue, "-log-level", "warn")
	w.Stderr = os.Stderr
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Process.Kill(); w.Wait() })

	out := t.TempDir()
	common := []string{"-temporal-address", dev.FrontendHostPort(), "-task-queue", queue}
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
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(errOut), "RFC 3339 instant") {
		t.Errorf("bad --since: exit %d, output %s", cmd.ProcessState.ExitCode(), errOut)
	}
}
