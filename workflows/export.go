package workflows

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
)

// a is only used to name activity methods; the worker registers the real one.
var a *activities.Activities

// maxHistoryEvents is where a run continues as new even if the server has
// not suggested it yet, keeping every run's history well below the limits.
const maxHistoryEvents = 5000

const chunkProgressSignal = "chunk-progress"

// BulkExportWorkflow runs one FHIR Bulk Data export: kick-off, durable
// polling, downloads in child workflows, commit, and DELETE of the job.
//
// Polling uses durable timers rather than an activity retried with
// NextRetryDelay: each poll's X-Progress then reaches the progress query and
// the UI, and a worker crash mid-wait resumes polling the same status URL
// (it is in history) instead of starting a second export. Polls cost about
// five events each; the run continues as new long before that matters.
func BulkExportWorkflow(ctx workflow.Context, in ExportInput) (res *ExportResult, err error) {
	if verr := in.Validate(); verr != nil {
		return nil, temporal.NewNonRetryableApplicationError("invalid export input: "+verr.Error(), "InvalidInput", nil)
	}
	opts := in.Options.withDefaults()
	info := workflow.GetInfo(ctx)
	st := in.Resume
	if st == nil {
		run := in.Run
		if run == "" {
			run = RunName(info.WorkflowExecution.ID)
		}
		st = &ResumeState{StartedAt: workflow.Now(ctx), Run: run}
	}
	ref := activities.ServerRef{Server: in.Server, BaseURL: in.BaseURL}
	target := activities.Target{Output: in.Output, Run: st.Run}
	wmKey := activities.NewWatermarkKey(in.Server, in.BaseURL, in.Level, in.Group, in.Types, in.TypeFilters, in.Elements, in.Patients, in.WatermarkPerType)
	if in.Resume == nil {
		// Resolved once: a continued or restarted run keeps the same _since.
		st.Since = in.Since
		if in.Since != "" {
			st.SinceFrom = "input"
		}
		if in.Incremental {
			wctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 2 * time.Minute,
				RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 10, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "read watermark"})
			var wm *activities.Watermark
			if err := workflow.ExecuteActivity(wctx, a.ReadWatermark, activities.ReadWatermarkInput{Output: in.Output, Key: wmKey}).Get(ctx, &wm); err != nil {
				return nil, fmt.Errorf("read the watermark: %w", err)
			}
			if since := wm.Since(in.Types); since != "" {
				st.Since, st.SinceFrom = since, "watermark"
			}
		}
	}

	phase := PhaseKickoff
	var live Totals // the running chunk's progress, from its signals
	var failure string
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (Progress, error) {
		p := Progress{Phase: phase, Run: st.Run, ServerProgress: st.Progress, Polls: st.Polls, Retries: st.Totals.Retries + live.Retries,
			FilesDone: st.Totals.Files + live.Files, Bytes: st.Totals.Bytes + live.Bytes,
			Resources: st.Totals.ResourceCount() + live.ResourceCount(), Error: failure}
		if st.Plan != nil {
			p.FilesTotal, p.ExpectedResources, p.TransactionTime = st.Plan.Files, st.Plan.ExpectedResources, st.Plan.TransactionTime
		}
		return p, nil
	}); err != nil {
		return nil, err
	}
	// setConcurrency changes the download window of this run (and of the
	// chunk running now) without restarting anything.
	var runningChild string
	if err := workflow.SetUpdateHandlerWithOptions(ctx, SetConcurrencyUpdate, func(uctx workflow.Context, n int) (int, error) {
		prev := opts.Concurrency
		opts.Concurrency, in.Options.Concurrency = n, n
		if runningChild != "" {
			workflow.SignalExternalWorkflow(uctx, runningChild, "", setConcurrencySignal, n)
		}
		return prev, nil
	}, workflow.UpdateHandlerOptions{Validator: func(_ workflow.Context, n int) error {
		if n < 1 || n > 256 {
			return fmt.Errorf("concurrency %d: use 1 to 256", n)
		}
		return nil
	}}); err != nil {
		return nil, err
	}
	progress := workflow.GetSignalChannel(ctx, chunkProgressSignal)
	workflow.Go(ctx, func(gctx workflow.Context) {
		for {
			var p chunkProgress
			if !progress.Receive(gctx, &p) {
				return
			}
			if p.Chunk == st.NextChunk && st.Plan != nil {
				live = p.Totals
				// Not a command: the UI's current details follow the downloads.
				workflow.SetCurrentDetails(gctx, fmt.Sprintf("**Downloading**: %d of %d files; %d resources, %d bytes, %d retries",
					st.Totals.Files+live.Files, st.Plan.Files, st.Totals.ResourceCount()+live.ResourceCount(), st.Totals.Bytes+live.Bytes, st.Totals.Retries+live.Retries))
			}
		}
	})

	defer func() {
		var can *workflow.ContinueAsNewError
		if err == nil || errors.As(err, &can) {
			return
		}
		cancelled := temporal.IsCanceledError(err)
		phase, failure = PhaseFailed, err.Error()
		if cancelled {
			phase = PhaseCancelled
		}
		// Cleanup must run even though ctx may be cancelled.
		dctx, _ := workflow.NewDisconnectedContext(ctx)
		setPhase(dctx, phase, fmt.Sprintf("**%s**; staged files are being removed, nothing was committed", phase))
		jobDeleted := false
		if st.StatusURL != "" && !opts.KeepJob {
			jobDeleted = deleteJob(dctx, ref, target, st.StatusURL) == nil
		}
		actx := workflow.WithActivityOptions(dctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Minute,
			RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 5}, Summary: "remove staged files"})
		if aerr := workflow.ExecuteActivity(actx, a.Abort, target).Get(dctx, nil); aerr != nil {
			workflow.GetLogger(ctx).Error("could not remove staged files", "run", st.Run, "error", aerr)
		}
		if cancelled {
			err = temporal.NewCanceledError(ExportResult{Status: "cancelled", Run: st.Run, Totals: st.Totals, Polls: st.Polls, JobDeleted: jobDeleted})
		}
	}()

	pctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 10 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2, MaximumInterval: 5 * time.Minute,
			MaximumAttempts: 20, NonRetryableErrorTypes: activities.NonRetryable},
		Summary: "poll export status",
	})
	// restart starts the export over when the server's job is gone: its
	// files (and staged copies of them) belong to a job that no longer
	// exists, so they are dropped and a new job is kicked off.
	restart := func(why string, cause error) error {
		if st.Restarts >= maxRestarts {
			msg := fmt.Sprintf("%s, and the export was already run again %d times; giving up", why, st.Restarts)
			if cause == nil {
				return temporal.NewNonRetryableApplicationError(msg, "ExportLost", nil)
			}
			return temporal.NewNonRetryableApplicationError(msg+": "+cause.Error(), "ExportLost", cause)
		}
		st.Restarts++
		st.Warnings = append(st.Warnings, fmt.Sprintf("%s; the export was run again (restart %d)", why, st.Restarts))
		workflow.GetLogger(ctx).Warn("restarting the export", "why", why)
		actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Minute,
			RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 5}, Summary: "drop staged files of the lost job"})
		if err := workflow.ExecuteActivity(actx, a.Abort, target).Get(ctx, nil); err != nil {
			return err
		}
		st.StatusURL, st.Plan, st.NextChunk, st.Totals, st.PlanVersion, st.Refreshes = "", nil, 0, Totals{}, 0, 0
		live = Totals{}
		return nil
	}

	for {
		// Kick-off.
		if st.StatusURL == "" {
			phase = PhaseKickoff
			setPhase(ctx, phase, "**Kick-off**: starting the export on the FHIR server")
			kctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
				StartToCloseTimeout: 5 * time.Minute,
				// 429 "export already running" is waited out (NextRetryDelay from
				// Retry-After); 5xx pages are retried a bounded number of times.
				RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2, MaximumInterval: 10 * time.Minute,
					MaximumAttempts: 30, NonRetryableErrorTypes: activities.NonRetryable},
				Summary: "kick-off",
			})
			var kr activities.KickoffResult
			kin := activities.KickoffInput{ServerRef: ref, Target: target, Level: orDefault(in.Level, "system"), Group: in.Group, Types: in.Types,
				Since: st.Since, Until: in.Until, Elements: in.Elements, TypeFilters: in.TypeFilters, Patients: in.Patients,
				OutputFormat: in.OutputFormat, IncludeAssociatedData: in.IncludeAssociatedData, Method: in.Method, Lenient: in.Lenient}
			if err := workflow.ExecuteActivity(kctx, a.Kickoff, kin).Get(ctx, &kr); err != nil {
				return nil, fmt.Errorf("kick-off: %w", err)
			}
			st.StatusURL = kr.StatusURL
		}

		// Durable polling.
		phase = PhaseWaiting
		restarted := false
		for st.Plan == nil {
			var pr activities.PollResult
			err := workflow.ExecuteActivity(pctx, a.PollStatus, activities.PollInput{ServerRef: ref, Target: target, StatusURL: st.StatusURL, Poll: st.Polls}).Get(ctx, &pr)
			st.Polls++
			if isType(err, activities.ErrJobGone) {
				if rerr := restart("the server lost the export job while it ran (404/410 on its status URL)", err); rerr != nil {
					return nil, rerr
				}
				restarted = true
				break
			}
			if err != nil {
				return nil, fmt.Errorf("export status: %w", err)
			}
			st.Progress = pr.Progress
			if pr.Done {
				st.Plan = pr.Plan
				break
			}
			setPhase(ctx, phase, fmt.Sprintf("**Waiting** for the server (poll %d): %s", st.Polls, orDefault(pr.Progress, "in progress")))
			if err := workflow.NewTimerWithOptions(ctx, pr.Wait, workflow.TimerOptions{Summary: "Retry-After"}).Get(ctx, nil); err != nil {
				return nil, err
			}
			if historyIsLong(ctx) {
				return nil, continueAsNew(ctx, in, st)
			}
		}
		if restarted {
			continue
		}

		// Downloads, a chunk of files per child workflow.
		phase = PhaseDownloading
		chunks := opts.chunks(st.Plan.Files)
		chunkStarted := workflow.Now(ctx)
		for st.NextChunk < chunks && !restarted {
			// BD3 L695: links past Expires may be refreshed by re-fetching the manifest.
			if exp := st.Plan.Expires; !exp.IsZero() && workflow.Now(ctx).After(exp) {
				refreshed, err := refreshPlan(ctx, pctx, ref, target, st, restart, "the manifest's Expires time passed")
				if err != nil {
					return nil, err
				}
				if !refreshed {
					restarted = true
					break
				}
			}
			first := st.NextChunk * opts.FilesPerChunk
			count := min(opts.FilesPerChunk, st.Plan.Files-first)
			setPhase(ctx, phase, fmt.Sprintf("**Downloading** files %d-%d of %d; so far %d files, %d resources, %d bytes, %d retries",
				first+1, first+count, st.Plan.Files, st.Totals.Files, st.Totals.ResourceCount(), st.Totals.Bytes, st.Totals.Retries))
			id := chunkID(info.WorkflowExecution.ID, st.NextChunk)
			if st.Restarts > 0 || st.PlanVersion > 0 {
				id = fmt.Sprintf("%s-r%dv%d", id, st.Restarts, st.PlanVersion)
			}
			cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
				WorkflowID:          id,
				StaticSummary:       fmt.Sprintf("files %d-%d of %d", first+1, first+count, st.Plan.Files),
				WaitForCancellation: true,
				ParentClosePolicy:   enums.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
			})
			hb, _ := time.ParseDuration(opts.HeartbeatTimeout) // validated
			cin := ChunkInput{ServerRef: ref, Target: target, Chunk: st.NextChunk, First: first, Count: count, PlanVersion: st.PlanVersion, Layout: in.layout(),
				Concurrency: opts.Concurrency, MaxAttempts: opts.MaxFileAttempts, HeartbeatTimeout: hb, Groups: groupsIn(st.Plan.Groups, first, count)}
			var cr ChunkResult
			runningChild = id
			err := workflow.ExecuteChildWorkflow(cctx, DownloadChunkWorkflow, cin).Get(ctx, &cr)
			runningChild = ""
			live = Totals{}
			if isType(err, activities.ErrFileGone) {
				// A file's link expired (403/404/410): fresh links from the
				// manifest, then this chunk again (finished files are
				// replaced, never doubled).
				refreshed, rerr := refreshPlan(ctx, pctx, ref, target, st, restart, "a file link expired")
				if rerr != nil {
					return nil, rerr
				}
				restarted = !refreshed
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("download: %w", err)
			}
			st.Totals.merge(cr.Totals)
			st.NextChunk++
			if exp := st.Plan.Expires; st.NextChunk == 1 && chunks > 1 && !exp.IsZero() {
				// Warn early when the rest will likely outlive the links.
				perChunk := workflow.Now(ctx).Sub(chunkStarted)
				if eta := workflow.Now(ctx).Add(perChunk * time.Duration(chunks-1)); eta.After(exp) {
					st.Warnings = append(st.Warnings, fmt.Sprintf("at the current pace the downloads end about %s, after the manifest expires (%s); expired links will be refreshed from the manifest",
						eta.UTC().Format(time.RFC3339), exp.UTC().Format(time.RFC3339)))
				}
			}
			if st.NextChunk < chunks && historyIsLong(ctx) {
				return nil, continueAsNew(ctx, in, st)
			}
		}
		if !restarted {
			break
		}
	}

	// Commit: the run becomes visible, with _manifest.json last.
	phase = PhaseCommitting
	setPhase(ctx, phase, "**Committing** the run: promoting staged files, then _manifest.json")
	cctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Hour,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 10, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "commit run"})
	var cres activities.CommitResult
	var wmUpdate *activities.WatermarkUpdate
	if in.Until == "" {
		// A run bounded by _until holds no promise about later changes.
		wmUpdate = &activities.WatermarkUpdate{Key: wmKey, Since: st.Since, Types: in.Types}
	}
	cin := activities.CommitInput{Target: target, Chunks: opts.chunks(st.Plan.Files), Plan: *st.Plan, Warnings: st.Warnings, Watermark: wmUpdate, Request: in.requestSummary(), StartedAt: st.StartedAt, Workflow: info.WorkflowExecution.ID}
	if err := workflow.ExecuteActivity(cctx, a.Commit, cin).Get(ctx, &cres); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}

	res = &ExportResult{Status: "committed", Run: st.Run, Location: cres.Location, Manifest: cres.Manifest,
		TransactionTime: st.Plan.TransactionTime, Totals: st.Totals, Polls: st.Polls, Restarts: st.Restarts, Warnings: st.Warnings,
		Since: st.Since, SinceFrom: st.SinceFrom, Watermark: cres.Watermark}
	for _, sev := range []string{"fatal", "error", "warning", "information"} {
		if n := st.Totals.Issues[sev]; n > 0 {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%d %s issue(s) reported by the server in error[]", n, sev))
		}
	}
	res.Warnings = append(res.Warnings, minimisationWarnings(in, st)...)
	if !opts.KeepJob {
		// BD2 L287: DELETE signals the client is done; a failure here loses no data.
		if derr := deleteJob(ctx, ref, target, st.StatusURL); derr != nil {
			res.Warnings = append(res.Warnings, "could not delete the export job on the server: "+derr.Error())
		} else {
			res.JobDeleted = true
		}
	}
	phase = PhaseDone
	setPhase(ctx, phase, fmt.Sprintf("**Done**: committed %d files, %d resources to %s", st.Totals.Files, st.Totals.ResourceCount(), cres.Location))
	return res, nil
}

