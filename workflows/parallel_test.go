package workflows

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
)

// Issue 14 §3: chunks side by side. These tests run the export with
// several chunk children in flight and check each path that used to
// assume one: the window itself, progress, setConcurrency, cancellation,
// expired links, a restart, continue-as-new and a failed chunk.

// chunkWatch counts the chunk children running at once, from the test
// environment's child listeners, and downloads in flight per chunk.
type chunkWatch struct {
	mu      sync.Mutex
	running map[string]bool // chunk workflow IDs started and not ended
	peak    int
	active  map[string]int // downloads in flight per chunk workflow ID
	total   int            // downloads in flight
}

func watchChunks(env *testsuite.TestWorkflowEnvironment) *chunkWatch {
	w := &chunkWatch{running: map[string]bool{}, active: map[string]int{}}
	env.SetOnChildWorkflowStartedListener(func(info *workflow.Info, _ workflow.Context, _ converter.EncodedValues) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.running[info.WorkflowExecution.ID] = true
		w.peak = max(w.peak, len(w.running))
	})
	env.SetOnChildWorkflowCompletedListener(func(info *workflow.Info, _ converter.EncodedValue, _ error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.running, info.WorkflowExecution.ID)
	})
	return w
}

func (w *chunkWatch) runningChunks() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.running)
}

// download marks a download of the chunk in ctx as in flight until the
// returned func is called.
func (w *chunkWatch) download(ctx context.Context) (chunk string, done func()) {
	chunk = activity.GetInfo(ctx).WorkflowExecution.ID
	w.mu.Lock()
	w.active[chunk]++
	w.total++
	w.mu.Unlock()
	return chunk, func() {
		w.mu.Lock()
		w.active[chunk]--
		w.total--
		w.mu.Unlock()
	}
}

func (w *chunkWatch) inFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}

// waitUntil polls cond (real time) for at most limit.
func waitUntil(limit time.Duration, cond func() bool) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func sideBySide(files, perChunk, parallel, concurrency int) ExportInput {
	in := input
	in.Options.FilesPerChunk, in.Options.ParallelChunks, in.Options.Concurrency = perChunk, parallel, concurrency
	return in
}

// happyJob mocks a job whose manifest is p, and the end of a committed run.
func happyJob(env *testsuite.TestWorkflowEnvironment, p *activities.Plan) {
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/r"}, nil).Once()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
}

func committed(t *testing.T, env *testsuite.TestWorkflowEnvironment) ExportResult {
	t.Helper()
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var r ExportResult
	require.NoError(t, env.GetWorkflowResult(&r))
	require.Equal(t, "committed", r.Status)
	return r
}

// The window holds exactly parallelChunks chunk children at once, and every
// file is downloaded once. Each download waits (real time) until the
// window is full, so the listeners see it; with chunks one after another
// they would see one.
func TestChunksRunSideBySide(t *testing.T) {
	for _, parallel := range []int{1, 3} {
		t.Run(fmt.Sprint(parallel), func(t *testing.T) {
			p := plan(map[string]int{"Observation": 8}, 0, 0)
			env := newEnv()
			env.SetTestTimeout(time.Minute)
			w := watchChunks(env)
			happyJob(env, p)
			var mu sync.Mutex
			seen := map[int]int{}
			env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
				_, done := w.download(ctx)
				defer done()
				need := min(parallel, 8-in.Index) // the last chunks have fewer after them
				waitUntil(time.Second, func() bool { return w.runningChunks() >= need && w.inFlight() >= need })
				mu.Lock()
				seen[in.Index]++
				mu.Unlock()
				return fileFor(p)(ctx, in)
			})
			env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(8, 1, parallel, 1))
			r := committed(t, env)
			require.Equal(t, 8, r.Totals.Files)
			require.Len(t, seen, 8)
			for i, n := range seen {
				require.Equal(t, 1, n, "file %d", i)
			}
			require.Equal(t, parallel, w.peak, "chunk children running at once")
		})
	}
}

