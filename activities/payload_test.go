package activities

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
)

// payloadBudget is what one activity input or result may take in Temporal
// history: far below the 2 MB payload limit, and small enough that a
// 500-file chunk's history stays within a few MB.
const payloadBudget = 512 << 10

// The worst case of issue 13 §5: a file whose resources spread over ten
// years of monthly partitions, written as NDJSON and Parquet, becomes 240
// lake objects. What DownloadFile returns for it, and the RecordChunk input
// of a 500-file chunk of such files, must stay far below Temporal's 2 MB
// payload limit: the objects' records are staged (by reference), not carried.
func TestWorstCasePayloadsStaySmall(t *testing.T) {
	const months = 120
	var body strings.Builder
	for i := range 4 * months {
		m := i % months
		fmt.Fprintf(&body, `{"resourceType":"Observation","id":"o%d","meta":{"lastUpdated":"%04d-%02d-15T00:00:00Z"},"status":"final"}`+"\n", i, 2015+m/12, m%12+1)
	}
	f := newFixture(t)
	f.bodies["/o"] = body.String()
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/o", Count: 4 * months, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
	layout := Layout{Format: "both", PartitionBy: "lastUpdated"}
	r, err := f.downloadWith(0, layout)
	if err != nil {
		t.Fatal(err)
	}
	if r.Resources != 4*months {
		t.Fatalf("%d resources, want %d", r.Resources, 4*months)
	}
	size := func(v any) int {
		p, err := converter.GetDefaultDataConverter().ToPayload(v)
		if err != nil {
			t.Fatal(err)
		}
		return p.Size()
	}
	one := size(r)
	t.Logf("DownloadFile result for a file of %d partitions × 2 formats: %d bytes", months, one)
	// 500 such results are in the chunk's history: 1 KiB each keeps it at
	// half a MB.
	if one > 1<<10 {
		t.Errorf("DownloadFile's result is %d bytes for one file: above 1 KiB, a 500-file chunk's history holds %d KiB of them", one, 500*one>>10)
	}
	files := make([]FileResult, 500)
	for i := range files {
		files[i] = r
		files[i].Index = i
	}
	in := RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: files}
	if n := size(in); n > payloadBudget {
		t.Errorf("RecordChunk's input for 500 such files is %d KiB, the budget is %d KiB", n>>10, payloadBudget>>10)
	} else {
		t.Logf("RecordChunk input for 500 files: %d KiB", n>>10)
	}

	// The staged record keeps every object: RecordChunk and Commit see them.
	ctx := context.Background()
	if err := f.acts.RecordChunk(ctx, RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: []FileResult{r}}); err != nil {
		t.Fatal(err)
	}
	s, err := f.acts.sinkFor("")
	if err != nil {
		t.Fatal(err)
	}
	recorded, err := readChunks(ctx, s, "run", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(recorded) != 1 || len(recorded[0].Parts) != 2*months {
		t.Fatalf("the chunk record lists %d files with %d objects, want 1 with %d", len(recorded), len(recorded[0].Parts), 2*months)
	}
	var rows int64
	for _, p := range recorded[0].Parts {
		if p.Format == "ndjson" {
			rows += p.Rows
		}
	}
	if rows != 4*months {
		t.Errorf("the recorded NDJSON objects hold %d rows, want %d", rows, 4*months)
	}
}

// downloadWith runs DownloadFile like fixture.download, with a lake layout.
func (f *fixture) downloadWith(index int, layout Layout) (FileResult, error) {
	var env testsuite.WorkflowTestSuite
	aenv := env.NewTestActivityEnvironment()
	aenv.RegisterActivity(f.acts)
	v, err := aenv.ExecuteActivity(f.acts.DownloadFile, DownloadInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Index: index, Layout: layout})
	if err != nil {
		return FileResult{}, err
	}
	var r FileResult
	return r, v.Get(&r)
}
