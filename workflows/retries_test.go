package workflows

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	sdkpb "go.temporal.io/api/sdk/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/activities"
)

// Issue 16 §4: a status URL that keeps answering 5xx fails the export at
// the retry deadline from the options, not after days, and the last error
// is visible in the progress query all along.
func TestStatus5xxFailsAtTheRetryDeadline(t *testing.T) {
	env := newEnv()
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	var polls atomic.Int32
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(context.Context, activities.PollInput) (activities.PollResult, error) {
		polls.Add(1)
		return activities.PollResult{}, temporal.NewApplicationError("status: 503 Service Unavailable from https://ehr.example/status/1", activities.ErrTransient)
	})
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	var seen Progress
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(ProgressQuery)
		require.NoError(t, err)
		require.NoError(t, v.Get(&seen))
	}, time.Hour)
	in := input
	in.Options.RetryDeadline = "2h"
	start := env.Now()
	env.ExecuteWorkflow(BulkExportWorkflow, in)
	err := env.GetWorkflowError()
	require.Error(t, err)
	require.Contains(t, err.Error(), "status kept failing")
	require.Contains(t, err.Error(), "503 Service Unavailable")
	require.Contains(t, err.Error(), "RetriesExhausted")
	took := env.Now().Sub(start)
	require.True(t, took > time.Hour && took <= 2*time.Hour, "failed after %s; want within the 2h deadline", took)
	require.Greater(t, polls.Load(), int32(10))
	require.NotNil(t, seen.Retrying, "the progress query must show the retry while it waits")
	require.Equal(t, "status", seen.Retrying.Step)
	require.Greater(t, seen.Retrying.Attempt, 1)
	require.Contains(t, seen.Retrying.LastError, "503")
	require.True(t, seen.Retrying.NextRetry.After(start))
}

// A kick-off that keeps failing (not "busy") is tried a bounded number of
// times: each try may leave a job on the server if its 202 was lost.
func TestKickoffFailuresAreBounded(t *testing.T) {
	env := newEnv()
	var kicks atomic.Int32
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		kicks.Add(1)
		return activities.KickoffResult{}, temporal.NewApplicationError("kick-off: 500 Internal Server Error", activities.ErrTransient)
	})
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, input)
	err := env.GetWorkflowError()
	require.Error(t, err)
	require.Contains(t, err.Error(), "kick-off kept failing")
	require.EqualValues(t, kickoffAttempts, kicks.Load())
}

// "Busy" (429 with Retry-After) is waiting, not failing: a long queue on
// the server does not use up the kick-off's attempts.
func TestKickoffBusyDoesNotUseAttempts(t *testing.T) {
	p := plan(map[string]int{"Patient": 1}, 0, 0)
	env := newEnv()
	var kicks atomic.Int32
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		if kicks.Add(1) <= 2*kickoffAttempts {
			return activities.KickoffResult{}, temporal.NewApplicationErrorWithOptions("429: export already running", activities.ErrRateLimited,
				temporal.ApplicationErrorOptions{NextRetryDelay: 5 * time.Minute})
		}
		return activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil
	})
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil)
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/x"}, nil).Once()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.ExecuteWorkflow(BulkExportWorkflow, input)
	require.NoError(t, env.GetWorkflowError())
	require.EqualValues(t, 2*kickoffAttempts+1, kicks.Load())
}

// Issue 16 §7: a job bulkflow abandons (the export is run again) gets a
// DELETE, best effort, besides the one the finished job gets.
func TestAbandonedJobIsDeleted(t *testing.T) {
	p := plan(map[string]int{"Patient": 2}, 0, 0)
	env := newEnv()
	var kicks atomic.Int32
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		return activities.KickoffResult{StatusURL: fmt.Sprintf("https://ehr.example/status/%d", kicks.Add(1))}, nil
	})
	polled := map[string]int{}
	var mu sync.Mutex
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		mu.Lock()
		defer mu.Unlock()
		polled[in.StatusURL]++
		if in.StatusURL == "https://ehr.example/status/1" && in.PlanVersion > 0 {
			// The re-fetched manifest lists other files: a different job.
			return activities.PollResult{Done: true, Plan: plan(map[string]int{"Patient": 3}, 0, 0)}, nil
		}
		return activities.PollResult{Done: true, Plan: p}, nil
	})
	var gone atomic.Bool
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		if in.Index == 1 && gone.CompareAndSwap(false, true) {
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("410 Gone", activities.ErrFileGone, nil)
		}
		return fileFor(p)(ctx, in)
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/x"}, nil).Once()
	var deleted []string
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.DeleteJobInput) error {
		mu.Lock()
		deleted = append(deleted, in.StatusURL)
		mu.Unlock()
		return nil
	})
	env.ExecuteWorkflow(BulkExportWorkflow, input)
	require.NoError(t, env.GetWorkflowError())
	var r ExportResult
	require.NoError(t, env.GetWorkflowResult(&r))
	require.Equal(t, 1, r.Restarts)
	require.ElementsMatch(t, []string{"https://ehr.example/status/1", "https://ehr.example/status/2"}, deleted,
		"the abandoned job and the finished one are both deleted")
	require.True(t, strings.Contains(strings.Join(r.Warnings, "\n"), "different files"))
}