// The progress query sums the finished chunks and every running chunk's
// latest progress signal. Files 0 and 3 finish at once, 1 and 4 after a
// minute (a chunk signals its progress then), 2 and 5 after an hour: at
// half an hour both chunks are running with two files each done.
func TestProgressSumsTheRunningChunks(t *testing.T) {
	p := plan(map[string]int{"Observation": 6}, 0, 0)
	env := newEnv()
	happyJob(env, p)
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		if activity.GetInfo(ctx).Attempt == 1 && in.Index%3 > 0 {
			wait := time.Minute
			if in.Index%3 == 2 {
				wait = time.Hour
			}
			return activities.FileResult{}, temporal.NewApplicationErrorWithOptions("429", activities.ErrRateLimited, temporal.ApplicationErrorOptions{NextRetryDelay: wait})
		}
		r, err := fileFor(p)(ctx, in)
		r.Attempt = activity.GetInfo(ctx).Attempt
		return r, err
	})
	var mid Progress
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(ProgressQuery)
		require.NoError(t, err)
		require.NoError(t, v.Get(&mid))
	}, 30*time.Minute)
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(6, 3, 2, 3))
	r := committed(t, env)
	require.Equal(t, 6, r.Totals.Files)
	require.Equal(t, PhaseDownloading, mid.Phase)
	require.Equal(t, 4, mid.FilesDone, "two running chunks with two files done each")
	require.Equal(t, int64(40), mid.Resources)
	require.Equal(t, 6, mid.FilesTotal)
}

// setConcurrency reaches every running chunk: both chunks' first windows
// (4 downloads each) wait an hour, the update to 1 lands meanwhile, and
// after it each chunk downloads one file at a time. Were only one chunk
// signalled, the other would run 4 at a time.
func TestSetConcurrencyReachesEveryRunningChunk(t *testing.T) {
	const perChunk = 8
	p := plan(map[string]int{"Observation": 2 * perChunk}, 0, 0)
	env := newEnv()
	w := watchChunks(env)
	happyJob(env, p)
	var mu sync.Mutex
	updated := false
	peakAfter := map[string]int{}
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		attempt := activity.GetInfo(ctx).Attempt
		chunk, done := w.download(ctx)
		defer done()
		if attempt == 1 && in.Index%perChunk < 4 {
			return activities.FileResult{}, temporal.NewApplicationErrorWithOptions("429", activities.ErrRateLimited, temporal.ApplicationErrorOptions{NextRetryDelay: time.Hour})
		}
		mu.Lock()
		after := updated
		mu.Unlock()
		if attempt == 1 && after {
			// Held until a second download of the chunk runs (or a while
			// passed): 1 at a time with the update, 4 without.
			waitUntil(200*time.Millisecond, func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.active[chunk] >= 2 })
			w.mu.Lock()
			n := w.active[chunk]
			w.mu.Unlock()
			mu.Lock()
			peakAfter[chunk] = max(peakAfter[chunk], n)
			mu.Unlock()
		}
		return fileFor(p)(ctx, in)
	})
	var running int
	env.RegisterDelayedCallback(func() {
		running = w.runningChunks()
		env.UpdateWorkflow(SetConcurrencyUpdate, "one", &testsuite.TestUpdateCallback{
			OnReject: func(err error) { t.Errorf("rejected: %v", err) }, OnAccept: func() {},
			OnComplete: func(v any, err error) { require.NoError(t, err); require.Equal(t, 4, v) },
		}, 1)
		mu.Lock()
		updated = true
		mu.Unlock()
	}, 30*time.Minute)
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(2*perChunk, perChunk, 2, 4))
	require.Equal(t, 2*perChunk, committed(t, env).Totals.Files)
	require.Equal(t, 2, running, "both chunks run when the update lands")
	require.Len(t, peakAfter, 2, "both chunks download after the update")
	for chunk, n := range peakAfter {
		require.Equal(t, 1, n, "%s downloads at once after setConcurrency 1", chunk)
	}
}

