package workflows

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
)

// eagerSeen records, per activity type, whether the workflow asked for it
// without eager execution.
type eagerSeen struct {
	interceptor.WorkerInterceptorBase
	mu       sync.Mutex
	disabled map[string][]bool
}

func (e *eagerSeen) InterceptWorkflow(ctx workflow.Context, next interceptor.WorkflowInboundInterceptor) interceptor.WorkflowInboundInterceptor {
	return &eagerInbound{WorkflowInboundInterceptorBase: interceptor.WorkflowInboundInterceptorBase{Next: next}, seen: e}
}

type eagerInbound struct {
	interceptor.WorkflowInboundInterceptorBase
	seen *eagerSeen
}

func (i *eagerInbound) Init(out interceptor.WorkflowOutboundInterceptor) error {
	return i.Next.Init(&eagerOutbound{WorkflowOutboundInterceptorBase: interceptor.WorkflowOutboundInterceptorBase{Next: out}, seen: i.seen})
}

type eagerOutbound struct {
	interceptor.WorkflowOutboundInterceptorBase
	seen *eagerSeen
}

func (o *eagerOutbound) ExecuteActivity(ctx workflow.Context, activityType string, args ...interface{}) workflow.Future {
	o.seen.mu.Lock()
	o.seen.disabled[activityType] = append(o.seen.disabled[activityType], workflow.GetActivityOptions(ctx).DisableEagerExecution)
	o.seen.mu.Unlock()
	return o.Next.ExecuteActivity(ctx, activityType, args...)
}

// Downloads go through matching to whichever worker is free: eager, they
// would all run on the worker that holds the (sticky) chunk workflow, and a
// fleet would not share a chunk (docs/operations.md, "Eager activity
// execution"). The chunk's own record keeps eager dispatch.
func TestDownloadsAreNeverEager(t *testing.T) {
	var ts testsuite.WorkflowTestSuite
	env := ts.NewTestWorkflowEnvironment()
	seen := &eagerSeen{disabled: map[string][]bool{}}
	env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{seen}})
	env.RegisterWorkflow(DownloadChunkWorkflow)
	env.RegisterActivity(&activities.Activities{})
	const files = 12
	result := func(i int) activities.FileResult {
		return activities.FileResult{Index: i, Kind: activities.KindOutput, Type: "Observation", Path: fmt.Sprintf("Observation/%d", i),
			Resources: 100, Bytes: 70_000, Attempt: 1}
	}
	env.OnActivity(a.ChunkHints, mock.Anything, mock.Anything).Return(*sizedHints(files, 100, -1), nil)
	// The batch fails its first file, which then retries alone in DownloadFile.
	env.OnActivity(a.DownloadBatch, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.BatchInput) (activities.BatchResult, error) {
		var r activities.BatchResult
		for i := in.First; i < in.First+in.Count; i++ {
			if i == 1000 {
				r.Failed = append(r.Failed, activities.FileFailure{Index: i, Type: activities.ErrTruncatedFile, Error: "cut", Signature: "count 1"})
				continue
			}
			r.Files = append(r.Files, result(i))
		}
		return r, nil
	})
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		return result(in.Index), nil
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.ExecuteWorkflow(DownloadChunkWorkflow, ChunkInput{Target: activities.Target{Run: "r"}, First: 1000, Count: files, Concurrency: 4, MaxAttempts: 5,
		HeartbeatTimeout: time.Minute})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())

	for _, typ := range []string{"DownloadBatch", "DownloadFile"} {
		require.NotEmpty(t, seen.disabled[typ], "%s was scheduled", typ)
		for _, d := range seen.disabled[typ] {
			require.True(t, d, "%s scheduled with eager execution allowed", typ)
		}
	}
	require.Equal(t, []bool{false}, seen.disabled["RecordChunk"], "the chunk's record keeps eager dispatch")
}