// When the workflow drives the retries, each activity runs once (attempt 1
// to Temporal), so the workflow hands its own count of failures to the
// activity: the budgets for refused connections and stalled requests
// (activities/errors.go) must see 1, 2, 3… across tries, 429s not counted,
// and a kick-off that went unanswered and was sent again is not silent.
func TestWorkflowRetriesHandTheAttemptToTheActivity(t *testing.T) {
	p := plan(map[string]int{"Patient": 1}, 0, 0)
	env := newEnv()
	var mu sync.Mutex
	var kickAttempts, pollAttempts []int32
	errs := []error{
		temporal.NewApplicationError("kick-off: no answer", activities.ErrKickoffUnanswered),
		temporal.NewApplicationErrorWithOptions("kick-off: 429", activities.ErrRateLimited, temporal.ApplicationErrorOptions{NextRetryDelay: time.Minute}),
		temporal.NewApplicationError("kick-off: connection refused", activities.ErrTransient),
	}
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.KickoffInput) (activities.KickoffResult, error) {
		mu.Lock()
		defer mu.Unlock()
		kickAttempts = append(kickAttempts, in.Attempt)
		if n := len(kickAttempts); n <= len(errs) {
			return activities.KickoffResult{}, errs[n-1]
		}
		return activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil
	})
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		mu.Lock()
		defer mu.Unlock()
		pollAttempts = append(pollAttempts, in.Attempt)
		if len(pollAttempts) < 3 {
			return activities.PollResult{}, temporal.NewApplicationError("status: stalled", activities.ErrTransient)
		}
		return activities.PollResult{Done: true, Plan: p}, nil
	})
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/run"}, nil)
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil)
	env.ExecuteWorkflow(BulkExportWorkflow, input)
	require.NoError(t, env.GetWorkflowError())
	require.Equal(t, []int32{1, 2, 2, 3}, kickAttempts, "the 429 must not count as a failure")
	require.Equal(t, []int32{1, 2, 3}, pollAttempts)
	var res ExportResult
	require.NoError(t, env.GetWorkflowResult(&res))
	require.True(t, strings.Contains(strings.Join(res.Warnings, "\n"), "kick-off got no answer"), "warnings: %q", res.Warnings)
}

// A partial export (the server's error[] counts resources it could not
// export) and the manifest's timestamp warnings reach the workflow's result,
// not only _manifest.json: the person who started the export reads them.
func TestResultNamesPartialExportAndManifestWarnings(t *testing.T) {
	p := plan(map[string]int{"Patient": 1}, 1, 0)
	p.Warnings = []string{"the server's Expires header had already passed"}
	env := newEnv()
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil)
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil)
	download := fileFor(p)
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		r, err := download(ctx, in)
		if r.Kind == activities.KindError {
			r.Failed = 7
		}
		return r, err
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/run"}, nil)
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil)
	env.ExecuteWorkflow(BulkExportWorkflow, input)
	require.NoError(t, env.GetWorkflowError())
	var res ExportResult
	require.NoError(t, env.GetWorkflowResult(&res))
	require.EqualValues(t, 7, res.Totals.Failed)
	all := strings.Join(res.Warnings, "\n")
	require.Contains(t, all, "could not export 7 resource(s)")
	require.Contains(t, all, "Expires header had already passed")
}

// Issue 12 §3: what can be checked before the server does hours of work is
// checked first: a refused target (a committed run folder, an unwritable
// output, credentials that do not resolve) fails the export at once,
// non-retryably, and no kick-off is ever sent.
func TestCheckTargetRefusesBeforeTheKickoff(t *testing.T) {
	s := testsuite.WorkflowTestSuite{}
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(BulkExportWorkflow)
	env.RegisterWorkflow(DownloadChunkWorkflow)
	env.RegisterActivity(&activities.Activities{})
	env.OnActivity(a.CheckTarget, mock.Anything, mock.Anything).Return(
		temporal.NewNonRetryableApplicationError("the run folder /out/r1 is already committed", "RunCommitted", nil)).Once()
	var kicks atomic.Int32
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		kicks.Add(1)
		return activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil
	}).Maybe()
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Maybe()
	env.ExecuteWorkflow(BulkExportWorkflow, input)
	err := env.GetWorkflowError()
	require.Error(t, err)
	require.Contains(t, err.Error(), "already committed")
	require.True(t, isType(err, "RunCommitted"), "want the RunCommitted failure, got %v", err)
	require.Zero(t, kicks.Load(), "no kick-off may be sent when the target is refused")
}

// The UI's current details speak as the CLI does: thousands separators and
// MiB/GiB, not raw byte counts (issue 12 §5).
func TestCurrentDetailsAreHumanReadable(t *testing.T) {
	p := plan(map[string]int{"Patient": 150}, 0, 0)
	env := newEnv()
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil)
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil)
	download := fileFor(p)
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		r, err := download(ctx, in)
		r.Bytes = 3 << 20
		return r, err
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/run"}, nil)
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil)
	env.ExecuteWorkflow(BulkExportWorkflow, input)
	require.NoError(t, env.GetWorkflowError())
	v, err := env.QueryWorkflow("__temporal_workflow_metadata")
	require.NoError(t, err)
	var md sdkpb.WorkflowMetadata
	require.NoError(t, v.Get(&md))
	require.Equal(t, "**Done**: committed 150 files, 1,500 resources, 450.0 MiB to /out/run", md.GetCurrentDetails())
}
