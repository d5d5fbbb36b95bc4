package workflows

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/humanize"
)

// a is only used to name activity methods; the worker registers the real one.
var a *activities.Activities

const chunkProgressSignal = "chunk-progress"

// commitHeartbeatTimeout is how long a silent commit (its worker died) goes
// unnoticed.
const commitHeartbeatTimeout = 30 * time.Second

// BulkExportWorkflow runs one FHIR Bulk Data export: kick-off, durable
// polling, downloads in child workflows, commit, and DELETE of the job.
//
// Polling uses durable timers rather than an activity retried with
// NextRetryDelay: each poll's X-Progress then reaches the progress query and
// the UI, and a worker crash mid-wait resumes polling the same status URL
// (it is in history) instead of starting a second export. Long waits and
// many chunks continue as new; the run's state travels in ResumeState.
func BulkExportWorkflow(ctx workflow.Context, in ExportInput) (res *ExportResult, err error) {
	r, err := startExport(ctx, in) // validate, resolve options and _since once
	if err != nil {
		return nil, err
	}
	defer func() { err = r.cleanUpAfter(err) }() // failed or cancelled: delete the job, drop staging
	for !r.downloaded() {
		// Each step is a no-op once done; a lost job clears them and the
		// loop starts the export over.
		if err := r.kickOff(); err != nil {
			return nil, err
		}
		if err := r.waitForManifest(); err != nil {
			return nil, err
		}
		if err := r.download(); err != nil {
			return nil, err
		}
	}
	if err := r.fetchAttachments(); err != nil { // attachments.go: only with attachments "fetch"
		return nil, err
	}
	r.releaseJobEarly() // version 1: the server's job is done once its files are staged
	cres, err := r.commit()
	if err != nil {
		return nil, err
	}
	return r.finish(cres), nil
}

// exportRun is one run of BulkExportWorkflow: its input, its resumable
// state and what the progress query shows.
type exportRun struct {
	ctx    workflow.Context
	in     ExportInput
	st     *ResumeState // what continue-as-new hands on
	set    *Settings    // st.Settings: resolved once per export
	ref    activities.ServerRef
	target activities.Target
	wmKey  activities.WatermarkKey

	phase      string
	running    []*runningChunk // the chunks in flight, in the order they started
	failure    string
	jobDeleted bool
	retry      *RetryInfo // the step being retried now, for the progress query
}

// startExport validates the input, resolves what must not change for the
// rest of the export, and registers the query, update and signal handlers.
func startExport(ctx workflow.Context, in ExportInput) (*exportRun, error) {
	if verr := in.Validate(); verr != nil {
		return nil, temporal.NewNonRetryableApplicationError("invalid export input: "+verr.Error(), "InvalidInput", nil)
	}
	st := in.Resume
	if st == nil {
		run := in.Run
		if run == "" {
			run = RunName(workflow.GetInfo(ctx).WorkflowExecution.ID)
		}
		st = &ResumeState{StartedAt: workflow.Now(ctx), Run: run}
	}
	if st.Settings == nil {
		// A new export, or state from a version that did not carry them.
		s := in.settings()
		st.Settings = &s
	}
	r := &exportRun{ctx: ctx, in: in, st: st, set: st.Settings, phase: PhaseKickoff,
		ref:    activities.ServerRef{Server: in.Server, BaseURL: in.BaseURL},
		target: activities.Target{Output: in.Output, Run: st.Run},
		wmKey:  activities.NewWatermarkKey(in.Server, in.BaseURL, in.Level, in.Group, in.Types, in.TypeFilters, in.Elements, in.Patients, in.WatermarkPerType),
	}
	if in.Resume == nil {
		if err := r.checkTarget(); err != nil {
			return nil, err
		}
		if err := r.resolveSince(); err != nil {
			return nil, err
		}
	}
	return r, r.registerHandlers()
}

// checkTarget refuses, before the server does any work, an export whose
// credentials, output location or run folder cannot work (already
// committed, not writable).
func (r *exportRun) checkTarget() error {
	if workflow.GetVersion(r.ctx, versionCheckTarget, workflow.DefaultVersion, 1) < 1 {
		return nil
	}
	ctx := workflow.WithActivityOptions(r.ctx, workflow.ActivityOptions{StartToCloseTimeout: 2 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 5, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "check output and credentials"})
	if err := workflow.ExecuteActivity(ctx, a.CheckTarget, activities.CheckTargetInput{ServerRef: r.ref, Target: r.target, Views: r.in.Views}).Get(r.ctx, nil); err != nil {
		return fmt.Errorf("before the kick-off: %w", err)
	}
	return nil
}

// resolveSince fixes the run's _since once: a continued or restarted run
// keeps it.
func (r *exportRun) resolveSince() error {
	r.st.Since = r.in.Since
	if r.in.Since != "" {
		r.st.SinceFrom = "input"
	}
	if !r.in.Incremental {
		return nil
	}
	ctx := workflow.WithActivityOptions(r.ctx, workflow.ActivityOptions{StartToCloseTimeout: 2 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 10, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "read watermark"})
	var wm *activities.Watermark
	if err := workflow.ExecuteActivity(ctx, a.ReadWatermark, activities.ReadWatermarkInput{Output: r.in.Output, Key: r.wmKey}).Get(r.ctx, &wm); err != nil {
		return fmt.Errorf("read the watermark: %w", err)
	}
	if since := wm.Since(r.in.Types); since != "" {
		r.st.Since, r.st.SinceFrom = since, "watermark"
	}
	return nil
}

