package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/bulkflow/bulkflow/workflows"
)

func runExport(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tf := addTemporalFlags(fs)
	var in workflows.ExportInput
	var types, elements, patients listFlag
	var typeFilters rawListFlag
	fs.StringVar(&in.BaseURL, "fhir-url", "", "FHIR base URL, e.g. https://ehr.example.org/fhir (or use --server)")
	fs.StringVar(&in.Server, "server", "", "a server name from the worker's servers file (credentials stay with the worker)")
	fs.StringVar(&in.Level, "level", "system", "export level: system, patient or group")
	fs.StringVar(&in.Group, "group", "", "Group id, with --level group")
	fs.Var(&types, "types", "resource types, comma-separated or repeated (_type)")
	fs.StringVar(&in.Since, "since", "", "only resources changed after this instant (_since), e.g. 2024-01-01T00:00:00Z")
	fs.StringVar(&in.Until, "until", "", "only resources changed before this instant (_until, Bulk Data STU3)")
	fs.Var(&elements, "elements", "elements to keep (_elements)")
	fs.Var(&typeFilters, "type-filter", "a _typeFilter query such as 'Observation?category=laboratory'; repeatable")
	fs.Var(&patients, "patient", "a Patient reference such as Patient/123 (POST kick-off); repeatable")
	fs.StringVar(&in.Method, "method", "", "kick-off method: GET or POST (default GET, POST with --patient)")
	fs.BoolVar(&in.Lenient, "lenient", false, "send Prefer: handling=lenient")
	fs.StringVar(&in.Output, "out", "", "output directory (default: the worker's output root)")
	fs.StringVar(&in.Run, "run", "", "run folder name (default: the workflow ID)")
	fs.IntVar(&in.Options.Concurrency, "concurrency", 0, "files downloaded at once (default 8)")
	fs.BoolVar(&in.Options.KeepJob, "keep-job", false, "do not DELETE the server's export job at the end")
	id := fs.String("id", "", "workflow ID (default: bulk-export-<server>-<UTC time>)")
	wait := fs.Bool("wait", false, "wait for the export, showing progress, and print a summary")
	asJSON := fs.Bool("json", false, "print machine-readable JSON instead of text")
	if err := parse(fs, args, "export (--fhir-url URL | --server NAME) [flags]"); err != nil {
		if isHelp(err) {
			return exitOK
		}
		fmt.Fprintln(stderr, "starter export:", err)
		return exitUsage
	}
	in.Types, in.Elements, in.Patients, in.TypeFilters = types, elements, patients, typeFilters
	if in.Output != "" && !strings.Contains(in.Output, "://") {
		// The worker resolves relative paths against its own root; the user
		// means this shell's directory.
		if abs, err := filepath.Abs(in.Output); err == nil {
			in.Output = abs
		}
	}
	if err := in.Validate(); err != nil {
		fmt.Fprintf(stderr, "starter export: %v\n", err)
		return exitUsage
	}
	if *id == "" {
		*id = defaultWorkflowID(in)
	}
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx := context.Background()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: *id, TaskQueue: *tf.taskQueue,
		StaticSummary:         fmt.Sprintf("FHIR %s export from %s", in.Level, workflows.ServerLabel(in)),
		StaticDetails:         staticDetails(in),
		TypedSearchAttributes: startAttributes(ctx, c, *tf.namespace, in, stderr),
	}, workflows.BulkExportWorkflow, in)
	if err != nil {
		fmt.Fprintf(stderr, "starter export: start workflow: %v\n", err)
		return exitFailed
	}
	if *asJSON && !*wait {
		json.NewEncoder(stdout).Encode(map[string]string{"workflowId": run.GetID(), "runId": run.GetRunID(), "ui": tf.link(run.GetID())})
		return exitOK
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "Started export %s\n  Temporal UI: %s\n", run.GetID(), tf.link(run.GetID()))
	}
	if !*wait {
		return exitOK
	}
	return watch(ctx, c, run.GetID(), stdout, stderr, *asJSON)
}

func defaultWorkflowID(in workflows.ExportInput) string {
	label := workflows.RunName(strings.ReplaceAll(workflows.ServerLabel(in), ":", "-"))
	return fmt.Sprintf("bulk-export-%s-%s", label, time.Now().UTC().Format("20060102T150405Z"))
}
