package workflows

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
)

// Settings resolved when the export started travel in ResumeState and win
// over today's defaults and over the input's options: a continued run on a
// newer worker downloads exactly as the export was started.
func TestResolvedSettingsSurviveContinueAsNew(t *testing.T) {
	p := plan(map[string]int{"Observation": 5}, 0, 0)
	env := newEnv()
	var mu sync.Mutex
	var layouts []string
	chunks := 0
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		mu.Lock()
		layouts = append(layouts, in.Layout.Format)
		mu.Unlock()
		return fileFor(p)(ctx, in)
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(func(context.Context, activities.RecordChunkInput) error {
		mu.Lock()
		chunks++
		mu.Unlock()
		return nil
	})
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CommitInput) (activities.CommitResult, error) {
		require.Equal(t, 3, in.Chunks, "the commit reads the chunks the carried settings made")
		return activities.CommitResult{Location: "/out/r1"}, nil
	}).Once()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	in := input // options empty: today's defaults would be 500 files per chunk, NDJSON, 2m
	in.Resume = &ResumeState{StatusURL: "https://ehr.example/status/1", Run: "r1",
		Settings: &Settings{Concurrency: 1, FilesPerChunk: 2, MaxFileAttempts: 3, HeartbeatTimeout: 7 * time.Second,
			MaxHistoryEvents: 5000, Layout: activities.Layout{Format: "parquet"}}}
	env.ExecuteWorkflow(BulkExportWorkflow, in)
	require.NoError(t, env.GetWorkflowError())
	require.Equal(t, 3, chunks, "5 files in chunks of 2")
	require.Len(t, layouts, 5)
	for i := range layouts {
		require.Equal(t, "parquet", layouts[i])
	}
}

// State written by a version that did not carry settings resolves them
// from the input, as that version did.
func TestResumeStateWithoutSettingsUsesTheInput(t *testing.T) {
	p := plan(map[string]int{"Observation": 5}, 0, 0)
	env := newEnv()
	var chunks []int
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.RecordChunkInput) error {
		chunks = append(chunks, len(in.Files))
		return nil
	})
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/r1"}, nil).Once()
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	in := input
	in.Options.FilesPerChunk = 4
	in.Resume = &ResumeState{StatusURL: "https://ehr.example/status/1", Run: "r1"}
	env.ExecuteWorkflow(BulkExportWorkflow, in)
	require.NoError(t, env.GetWorkflowError())
	require.ElementsMatch(t, []int{4, 1}, chunks)
}

// A new export resolves every default into its state.
func TestNewExportResolvesEverySetting(t *testing.T) {
	in := ExportInput{Server: "x", Format: "both", Options: Options{HeartbeatTimeout: "90s"}}
	require.Equal(t, Settings{Concurrency: 8, FilesPerChunk: 500, MaxFileAttempts: 10, HeartbeatTimeout: 90 * time.Second,
		MaxHistoryEvents: 5000, Layout: activities.Layout{Format: "both"}, RetryDeadline: 6 * time.Hour, ParallelChunks: 2}, in.settings())
}

// Version N's recorded history (testdata/v0/export-history.json was recorded
// before any GetVersion patch existed), cut after every workflow task, is
// taken over by today's code: at whatever point a worker upgrade lands,
// the running export continues on the new code without a non-determinism
// error. testsuite/e2e TestUpgradeMidDownload finishes such an export for
// real on a newer worker.
func TestVersionNHistoryContinuesAtEveryPoint(t *testing.T) {
	f, err := os.Open("testdata/v0/export-history.json")
	require.NoError(t, err)
	defer f.Close()
	full, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
	require.NoError(t, err)
	cuts := 0
	for i, ev := range full.Events {
		if ev.GetEventType() != enumspb.EVENT_TYPE_WORKFLOW_TASK_STARTED || i == len(full.Events)-1 {
			continue
		}
		prefix := &historypb.History{Events: full.Events[:i+1]}
		rp := worker.NewWorkflowReplayer()
		rp.RegisterWorkflowWithOptions(BulkExportWorkflow, workflow.RegisterOptions{Name: "BulkExportWorkflow"})
		rp.RegisterWorkflowWithOptions(DownloadChunkWorkflow, workflow.RegisterOptions{Name: "DownloadChunkWorkflow"})
		if err := rp.ReplayWorkflowHistoryWithOptions(nil, prefix, worker.ReplayWorkflowHistoryOptions{OriginalExecution: workflow.Execution{ID: ReplaySampleID}}); err != nil {
			t.Errorf("cut at event %d: %v", ev.GetEventId(), err)
		}
		cuts++
	}
	require.Greater(t, cuts, 5)
}

// setConcurrency changes the carried settings: the export keeps the new
// window after continue-as-new.
func TestSetConcurrencySurvivesContinueAsNew(t *testing.T) {
	env := newEnv()
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Wait: time.Hour}, nil)
	env.RegisterDelayedCallback(func() {
		env.UpdateWorkflow(SetConcurrencyUpdate, "u1", &testsuite.TestUpdateCallback{
			OnReject: func(err error) { t.Errorf("rejected: %v", err) }, OnAccept: func() {}, OnComplete: func(any, error) {},
		}, 3)
	}, 10*time.Minute)
	env.RegisterDelayedCallback(func() { env.SetContinueAsNewSuggested(true) }, 30*time.Minute)
	env.ExecuteWorkflow(BulkExportWorkflow, input)
	var can *workflow.ContinueAsNewError
	require.True(t, errors.As(env.GetWorkflowError(), &can), "want continue-as-new, got %v", env.GetWorkflowError())
	var next ExportInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	require.Equal(t, 3, next.Resume.Settings.Concurrency)
}