func (r *exportRun) registerHandlers() error {
	if err := workflow.SetQueryHandler(r.ctx, ProgressQuery, func() (Progress, error) { return r.progress(), nil }); err != nil {
		return err
	}
	// setConcurrency changes the download window of this export (and of
	// every chunk running now) without restarting anything.
	if err := workflow.SetUpdateHandlerWithOptions(r.ctx, SetConcurrencyUpdate, func(uctx workflow.Context, n int) (int, error) {
		prev := r.set.Concurrency
		r.set.Concurrency = n
		for _, c := range r.running {
			workflow.SignalExternalWorkflow(uctx, c.id, "", setConcurrencySignal, n)
		}
		return prev, nil
	}, workflow.UpdateHandlerOptions{Validator: func(_ workflow.Context, n int) error {
		if n < 1 || n > 256 {
			return fmt.Errorf("concurrency %d: use 1 to 256", n)
		}
		return nil
	}}); err != nil {
		return err
	}
	progress := workflow.GetSignalChannel(r.ctx, chunkProgressSignal)
	workflow.Go(r.ctx, func(gctx workflow.Context) {
		for {
			var p chunkProgress
			if !progress.Receive(gctx, &p) {
				return
			}
			// A late signal of a chunk that has ended is dropped: its
			// result is in st.Totals already (or it runs again).
			if c := r.runningChunk(p.Chunk); c != nil && r.st.Plan != nil {
				c.live = p.Totals
				// Not a command: the UI's current details follow the downloads.
				t := r.sofar()
				workflow.SetCurrentDetails(gctx, "**Downloading**: "+humanize.Progress(t.Files, r.st.Plan.Files, t.ResourceCount(), t.Bytes, t.Retries))
			}
		}
	})
	return nil
}

// runningChunk is a chunk child in flight: its workflow ID (setConcurrency
// signals it) and its progress so far, from its chunk-progress signals.
type runningChunk struct {
	chunk int
	id    string
	live  Totals
}

func (r *exportRun) runningChunk(chunk int) *runningChunk {
	for _, c := range r.running {
		if c.chunk == chunk {
			return c
		}
	}
	return nil
}

func (r *exportRun) chunkEnded(chunk int) {
	r.running = slices.DeleteFunc(r.running, func(c *runningChunk) bool { return c.chunk == chunk })
}

// sofar is the finished chunks' totals plus the running chunks'.
func (r *exportRun) sofar() Totals {
	var t Totals
	t.Merge(r.st.Totals)
	for _, c := range r.running {
		t.Merge(c.live)
	}
	return t
}

func (r *exportRun) progress() Progress {
	t := r.sofar()
	p := Progress{Phase: r.phase, Run: r.st.Run, ServerProgress: r.st.Progress, Polls: r.st.Polls, Retries: t.Retries,
		FilesDone: t.Files, Bytes: t.Bytes, Resources: t.ResourceCount(), Error: r.failure, Retrying: r.retry}
	if r.st.Plan != nil {
		p.FilesTotal, p.ExpectedResources, p.TransactionTime = r.st.Plan.Files, r.st.Plan.ExpectedResources, r.st.Plan.TransactionTime
	}
	return p
}

func (r *exportRun) setPhase(phase, details string) {
	r.phase = phase
	setPhase(r.ctx, phase, details)
}

func (r *exportRun) downloaded() bool {
	return r.st.Plan != nil && r.st.NextChunk >= r.set.chunks(r.st.Plan.Files)
}

// kickOff starts the export on the server, unless this run already has one.
func (r *exportRun) kickOff() error {
	if r.st.StatusURL != "" {
		return nil
	}
	r.setPhase(PhaseKickoff, "**Kick-off**: starting the export on the FHIR server")
	if r.workflowRetries() {
		var kr activities.KickoffResult
		err := r.retrying("kick-off", kickoffAttempts, 5*time.Minute, func(ctx workflow.Context, attempt int32) error {
			kin := r.in.kickoff(r.ref, r.target, r.st.Since)
			kin.Attempt = attempt
			err := workflow.ExecuteActivity(ctx, a.Kickoff, kin).Get(r.ctx, &kr)
			if isType(err, activities.ErrKickoffUnanswered) && mayPass(err) {
				// Not silently: the server may have started a job whose
				// status URL never arrived (it cannot be found or DELETEd).
				if w := "a kick-off got no answer and was sent again: the server may hold an export job that bulkflow never learned of (the audit log lists every kick-off)"; !slices.Contains(r.st.Warnings, w) {
					r.st.Warnings = append(r.st.Warnings, w)
				}
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("kick-off: %w", err)
		}
		r.st.StatusURL = kr.StatusURL
		return nil
	}
	ctx := workflow.WithActivityOptions(r.ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 5 * time.Minute,
		// 429 "export already running" is waited out (NextRetryDelay from
		// Retry-After); 5xx pages are retried a bounded number of times.
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2, MaximumInterval: 10 * time.Minute,
			MaximumAttempts: 30, NonRetryableErrorTypes: activities.NonRetryable},
		Summary: "kick-off",
	})
	var kr activities.KickoffResult
	if err := workflow.ExecuteActivity(ctx, a.Kickoff, r.in.kickoff(r.ref, r.target, r.st.Since)).Get(r.ctx, &kr); err != nil {
		return fmt.Errorf("kick-off: %w", err)
	}
	r.st.StatusURL = kr.StatusURL
	return nil
}

