package workflows

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
)

// ChunkInput is one child workflow's share of a run's files.
type ChunkInput struct {
	activities.ServerRef
	activities.Target
	Chunk       int `json:"chunk"`
	PlanVersion int `json:"planVersion,omitempty"`
	// Generation counts the plans of this export (restarts and refreshes):
	// downloads of a replaced plan stage apart from the current one's.
	Generation  int               `json:"generation,omitempty"`
	Layout      activities.Layout `json:"layout,omitempty"`
	First       int               `json:"first"`
	Count       int               `json:"count"`
	Concurrency int               `json:"concurrency"`
	MaxAttempts int               `json:"maxAttempts"`
	// HeartbeatTimeout: a download silent this long is retried.
	HeartbeatTimeout time.Duration      `json:"heartbeatTimeout"`
	Groups           []activities.Group `json:"groups,omitempty"` // for activity summaries
}

// ChunkResult sums a chunk.
type ChunkResult struct {
	Totals Totals `json:"totals"`
}

type chunkProgress struct {
	Chunk  int    `json:"chunk"`
	Totals Totals `json:"totals"`
}

// progressEvery spaces the progress signals a chunk sends its parent, so the
// parent's history grows with time, not with the number of files.
const progressEvery = 15 * time.Second

// DownloadChunkWorkflow downloads a range of the run's files through a
// sliding window of DownloadFile activities, then records their results for
// the commit. Chunks bound history: a 20,000-file export is 40 children of a
// few thousand events each, not one run of 60,000.
func DownloadChunkWorkflow(ctx workflow.Context, in ChunkInput) (ChunkResult, error) {
	var totals Totals
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (Progress, error) {
		return Progress{Phase: PhaseDownloading, Run: in.Run, FilesDone: totals.Files, FilesTotal: in.Count,
			Resources: totals.ResourceCount(), Bytes: totals.Bytes, Retries: totals.Retries}, nil
	}); err != nil {
		return ChunkResult{}, err
	}
	parent := workflow.GetInfo(ctx).ParentWorkflowExecution
	lastSignal := workflow.Now(ctx)

	base := workflow.ActivityOptions{
		// Files of many GB take hours; a stalled body is caught by the heartbeat timeout instead.
		StartToCloseTimeout: 24 * time.Hour,
		HeartbeatTimeout:    cmp.Or(in.HeartbeatTimeout, 2*time.Minute),
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 2, MaximumInterval: 5 * time.Minute,
			MaximumAttempts: int32(max(1, in.MaxAttempts)), NonRetryableErrorTypes: activities.NonRetryable},
		// Downloads go through the task queue to whichever worker is free:
		// on a server with eager activity execution, an eager download would
		// run on the worker holding this (sticky) workflow, so one worker
		// of a fleet would take most of the chunk. The short steps keep eager
		// dispatch, which saves them a matching round trip (docs/deployment.md).
		DisableEagerExecution: true,
	}
	// Version 1: a cancelled download is waited for until its activity
	// confirms (it notices through its next heartbeat): only then may the
	// parent remove staged files, so no late writer outlives cleanup. And
	// once cancelled, no new download starts.
	waitCancel := workflow.GetVersion(ctx, versionWaitDownloadCancel, workflow.DefaultVersion, 1) >= 1
	base.WaitForCancellation = waitCancel
	// Version 1: small files share DownloadBatch activities, planned from
	// the manifest's sizes (ChunkHints); a file that fails in a batch is
	// retried alone through DownloadFile (issue 14 §1, workflows/batch.go).
	var planner *batchPlanner
	if workflow.GetVersion(ctx, versionBatchSmallFiles, workflow.DefaultVersion, 1) >= 1 && in.Count >= 2 {
		hctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 2 * time.Minute,
			RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 3, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "size hints"})
		var h activities.ChunkHints
		err := workflow.ExecuteActivity(hctx, a.ChunkHints, activities.ChunkHintsInput{Target: in.Target, PlanVersion: in.PlanVersion,
			First: in.First, Count: in.Count}).Get(ctx, &h)
		if err != nil {
			// Hints only save work: without them every file has its own activity.
			workflow.GetLogger(ctx).Warn("no size hints: downloading one file per activity", "error", err)
		}
		planner = newBatchPlanner(in.First, in.Count, h)
	}
	wctx, cancel := workflow.WithCancel(ctx)
	defer cancel()
	sel := workflow.NewSelector(ctx)
	results := make([]activities.FileResult, 0, in.Count)
	pending := 0
	var failed error
	var retry []int                  // files of failed batches, each retried alone
	priorFailure := map[int]string{} // their validation failures in the batch, by file
	triedOnce := map[int]bool{}      // failed in their batch: that try was one of their attempts
	done := func(r activities.FileResult) {
		results = append(results, r)
		totals.Add(r)
		planner.learn(r)
		if parent != nil && workflow.Now(ctx).Sub(lastSignal) >= progressEvery {
			lastSignal = workflow.Now(ctx)
			// Best effort: progress only, so the signal's outcome is not awaited.
			workflow.SignalExternalWorkflow(ctx, parent.ID, "", chunkProgressSignal, chunkProgress{Chunk: in.Chunk, Totals: totals})
		}
	}
	start := func(i int, afterBatch bool) {
		o := base
		o.Summary = fileSummary(in.Groups, i)
		if triedOnce[i] {
			// options.maxFileAttempts bounds a file's tries, the batch's included.
			rp := *base.RetryPolicy
			rp.MaximumAttempts = max(1, rp.MaximumAttempts-1)
			o.RetryPolicy = &rp
		}
		f := workflow.ExecuteActivity(workflow.WithActivityOptions(wctx, o), a.DownloadFile,
			activities.DownloadInput{ServerRef: in.ServerRef, Target: in.Target, Index: i, PlanVersion: in.PlanVersion, Generation: in.Generation, Layout: in.Layout,
				PriorFailure: priorFailure[i]})
		pending++
		sel.AddFuture(f, func(f workflow.Future) {
			pending--
			var r activities.FileResult
			if err := f.Get(ctx, &r); err != nil {
				if failed == nil {
					failed = fmt.Errorf("%s failed after its retries, so nothing was committed: %w", o.Summary, err)
					cancel() // stop the other downloads: the run cannot commit
				}
				return
			}
			if afterBatch {
				r.Attempt++ // its try in the batch counts
			}
			done(r)
		})
	}
	startBatch := func(first, n int) {
		o := base
		o.Summary = batchSummary(in.Groups, first, n)
		// A batch is retried when its worker is lost (it skips the files
		// it had recorded); files that fail inside it come back in Failed.
		rp := *base.RetryPolicy
		rp.MaximumAttempts = min(rp.MaximumAttempts, 3)
		o.RetryPolicy = &rp
		f := workflow.ExecuteActivity(workflow.WithActivityOptions(wctx, o), a.DownloadBatch,
			activities.BatchInput{ServerRef: in.ServerRef, Target: in.Target, First: first, Count: n, PlanVersion: in.PlanVersion,
				Generation: in.Generation, Layout: in.Layout})
		pending++
		sel.AddFuture(f, func(f workflow.Future) {
			pending--
			var r activities.BatchResult
			if err := f.Get(ctx, &r); err != nil {
				if ctx.Err() == nil && failed == nil {
					// Whatever went wrong, each file gets its own chance.
					workflow.GetLogger(ctx).Warn("batch failed: its files are retried one by one", "first", first, "files", n, "error", err)
					for i := first; i < first+n; i++ {
						retry = append(retry, i)
					}
				}
				return
			}
			for _, fr := range r.Files {
				done(fr)
			}
			for _, ff := range r.Failed {
				if slices.Contains(activities.NonRetryable, ff.Type) || base.RetryPolicy.MaximumAttempts <= 1 {
					// No retry can help, or none is allowed: the file fails
					// here, with its error's type (a FileGone makes the
					// parent refresh the links, as from DownloadFile).
					if failed == nil {
						failed = fmt.Errorf("%s failed after its retries, so nothing was committed: %w", fileSummary(in.Groups, ff.Index), memberError(ff))
						cancel()
					}
					continue
				}
				workflow.GetLogger(ctx).Info("file failed in its batch: retried alone", "index", ff.Index, "type", ff.Type)
				triedOnce[ff.Index] = true
				retry = append(retry, ff.Index)
				if ff.Signature != "" {
					priorFailure[ff.Index] = ff.Signature
				}
			}
		})
	}
	conc := max(1, in.Concurrency)
	sel.AddReceive(workflow.GetSignalChannel(ctx, setConcurrencySignal), func(c workflow.ReceiveChannel, _ bool) {
		var n int
		c.Receive(ctx, &n)
		conc = max(1, n)
	})
	stopped := func() bool { return failed != nil || waitCancel && ctx.Err() != nil }
	for next, end := in.First, in.First+in.Count; (next < end || len(retry) > 0) && !stopped(); {
		for pending < conc && (next < end || len(retry) > 0) && !stopped() {
			if len(retry) > 0 {
				start(retry[0], true)
				retry = retry[1:]
				continue
			}
			if n := planner.next(next, end, conc); n > 1 {
				startBatch(next, n)
				next += n
			} else {
				start(next, false)
				next++
			}
		}
		sel.Select(ctx)
	}
	for pending > 0 {
		sel.Select(ctx)
		if len(retry) > 0 && !stopped() {
			// A batch finished after the last file was started: its
			// failed files still need their own tries.
			for pending < conc && len(retry) > 0 {
				start(retry[0], true)
				retry = retry[1:]
			}
		}
	}
	if ctx.Err() != nil {
		// Cancelled: not a file's fault. The files that had finished go
		// with the cancellation, so the export's summary counts them.
		return ChunkResult{}, temporal.NewCanceledError(ChunkResult{Totals: totals})
	}
	if failed != nil {
		return ChunkResult{}, failed
	}
	rctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 5 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 10, NonRetryableErrorTypes: activities.NonRetryable}, Summary: "record chunk"})
	if err := workflow.ExecuteActivity(rctx, a.RecordChunk, activities.RecordChunkInput{Target: in.Target, Chunk: in.Chunk, Files: results}).Get(ctx, nil); err != nil {
		return ChunkResult{}, err
	}
	return ChunkResult{Totals: totals}, nil
}

// memberError is a batch member's failure as DownloadFile would have
// failed: an application error of the same type and retryability.
func memberError(ff activities.FileFailure) error {
	if slices.Contains(activities.NonRetryable, ff.Type) {
		return temporal.NewNonRetryableApplicationError(ff.Error, ff.Type, nil)
	}
	return temporal.NewApplicationError(ff.Error, ff.Type)
}

// fileSummary names file i for the UI, e.g. "Observation file 12 of 300".
func fileSummary(groups []activities.Group, i int) string {
	for _, g := range groups {
		if i >= g.First && i < g.First+g.Count {
			return fmt.Sprintf("%s file %d of %d", groupName(g), i-g.First+1, g.Count)
		}
	}
	return fmt.Sprintf("file %d", i+1)
}

// groupName is what the UI calls a group's files: the resource type, or
// "error" or "deleted" for the manifest's other lists.
func groupName(g activities.Group) string {
	switch g.Kind {
	case activities.KindError:
		return "error"
	case activities.KindDeleted:
		return "deleted"
	}
	return g.Type
}
