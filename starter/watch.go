package main

import (
	"context"
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
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/internal/codec"
	"github.com/bulkflow/bulkflow/internal/humanize"
	"github.com/bulkflow/bulkflow/workflows"
)

func quietLogger() sdklog.Logger { return sdklog.NewStructuredLogger(discardSlog) }

// Timings of watch; variables so tests can shorten them.
var (
	// noWorkerAfter is how long an export may wait with no worker polling
	// its task queue before watch says so.
	noWorkerAfter = 12 * time.Second
	// unreachableAfter is how long Temporal may fail every call before
	// watch gives up with exit 4 (the export itself goes on).
	unreachableAfter = 15 * time.Second
)

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

// isUnreachable tells an RPC that never reached Temporal (or timed out)
// from an answer.
func isUnreachable(err error) bool {
	var unavailable *serviceerror.Unavailable
	var deadline *serviceerror.DeadlineExceeded
	return errors.As(err, &unavailable) || errors.As(err, &deadline) || errors.Is(err, context.DeadlineExceeded)
}

// isDecodeError is a payload the starter cannot read: encrypted by the
// workers and no (or another) codec key given.
func isDecodeError(err error) bool {
	return errors.Is(err, converter.ErrEncodingIsNotSupported) || errors.Is(err, converter.ErrUnableToDecode) ||
		strings.Contains(err.Error(), codec.EncodingEncrypted)
}

// live is what watch learns besides the progress query: from Temporal's
// description of the run (pending activities and children, pollers).
type live struct {
	started    time.Time
	retrying   *workflows.RetryInfo
	inFlight   int64 // bytes read by downloads not finished yet (their heartbeats)
	taskQueue  string
	samples    []sample // recent (time, bytes, resources, files) for rate and ETA
	lastByteAt time.Time
}

type sample struct {
	at               time.Time
	bytes, resources int64
	files            int
}

// describe fills l from DescribeWorkflowExecution of the run and of its
// running children: attempt, last error and next retry of a step being
// retried, and the bytes downloads have read so far.
func describe(ctx context.Context, c client.Client, dc converter.DataConverter, id string, l *live) (*workflowservice.DescribeWorkflowExecutionResponse, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d, err := c.DescribeWorkflowExecution(dctx, id, "")
	if err != nil {
		return nil, err
	}
	info := d.GetWorkflowExecutionInfo()
	if l.started.IsZero() && info.GetStartTime() != nil {
		l.started = info.GetStartTime().AsTime()
	}
	l.taskQueue = d.GetExecutionConfig().GetTaskQueue().GetName()
	l.retrying, l.inFlight = nil, 0
	scan := func(d *workflowservice.DescribeWorkflowExecutionResponse) {
		for _, pa := range d.GetPendingActivities() {
			if pa.GetAttempt() > 1 && l.retrying == nil {
				r := &workflows.RetryInfo{Step: stepName(pa.GetActivityType().GetName()), Attempt: int(pa.GetAttempt()), LastError: pa.GetLastFailure().GetMessage()}
				if t := pa.GetNextAttemptScheduleTime(); t != nil {
					r.NextRetry = t.AsTime()
				}
				l.retrying = r
			}
			if p := pa.GetHeartbeatDetails().GetPayloads(); len(p) > 0 && dc != nil {
				var hb struct {
					Progress int64 `json:"progress"`
				}
				if dc.FromPayload(p[0], &hb) == nil && hb.Progress > 0 {
					l.inFlight += hb.Progress
				}
			}
		}
	}
	scan(d)
	for _, ch := range d.GetPendingChildren() {
		cd, err := c.DescribeWorkflowExecution(dctx, ch.GetWorkflowId(), ch.GetRunId())
		if err == nil {
			scan(cd)
		}
	}
	return d, nil
}

// stepName turns an activity type into words for the status line.
func stepName(activity string) string {
	switch activity {
	case "Kickoff":
		return "kick-off"
	case "PollStatus", "Poll":
		return "status poll"
	case "DownloadFile", "Download":
		return "download"
	case "Commit":
		return "commit"
	case "ReadWatermark":
		return "read watermark"
	case "DeleteJob":
		return "delete server job"
	case "Abort":
		return "remove staged files"
	}
	return activity
}

