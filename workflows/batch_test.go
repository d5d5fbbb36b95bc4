package workflows

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
)

// chunkRun runs one DownloadChunkWorkflow of files files (one type) with
// mocked activities: hints answers ChunkHints, a batch stages every file
// but those in fail, and a single download stages any file. It returns
// what was called and the indexes RecordChunk was given.
type chunkCalls struct {
	mu       sync.Mutex
	hints    int
	batches  [][2]int // first, count
	singles  []int
	prior    map[int]string // PriorFailure of the singles that had one
	recorded []activities.FileResult
}

func runChunk(t *testing.T, files, window int, hints *activities.ChunkHints, old bool, fail map[int]bool, batchErr error) (*chunkCalls, ChunkResult) {
	t.Helper()
	var ts testsuite.WorkflowTestSuite
	env := ts.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(DownloadChunkWorkflow)
	env.RegisterActivity(&activities.Activities{})
	if old {
		env.OnGetVersion(versionBatchSmallFiles, workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	}
	c := &chunkCalls{prior: map[int]string{}}
	result := func(i int) activities.FileResult {
		return activities.FileResult{Index: i, Kind: activities.KindOutput, Type: "Observation", Path: fmt.Sprintf("Observation/%d", i),
			Resources: 100, Bytes: 70_000, Attempt: 1}
	}
	env.OnActivity(a.ChunkHints, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ChunkHintsInput) (activities.ChunkHints, error) {
		c.mu.Lock()
		c.hints++
		c.mu.Unlock()
		if hints == nil {
			return activities.ChunkHints{}, errors.New("no plan")
		}
		return *hints, nil
	}).Maybe()
	env.OnActivity(a.DownloadBatch, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.BatchInput) (activities.BatchResult, error) {
		c.mu.Lock()
		c.batches = append(c.batches, [2]int{in.First, in.Count})
		c.mu.Unlock()
		if batchErr != nil {
			return activities.BatchResult{}, batchErr
		}
		var r activities.BatchResult
		for i := in.First; i < in.First+in.Count; i++ {
			if fail[i] {
				r.Failed = append(r.Failed, activities.FileFailure{Index: i, Type: activities.ErrTruncatedFile, Error: "cut", Signature: fmt.Sprintf("count 1 %d", i)})
				continue
			}
			r.Files = append(r.Files, result(i))
		}
		return r, nil
	}).Maybe()
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		c.mu.Lock()
		c.singles = append(c.singles, in.Index)
		if in.PriorFailure != "" {
			c.prior[in.Index] = in.PriorFailure
		}
		c.mu.Unlock()
		return result(in.Index), nil
	}).Maybe()
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.RecordChunkInput) error {
		c.recorded = in.Files
		return nil
	}).Once()
	env.ExecuteWorkflow(DownloadChunkWorkflow, ChunkInput{Target: activities.Target{Run: "r"}, First: 1000, Count: files, Concurrency: window, MaxAttempts: 5,
		HeartbeatTimeout: time.Minute})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res ChunkResult
	require.NoError(t, env.GetWorkflowResult(&res))
	// Every file recorded exactly once, whatever ran it.
	var got []int
	for _, r := range c.recorded {
		got = append(got, r.Index)
	}
	slices.Sort(got)
	want := make([]int, files)
	for i := range want {
		want[i] = 1000 + i
	}
	require.Equal(t, want, got, "every file of the chunk recorded once")
	require.Equal(t, files, res.Totals.Files)
	return c, res
}

func sizedHints(files int, resources, bytes int64) *activities.ChunkHints {
	h := &activities.ChunkHints{Groups: []activities.Group{{Kind: activities.KindOutput, Type: "Observation", First: 1000, Count: files}}}
	for range files {
		h.Resources = append(h.Resources, resources)
		h.Bytes = append(h.Bytes, bytes)
	}
	return h
}

// Issue 14 §1: small files (the manifest's count says 100 resources) share
// activities: a few batches instead of one activity per file, and no
// DownloadFile at all.
func TestSmallFilesShareActivities(t *testing.T) {
	c, _ := runChunk(t, 400, 8, sizedHints(400, 100, -1), false, nil, nil)
	require.Equal(t, 1, c.hints)
	require.LessOrEqual(t, len(c.singles), 1, "no file needed an activity of its own (but perhaps the very last)")
	require.NotEmpty(t, c.batches)
	require.LessOrEqual(t, len(c.batches), 60, "400 small files in a window of 8 take a few dozen activities, not hundreds")
	for _, b := range c.batches {
		require.LessOrEqual(t, b[1], maxBatch)
	}
}