// pollOptions: a status request that fails is retried with backoff; a lost
// job (404/410) is not retried but handled by restart.
func (r *exportRun) pollCtx() workflow.Context {
	return workflow.WithActivityOptions(r.ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 10 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2, MaximumInterval: 5 * time.Minute,
			MaximumAttempts: 20, NonRetryableErrorTypes: activities.NonRetryable},
		Summary: "poll export status",
	})
}

func (r *exportRun) poll(planVersion int) (activities.PollResult, error) {
	var pr activities.PollResult
	in := activities.PollInput{ServerRef: r.ref, Target: r.target, StatusURL: r.st.StatusURL, Poll: r.st.Polls, PlanVersion: planVersion}
	var err error
	if r.workflowRetries() {
		err = r.retrying("status", 0, 10*time.Minute, func(ctx workflow.Context, attempt int32) error {
			in.Attempt = attempt
			return workflow.ExecuteActivity(ctx, a.PollStatus, in).Get(r.ctx, &pr)
		})
	} else {
		err = workflow.ExecuteActivity(r.pollCtx(), a.PollStatus, in).Get(r.ctx, &pr)
	}
	r.st.Polls++
	return pr, err
}

// kickoffAttempts bounds kick-off tries that fail for other reasons than
// "busy" (429): each could leave a job on the server if its 202 was lost,
// and a kick-off that fails ten times in a row will not get better.
const kickoffAttempts = 10

// workflowRetries reports whether this run drives kick-off and status
// retries itself (version 1) rather than leaving them to activity retry
// policies, which nobody can see from the progress query.
func (r *exportRun) workflowRetries() bool {
	return workflow.GetVersion(r.ctx, versionWorkflowRetries, workflow.DefaultVersion, 1) >= 1
}

// retrying runs one attempt of a step per activity and retries failures
// that may pass on durable timers: the server's Retry-After when it gave
// one, else exponential backoff (2 s to 5 min). While it waits, the
// progress query and the UI show the attempt, the last error and the next
// try. It gives up, non-retryably, when the step has failed for longer than
// the retry deadline (options.retryDeadline), or after maxAttempts failures
// other than 429 (0: no such bound).
//
// try gets the number of failures other than 429 so far plus one: the
// activity's budgets for refused connections and stalls count it.
func (r *exportRun) retrying(step string, maxAttempts int, timeout time.Duration, try func(ctx workflow.Context, attempt int32) error) error {
	ctx := workflow.WithActivityOptions(r.ctx, workflow.ActivityOptions{StartToCloseTimeout: timeout,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 1}, Summary: step})
	deadline := cmp.Or(r.set.RetryDeadline, defaultRetryDeadline)
	defer func() { r.retry = nil }()
	var first time.Time
	failures := 0
	for attempt := 1; ; attempt++ {
		err := try(ctx, int32(failures+1))
		if err == nil || !mayPass(err) {
			return err
		}
		now := workflow.Now(r.ctx)
		if attempt == 1 {
			first = now
		}
		var ae *temporal.ApplicationError
		last := err.Error()
		if errors.As(err, &ae) {
			last = ae.Error()
		}
		if !isType(err, activities.ErrRateLimited) {
			failures++
		}
		wait := min(2*time.Second<<min(attempt-1, 10), 5*time.Minute)
		if ae != nil && ae.NextRetryDelay() > 0 {
			wait = ae.NextRetryDelay()
		}
		if maxAttempts > 0 && failures >= maxAttempts || now.Add(wait).Sub(first) > deadline {
			return temporal.NewNonRetryableApplicationError(fmt.Sprintf("%s kept failing for %s (%d attempts, retry deadline %s); last error: %s",
				step, now.Sub(first).Round(time.Second), attempt, deadline, last), "RetriesExhausted", err)
		}
		r.retry = &RetryInfo{Step: step, Attempt: attempt, LastError: last, NextRetry: now.Add(wait)}
		workflow.SetCurrentDetails(r.ctx, fmt.Sprintf("**%s** failed (attempt %d): %s; next try at %s", step, attempt, last, now.Add(wait).UTC().Format(time.RFC3339)))
		if err := workflow.NewTimerWithOptions(r.ctx, wait, workflow.TimerOptions{Summary: step + " retry"}).Get(r.ctx, nil); err != nil {
			return err
		}
	}
}

// mayPass reports whether a failed attempt may succeed if tried again:
// timeouts and application errors not marked non-retryable.
func mayPass(err error) bool {
	if temporal.IsCanceledError(err) {
		return false
	}
	var te *temporal.TimeoutError
	if errors.As(err, &te) {
		return true
	}
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.NonRetryable() {
		return false
	}
	for _, t := range activities.NonRetryable {
		if ae.Type() == t {
			return false
		}
	}
	return true
}

