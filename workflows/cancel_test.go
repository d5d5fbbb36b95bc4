package workflows

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/activities"
)

// A cancelled export's summary counts the files that had finished in the
// chunk that was running, not only those of finished chunks.
func TestCancelledSummaryCountsFinishedFiles(t *testing.T) {
	p := plan(map[string]int{"Observation": 6}, 0, 0)
	env := newEnv()
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		if in.Index < 3 {
			return fileFor(p)(ctx, in)
		}
		<-ctx.Done() // the other three hang until cancelled
		return activities.FileResult{}, ctx.Err()
	})
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	env.RegisterDelayedCallback(env.CancelWorkflow, time.Second)
	in := input
	in.Options.Concurrency = 6
	env.ExecuteWorkflow(BulkExportWorkflow, in)
	var ce *temporal.CanceledError
	require.True(t, errors.As(env.GetWorkflowError(), &ce), "want cancelled, got %v", env.GetWorkflowError())
	var r ExportResult
	require.NoError(t, ce.Details(&r))
	require.Equal(t, "cancelled", r.Status)
	require.Equal(t, 3, r.Totals.Files)
	require.Equal(t, int64(30), r.Totals.ResourceCount())
}