// Cancelled with two chunks running: both chunk children are cancelled
// and waited for before staging is removed (each chunk in turn waits for
// its downloads: TestCancelMidDownloadLeavesNothingBehind in testsuite/e2e
// shows that on a real server; the test environment resolves a cancelled
// activity at once), and the cancelled summary counts the files both
// chunks had finished.
func TestCancelWaitsForEveryRunningChunk(t *testing.T) {
	p := plan(map[string]int{"Observation": 12}, 0, 0)
	env := newEnv()
	w := watchChunks(env)
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		if in.Index%6 < 3 {
			return fileFor(p)(ctx, in)
		}
		<-ctx.Done()
		return activities.FileResult{}, ctx.Err()
	})
	running, lateChunks := 0, -1
	env.RegisterDelayedCallback(func() { running = w.runningChunks(); env.CancelWorkflow() }, time.Second)
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(func(context.Context, activities.Target) error {
		lateChunks = w.runningChunks()
		return nil
	}).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(12, 6, 2, 6))
	var ce *temporal.CanceledError
	require.True(t, errors.As(env.GetWorkflowError(), &ce), "want cancelled, got %v", env.GetWorkflowError())
	var r ExportResult
	require.NoError(t, ce.Details(&r))
	require.Equal(t, "cancelled", r.Status)
	require.Equal(t, 2, running, "two chunks run when the cancel lands")
	require.Zero(t, lateChunks, "chunks still running when staging was removed")
	require.Equal(t, 6, r.Totals.Files, "three finished files of each chunk")
}

// slowToCancelChunk stands in for DownloadChunkWorkflow: it finishes three
// files, runs until cancelled, and then takes a minute to confirm, as a
// chunk whose downloads are slow to notice the cancel does.
func slowToCancelChunk(ctx workflow.Context, in ChunkInput) (ChunkResult, error) {
	err := workflow.Sleep(ctx, 24*time.Hour)
	if !temporal.IsCanceledError(err) {
		return ChunkResult{}, fmt.Errorf("chunk %d was not cancelled: %v", in.Chunk, err)
	}
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	if err := workflow.Sleep(dctx, time.Minute); err != nil {
		return ChunkResult{}, err
	}
	return ChunkResult{}, temporal.NewCanceledError(ChunkResult{Totals: Totals{Files: 3}})
}

// Cancelled with two chunks running, each a minute slow to confirm: staging
// is removed only once both have ended, a minute after the cancel, and the
// summary counts both chunks' finished files.
func TestCancelWaitsForSlowChunks(t *testing.T) {
	p := plan(map[string]int{"Observation": 12}, 0, 0)
	var ts testsuite.WorkflowTestSuite
	env := ts.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(BulkExportWorkflow)
	env.RegisterWorkflowWithOptions(slowToCancelChunk, workflow.RegisterOptions{Name: "DownloadChunkWorkflow"})
	env.RegisterActivity(&activities.Activities{})
	preflightPasses(env)
	w := watchChunks(env)
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	var cancelAt, abortAt time.Time
	running, lateChunks := 0, -1
	env.RegisterDelayedCallback(func() { running, cancelAt = w.runningChunks(), env.Now(); env.CancelWorkflow() }, time.Hour)
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(func(context.Context, activities.Target) error {
		lateChunks, abortAt = w.runningChunks(), env.Now()
		return nil
	}).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(12, 6, 2, 6))
	var ce *temporal.CanceledError
	require.True(t, errors.As(env.GetWorkflowError(), &ce), "want cancelled, got %v", env.GetWorkflowError())
	var r ExportResult
	require.NoError(t, ce.Details(&r))
	require.Equal(t, 2, running, "two chunks run when the cancel lands")
	require.Zero(t, lateChunks, "chunks still running when staging was removed")
	require.GreaterOrEqual(t, abortAt.Sub(cancelAt), time.Minute, "staging removed before the chunks confirmed")
	require.Equal(t, 6, r.Totals.Files, "three finished files of each chunk")
}