// maxRestarts bounds how often a run kicks the export off again after the
// server lost the job; maxRefreshes how often it re-fetches the manifest for
// expired links before treating the job as lost.
const (
	maxRestarts  = 2
	maxRefreshes = 3
)

// refreshPlan re-fetches the manifest from the same status URL for fresh
// file links (BD3 L695). It returns false after restarting the export
// when the job is gone or keeps handing out expired links.
func refreshPlan(ctx, pctx workflow.Context, ref activities.ServerRef, target activities.Target, st *ResumeState,
	restart func(string, error) error, why string) (bool, error) {
	if st.Refreshes >= maxRefreshes {
		return false, restart(fmt.Sprintf("%s and %d manifest refreshes did not help", why, st.Refreshes), nil)
	}
	st.Refreshes++
	var pr activities.PollResult
	err := workflow.ExecuteActivity(pctx, a.PollStatus, activities.PollInput{ServerRef: ref, Target: target, StatusURL: st.StatusURL,
		Poll: st.Polls, PlanVersion: st.PlanVersion + 1}).Get(ctx, &pr)
	st.Polls++
	switch {
	case isType(err, activities.ErrJobGone):
		return false, restart(why+"; the job itself is gone (404/410 on its status URL)", err)
	case err != nil:
		return false, fmt.Errorf("re-fetch the manifest (%s): %w", why, err)
	case !pr.Done || pr.Plan == nil || !samePlan(st.Plan, pr.Plan):
		// BD3 L485: a manifest may only gain refreshed links; anything else
		// is a different job.
		return false, restart(why+"; the re-fetched manifest lists different files", nil)
	}
	st.PlanVersion++
	st.Plan = pr.Plan
	st.Warnings = append(st.Warnings, fmt.Sprintf("%s; fresh links were fetched from the manifest (refresh %d)", why, st.Refreshes))
	return true, nil
}

func samePlan(a, b *activities.Plan) bool {
	if a.Files != b.Files || a.TransactionTime != b.TransactionTime || len(a.Groups) != len(b.Groups) {
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

func deleteJob(ctx workflow.Context, ref activities.ServerRef, target activities.Target, statusURL string) error {
	dctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 3, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "delete server job"})
	err := workflow.ExecuteActivity(dctx, a.DeleteJob, activities.DeleteJobInput{ServerRef: ref, Target: target, StatusURL: statusURL}).Get(ctx, nil)
	if err != nil {
		workflow.GetLogger(ctx).Warn("could not delete the export job on the server", "error", err)
	}
	return err
}

func historyIsLong(ctx workflow.Context) bool {
	info := workflow.GetInfo(ctx)
	return info.GetContinueAsNewSuggested() || info.GetCurrentHistoryLength() > maxHistoryEvents
}

func continueAsNew(ctx workflow.Context, in ExportInput, st *ResumeState) error {
	next := in
	next.Resume = st
	return workflow.NewContinueAsNewError(ctx, BulkExportWorkflow, next)
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
