package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
)

// `starter schedule` as a user runs it against a real Temporal server:
// create (paused), list, describe, unpause, pause, trigger, delete. No worker
// serves the task queue: a triggered run only has to be started. The timing
// of scheduled runs is tested with the time-skipping tests, not here.
func TestScheduleCLI(t *testing.T) {
	requireE2E(t)
	starter := buildBinary(t, "./starter")
	const id = "e2e-sched"
	common := []string{"--temporal-address", dev.FrontendHostPort(), "--task-queue", "e2e-sched-queue", "--ui-url", "http://ui.example"}
	schedule := func(args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(starter, append(append([]string{"schedule"}, args...), common...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			t.Fatalf("starter schedule %v: %v", args, err)
		}
		return string(out), stderr.String(), cmd.ProcessState.ExitCode()
	}
	mustSchedule := func(args ...string) string {
		t.Helper()
		out, errOut, code := schedule(args...)
		if code != 0 {
			t.Fatalf("starter schedule %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
		}
		return out
	}
	ctx := context.Background()
	t.Cleanup(func() { tclient.ScheduleClient().GetHandle(ctx, id).Delete(ctx) })

	out := mustSchedule("create", "--id", id, "--every", "1h", "--paused", "--note", "e2e",
		"--fhir-url", "http://127.0.0.1:1/fhir", "--types", "Patient", "--since", "2024-01-01T00:00:00Z")
	for _, want := range []string{"Created schedule " + id, "every 1h", "http://ui.example/namespaces/default/schedules/" + id} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	// Count the times, not their "(in …)" suffixes: a run due within the
	// minute (a test run just before the hour) prints none.
	if n := len(regexp.MustCompile(`(?m)^  (Next runs:)? +\d{4}-\d\d-\d\dT\d\d:00:00Z`).FindAllString(out, -1)); n != 3 {
		t.Errorf("create shows %d next run times, want 3:\n%s", n, out)
	}

	// Creating it again is refused, with exit 1.
	if _, errOut, code := schedule("create", "--id", id, "--every", "1h", "--server", "x"); code != 1 || !strings.Contains(errOut, "already exists") {
		t.Errorf("duplicate create: exit %d, %s", code, errOut)
	}

	// list reads the visibility store, which lags a little behind create.
	var listed string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if listed = mustSchedule("list"); strings.Contains(listed, id) {
			break
		}
	}
	row := lineWith(listed, id)
	if row == "" || !strings.Contains(row, "every 1h") || !strings.Contains(row, "yes") {
		t.Errorf("list has no paused row for %s:\n%s", id, listed)
	}

	d := describeJSON(t, mustSchedule("describe", id, "--json"))
	if d.Overlap != "skip" || !d.Paused || d.Note != "e2e" || d.WorkflowType != "BulkExportWorkflow" ||
		d.WorkflowID != id || d.TaskQueue != "e2e-sched-queue" || d.CatchupWindow != "1h" || len(d.NextRuns) < 3 {
		t.Errorf("describe = %+v", d)
	}
	in := d.Input
	if in["incremental"] != true || in["baseURL"] != "http://127.0.0.1:1/fhir" || in["since"] != "2024-01-01T00:00:00Z" {
		t.Errorf("input = %v", in)
	}
	if types, _ := in["types"].([]any); len(types) != 1 || types[0] != "Patient" {
		t.Errorf("input types = %v", in["types"])
	}
	// The text form shows the same input.
	if text := mustSchedule("describe", id); !strings.Contains(text, `"incremental": true`) || !strings.Contains(text, "Overlap:          skip") {
		t.Errorf("describe text:\n%s", text)
	}

	mustSchedule("unpause", id)
	if d := describeJSON(t, mustSchedule("describe", "--json", id)); d.Paused {
		t.Errorf("still paused after unpause: %+v", d)
	}
	mustSchedule("pause", id, "--note", "x")
	if d := describeJSON(t, mustSchedule("describe", "--json", id)); !d.Paused || d.Note != "x" {
		t.Errorf("after pause --note x: paused %v, note %q", d.Paused, d.Note)
	}

	// A trigger starts a run even while paused; its workflow ID is the
	// schedule ID plus the time.
	out = mustSchedule("trigger", id)
	if !strings.Contains(out, "started workflow "+id+"-") {
		t.Errorf("trigger output:\n%s", out)
	}
	var runID string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && runID == ""; time.Sleep(300 * time.Millisecond) {
		resp, err := tclient.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: `WorkflowId STARTS_WITH "` + id + `-"`})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.Executions {
			runID = e.GetExecution().GetWorkflowId()
		}
	}
	if runID == "" {
		t.Fatalf("no workflow with ID prefix %s- after trigger", id)
	}
	t.Cleanup(func() { tclient.TerminateWorkflow(ctx, runID, "", "e2e cleanup") })
	d = describeJSON(t, mustSchedule("describe", "--json", id))
	if len(d.RecentActions) != 1 || d.RecentActions[0].WorkflowID != runID || d.RecentActions[0].Status != "Running" {
		t.Errorf("recent actions = %+v, want %s running", d.RecentActions, runID)
	}

	mustSchedule("delete", id)
	if _, errOut, code := schedule("describe", id); code != 1 || !strings.Contains(errOut, "no schedule") {
		t.Errorf("describe after delete: exit %d, %s", code, errOut)
	}
}

type describedSchedule struct {
	Overlap       string         `json:"overlap"`
	CatchupWindow string         `json:"catchupWindow"`
	Paused        bool           `json:"paused"`
	Note          string         `json:"note"`
	WorkflowType  string         `json:"workflowType"`
	WorkflowID    string         `json:"workflowId"`
	TaskQueue     string         `json:"taskQueue"`
	Input         map[string]any `json:"input"`
	NextRuns      []time.Time    `json:"nextRuns"`
	RecentActions []struct {
		WorkflowID string `json:"workflowId"`
		Status     string `json:"status"`
	} `json:"recentActions"`
}

func describeJSON(t *testing.T, out string) describedSchedule {
	t.Helper()
	var d describedSchedule
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("describe --json is not JSON: %v\n%s", err, out)
	}
	return d
}

func lineWith(text, prefix string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			return l
		}
	}
	return ""
}