// One chunk fails for good: the other chunk is cancelled at once, with its
// downloads, and waited for; nothing is recorded or committed.
func TestFailedChunkStopsTheOthers(t *testing.T) {
	p := plan(map[string]int{"Observation": 8}, 0, 0)
	env := newEnv()
	w := watchChunks(env)
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	release := make(chan struct{})
	defer close(release)
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		if in.Index == 0 {
			waitUntil(10*time.Second, func() bool { return w.inFlight() >= 4 }) // the other chunk's downloads run
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("Observation-0001.ndjson line 3: not a JSON object", activities.ErrInvalidContent, nil)
		}
		if in.Index < 4 {
			return fileFor(p)(ctx, in)
		}
		_, done := w.download(ctx)
		defer done()
		select { // a long download: ends when cancelled, or after 3 s
		case <-ctx.Done():
		case <-release:
		case <-time.After(3 * time.Second):
		}
		return fileFor(p)(ctx, in)
	})
	var mu sync.Mutex
	cancelled := map[string]int{}
	env.SetOnActivityCanceledListener(func(info *activity.Info) {
		mu.Lock()
		defer mu.Unlock()
		cancelled[info.WorkflowExecution.ID+" "+info.ActivityType.Name]++
	})
	lateChunks := -1
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil).Maybe()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(func(context.Context, activities.Target) error {
		lateChunks = w.runningChunks()
		return nil
	}).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(8, 4, 2, 4))
	err := env.GetWorkflowError()
	require.Error(t, err)
	require.Contains(t, err.Error(), "Observation-0001.ndjson line 3")
	require.False(t, temporal.IsCanceledError(err), "a failure, not a cancellation: %v", err)
	require.Equal(t, 2, w.peak)
	mu.Lock()
	other := 0
	for k, n := range cancelled {
		if strings.Contains(k, "chunk-00001") {
			other += n
		}
	}
	mu.Unlock()
	require.Equal(t, 4, other, "the other chunk's four downloads are cancelled: %v", cancelled)
	require.Zero(t, lateChunks, "chunks still running when staging was removed")
	env.AssertNotCalled(t, "RecordChunk", mock.Anything, mock.Anything)
	env.AssertNotCalled(t, "Commit", mock.Anything, mock.Anything)
}

// A link of chunk 0 expires while chunk 1 is still downloading: no new
// chunk starts, chunk 1 finishes on the old links (its files count once),
// and only then are fresh links fetched; chunk 0 runs again on them in a
// new generation, and chunk 2 starts on them too.
func TestExpiredLinkWithSeveralChunksRunning(t *testing.T) {
	p := plan(map[string]int{"Observation": 6}, 0, 0)
	env := newEnv()
	w := watchChunks(env)
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	var mu sync.Mutex
	var log []string
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		mu.Lock()
		log = append(log, fmt.Sprintf("poll v%d (%d downloads in flight)", in.PlanVersion, w.inFlight()))
		mu.Unlock()
		return activities.PollResult{Done: true, Plan: p}, nil
	})
	gone := true
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		_, done := w.download(ctx)
		defer done()
		mu.Lock()
		fail := gone && in.Index == 0
		gone = gone && !fail
		mu.Unlock()
		if fail {
			waitUntil(10*time.Second, func() bool { return w.inFlight() >= 3 }) // chunk 1 is downloading
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("410 Gone", activities.ErrFileGone, nil)
		}
		if in.Index/2 == 1 {
			time.Sleep(300 * time.Millisecond) // chunk 1 outlives chunk 0's failure
		}
		mu.Lock()
		log = append(log, fmt.Sprintf("file %d v%d g%d", in.Index, in.PlanVersion, in.Generation))
		mu.Unlock()
		return fileFor(p)(ctx, in)
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/r"}, nil).Once()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(6, 2, 2, 2))
	r := committed(t, env)
	require.Equal(t, 6, r.Totals.Files, "each file counts once")
	require.Equal(t, int64(60), r.Totals.ResourceCount())
	require.Equal(t, 0, r.Restarts)
	require.Contains(t, strings.Join(r.Warnings, "\n"), "fresh links")
	require.Equal(t, 2, w.peak)
	got := strings.Join(log, "\n")
	i := strings.Index(got, "poll v1")
	require.Positive(t, i, "%s", got)
	before, after := got[:i], got[i:]
	require.Contains(t, after, "poll v1 (0 downloads in flight)", "the refresh waits for the chunks in flight")
	for _, f := range []string{"file 2 v0 g0", "file 3 v0 g0"} {
		require.Contains(t, before, f, "%s: finished before the refresh", got)
	}
	for _, f := range []string{"file 0 v1 g1", "file 1 v1 g1", "file 4 v1 g1", "file 5 v1 g1"} {
		require.Contains(t, after, f, "%s: after the refresh, on fresh links", got)
	}
	// Chunk 0 runs again whole (a file of it that had finished is
	// replaced, never doubled); chunk 1, finished on the old links, does not.
	require.Equal(t, 1, strings.Count(got, "file 2 "), "%s", got)
	require.Equal(t, 1, strings.Count(got, "file 3 "), "%s", got)
}

