package activities

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/sink"
	"github.com/bulkflow/bulkflow/internal/sink/gcstest"
)

func (f *fixture) downloadGen(index, gen int) (FileResult, error) {
	var env testsuite.WorkflowTestSuite
	aenv := env.NewTestActivityEnvironment()
	aenv.RegisterActivity(f.acts)
	v, err := aenv.ExecuteActivity(f.acts.DownloadFile, DownloadInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Index: index, Generation: gen})
	if err != nil {
		return FileResult{}, err
	}
	var r FileResult
	return r, v.Get(&r)
}

// TestCommitTakesEachFileFromItsGeneration: a restarted plan (generation 3)
// downloads a file while a late writer of the abandoned plan (generation 0)
// stages the same name afterwards with other content. The commit promotes
// generation 3's file; and a staged file altered before the commit fails it,
// non-retryable, naming the file, with nothing committed.
func TestCommitTakesEachFileFromItsGeneration(t *testing.T) {
	const path = "Observation/Observation-0001.ndjson"
	current := obs("new") + "\n"
	for _, alter := range []bool{false, true} {
		t.Run(map[bool]string{false: "late writer of an older generation", true: "staged file altered"}[alter], func(t *testing.T) {
			f := newFixture(t)
			f.bodies["/o"] = current
			f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/o", Count: 1, HasCount: true, Path: path})
			r, err := f.downloadGen(0, 3)
			if err != nil {
				t.Fatal(err)
			}
			if r.Generation != 3 {
				t.Fatalf("result generation = %d, want 3", r.Generation)
			}
			staged := filepath.Join(f.out, ".staging", "run", "g3", filepath.FromSlash(path))
			if b, err := os.ReadFile(staged); err != nil || string(b) != current {
				t.Fatalf("generation 3 staged %q, %v at %s", b, err, staged)
			}
			f.bodies["/o"] = obs("old") + "\n" // what the abandoned plan's writer gets
			if _, err := f.downloadGen(0, 0); err != nil {
				t.Fatal(err)
			}
			if alter {
				if err := os.WriteFile(staged, []byte(obs("bad")+"\n"), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			ctx := context.Background()
			if err := f.acts.RecordChunk(ctx, RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: []FileResult{r}}); err != nil {
				t.Fatal(err)
			}
			_, err = f.acts.Commit(ctx, CommitInput{Target: Target{Run: "run"}, Chunks: 1, Plan: Plan{TransactionTime: "2026-01-01T00:00:00Z", Files: 1}, Request: map[string]any{}})
			committed := filepath.Join(f.out, "run", filepath.FromSlash(path))
			if alter {
				var ae *temporal.ApplicationError
				if !errors.As(err, &ae) || !ae.NonRetryable() || ae.Type() != "StagedFileChanged" || !strings.Contains(err.Error(), path) {
					t.Fatalf("commit of an altered staged file = %v, want a non-retryable StagedFileChanged naming %s", err, path)
				}
				if _, err := os.Stat(filepath.Join(f.out, "run")); !os.IsNotExist(err) {
					t.Fatalf("the run is visible after a refused commit: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(committed); err != nil || string(b) != current {
				t.Fatalf("committed %q, %v; want the current generation's %q", b, err, current)
			}
		})
	}
}

// TestGCSCommitComparesTheStoredChecksum: on GCS the download records the
// CRC32C the service computed, and the commit compares it with the staged
// object's, without reading it: a same-size replacement fails the commit.
func TestGCSCommitComparesTheStoredChecksum(t *testing.T) {
	_, gcs := gcstest.StartFake(t, "lake")
	t.Setenv("STORAGE_EMULATOR_HOST", gcstest.EmulatorHost(gcs))
	const path = "Observation/Observation-0001.ndjson"
	body := obs("new") + "\n"
	f := newFixture(t)
	reg, _ := servers.Load("")
	f.acts = New(reg, "gs://lake/bulk", nil)
	f.bodies["/o"] = body
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/o", Count: 1, HasCount: true, Path: path})
	r, err := f.downloadGen(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := f.acts.sinkFor("")
	if err != nil {
		t.Fatal(err)
	}
	full, err := fullRecords(ctx, s, "run", []FileResult{r})
	if err != nil {
		t.Fatal(err)
	}
	if p := full[0].Parts; len(p) != 1 || !strings.HasPrefix(p[0].Stored, "crc32c:") {
		t.Fatalf("recorded parts %+v: want the service's CRC32C", p)
	}
	// A late writer of the same generation replaces it, same size.
	w, err := sink.AtGeneration(s, 2).Create(ctx, "run", path)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(strings.Replace(body, "new", "bad", 1)))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.acts.RecordChunk(ctx, RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: []FileResult{r}}); err != nil {
		t.Fatal(err)
	}
	_, err = f.acts.Commit(ctx, CommitInput{Target: Target{Run: "run"}, Chunks: 1, Plan: Plan{TransactionTime: "2026-01-01T00:00:00Z", Files: 1}, Request: map[string]any{}})
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != "StagedFileChanged" || !strings.Contains(err.Error(), path) {
		t.Fatalf("commit of a replaced staged object = %v, want StagedFileChanged naming %s", err, path)
	}
}