// Big files (10,000 resources each, or 8 MB by fileSize) keep one activity
// each: batching them would only coarsen retries.
func TestBigFilesKeepOneActivityEach(t *testing.T) {
	for name, h := range map[string]*activities.ChunkHints{
		"by count":    sizedHints(20, 10_000, -1),
		"by fileSize": sizedHints(20, -1, 8<<20),
	} {
		t.Run(name, func(t *testing.T) {
			c, _ := runChunk(t, 20, 4, h, false, nil, nil)
			require.Empty(t, c.batches)
			require.Len(t, c.singles, 20)
		})
	}
}

// A file that fails inside its batch is retried alone through DownloadFile
// (not its whole batch), and its retry counts.
func TestFailedBatchMemberRetriesAlone(t *testing.T) {
	c, res := runChunk(t, 40, 2, sizedHints(40, 100, -1), false, map[int]bool{1005: true, 1031: true}, nil)
	require.NotEmpty(t, c.batches)
	// The last files of a chunk may go alone anyway (the window's share of
	// what is left is 1): the files downloaded both in a batch and alone
	// are exactly the failed ones.
	var again []int
	for _, i := range c.singles {
		for _, b := range c.batches {
			if i >= b[0] && i < b[0]+b[1] {
				again = append(again, i)
			}
		}
	}
	slices.Sort(again)
	require.Equal(t, []int{1005, 1031}, again, "only the failed files are downloaded again, each alone")
	require.Equal(t, 2, res.Totals.Retries, "the try in the batch counts as an attempt")
	require.Equal(t, map[int]string{1005: "count 1 1005", 1031: "count 1 1031"}, c.prior,
		"the failure in the batch travels with the retry: the same one again is permanent")
}

// A batch that fails as a whole (its retries spent) leaves each of its
// files to DownloadFile: nothing is lost, nothing doubled.
func TestFailedBatchFallsBackToSingles(t *testing.T) {
	c, _ := runChunk(t, 30, 2, sizedHints(30, 100, -1), false, nil, errors.New("sink unavailable"))
	require.NotEmpty(t, c.batches)
	require.Len(t, c.singles, 30)
}

// Without sizes in the manifest, the chunk learns them: the first files of
// a type go one per activity, then the rest of that type are grouped by
// their mean size. Without hints at all (ChunkHints failed), every file has
// its own activity, as before.
func TestUnknownSizesAreLearned(t *testing.T) {
	c, _ := runChunk(t, 50, 1, sizedHints(50, -1, -1), false, nil, nil)
	require.Equal(t, learnAfter, len(c.singles), "learn from the first files of the type")
	require.NotEmpty(t, c.batches, "then group the rest")

	c, _ = runChunk(t, 12, 2, nil, false, nil, nil)
	require.Empty(t, c.batches)
	require.Len(t, c.singles, 12)
}

// Exports running when this change is deployed replay: a chunk whose
// history predates the batch-small-files patch downloads one file per
// activity and never asks for hints (the replay corpus, testdata/, holds
// real histories of that version; TestRecordedHistoriesReplay).
func TestChunkBeforeBatchPatchDownloadsOneFilePerActivity(t *testing.T) {
	c, _ := runChunk(t, 30, 4, sizedHints(30, 100, -1), true, nil, nil)
	require.Zero(t, c.hints)
	require.Empty(t, c.batches)
	require.Len(t, c.singles, 30)
}