// waitForManifest polls the status URL, sleeping on durable timers, until
// the server's manifest is staged as the plan.
func (r *exportRun) waitForManifest() error {
	if r.st.StatusURL == "" || r.st.Plan != nil {
		return nil
	}
	r.phase = PhaseWaiting
	for r.st.Plan == nil {
		pr, err := r.poll(0)
		if isType(err, activities.ErrJobGone) {
			return r.restart("the server lost the export job while it ran (404/410 on its status URL)", err)
		}
		if err != nil {
			return fmt.Errorf("export status: %w", err)
		}
		r.st.Progress = pr.Progress
		if pr.Done {
			r.st.Plan = pr.Plan
			return nil
		}
		r.setPhase(PhaseWaiting, fmt.Sprintf("**Waiting** for the server (poll %d): %s", r.st.Polls, orDefault(pr.Progress, "in progress")))
		if err := workflow.NewTimerWithOptions(r.ctx, pr.Wait, workflow.TimerOptions{Summary: "Retry-After"}).Get(r.ctx, nil); err != nil {
			return err
		}
		if r.historyIsLong() {
			return r.continueAsNew()
		}
	}
	return nil
}

// download runs the plan's chunks in child workflows: since version 1 up
// to Settings.ParallelChunks side by side, before that one after another.
func (r *exportRun) download() error {
	if r.st.Plan == nil {
		return nil
	}
	if workflow.GetVersion(r.ctx, versionParallelChunks, workflow.DefaultVersion, 1) < 1 {
		return r.downloadInTurn()
	}
	return r.downloadSideBySide()
}

// downloadInTurn (version 0) runs the plan's chunks one child workflow at
// a time. Its commands must not change: runs recorded before version 1
// replay it.
func (r *exportRun) downloadInTurn() error {
	r.phase = PhaseDownloading
	chunks := r.set.chunks(r.st.Plan.Files)
	started := workflow.Now(r.ctx)
	for r.st.Plan != nil && r.st.NextChunk < chunks {
		// BD3 L695: links past Expires may be refreshed by re-fetching the manifest.
		if exp := r.st.Plan.Expires; !exp.IsZero() && workflow.Now(r.ctx).After(exp) {
			if err := r.refreshPlan("the manifest's Expires time passed"); err != nil || r.st.Plan == nil {
				return err
			}
		}
		finished, err := r.downloadChunk()
		if err != nil {
			return err
		}
		if !finished || r.st.NextChunk >= chunks {
			continue // run again with fresh links, or on to the commit
		}
		if r.st.NextChunk == 1 {
			r.warnIfLinksExpireFirst(started, chunks, 1)
		}
		if r.historyIsLong() {
			return r.continueAsNew()
		}
	}
	return nil
}

// downloadChunk (version 0) runs the next chunk's child workflow. A file
// whose link expired refreshes the plan and leaves the chunk to run again
// (finished files are replaced, never doubled); finished is false then.
func (r *exportRun) downloadChunk() (finished bool, err error) {
	st := r.st
	first := st.NextChunk * r.set.FilesPerChunk
	count := min(r.set.FilesPerChunk, st.Plan.Files-first)
	t := st.Totals
	r.setPhase(PhaseDownloading, fmt.Sprintf("**Downloading** files %s-%s: %s",
		humanize.Count(int64(first+1)), humanize.Count(int64(first+count)), humanize.Progress(t.Files, st.Plan.Files, t.ResourceCount(), t.Bytes, t.Retries)))
	var cr ChunkResult
	err = r.startChunk(r.ctx, st.NextChunk).Get(r.ctx, &cr)
	r.running = nil
	if isType(err, activities.ErrFileGone) {
		return false, r.refreshPlan("a file link expired")
	}
	var ce *temporal.CanceledError
	if errors.As(err, &ce) && ce.HasDetails() {
		// The files the chunk finished before the cancellation.
		var part ChunkResult
		if ce.Details(&part) == nil {
			st.Totals.Merge(part.Totals)
		}
	}
	if err != nil {
		return false, fmt.Errorf("download: %w", err)
	}
	st.Totals.Merge(cr.Totals)
	st.NextChunk++
	return true, nil
}

// startChunk starts a chunk's child workflow and counts it as running.
// Cancelling ctx cancels the child, which ends once its downloads have
// confirmed (WaitForCancellation): no download outlives the chunk.
func (r *exportRun) startChunk(ctx workflow.Context, chunk int) workflow.ChildWorkflowFuture {
	st := r.st
	first := chunk * r.set.FilesPerChunk
	count := min(r.set.FilesPerChunk, st.Plan.Files-first)
	id := r.chunkID(chunk)
	ctx = workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:          id,
		StaticSummary:       fmt.Sprintf("files %d-%d of %d", first+1, first+count, st.Plan.Files),
		WaitForCancellation: true,
		ParentClosePolicy:   enums.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
	})
	in := ChunkInput{ServerRef: r.ref, Target: r.target, Chunk: chunk, First: first, Count: count, PlanVersion: st.PlanVersion, Generation: st.Generation,
		Layout: r.set.Layout, Concurrency: r.set.Concurrency, MaxAttempts: r.set.MaxFileAttempts, HeartbeatTimeout: r.set.HeartbeatTimeout,
		Groups: groupsIn(st.Plan.Groups, first, count)}
	r.running = append(r.running, &runningChunk{chunk: chunk, id: id})
	return workflow.ExecuteChildWorkflow(ctx, DownloadChunkWorkflow, in)
}