// The manifest's Expires passes while two chunks run: the next chunk does
// not start on stale links; the chunks in flight finish, then fresh links
// are fetched (after the slower chunk ended) and chunk 2 runs on them.
func TestExpiresPassesWithSeveralChunksRunning(t *testing.T) {
	start := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	p := plan(map[string]int{"Observation": 3}, 0, 0)
	p.Expires = start.Add(30 * time.Minute)
	fresh := *p
	fresh.Expires = start.Add(24 * time.Hour)
	env := newEnv()
	env.SetStartTime(start)
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	var mu sync.Mutex
	var refreshedAt time.Duration
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		if in.PlanVersion == 0 {
			return activities.PollResult{Done: true, Plan: p}, nil
		}
		mu.Lock()
		refreshedAt = env.Now().Sub(start)
		mu.Unlock()
		return activities.PollResult{Done: true, Plan: &fresh}, nil
	})
	versions := map[int]int{}
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		// Chunk 0 takes an hour, chunk 1 two (Retry-After), chunk 2 no time.
		if attempt := activity.GetInfo(ctx).Attempt; in.Index < 2 && attempt <= int32(in.Index+1) {
			return activities.FileResult{}, temporal.NewApplicationErrorWithOptions("429", activities.ErrRateLimited, temporal.ApplicationErrorOptions{NextRetryDelay: time.Hour})
		}
		mu.Lock()
		versions[in.Index] = in.PlanVersion
		mu.Unlock()
		return fileFor(p)(ctx, in)
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/r"}, nil).Once()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(3, 1, 2, 1))
	r := committed(t, env)
	require.Equal(t, 3, r.Totals.Files)
	require.Equal(t, map[int]int{0: 0, 1: 0, 2: 1}, versions, "chunks 0 and 1 on the first links, chunk 2 on fresh ones")
	require.GreaterOrEqual(t, refreshedAt, 2*time.Hour, "the refresh waits for the chunk still running")
	require.Contains(t, strings.Join(r.Warnings, "\n"), "Expires time passed")
}