// hasPoller reports whether any worker polls the workflow task queue.
func hasPoller(ctx context.Context, c client.Client, queue string) (bool, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := c.DescribeTaskQueue(dctx, queue, enumspb.TASK_QUEUE_TYPE_WORKFLOW)
	if err != nil {
		return false, err
	}
	return len(resp.GetPollers()) > 0, nil
}

// watch follows a run to its end, drawing progress, and returns the exit
// code. Ctrl-C (ctx done) stops watching, not the export.
func watch(ctx context.Context, c client.Client, tf temporalFlags, id string, stdout, stderr io.Writer, asJSON bool) int {
	var res workflows.ExportResult
	done := make(chan error, 1)
	getCtx, stopGet := context.WithCancel(context.Background())
	defer stopGet()
	go func() { done <- c.GetWorkflow(getCtx, id, "").Get(getCtx, &res) }()
	dc, _ := payloadConverter(tf)
	tty := isTerminal(stdout) && !asJSON
	width := terminalWidth(stdout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var (
		l               live
		last            workflows.Progress
		lastLine        string
		lastPrint       time.Time
		begun           = time.Now()
		failingSince    time.Time
		warnedNoWorker  bool
		lastPollerCheck time.Time
	)
	clearLine := func() {
		if tty {
			fmt.Fprint(stdout, "\r\033[K")
		}
	}
	for {
		select {
		case <-ctx.Done():
			clearLine()
			fmt.Fprintf(stderr, "Stopped watching. Export %s keeps running; watch it again with: starter status %s --follow\n", id, id)
			return exitInterrupted
		case err := <-done:
			clearLine()
			if err != nil && !isOutcome(err) {
				if ctx.Err() != nil {
					continue // Ctrl-C cancelled the call; the case above reports it
				}
				if isDecodeError(err) {
					return cannotDecode(stderr, id, "completed", err)
				}
				fmt.Fprintf(stderr, "Temporal unreachable (%v): stopped watching. Export %s is still running; see it with: starter status %s --follow\n", err, id, id)
				return exitNoTemporal
			}
			return finish(stdout, stderr, id, res, err, asJSON, last)
		case <-tick.C:
			d, err := describe(ctx, c, dc, id, &l)
			if err != nil {
				if isUnreachable(err) {
					if failingSince.IsZero() {
						failingSince = time.Now()
					} else if time.Since(failingSince) >= unreachableAfter {
						clearLine()
						fmt.Fprintf(stderr, "Temporal unreachable at %s for %s (%v). Export %s is still running; when Temporal is back: starter status %s --follow\n",
							*tf.address, unreachableAfter, err, id, id)
						return exitNoTemporal
					}
				}
				continue
			}
			failingSince = time.Time{}
			if d.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				continue // the result is on its way through done
			}
			if !warnedNoWorker && time.Since(begun) >= noWorkerAfter && time.Since(lastPollerCheck) >= 3*time.Second && l.taskQueue != "" {
				lastPollerCheck = time.Now()
				if ok, err := hasPoller(ctx, c, l.taskQueue); err == nil && !ok {
					warnedNoWorker = true
					clearLine()
					fmt.Fprintf(stderr, "No worker is polling task queue %s; start one with: go run ./worker --task-queue %s (the export starts when one does; still waiting)\n",
						l.taskQueue, l.taskQueue)
				}
			}
			if asJSON {
				continue
			}
			p, err := queryProgress(ctx, c, id)
			if err != nil {
				p = last // no worker answers queries: keep the last state, show retries
			} else {
				last = p
			}
			if p.Retrying == nil {
				p.Retrying = l.retrying
			}
			line := renderProgress(p, &l, time.Now(), width)
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

// isOutcome tells the workflow's own ending (failed, cancelled, terminated,
// timed out) from an error of the call that waits for it.
func isOutcome(err error) bool {
	var we *temporal.WorkflowExecutionError
	var ce *temporal.CanceledError
	var te *temporal.TerminatedError
	var to *temporal.TimeoutError
	var ae *temporal.ApplicationError
	return errors.As(err, &we) || errors.As(err, &ce) || errors.As(err, &te) || errors.As(err, &to) || errors.As(err, &ae)
}

func phaseOf(line string) string { f, _, _ := strings.Cut(line, " "); return f }

// renderProgress is one line of at most width columns: phase, files,
// resources, bytes (with the downloads in flight), rate, elapsed time and
// ETA; or, while a step is retried, the attempt, next retry and last error.
func renderProgress(p workflows.Progress, l *live, now time.Time, width int) string {
	if width <= 0 {
		width = 80
	}
	var parts []string
	switch p.Phase {
	case "", workflows.PhaseKickoff:
		parts = append(parts, "kickoff", "starting the export on the server")
	case workflows.PhaseWaiting:
		sp := p.ServerProgress
		if sp == "" {
			sp = "in progress"
		}
		parts = append(parts, "waiting", fmt.Sprintf("server: %s (poll %d)", sp, p.Polls))
	default:
		bytes := p.Bytes
		if p.Phase == workflows.PhaseDownloading && l != nil {
			bytes += l.inFlight
		}
		parts = append(parts, p.Phase, fmt.Sprintf("%s/%s files", humanize.Count(int64(p.FilesDone)), humanize.Count(int64(p.FilesTotal))),
			humanize.Count(p.Resources)+" res", humanize.Bytes(bytes))
		if l != nil {
			l.add(sample{at: now, bytes: bytes, resources: p.Resources, files: p.FilesDone})
			if r := l.byteRate(); r > 0 {
				parts = append(parts, humanize.Bytes(int64(r))+"/s")
			}
			if eta, ok := l.eta(p); ok {
				parts = append(parts, "ETA "+humanize.Duration(eta))
			}
		}
	}
	if l != nil && !l.started.IsZero() {
		parts = append(parts, humanize.Duration(now.Sub(l.started)))
	}
	if r := p.Retrying; r != nil {
		s := fmt.Sprintf("retrying %s: attempt %d", r.Step, r.Attempt)
		if !r.NextRetry.IsZero() {
			if d := r.NextRetry.Sub(now); d > 0 {
				s += ", next in " + humanize.Duration(d)
			} else {
				s += ", now"
			}
		}
		if r.LastError != "" {
			s += ": " + oneLine(r.LastError)
		}
		parts = append(parts, s)
	}
	line := fmt.Sprintf("%-12s %s", parts[0], strings.Join(parts[1:], "  "))
	return fit(line, width)
}

// fit cuts s to width-1 columns (the last column would wrap on some
// terminals), so a redrawn line never spills onto a second one.
func fit(s string, width int) string {
	r := []rune(s)
	if len(r) < width {
		return s
	}
	return string(r[:width-2]) + "…"
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func (l *live) add(s sample) {
	l.samples = append(l.samples, s)
	// Keep 30 s of samples: the rate follows the recent pace.
	for len(l.samples) > 2 && s.at.Sub(l.samples[0].at) > 30*time.Second {
		l.samples = l.samples[1:]
	}
}

func (l *live) byteRate() float64 {
	if len(l.samples) < 2 {
		return 0
	}
	a, b := l.samples[0], l.samples[len(l.samples)-1]
	secs := b.at.Sub(a.at).Seconds()
	if secs <= 0 || b.bytes <= a.bytes {
		return 0
	}
	return float64(b.bytes-a.bytes) / secs
}

// eta extrapolates the recent pace: resources against the manifest's
// expected count when the server gave one, else files.
func (l *live) eta(p workflows.Progress) (time.Duration, bool) {
	if len(l.samples) < 2 {
		return 0, false
	}
	a, b := l.samples[0], l.samples[len(l.samples)-1]
	secs := b.at.Sub(a.at).Seconds()
	if secs < 2 {
		return 0, false
	}
	var rate, left float64
	if p.ExpectedResources > 0 {
		rate, left = float64(b.resources-a.resources)/secs, float64(p.ExpectedResources-p.Resources)
	} else {
		rate, left = float64(b.files-a.files)/secs, float64(p.FilesTotal-p.FilesDone)
	}
	if rate <= 0 || left < 0 {
		return 0, false
	}
	return time.Duration(left / rate * float64(time.Second)), true
}

func finish(stdout, stderr io.Writer, id string, res workflows.ExportResult, err error, asJSON bool, last workflows.Progress) int {
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
	if code == exitCancelled && last.FilesDone > res.Totals.Files {
		res.Totals.Files = last.FilesDone
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
		cause := rootCause(err)
		fmt.Fprintf(stderr, "Export %s failed: %s\nNothing was committed; earlier runs are untouched.\n", id, cause)
		if strings.Contains(cause, "Encoded failure") {
			fmt.Fprintln(stderr, "The failure is encrypted: give the workers' key with --codec-key-file FILE (or $"+codec.EnvKeyFile+") to read it.")
		}
		return code
	case exitCancelled:
		fmt.Fprintf(stdout, "Export %s was cancelled after %s files were downloaded; nothing was committed (server job deleted: %v).\n", id, humanize.Count(int64(res.Totals.Files)), res.JobDeleted)
		return code
	}
	printSummary(stdout, res)
	return code
}

// cannotDecode explains a result the starter cannot read, without
// guessing at how the export ended.
func cannotDecode(stderr io.Writer, id, status string, err error) int {
	fmt.Fprintf(stderr, "Export %s %s, but its result cannot be decoded (%v): it is encrypted with the workers' key. "+
		"Give it with --codec-key-file FILE (or $%s / $%s): starter status %s --codec-key-file FILE\n",
		id, status, err, codec.EnvKeyFile, codec.EnvKey, id)
	return exitUsage
}

func printSummary(w io.Writer, res workflows.ExportResult) {
	fmt.Fprintf(w, "Export committed: %s files, %s resources, %s\n", humanize.Count(int64(res.Totals.Files)), humanize.Count(res.Totals.ResourceCount()), humanize.Bytes(res.Totals.Bytes))
	if res.Watermark != "" || res.SinceFrom == "watermark" {
		fmt.Fprintf(w, "  transactionTime: %s (the watermark %s now stands there: the next incremental run starts from it)\n", res.TransactionTime, res.Watermark)
	} else {
		fmt.Fprintf(w, "  transactionTime: %s (use as --since for the next run, or use --incremental)\n", res.TransactionTime)
	}
	fmt.Fprintf(w, "  output:          %s\n  manifest:        %s\n", res.Location, res.Manifest)
	types := make([]string, 0, len(res.Totals.Resources))
	for t := range res.Totals.Resources {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		fmt.Fprintf(w, "    %-22s %12s\n", t, humanize.Count(res.Totals.Resources[t]))
	}
	deleted := make([]string, 0, len(res.Totals.Deleted))
	for t := range res.Totals.Deleted {
		deleted = append(deleted, t)
	}
	sort.Strings(deleted)
	for _, t := range deleted {
		fmt.Fprintf(w, "    deleted %-14s %12s\n", t, humanize.Count(res.Totals.Deleted[t]))
	}
	for _, warn := range res.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", warn)
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// statusName is a workflow status in lower case: running, completed, ...
func statusName(s enumspb.WorkflowExecutionStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "WORKFLOW_EXECUTION_STATUS_"))
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFS("status", stderr)
	tf := addTemporalFlags(fs)
	jsonFlag := fs.Bool("json", false, "print machine-readable JSON")
	follow := fs.Bool("follow", false, "follow a running export's progress to its end, as export --wait does")
	pos, err := parse(fs, args, "status WORKFLOW_ID [flags]")
	if err == nil && len(pos) != 1 {
		err = errors.New("give exactly one workflow ID")
	}
	if err != nil {
		return usageError(stderr, "status", err)
	}
	if parseOnly {
		return exitOK
	}
	id, asJSON := pos[0], *jsonFlag
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		var nf *serviceerror.NotFound
		switch {
		case errors.As(err, &nf):
			fmt.Fprintf(stderr, "starter status: no export %q in namespace %s\n", id, *tf.namespace)
		case isUnreachable(err):
			fmt.Fprintf(stderr, "starter status: Temporal unreachable at %s: %v\n", *tf.address, err)
			return exitNoTemporal
		default:
			fmt.Fprintf(stderr, "starter status: %v\n", err)
		}
		return exitFailed
	}
	status := d.GetWorkflowExecutionInfo().GetStatus()
	if status == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		if *follow {
			if !asJSON {
				fmt.Fprintf(stdout, "%s: running\n  UI: %s\n", id, tf.link(id))
			}
			return watch(ctx, c, tf, id, stdout, stderr, asJSON)
		}
		p, err := queryProgress(ctx, c, id)
		var l live
		dc, _ := payloadConverter(tf)
		if _, derr := describe(ctx, c, dc, id, &l); derr == nil && p.Retrying == nil {
			p.Retrying = l.retrying
		}
		if asJSON {
			json.NewEncoder(stdout).Encode(map[string]any{"workflowId": id, "status": "running", "progress": p})
			return exitOK
		}
		fmt.Fprintf(stdout, "%s: running\n  UI: %s\n", id, tf.link(id))
		if err == nil || p.Retrying != nil {
			fmt.Fprintf(stdout, "  %s\n", renderProgress(p, &l, time.Now(), 1<<16)) // not a redrawn line: whole
		}
		if l.taskQueue != "" {
			if ok, err := hasPoller(ctx, c, l.taskQueue); err == nil && !ok {
				fmt.Fprintf(stdout, "  No worker is polling task queue %s; start one with: go run ./worker --task-queue %s\n", l.taskQueue, l.taskQueue)
			}
		}
		return exitOK
	}
	var res workflows.ExportResult
	err = c.GetWorkflow(ctx, id, "").Get(ctx, &res)
	if err != nil && !isOutcome(err) {
		if !asJSON {
			fmt.Fprintf(stdout, "%s: %s\n  UI: %s\n", id, statusName(status), tf.link(id))
		}
		if isDecodeError(err) {
			return cannotDecode(stderr, id, statusName(status), err)
		}
		fmt.Fprintf(stderr, "starter status: cannot read the result of %s (%s): %v\n", id, statusName(status), err)
		if isUnreachable(err) {
			return exitNoTemporal
		}
		return exitFailed
	}
	if !asJSON {
		fmt.Fprintf(stdout, "%s: %s\n  UI: %s\n", id, statusName(status), tf.link(id))
	}
	return finish(stdout, stderr, id, res, err, asJSON, workflows.Progress{})
}

func runCancel(args []string, stdout, stderr io.Writer) int {
	fs := newFS("cancel", stderr)
	tf := addTemporalFlags(fs)
	pos, err := parse(fs, args, "cancel WORKFLOW_ID [flags]")
	if err == nil && len(pos) != 1 {
		err = errors.New("give exactly one workflow ID")
	}
	if err != nil {
		return usageError(stderr, "cancel", err)
	}
	if parseOnly {
		return exitOK
	}
	id := pos[0]
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx := context.Background()
	d, err := c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		fmt.Fprintf(stderr, "starter cancel: %v\n", err)
		if isUnreachable(err) {
			return exitNoTemporal
		}
		return exitFailed
	}
	if st := d.GetWorkflowExecutionInfo().GetStatus(); st != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		fmt.Fprintf(stderr, "starter cancel: export %s already ended (%s); there is nothing to cancel. See it with: starter status %s\n", id, statusName(st), id)
		return exitFailed
	}
	// The count before cancelling: what the cancellation discards.
	p, perr := queryProgress(ctx, c, id)
	if err := c.CancelWorkflow(ctx, id, ""); err != nil {
		fmt.Fprintf(stderr, "starter cancel: %v\n", err)
		return exitFailed
	}
	so := ""
	if perr == nil && p.FilesTotal > 0 {
		so = fmt.Sprintf(" after %s of %s files were downloaded", humanize.Count(int64(p.FilesDone)), humanize.Count(int64(p.FilesTotal)))
	}
	fmt.Fprintf(stdout, "Cancellation requested for %s%s: the server job will be deleted and staged files removed; nothing is committed.\n", id, so)
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