// The planner alone: budgets per batch, the window's share of what is left,
// unknown and big files alone.
func TestBatchPlanner(t *testing.T) {
	hints := func(res, bytes []int64) activities.ChunkHints {
		return activities.ChunkHints{Groups: []activities.Group{{Kind: "output", Type: "Observation", First: 0, Count: len(res)}}, Resources: res, Bytes: bytes}
	}
	rep := func(v int64, n int) []int64 { return slices.Repeat([]int64{v}, n) }
	for _, tc := range []struct {
		name           string
		res, bytes     []int64
		next, end, win int
		want           int
	}{
		{"window share", rep(100, 400), rep(-1, 400), 0, 400, 8, 50},
		{"at most maxBatch", rep(10, 2000), rep(-1, 2000), 0, 2000, 1, maxBatch},
		{"resource budget", rep(2000, 100), rep(-1, 100), 0, 100, 1, batchResources / 2000},
		{"byte budget", rep(-1, 100), rep(2<<20, 100), 0, 100, 1, batchBytes / (2 << 20)},
		{"big file alone", rep(10_000, 10), rep(-1, 10), 0, 10, 1, 1},
		{"unknown alone", rep(-1, 10), rep(-1, 10), 0, 10, 1, 1},
		{"stops at a big one", []int64{100, 100, 50_000, 100}, rep(-1, 4), 0, 4, 1, 2},
		{"last file", rep(100, 10), rep(-1, 10), 9, 10, 1, 1},
		{"tail takes minBatch", rep(100, 10), rep(-1, 10), 3, 10, 8, minBatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newBatchPlanner(0, len(tc.res), hints(tc.res, tc.bytes))
			require.Equal(t, tc.want, p.next(tc.next, tc.end, tc.win))
		})
	}
	// Learning: unknown until learnAfter files of the type are in.
	p := newBatchPlanner(0, 10, hints(rep(-1, 10), rep(-1, 10)))
	for i := range learnAfter {
		require.Equal(t, 1, p.next(i, 10, 1))
		p.learn(activities.FileResult{Kind: "output", Type: "Observation", Resources: 100, Bytes: 70_000})
	}
	require.Equal(t, 10-learnAfter, p.next(learnAfter, 10, 1))
	require.Nil(t, newBatchPlanner(0, 10, activities.ChunkHints{}), "no hints, no batches")
}

// A batch member whose failure no retry can fix (here an expired link)
// fails the chunk at once with its error's type, so the parent refreshes
// the links as it does for DownloadFile's FileGone; and a retryable one
// has options.maxFileAttempts in all, its try in the batch included.
func TestBatchMemberFailuresKeepTheirTypeAndAttemptBudget(t *testing.T) {
	for _, tc := range []struct {
		name        string
		failType    string
		maxAttempts int
		wantSingles int
	}{
		{"non-retryable fails at once", activities.ErrFileGone, 5, 0},
		{"retryable, 2 attempts: 1 alone", activities.ErrTruncatedFile, 2, 1},
		{"retryable, 1 attempt: none alone", activities.ErrTruncatedFile, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ts testsuite.WorkflowTestSuite
			env := ts.NewTestWorkflowEnvironment()
			env.RegisterWorkflow(DownloadChunkWorkflow)
			env.RegisterActivity(&activities.Activities{})
			env.OnActivity(a.ChunkHints, mock.Anything, mock.Anything).Return(*sizedHints(10, 100, -1), nil)
			env.OnActivity(a.DownloadBatch, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.BatchInput) (activities.BatchResult, error) {
				var r activities.BatchResult
				for i := in.First; i < in.First+in.Count; i++ {
					if i == 1003 {
						r.Failed = append(r.Failed, activities.FileFailure{Index: i, Type: tc.failType, Error: "file 1003 went wrong"})
						continue
					}
					r.Files = append(r.Files, activities.FileResult{Index: i, Kind: activities.KindOutput, Type: "Observation", Resources: 100, Attempt: 1})
				}
				return r, nil
			})
			var mu sync.Mutex
			singles := 0
			env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.DownloadInput) (activities.FileResult, error) {
				mu.Lock()
				singles++
				mu.Unlock()
				return activities.FileResult{}, temporal.NewApplicationError("still cut", activities.ErrTruncatedFile)
			}).Maybe()
			env.ExecuteWorkflow(DownloadChunkWorkflow, ChunkInput{Target: activities.Target{Run: "r"}, First: 1000, Count: 10, Concurrency: 1,
				MaxAttempts: tc.maxAttempts, HeartbeatTimeout: time.Minute})
			require.True(t, env.IsWorkflowCompleted())
			err := env.GetWorkflowError()
			require.Error(t, err)
			require.Contains(t, err.Error(), "failed after its retries")
			require.Equal(t, tc.wantSingles, singles, "tries of the failed file alone")
			if tc.wantSingles == 0 {
				require.True(t, isType(err, tc.failType), "the chunk's error keeps the file's error type %s: %v", tc.failType, err)
			}
		})
	}
}
