package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"

	"github.com/bulkflow/bulkflow/workflows"
)

// Workflow ID policies of `starter export` (README, "Workflow IDs"):
//   - conflict FAIL: an ID that is running is never silently shared; the
//     starter then compares inputs and attaches only to an identical export.
//   - reuse ALLOW_DUPLICATE_FAILED_ONLY: the ID of a failed, cancelled,
//     terminated or timed-out export may start again; the ID of one that
//     completed (committed) is refused by Temporal at once, before any
//     download, instead of failing at commit hours later on the existing run
//     folder.
const (
	idConflictPolicy = enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL
	idReusePolicy    = enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY
)

const exportSynopsis = `export (--fhir-url URL | --server NAME) [flags]

Starts BulkExportWorkflow. The workflow ID (--id) defaults to
bulk-export-<server>-<UTC time to the millisecond>-<random>, so two starts
never share one. An --id that is running is refused (exit 2) unless the
running export's input is identical, then the starter attaches to it. The ID
of a committed export is refused at once: leave --id out to run it again.`

func runExport(args []string, stdout, stderr io.Writer) int {
	fs := newFS("export", stderr)
	tf := addTemporalFlags(fs)
	ef := addExportFlags(fs, false)
	id := fs.String("id", "", "workflow ID (default: bulk-export-<server>-<UTC time>-<random>)")
	wait := fs.Bool("wait", false, "wait for the export, showing progress, and print a summary")
	asJSON := fs.Bool("json", false, "print machine-readable JSON instead of text")
	pos, err := parse(fs, args, exportSynopsis)
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q (flags only; a workflow ID goes in --id)", pos[0])
	}
	if err != nil {
		return usageError(stderr, "export", err)
	}
	in := ef.input(fs)
	if err := ef.check(in); err != nil {
		return usageError(stderr, "export", err)
	}
	if parseOnly {
		return exitOK
	}
	if *id == "" {
		*id = defaultWorkflowID(in, time.Now())
	}
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: *id, TaskQueue: *tf.taskQueue,
		WorkflowIDConflictPolicy: idConflictPolicy,
		WorkflowIDReusePolicy:    idReusePolicy,
		// Without it the SDK hands back the running workflow as if it had
		// started ours: the request would silently never happen.
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary:                            fmt.Sprintf("FHIR %s export from %s", in.Level, workflows.ServerLabel(in)),
		StaticDetails:                            staticDetails(in),
		TypedSearchAttributes:                    startAttributes(ctx, c, *tf.namespace, in, stderr),
	}, workflows.BulkExportWorkflow, in)
	attached := false
	if err != nil {
		var taken *serviceerror.WorkflowExecutionAlreadyStarted
		if !errors.As(err, &taken) {
			if isUnreachable(err) {
				fmt.Fprintf(stderr, "starter export: Temporal unreachable at %s: %v\n", *tf.address, err)
				return exitNoTemporal
			}
			fmt.Fprintf(stderr, "starter export: start workflow: %v\n", err)
			return exitFailed
		}
		if code := idTaken(ctx, c, tf, *id, in, stderr); code != exitOK {
			return code
		}
		attached = true
	}
	if *asJSON && !*wait {
		out := map[string]any{"workflowId": *id, "ui": tf.link(*id)}
		if run != nil {
			out["runId"] = run.GetRunID()
		}
		if attached {
			out["attached"] = true
		}
		json.NewEncoder(stdout).Encode(out)
		return exitOK
	}
	if !*asJSON {
		if attached {
			fmt.Fprintf(stdout, "Export %s is already running with the same input: attached to it (nothing new was started)\n  Temporal UI: %s\n", *id, tf.link(*id))
		} else {
			fmt.Fprintf(stdout, "Started export %s\n  Temporal UI: %s\n", *id, tf.link(*id))
		}
	}
	if !*wait {
		return exitOK
	}
	return watch(ctx, c, tf, *id, stdout, stderr, *asJSON)
}

