package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/workflows"
)

func quietLogger() sdklog.Logger { return sdklog.NewStructuredLogger(discardSlog) }

func queryProgress(ctx context.Context, c client.Client, id string) (workflows.Progress, error) {
	var p workflows.Progress
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := c.QueryWorkflow(qctx, id, "", workflows.ProgressQuery)
	if err != nil {
		return p, err
	}
	return p, v.Get(&p)
}

// watch follows a run to its end, drawing progress, and returns the exit code.
func watch(ctx context.Context, c client.Client, id string, stdout, stderr io.Writer, asJSON bool) int {
	var res workflows.ExportResult
	done := make(chan error, 1)
	go func() { done <- c.GetWorkflow(ctx, id, "").Get(ctx, &res) }()
	tty := isTerminal(stdout) && !asJSON
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastLine string
	var lastPrint time.Time
	for {
		select {
		case err := <-done:
			if tty {
				fmt.Fprint(stdout, "\r\033[K")
			}
			return finish(stdout, stderr, id, res, err, asJSON)
		case <-tick.C:
			if asJSON {
				continue
			}
			p, err := queryProgress(ctx, c, id)
			if err != nil {
				continue // not started yet, or between runs of a continue-as-new
			}
			line := renderProgress(p)
			switch {
			case tty:
				fmt.Fprintf(stdout, "\r\033[K%s", line)
			case line != lastLine && (time.Since(lastPrint) >= 10*time.Second || phaseOf(line) != phaseOf(lastLine)):
				fmt.Fprintln(stdout, line)
				lastLine, lastPrint = line, time.Now()
			}
		}
	}
}

func phaseOf(line string) string { f, _, _ := strings.Cut(line, " "); return f }

func renderProgress(p workflows.Progress) string {
	switch p.Phase {
	case workflows.PhaseKickoff:
		return "kickoff      starting the export on the server"
	case workflows.PhaseWaiting:
		sp := p.ServerProgress
		if sp == "" {
			sp = "in progress"
		}
		return fmt.Sprintf("waiting      server: %s (poll %d)", sp, p.Polls)
	case workflows.PhaseDownloading:
		return fmt.Sprintf("downloading  %s %d/%d files  %s resources  %s  retries %d",
			bar(p.FilesDone, p.FilesTotal, 20), p.FilesDone, p.FilesTotal, thousands(p.Resources), humanBytes(p.Bytes), p.Retries)
	default:
		return fmt.Sprintf("%-12s %d/%d files  %s resources", p.Phase, p.FilesDone, p.FilesTotal, thousands(p.Resources))
	}
}

func bar(done, total, width int) string {
	if total <= 0 {
		return "[" + strings.Repeat("-", width) + "]"
	}
	n := done * width / total
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}

func finish(stdout, stderr io.Writer, id string, res workflows.ExportResult, err error, asJSON bool) int {
	code := exitOK
	if err != nil {
		var ce *temporal.CanceledError
		if errors.As(err, &ce) {
			_ = ce.Details(&res)
			res.Status = "cancelled"
			code = exitCancelled
		} else {
			code = exitFailed
		}
	}
	if asJSON {
		out := map[string]any{"workflowId": id, "result": res}
		if err != nil && code == exitFailed {
			out["error"] = err.Error()
		}
		json.NewEncoder(stdout).Encode(out)
		return code
	}
	switch code {
	case exitFailed:
		fmt.Fprintf(stderr, "Export %s failed: %s\nNothing was committed; earlier runs are untouched.\n", id, rootCause(err))
		return code
	case exitCancelled:
		fmt.Fprintf(stdout, "Export %s was cancelled after %d files; nothing was committed (server job deleted: %v).\n", id, res.Totals.Files, res.JobDeleted)
		return code
	}
	printSummary(stdout, res)
	return code
}

func printSummary(w io.Writer, res workflows.ExportResult) {
	fmt.Fprintf(w, "Export committed: %d files, %s resources, %s\n", res.Totals.Files, thousands(res.Totals.ResourceCount()), humanBytes(res.Totals.Bytes))
	fmt.Fprintf(w, "  transactionTime: %s (use as --since for the next incremental run)\n", res.TransactionTime)
	fmt.Fprintf(w, "  output:          %s\n  manifest:        %s\n", res.Location, res.Manifest)
	types := make([]string, 0, len(res.Totals.Resources))
	for t := range res.Totals.Resources {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		fmt.Fprintf(w, "    %-22s %12s\n", t, thousands(res.Totals.Resources[t]))
	}
	for t, n := range res.Totals.Deleted {
		fmt.Fprintf(w, "    deleted %-14s %12s\n", t, thousands(n))
	}
	for _, warn := range res.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", warn)
	}
}

func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func humanBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFS("status", stderr)
	tf := addTemporalFlags(fs)
	jsonFlag := fs.Bool("json", false, "print machine-readable JSON")
	if err := parse(fs, args, "status [flags] WORKFLOW_ID"); err != nil {
		return helpOr(err, stderr)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "starter status: give exactly one workflow ID")
		return exitUsage
	}
	id, asJSON := fs.Arg(0), *jsonFlag
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx := context.Background()
	d, err := c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		fmt.Fprintf(stderr, "starter status: %v\n", err)
		return exitFailed
	}
	status := d.GetWorkflowExecutionInfo().GetStatus()
	if status == enums.WORKFLOW_EXECUTION_STATUS_RUNNING {
		p, err := queryProgress(ctx, c, id)
		if asJSON {
			json.NewEncoder(stdout).Encode(map[string]any{"workflowId": id, "status": "running", "progress": p})
			return exitOK
		}
		fmt.Fprintf(stdout, "%s: running\n  UI: %s\n", id, tf.link(id))
		if err == nil {
			fmt.Fprintf(stdout, "  %s\n", renderProgress(p))
		}
		return exitOK
	}
	var res workflows.ExportResult
	err = c.GetWorkflow(ctx, id, "").Get(ctx, &res)
	if !asJSON {
		fmt.Fprintf(stdout, "%s: %s\n  UI: %s\n", id, strings.ToLower(strings.TrimPrefix(status.String(), "WORKFLOW_EXECUTION_STATUS_")), tf.link(id))
	}
	return finish(stdout, stderr, id, res, err, asJSON)
}

func runCancel(args []string, stdout, stderr io.Writer) int {
	fs := newFS("cancel", stderr)
	tf := addTemporalFlags(fs)
	if err := parse(fs, args, "cancel [flags] WORKFLOW_ID"); err != nil {
		return helpOr(err, stderr)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "starter cancel: give exactly one workflow ID")
		return exitUsage
	}
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	if err := c.CancelWorkflow(context.Background(), fs.Arg(0), ""); err != nil {
		fmt.Fprintf(stderr, "starter cancel: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "Cancellation requested for %s: the server job will be deleted and staged files removed.\n", fs.Arg(0))
	return exitOK
}

// rootCause is the innermost application error's message: Temporal wraps a
// failure once per layer (activity, child, workflow) and repeats the text.
func rootCause(err error) string {
	msg := err.Error()
	for e := err; e != nil; e = errors.Unwrap(e) {
		var ae *temporal.ApplicationError
		if errors.As(e, &ae) && ae.Message() != "" && ae.Type() != "wrapError" {
			msg = ae.Message()
		}
	}
	return msg
}