// A link expires with two chunks running and the manifest fetched again
// lists other files: the export starts over. Staging is dropped only once
// both chunks have ended, and the new job's files are downloaded in a new
// generation.
func TestRestartWithSeveralChunksRunning(t *testing.T) {
	first := plan(map[string]int{"Observation": 4}, 0, 0)
	other := plan(map[string]int{"Observation": 5}, 0, 0)
	env := newEnv()
	w := watchChunks(env)
	kicks := 0
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		kicks++
		return activities.KickoffResult{StatusURL: fmt.Sprintf("https://ehr.example/status/%d", kicks)}, nil
	})
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		if in.StatusURL == "https://ehr.example/status/1" && in.PlanVersion == 0 {
			return activities.PollResult{Done: true, Plan: first}, nil
		}
		return activities.PollResult{Done: true, Plan: other}, nil
	})
	var mu sync.Mutex
	generations := map[int]int{}
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		_, done := w.download(ctx)
		defer done()
		if in.Generation == 0 {
			if in.Index == 0 {
				waitUntil(10*time.Second, func() bool { return w.inFlight() >= 3 })
				return activities.FileResult{}, temporal.NewNonRetryableApplicationError("410 Gone", activities.ErrFileGone, nil)
			}
			time.Sleep(200 * time.Millisecond)
			return fileFor(first)(ctx, in)
		}
		mu.Lock()
		generations[in.Index] = in.Generation
		mu.Unlock()
		return fileFor(other)(ctx, in)
	})
	lateWriters := -1
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(func(context.Context, activities.Target) error {
		lateWriters = w.inFlight()
		return nil
	}).Once()
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CommitInput) (activities.CommitResult, error) {
		require.Equal(t, 5, in.Plan.Files, "the new job's files")
		require.Equal(t, 3, in.Chunks)
		return activities.CommitResult{Location: "/out/r"}, nil
	}).Once()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil)
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(4, 2, 2, 2))
	r := committed(t, env)
	require.Equal(t, 1, r.Restarts)
	require.Equal(t, 2, kicks)
	require.Zero(t, lateWriters, "downloads still running when the lost job's staging was dropped")
	require.Equal(t, 5, r.Totals.Files, "only the new job's files count")
	require.Equal(t, int64(50), r.Totals.ResourceCount())
	require.Len(t, generations, 5)
	for i, g := range generations {
		require.Equal(t, 1, g, "file %d of the new job", i)
	}
}

// Continue-as-new with chunks finished out of order: chunk 0's link
// expires while chunk 1 finishes, the history is long, so the run fetches
// fresh links and continues as new. The state names chunk 1 as done
// (ChunksDone), not only the prefix (NextChunk 0): the next run downloads
// chunks 0 and 2 and never chunk 1 again.
func TestContinueAsNewRecordsChunksDoneOutOfOrder(t *testing.T) {
	p := plan(map[string]int{"Observation": 3}, 0, 0)
	env := newEnv()
	env.SetCurrentHistoryLength(6000)
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Twice()
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		if in.Index == 0 {
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("410 Gone", activities.ErrFileGone, nil)
		}
		return fileFor(p)(ctx, in)
	}).Twice()
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, sideBySide(3, 1, 2, 1))
	var can *workflow.ContinueAsNewError
	require.True(t, errors.As(env.GetWorkflowError(), &can), "want continue-as-new, got %v", env.GetWorkflowError())
	var next ExportInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	st := next.Resume
	require.Equal(t, 0, st.NextChunk)
	require.Equal(t, []int{1}, st.ChunksDone)
	require.Equal(t, 1, st.PlanVersion, "fresh links travel")
	require.Equal(t, 1, st.Totals.Files)

	// The next run.
	env = newEnv()
	var mu sync.Mutex
	var indices []int
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		mu.Lock()
		indices = append(indices, in.Index)
		mu.Unlock()
		require.Equal(t, 1, in.PlanVersion)
		return fileFor(p)(ctx, in)
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/r"}, nil).Once()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, next)
	r := committed(t, env)
	require.ElementsMatch(t, []int{0, 2}, indices, "chunk 1 was done by the previous run")
	require.Equal(t, 3, r.Totals.Files)
}

// markDone keeps NextChunk as the finished prefix and ChunksDone as the
// finished chunks past it, whatever order chunks finish in.
func TestMarkDone(t *testing.T) {
	for _, tc := range []struct {
		order []int
		next  int
		done  []int
	}{
		{[]int{0, 1, 2}, 3, nil},
		{[]int{2, 1}, 0, []int{1, 2}},
		{[]int{2, 1, 0}, 3, nil},
		{[]int{1, 3, 0}, 2, []int{3}},
		{[]int{1, 1, 0}, 2, nil},
	} {
		var st ResumeState
		for _, c := range tc.order {
			st.markDone(c)
		}
		require.Equal(t, tc.next, st.NextChunk, "%v", tc.order)
		require.Equal(t, tc.done, st.ChunksDone, "%v", tc.order)
		if n := st.nextUndone(0); n < 4 {
			require.NotContains(t, tc.order, n, "%v: next undone %d", tc.order, n)
		}
	}
}