// downloadSideBySide (version 1) keeps up to Settings.ParallelChunks chunk
// children in flight, a sliding window as in temporalio/samples-go: each
// child's result is collected by a workflow goroutine, and the loop awaits
// a change of the counters before it starts the next chunk.
//
// Whatever stops the window (an expired link, the history growing long, a
// failed chunk, the export cancelled) lets every chunk in flight end
// before anything else happens, so no download of an older plan, an older
// run or a cancelled export writes while the plan is refreshed, staging is
// dropped for a restart, the state moves to a new run, or cleanup runs:
//   - an expired link (or Expires passed): no new chunk starts, the running
//     ones finish (those whose links expired too run again), then fresh
//     links; the refresh starts a new generation, or a restart.
//   - a long history: no new chunk starts; once the running ones have
//     finished the run continues as new, its ResumeState naming every
//     finished chunk (NextChunk and ChunksDone).
//   - a failed chunk cancels the others (nothing can be committed) and
//     waits for them; a cancelled export waits for all of them too.
func (r *exportRun) downloadSideBySide() error {
	r.phase = PhaseDownloading
	chunks := r.set.chunks(r.st.Plan.Files)
	width := max(1, r.set.ParallelChunks) // 0: settings of an export started before the option
	started := workflow.Now(r.ctx)
	warned := r.st.NextChunk > 0 || len(r.st.ChunksDone) > 0
	for r.st.Plan != nil && !r.downloaded() {
		var (
			pending, ended    int
			failed, cancelled error
			stale             string // why the links must be refreshed before more chunks start
			long              bool   // the history is long: continue as new once the window is empty
		)
		cctx, stopAll := workflow.WithCancel(r.ctx)
		next := r.st.NextChunk
		for {
			for pending < width && failed == nil && stale == "" && !long && r.ctx.Err() == nil {
				next = r.st.nextUndone(next)
				if next >= chunks {
					break
				}
				// BD3 L695: links past Expires may be refreshed by re-fetching the manifest.
				if exp := r.st.Plan.Expires; !exp.IsZero() && workflow.Now(r.ctx).After(exp) {
					stale = "the manifest's Expires time passed"
					break
				}
				chunk := next
				next++
				r.showDownloading(chunk)
				f := r.startChunk(cctx, chunk)
				pending++
				workflow.Go(r.ctx, func(gctx workflow.Context) {
					defer func() { pending--; ended++ }()
					var cr ChunkResult
					err := f.Get(gctx, &cr)
					r.chunkEnded(chunk)
					var ce *temporal.CanceledError
					switch {
					case err == nil:
						r.st.Totals.Merge(cr.Totals)
						r.st.markDone(chunk)
					case isType(err, activities.ErrFileGone):
						// It runs again with fresh links; its finished files are replaced, never doubled.
						stale = cmp.Or(stale, "a file link expired")
					case errors.As(err, &ce):
						// The files it finished before the cancellation count in the summary.
						var part ChunkResult
						if ce.HasDetails() && ce.Details(&part) == nil {
							r.st.Totals.Merge(part.Totals)
						}
						cancelled = cmp.Or(cancelled, err)
					case failed == nil:
						failed = fmt.Errorf("download: %w", err)
						stopAll() // nothing can be committed: stop the other chunks
					}
				})
			}
			if pending == 0 {
				break
			}
			seen := ended
			if err := workflow.Await(r.ctx, func() bool { return ended > seen }); err != nil {
				// The export is cancelled, and with it every chunk in flight:
				// wait until each has confirmed, so cleanup has no late writer.
				dctx, _ := workflow.NewDisconnectedContext(r.ctx)
				_ = workflow.Await(dctx, func() bool { return pending == 0 })
				break
			}
			if !warned && r.st.NextChunk > 0 {
				warned = true
				r.warnIfLinksExpireFirst(started, chunks, width)
			}
			long = long || !r.downloaded() && r.historyIsLong()
		}
		stopAll()
		switch {
		case failed != nil && r.ctx.Err() == nil:
			return failed
		case cancelled != nil: // the export was cancelled (or a chunk, by hand)
			return fmt.Errorf("download: %w", cancelled)
		case r.ctx.Err() != nil:
			return r.ctx.Err()
		case stale != "":
			if err := r.refreshPlan(stale); err != nil || r.st.Plan == nil {
				return err // failed, or restarted: the export starts over from the kick-off
			}
		}
		if !r.downloaded() && r.historyIsLong() {
			return r.continueAsNew()
		}
	}
	return nil
}

