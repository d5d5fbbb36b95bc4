package workflows

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"

	"github.com/bulkflow/bulkflow/activities"
)

// worstFile is a file of its own resource type whose lake output spans 20
// years x 12 months, in Parquet and NDJSON: 480 objects.
func worstFile(i int) activities.FileResult {
	f := activities.FileResult{Index: i, Kind: activities.KindOutput, Type: fmt.Sprintf("Type%s%d", strings.Repeat("x", 40), i),
		Resources: 1 << 40, Bytes: 1 << 50, Attempt: 10, Unsubsetted: 1 << 40}
	switch i % 3 {
	case 1:
		f.Kind, f.Severity = activities.KindError, map[string]int64{"fatal": 1, "error": 1, "warning": 1, "information": 1, fmt.Sprint("x", i): 1}
	case 2:
		f.Kind, f.Deleted = activities.KindDeleted, map[string]int64{f.Type: 1 << 40}
	}
	for y := range 20 {
		for m := range 12 {
			for _, format := range []string{"parquet", "ndjson"} {
				f.Parts = append(f.Parts, activities.Part{Path: fmt.Sprintf("%s/year=%d/month=%02d/%s-%04d.%s", f.Type, 2000+y, m+1, f.Type, i, format),
					Format: format, Rows: 1 << 30, Bytes: 1 << 40, SHA256: strings.Repeat("f", 64), Partition: fmt.Sprintf("year=%d/month=%02d", 2000+y, m+1)})
			}
		}
	}
	return f
}

// Issue 13 §5: what a chunk hands its parent stays far below Temporal's
// 2 MB payload limit in the worst case: 500 files, each of another
// resource type and split into 480 lake objects, error and deleted files
// adding severities and deletion types. The per-object records never reach
// the parent: the chunk's result is totals by type only.
func TestWorstCaseChunkResultIsSmall(t *testing.T) {
	const files = 500
	env := newEnv()
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		return worstFile(in.Index), nil
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil).Once()
	env.ExecuteWorkflow(DownloadChunkWorkflow, ChunkInput{Target: activities.Target{Run: "r"}, First: 0, Count: files, Concurrency: 64, MaxAttempts: 1})
	require.NoError(t, env.GetWorkflowError())
	var raw json.RawMessage
	require.NoError(t, env.GetWorkflowResult(&raw))
	var res ChunkResult
	require.NoError(t, json.Unmarshal(raw, &res))
	require.Equal(t, files, res.Totals.Files)
	t.Logf("chunk result: %d bytes", len(raw))
	if len(raw) > 256<<10 {
		t.Errorf("a worst-case chunk of %d files returns %d bytes to its parent; want under 256 KiB", files, len(raw))
	}
}
