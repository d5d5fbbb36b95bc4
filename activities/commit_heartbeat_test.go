package activities

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
)

// Issue 13 §4: Commit heartbeats, so the workflow's short heartbeat timeout
// notices a worker that died mid-commit in seconds.
func TestCommitHeartbeats(t *testing.T) {
	f := newFixture(t)
	f.acts.HeartbeatEvery = 10 * time.Millisecond
	f.bodies["/o"] = obs("1") + "\n"
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/o", Count: 1, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
	r, err := f.download(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.acts.RecordChunk(context.Background(), RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: []FileResult{r}}); err != nil {
		t.Fatal(err)
	}
	var env testsuite.WorkflowTestSuite
	aenv := env.NewTestActivityEnvironment()
	aenv.RegisterActivity(f.acts)
	var beats atomic.Int32
	aenv.SetOnActivityHeartbeatListener(func(*activity.Info, converter.EncodedValues) { beats.Add(1) })
	in := CommitInput{Target: Target{Run: "run"}, Chunks: 1, Plan: Plan{TransactionTime: "2026-01-01T00:00:00Z", Files: 1}, Request: map[string]any{"level": "system"}}
	if _, err := aenv.ExecuteActivity(f.acts.Commit, in); err != nil {
		t.Fatal(err)
	}
	if beats.Load() == 0 {
		t.Error("Commit never heartbeated")
	}
}