// markDone records a finished chunk. NextChunk counts the finished prefix
// of the plan's chunks and ChunksDone lists the finished chunks after it:
// chunks side by side finish out of order.
func (st *ResumeState) markDone(chunk int) {
	if chunk != st.NextChunk {
		if i, found := slices.BinarySearch(st.ChunksDone, chunk); !found && chunk > st.NextChunk {
			st.ChunksDone = slices.Insert(st.ChunksDone, i, chunk)
		}
		return
	}
	st.NextChunk++
	for len(st.ChunksDone) > 0 && st.ChunksDone[0] <= st.NextChunk {
		if st.ChunksDone[0] == st.NextChunk {
			st.NextChunk++
		}
		st.ChunksDone = st.ChunksDone[1:]
	}
	if len(st.ChunksDone) == 0 {
		st.ChunksDone = nil
	}
}

// nextUndone is the first chunk from from on that has not finished.
func (st *ResumeState) nextUndone(from int) int {
	c := max(from, st.NextChunk)
	for slices.Contains(st.ChunksDone, c) {
		c++
	}
	return c
}

// showDownloading shows the chunk starting and the export's progress.
func (r *exportRun) showDownloading(chunk int) {
	first := chunk * r.set.FilesPerChunk
	count := min(r.set.FilesPerChunk, r.st.Plan.Files-first)
	t := r.sofar()
	r.setPhase(PhaseDownloading, fmt.Sprintf("**Downloading** files %s-%s (%d chunks in flight): %s",
		humanize.Count(int64(first+1)), humanize.Count(int64(first+count)), len(r.running)+1,
		humanize.Progress(t.Files, r.st.Plan.Files, t.ResourceCount(), t.Bytes, t.Retries)))
}

// chunkID names a chunk's child workflow. Since version 1 it carries the
// parent run's identity, so a workflow ID reused for a new export can never
// collide with a child of an earlier run that is still closing.
func (r *exportRun) chunkID(chunk int) string {
	info := workflow.GetInfo(r.ctx)
	id := chunkID(info.WorkflowExecution.ID, chunk)
	if workflow.GetVersion(r.ctx, versionChunkIDRun, workflow.DefaultVersion, 1) >= 1 {
		id += "-" + shortRunID(info.WorkflowExecution.RunID)
	}
	if r.st.Restarts > 0 || r.st.PlanVersion > 0 {
		id = fmt.Sprintf("%s-r%dv%d", id, r.st.Restarts, r.st.PlanVersion)
	}
	return id
}

// warnIfLinksExpireFirst warns early, when the first chunk has finished,
// if the downloads will likely outlive the manifest's links: chunks run
// width at a time, each about as long as the first.
func (r *exportRun) warnIfLinksExpireFirst(started time.Time, chunks, width int) {
	exp := r.st.Plan.Expires
	if exp.IsZero() || chunks < 2 {
		return
	}
	now := workflow.Now(r.ctx)
	if eta := started.Add(now.Sub(started) * time.Duration((chunks+width-1)/width)); eta.After(exp) {
		r.st.Warnings = append(r.st.Warnings, fmt.Sprintf("at the current pace the downloads end about %s, after the manifest expires (%s); expired links will be refreshed from the manifest",
			eta.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339)))
	}
}

// releaseJobEarly (version 1) deletes the server's job once every file is
// staged, before the commit: the job's files are no longer needed, and
// servers that allow one export per client are free again while a long
// commit runs. Version 0 deleted it after the commit (finish).
func (r *exportRun) releaseJobEarly() {
	if r.set.KeepJob || workflow.GetVersion(r.ctx, versionDeleteBeforeCommit, workflow.DefaultVersion, 1) < 1 {
		return
	}
	if err := deleteJob(r.ctx, r.ref, r.target, r.st.StatusURL); err != nil {
		r.st.Warnings = append(r.st.Warnings, "could not delete the export job on the server: "+err.Error())
		return
	}
	r.jobDeleted = true
}

// commit promotes the staged run: the run becomes visible, with
// _manifest.json last.
func (r *exportRun) commit() (activities.CommitResult, error) {
	r.setPhase(PhaseCommitting, "**Committing** the run: promoting staged files, then _manifest.json")
	ctx := workflow.WithActivityOptions(r.ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Hour,
		// The commit heartbeats every few seconds: a worker that dies
		// mid-commit is noticed in 30 s, not after the hour.
		HeartbeatTimeout: commitHeartbeatTimeout,
		RetryPolicy:      &temporal.RetryPolicy{MaximumAttempts: 10, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "commit run"})
	var wm *activities.WatermarkUpdate
	if r.in.Until == "" {
		// A run bounded by _until holds no promise about later changes.
		wm = &activities.WatermarkUpdate{Key: r.wmKey, Since: r.st.Since, Types: r.in.Types}
	}
	in := activities.CommitInput{Target: r.target, Chunks: r.set.chunks(r.st.Plan.Files), Plan: *r.st.Plan, Warnings: r.st.Warnings,
		Watermark: wm, Request: r.in.requestSummary(), StartedAt: r.st.StartedAt, Workflow: workflow.GetInfo(r.ctx).WorkflowExecution.ID,
		Views: r.set.Layout.Views, Attachments: r.attachmentsOn()}
	var res activities.CommitResult
	if err := workflow.ExecuteActivity(ctx, a.Commit, in).Get(r.ctx, &res); err != nil {
		return res, fmt.Errorf("commit: %w", err)
	}
	return res, nil
}