// defaultWorkflowID is unique per start: the UTC time to the millisecond
// and a random suffix, so two starts in the same instant never share an ID.
func defaultWorkflowID(in workflows.ExportInput, now time.Time) string {
	label := workflows.RunName(strings.ReplaceAll(workflows.ServerLabel(in), ":", "-"))
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("bulk-export-%s-%s-%s", label, now.UTC().Format("20060102T150405.000Z"), hex.EncodeToString(b[:]))
}

// idTaken decides what to do when Temporal refuses the ID: attach (exitOK)
// when a running export has exactly this input, else refuse with what to do.
func idTaken(ctx context.Context, c client.Client, tf temporalFlags, id string, in workflows.ExportInput, stderr io.Writer) int {
	d, err := c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		fmt.Fprintf(stderr, "starter export: workflow ID %s is taken (%v); pick another --id or leave --id out\n", id, err)
		return exitUsage
	}
	info := d.GetWorkflowExecutionInfo()
	if info.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		// Only a completed export keeps its ID under reuse FAILED_ONLY.
		where := ""
		var res workflows.ExportResult
		if err := c.GetWorkflow(ctx, id, "").Get(ctx, &res); err == nil && res.Location != "" {
			where = " to " + res.Location
		}
		fmt.Fprintf(stderr, "starter export: export %s already committed%s; a committed export's ID is not reused, so nothing was started or downloaded. "+
			"To export again, leave --id out (or pick a new one); its result: starter status %s\n", id, where, id)
		return exitUsage
	}
	running, err := runningInput(ctx, c, tf, id, info.GetExecution().GetRunId())
	if err != nil {
		fmt.Fprintf(stderr, "starter export: workflow ID %s is already running, and its input cannot be compared with yours (%v); pick another --id or leave --id out\n", id, err)
		return exitUsage
	}
	if diff := inputDiff(running, in); len(diff) > 0 {
		fmt.Fprintf(stderr, "starter export: workflow ID %s is already running a different export (it differs in: %s); nothing was started. "+
			"Pick another --id or leave --id out, or stop it first: starter cancel %s\n", id, strings.Join(diff, ", "), id)
		return exitUsage
	}
	return exitOK
}

// runningInput reads the input a run was started with from its history,
// decoded as the workers decode it (with the codec key when one is given).
func runningInput(ctx context.Context, c client.Client, tf temporalFlags, id, runID string) (workflows.ExportInput, error) {
	var in workflows.ExportInput
	it := c.GetWorkflowHistory(ctx, id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	if !it.HasNext() {
		return in, errors.New("no history")
	}
	ev, err := it.Next()
	if err != nil {
		return in, err
	}
	p := ev.GetWorkflowExecutionStartedEventAttributes().GetInput().GetPayloads()
	if len(p) == 0 {
		return in, errors.New("no input")
	}
	dc, err := payloadConverter(tf)
	if err != nil {
		return in, err
	}
	if err := dc.FromPayload(p[0], &in); err != nil {
		return in, fmt.Errorf("cannot decode it: %v; an encrypted input needs --codec-key-file", err)
	}
	return in, nil
}

// inputDiff names the top-level input fields that differ; Resume (state a
// continued run carries) is not part of the request.
func inputDiff(a, b workflows.ExportInput) []string {
	a.Resume, b.Resume = nil, nil
	ma, mb := fieldsOf(a), fieldsOf(b)
	var diff []string
	for k := range union(ma, mb) {
		if !bytes.Equal(ma[k], mb[k]) {
			diff = append(diff, k)
		}
	}
	sort.Strings(diff)
	return diff
}

func fieldsOf(in workflows.ExportInput) map[string]json.RawMessage {
	b, _ := json.Marshal(in)
	var m map[string]json.RawMessage
	json.Unmarshal(b, &m)
	if string(m["options"]) == "{}" {
		delete(m, "options")
	}
	return m
}

func union(a, b map[string]json.RawMessage) map[string]bool {
	u := map[string]bool{}
	for k := range a {
		u[k] = true
	}
	for k := range b {
		u[k] = true
	}
	return u
}
