package e2e

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/sink/gcstest"
	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// Parquet and NDJSON side by side, partitioned by lastUpdated, plus
// tombstones from deleted[]: every object verifies against _manifest.json,
// the Parquet rows hold exactly the NDJSON resources, and the tombstones
// name exactly the deleted resources.
func TestLakeLayoutBothFormatsPartitioned(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 40, LargeAttachments: 1})
	since := srv.Now()
	srv.Mutate(time.Hour, 30, 10)
	queue, _ := startWorker(t, t.TempDir())
	in := workflows.ExportInput{BaseURL: srv.BaseURL(), Format: "both", PartitionBy: "lastUpdated", Gzip: true}
	res := runExport(t, queue, in)
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	rep := assertExact(t, res, want) // verifies NDJSON and Parquet objects, and that they agree
	parquets, partitions := 0, map[string]bool{}
	for _, f := range rep.Manifest.Files {
		if f.Format == "parquet" {
			parquets++
		}
		if f.Kind == activities.KindOutput && !strings.Contains(f.Path, "/year=") {
			t.Errorf("%s is not in a year=/month= partition", f.Path)
		}
		partitions[f.Partition] = true
	}
	if parquets == 0 || len(partitions) < 3 {
		t.Errorf("%d Parquet objects in %d partitions: the layout was not exercised", parquets, len(partitions))
	}

	// An incremental run: tombstones for the deletions.
	res2 := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Since: since.UTC().Format(time.RFC3339Nano), Format: "parquet"})
	want2, _ := srv.Expected(testsuite.Query{Level: "system", Since: since})
	rep2 := assertExact(t, res2, want2)
	for typ, ids := range want2.Deleted {
		got := rep2.Deleted[typ]
		if len(got) != len(ids) {
			t.Errorf("tombstones for %s: %d, want %d", typ, len(got), len(ids))
		}
		for id := range ids {
			if _, ok := got[id]; !ok {
				t.Errorf("no tombstone for %s/%s", typ, id)
			}
		}
	}
	if len(want2.Deleted) == 0 {
		t.Fatal("nothing deleted: the tombstone check proves nothing")
	}
}

// An export to Google Cloud Storage (fake-gcs-server, in process): the
// committed _manifest.json's counts match the objects' real row counts.
func TestExportToGCS(t *testing.T) {
	requireE2E(t)
	client, gcs := gcstest.StartFake(t, "lake")
	t.Setenv("STORAGE_EMULATOR_HOST", gcstest.EmulatorHost(gcs))
	srv := fhirServer(t, testsuite.Options{Patients: 30, LargeAttachments: -1})
	queue, _ := startWorker(t, t.TempDir())
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Output: "gs://lake/bulk", Format: "both"})
	if !strings.HasPrefix(res.Location, "gs://lake/bulk/") {
		t.Fatalf("location %q", res.Location)
	}
	prefix := strings.TrimPrefix(res.Location, "gs://lake/") + "/"
	bucket := client.Bucket("lake")
	open := verify.OpenFunc(func(name string) (io.ReadCloser, error) {
		return bucket.Object(prefix + name).NewReader(context.Background())
	})
	rep, err := verify.FS(open, true)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	for typ, n := range want.Counts {
		if len(rep.IDs[typ]) != n || rep.Manifest.Totals.Resources[typ] != int64(n) {
			t.Errorf("%s: %d in objects, %d in _manifest.json, %d expected", typ, len(rep.IDs[typ]), rep.Manifest.Totals.Resources[typ], n)
		}
	}
	// Nothing left in staging.
	it := bucket.Objects(context.Background(), nil)
	for {
		attrs, err := it.Next()
		if err != nil {
			break
		}
		if strings.Contains(attrs.Name, ".staging/") {
			t.Errorf("staging object left behind: %s", attrs.Name)
		}
	}
}