// finish builds the result and, in version 0, deletes the server's job.
func (r *exportRun) finish(c activities.CommitResult) *ExportResult {
	st := r.st
	res := &ExportResult{Status: "committed", Run: st.Run, Location: c.Location, Manifest: c.Manifest,
		TransactionTime: st.Plan.TransactionTime, Totals: st.Totals, Polls: st.Polls, Restarts: st.Restarts, Warnings: st.Warnings,
		Since: st.Since, SinceFrom: st.SinceFrom, Watermark: c.Watermark, JobDeleted: r.jobDeleted}
	for _, sev := range []string{"fatal", "error", "warning", "information"} {
		if n := st.Totals.Issues[sev]; n > 0 {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%d %s issue(s) reported by the server in error[]", n, sev))
		}
	}
	if n := st.Totals.Failed; n > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("partial export: the server could not export %d resource(s) (the counts of its error[] entries); what it exported is committed, its OperationOutcomes are in _errors/", n))
	}
	if r.attachmentsOn() {
		res.Attachments = &st.Attachments // attachments.go
	}
	res.Warnings = append(res.Warnings, st.Plan.Warnings...) // the manifest's timestamps (Expires, transactionTime)
	res.Warnings = append(res.Warnings, minimisationWarnings(r.in, st)...)
	if !r.set.KeepJob && !r.jobDeleted && workflow.GetVersion(r.ctx, versionDeleteBeforeCommit, workflow.DefaultVersion, 1) < 1 {
		// BD2 L287: DELETE signals the client is done; a failure here loses no data.
		if err := deleteJob(r.ctx, r.ref, r.target, st.StatusURL); err != nil {
			res.Warnings = append(res.Warnings, "could not delete the export job on the server: "+err.Error())
		} else {
			res.JobDeleted = true
		}
	}
	r.setPhase(PhaseDone, fmt.Sprintf("**Done**: committed %s files, %s resources, %s to %s",
		humanize.Count(int64(st.Totals.Files)), humanize.Count(st.Totals.ResourceCount()), humanize.Bytes(st.Totals.Bytes), c.Location))
	return res
}

// cleanUpAfter runs when the export fails or is cancelled: it deletes the
// server's job and drops the staged files, even though ctx may be
// cancelled. Continue-as-new is not a failure.
func (r *exportRun) cleanUpAfter(err error) error {
	var can *workflow.ContinueAsNewError
	if err == nil || errors.As(err, &can) {
		return err
	}
	cancelled := temporal.IsCanceledError(err)
	r.phase, r.failure = PhaseFailed, err.Error()
	if cancelled {
		r.phase = PhaseCancelled
	}
	dctx, _ := workflow.NewDisconnectedContext(r.ctx)
	setPhase(dctx, r.phase, fmt.Sprintf("**%s**; staged files are being removed, nothing was committed", r.phase))
	if r.st.StatusURL != "" && !r.set.KeepJob && !r.jobDeleted {
		r.jobDeleted = deleteJob(dctx, r.ref, r.target, r.st.StatusURL) == nil
	}
	actx := workflow.WithActivityOptions(dctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 5}, Summary: "remove staged files"})
	if aerr := workflow.ExecuteActivity(actx, a.Abort, r.target).Get(dctx, nil); aerr != nil {
		workflow.GetLogger(r.ctx).Error("could not remove staged files", "run", r.st.Run, "error", aerr)
	}
	if cancelled {
		return temporal.NewCanceledError(ExportResult{Status: "cancelled", Run: r.st.Run, Totals: r.st.Totals, Polls: r.st.Polls, JobDeleted: r.jobDeleted})
	}
	return err
}

// maxRestarts bounds how often a run kicks the export off again after the
// server lost the job; maxRefreshes how often it re-fetches the manifest for
// expired links before treating the job as lost.
const (
	maxRestarts  = 2
	maxRefreshes = 3
)

// restart starts the export over when the server's job is gone: its files
// (and staged copies of them) belong to a job that no longer exists, so
// they are dropped, and the steps of the export run again from kick-off.
func (r *exportRun) restart(why string, cause error) error {
	st := r.st
	if st.Restarts >= maxRestarts {
		msg := fmt.Sprintf("%s, and the export was already run again %d times; giving up", why, st.Restarts)
		if cause == nil {
			return temporal.NewNonRetryableApplicationError(msg, "ExportLost", nil)
		}
		return temporal.NewNonRetryableApplicationError(msg+": "+cause.Error(), "ExportLost", cause)
	}
	st.Restarts++
	st.Warnings = append(st.Warnings, fmt.Sprintf("%s; the export was run again (restart %d)", why, st.Restarts))
	workflow.GetLogger(r.ctx).Warn("restarting the export", "why", why)
	if st.StatusURL != "" && !r.set.KeepJob && workflow.GetVersion(r.ctx, versionDeleteAbandonedJob, workflow.DefaultVersion, 1) >= 1 {
		// The job is abandoned: tell the server (BD2 L287), best effort; a
		// job that is already gone answers 404, which counts as deleted.
		_ = deleteJob(r.ctx, r.ref, r.target, st.StatusURL)
	}
	ctx := workflow.WithActivityOptions(r.ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 5}, Summary: "drop staged files of the lost job"})
	if err := workflow.ExecuteActivity(ctx, a.Abort, r.target).Get(r.ctx, nil); err != nil {
		return err
	}
	st.StatusURL, st.Plan, st.NextChunk, st.ChunksDone, st.Totals, st.PlanVersion, st.Refreshes = "", nil, 0, nil, Totals{}, 0, 0
	st.Generation++
	r.running = nil
	return nil
}

// refreshPlan re-fetches the manifest from the same status URL for fresh
// file links (BD3 L695). When the job is gone or keeps handing out expired
// links it restarts the export instead (st.Plan is then nil).
func (r *exportRun) refreshPlan(why string) error {
	st := r.st
	if st.Refreshes >= maxRefreshes {
		return r.restart(fmt.Sprintf("%s and %d manifest refreshes did not help", why, st.Refreshes), nil)
	}
	st.Refreshes++
	pr, err := r.poll(st.PlanVersion + 1)
	switch {
	case isType(err, activities.ErrJobGone):
		return r.restart(why+"; the job itself is gone (404/410 on its status URL)", err)
	case err != nil:
		return fmt.Errorf("re-fetch the manifest (%s): %w", why, err)
	case !pr.Done || pr.Plan == nil || !samePlan(st.Plan, pr.Plan):
		// BD3 L485: a manifest may only gain refreshed links; anything else
		// is a different job.
		return r.restart(why+"; the re-fetched manifest lists different files", nil)
	}
	st.PlanVersion++
	st.Generation++
	st.Plan = pr.Plan
	st.Warnings = append(st.Warnings, fmt.Sprintf("%s; fresh links were fetched from the manifest (refresh %d)", why, st.Refreshes))
	return nil
}

func (r *exportRun) historyIsLong() bool {
	info := workflow.GetInfo(r.ctx)
	return info.GetContinueAsNewSuggested() || info.GetCurrentHistoryLength() > r.set.MaxHistoryEvents
}

// continueAsNew hands the state to a fresh run once every signal and update
// handler has finished (an update mid-flight would otherwise be lost).
func (r *exportRun) continueAsNew() error {
	if err := workflow.Await(r.ctx, func() bool { return workflow.AllHandlersFinished(r.ctx) }); err != nil {
		return err
	}
	next := r.in
	next.Resume = r.st
	return workflow.NewContinueAsNewError(r.ctx, BulkExportWorkflow, next)
}

func samePlan(a, b *activities.Plan) bool {
	if a.Files != b.Files || a.TransactionTime != b.TransactionTime {
		return false
	}
	if a.Digest != "" && b.Digest != "" {
		return a.Digest == b.Digest
	}
	if len(a.Groups) != len(b.Groups) {
		return false
	}
	for i := range a.Groups {
		if a.Groups[i] != b.Groups[i] {
			return false
		}
	}
	return true
}

// isType reports whether any application error in err's chain has type
// typ: a child's failure wraps the activity's (as "wrapError") on its way up.
func isType(err error, typ string) bool {
	for ; err != nil; err = errors.Unwrap(err) {
		if ae, ok := err.(*temporal.ApplicationError); ok && ae.Type() == typ {
			return true
		}
	}
	return false
}

// minimisationWarnings flags data the request did not ask for: types
// outside _type, and resources without the SUBSETTED tag despite _elements
// (BD2 L177: the server SHOULD mark subsetted resources).
func minimisationWarnings(in ExportInput, st *ResumeState) []string {
	var out []string
	if len(in.Types) > 0 {
		asked := map[string]bool{}
		for _, t := range in.Types {
			asked[t] = true
		}
		var extra []string
		//workflowcheck:ignore the types are sorted below
		for typ := range st.Totals.Resources {
			if !asked[typ] && st.Totals.Resources[typ] > 0 {
				extra = append(extra, typ)
			}
		}
		if len(extra) > 0 {
			sort.Strings(extra)
			out = append(out, fmt.Sprintf("the server returned resource types that were not requested (_type): %s", strings.Join(extra, ", ")))
		}
	}
	if n := st.Totals.Unsubsetted; len(in.Elements) > 0 && n > 0 {
		out = append(out, fmt.Sprintf("%d resources lack the SUBSETTED tag although _elements was sent: the server may have ignored _elements and returned more data than asked", n))
	}
	return out
}

func chunkID(parent string, chunk int) string { return fmt.Sprintf("%s/chunk-%05d", parent, chunk) }

// shortRunID is enough of a run ID to tell runs of one workflow ID apart.
func shortRunID(runID string) string {
	if len(runID) > 8 {
		return runID[:8]
	}
	return runID
}

func deleteJob(ctx workflow.Context, ref activities.ServerRef, target activities.Target, statusURL string) error {
	dctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 3, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "delete server job"})
	err := workflow.ExecuteActivity(dctx, a.DeleteJob, activities.DeleteJobInput{ServerRef: ref, Target: target, StatusURL: statusURL}).Get(ctx, nil)
	if err != nil {
		workflow.GetLogger(ctx).Warn("could not delete the export job on the server", "error", err)
	}
	return err
}

// groupsIn returns the plan groups overlapping files [first, first+count).
func groupsIn(groups []activities.Group, first, count int) []activities.Group {
	var out []activities.Group
	for _, g := range groups {
		if g.First < first+count && g.First+g.Count > first {
			out = append(out, g)
		}
	}
	return out
}
