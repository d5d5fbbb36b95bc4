package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// The three views of docs/views.md, as the worker's views folder has them.
var docViews = []string{"patient_demographics", "blood_pressure", "condition_codings"}

func docViewsDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../../docs/views")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// viewCounts is what a view table holds, reduced to numbers a plain-Go
// computation over the raw resources can reproduce.
type viewCounts struct {
	Rows  int64
	ByKey map[string]int64 // per value of the view's checked column
}

// checkedColumn is the column of each view whose values are counted.
var checkedColumn = map[string]string{"patient_demographics": "family", "blood_pressure": "component", "condition_codings": "system"}

// An export with the three views of docs/views.md: each view's committed
// Parquet tables, read back, hold exactly the rows an independent plain-Go
// computation over the same raw resources (the run's verified NDJSON) gives,
// per view and per value of one column. Then the same views with format
// "none", partitioned and one of them inline: only view tables are kept, the
// resources are still validated and counted, and the rows are the same.
func TestViewsInExport(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 80, LargeAttachments: -1})
	dir := docViewsDir(t)
	queue := startWorkerWith(t, t.TempDir(), func(a *activities.Activities) { a.ViewsDir = dir })
	want, _ := srv.Expected(testsuite.Query{Level: "system"})

	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Views: docViews})
	rep := assertExact(t, res, want) // also verifies every view table against the manifest
	expected := expectedViewCounts(t, res.Location, rep.Manifest)
	got := readViewTables(t, res.Location, rep.Manifest)
	for _, v := range docViews {
		if expected[v].Rows == 0 {
			t.Fatalf("view %s: no rows expected: the data does not exercise it", v)
		}
	}
	t.Logf("expected %+v", expected)
	compareViews(t, "views with NDJSON", got, expected)
	for _, mv := range rep.Manifest.Views {
		if want := map[string]string{"patient_demographics": "Patient", "blood_pressure": "Observation", "condition_codings": "Condition"}[mv.Name]; mv.Resource != want {
			t.Errorf("_manifest.json says view %s reads %q, want %q", mv.Name, mv.Resource, want)
		}
		if mv.Rows != got[mv.Name].Rows {
			t.Errorf("_manifest.json says view %s has %d rows, its tables %d", mv.Name, mv.Rows, got[mv.Name].Rows)
		}
	}
	if len(rep.Manifest.Views) != len(docViews) {
		t.Errorf("_manifest.json lists %d views, want %d: %+v", len(rep.Manifest.Views), len(docViews), rep.Manifest.Views)
	}

	// format none, partitioned by lastUpdated, condition_codings inline.
	inline, err := os.ReadFile(filepath.Join(dir, "condition_codings.json"))
	if err != nil {
		t.Fatal(err)
	}
	res2 := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Format: "none", PartitionBy: "lastUpdated",
		Views: []string{"patient_demographics", "blood_pressure", string(inline)}})
	rep2 := assertViewsOnly(t, res2, want)
	compareViews(t, "format none", readViewTables(t, res2.Location, rep2.Manifest), expected)
	partitioned := 0
	for _, f := range rep2.Manifest.Files {
		if f.Kind == activities.KindView && strings.Contains(f.Path, "/year=") {
			partitioned++
		}
	}
	if partitioned == 0 {
		t.Error("no view table in a year=/month= partition with partitionBy lastUpdated")
	}

	// An incremental run after deletions, views only: every tombstone's
	// resourceType/id is the getResourceKey() of the deleted resource's rows
	// in the full run's tables, so a consumer can drop them with a join.
	since := srv.Now()
	srv.Mutate(time.Hour, 20, 40)
	res3 := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Format: "none", Views: docViews,
		Since: since.UTC().Format(time.RFC3339Nano)})
	want3, _ := srv.Expected(testsuite.Query{Level: "system", Since: since})
	rep3 := assertViewsOnly(t, res3, want3)
	keys := map[string]map[string]bool{
		"Patient":   viewColumn(t, res.Location, rep.Manifest, "patient_demographics", "patient_id"),
		"Condition": viewColumn(t, res.Location, rep.Manifest, "condition_codings", "condition_id"),
	}
	joined := 0
	for _, f := range rep3.Manifest.Files {
		if f.Kind != activities.KindTombstone || keys[f.Type] == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(res3.Location, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var ts struct{ ResourceType, ID string }
			if err := json.Unmarshal([]byte(line), &ts); err != nil {
				t.Fatal(err)
			}
			if key := ts.ResourceType + "/" + ts.ID; !keys[f.Type][key] {
				t.Errorf("tombstone %s matches no row of the full run's view of %s", key, f.Type)
			}
			joined++
		}
	}
	if n := len(want3.Deleted["Patient"]) + len(want3.Deleted["Condition"]); joined != n || n == 0 {
		t.Errorf("%d Patient/Condition tombstones, %d deletions expected (0 proves nothing)", joined, n)
	}
}

// viewColumn collects the values of one column of a view's tables.
func viewColumn(t *testing.T, dir string, m activities.RunManifest, view, column string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, f := range m.Files {
		if f.View != view {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		pf, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		col := slices.IndexFunc(pf.Schema().Columns(), func(p []string) bool { return len(p) == 1 && p[0] == column })
		rd := parquet.NewReader(pf)
		rows := make([]parquet.Row, 64)
		for {
			n, err := rd.ReadRows(rows)
			for _, row := range rows[:n] {
				for _, v := range row {
					if v.Column() == col && !v.IsNull() {
						out[v.String()] = true
					}
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		rd.Close()
	}
	if len(out) == 0 {
		t.Fatalf("view %s: no values of %s", view, column)
	}
	return out
}

// assertViewsOnly checks a format-none run: it verifies against its manifest,
// holds no resource objects, and counted exactly the expected resources.
func assertViewsOnly(t *testing.T, res workflows.ExportResult, want testsuite.Expected) *verify.Report {
	t.Helper()
	if res.Status != "committed" {
		t.Fatalf("status %q", res.Status)
	}
	rep, err := verify.Run(res.Location, false)
	if err != nil {
		t.Fatalf("verify %s: %v", res.Location, err)
	}
	views := 0
	for _, f := range rep.Manifest.Files {
		switch f.Kind {
		case activities.KindOutput:
			t.Errorf("format none kept a resource object: %s", f.Path)
		case activities.KindView:
			views++
		}
	}
	if views == 0 {
		t.Error("format none: no view tables")
	}
	filepath.WalkDir(res.Location, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ndjson") && !strings.Contains(p, "/_") {
			t.Errorf("format none left a resource file: %s", p)
		}
		return nil
	})
	for typ, ids := range want.IDs {
		if res.Totals.Resources[typ] != int64(len(ids)) {
			t.Errorf("format none: %s: %d resources validated, %d expected", typ, res.Totals.Resources[typ], len(ids))
		}
	}
	return rep
}

func compareViews(t *testing.T, what string, got, want map[string]viewCounts) {
	t.Helper()
	for _, v := range docViews {
		g, w := got[v], want[v]
		if g.Rows != w.Rows {
			t.Errorf("%s: view %s has %d rows, the raw resources give %d", what, v, g.Rows, w.Rows)
		}
		for k, n := range w.ByKey {
			if g.ByKey[k] != n {
				t.Errorf("%s: view %s, %s = %q: %d rows, the raw resources give %d", what, v, checkedColumn[v], k, g.ByKey[k], n)
			}
		}
		if len(g.ByKey) != len(w.ByKey) {
			t.Errorf("%s: view %s: values of %s %v, the raw resources give %v", what, v, checkedColumn[v], g.ByKey, w.ByKey)
		}
	}
}

// expectedViewCounts computes, in plain Go over the run's NDJSON and without
// bulkflow's FHIRPath or views code, what each of the three views yields.
func expectedViewCounts(t *testing.T, dir string, m activities.RunManifest) map[string]viewCounts {
	t.Helper()
	out := map[string]viewCounts{}
	for _, v := range docViews {
		out[v] = viewCounts{ByKey: map[string]int64{}}
	}
	add := func(view, key string, n int64) {
		c := out[view]
		c.Rows += n
		if n > 0 {
			c.ByKey[key] += n
		}
		out[view] = c
	}
	type coding struct{ System, Code string }
	type codeable struct{ Coding []coding }
	for _, f := range m.Files {
		if f.Kind != activities.KindOutput || f.Format != "ndjson" {
			continue
		}
		fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		rd := ndjson.NewReader(fh)
		for {
			line, err := rd.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			var r struct {
				ResourceType string
				Name         json.RawMessage // a string in Organization
				Code         codeable
				Component    []struct{ Code codeable }
			}
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatal(err)
			}
			switch r.ResourceType {
			case "Patient":
				// one row per patient; family from the first official name
				var names []struct {
					Use    string
					Family *string
				}
				if err := json.Unmarshal(r.Name, &names); len(r.Name) > 0 && err != nil {
					t.Fatal(err)
				}
				family := ""
				for _, n := range names {
					if n.Use == "official" {
						if n.Family != nil {
							family = *n.Family
						}
						break
					}
				}
				add("patient_demographics", family, 1)
			case "Observation":
				panel := false
				for _, c := range r.Code.Coding {
					panel = panel || (c.System == "http://loinc.org" && c.Code == "85354-9")
				}
				if !panel {
					continue
				}
				for _, comp := range r.Component { // one row per component
					code := ""
					for _, c := range comp.Code.Coding {
						if c.System == "http://loinc.org" {
							code = c.Code
							break
						}
					}
					add("blood_pressure", code, 1)
				}
			case "Condition":
				for _, c := range r.Code.Coding { // one row per coding
					add("condition_codings", c.System, 1)
				}
			}
		}
		fh.Close()
	}
	// The patient view's checked column is only "has a family name or not":
	// the names themselves vary too much to be a useful key.
	pd := out["patient_demographics"]
	byKey := map[string]int64{}
	for k, n := range pd.ByKey {
		byKey[hasValue(k)] += n
	}
	pd.ByKey = byKey
	out["patient_demographics"] = pd
	return out
}

func hasValue(s string) string {
	if s == "" {
		return "null"
	}
	return "value"
}

// readViewTables reads every view table of a run back from its Parquet.
func readViewTables(t *testing.T, dir string, m activities.RunManifest) map[string]viewCounts {
	t.Helper()
	out := map[string]viewCounts{}
	for _, f := range m.Files {
		if f.Kind != activities.KindView {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		pf, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("%s: %v", f.Path, err)
		}
		col := -1
		for i, p := range pf.Schema().Columns() {
			if len(p) == 1 && p[0] == checkedColumn[f.View] {
				col = i
			}
		}
		if col < 0 {
			t.Fatalf("%s: no column %s", f.Path, checkedColumn[f.View])
		}
		c := out[f.View]
		if c.ByKey == nil {
			c.ByKey = map[string]int64{}
		}
		rd := parquet.NewReader(pf)
		rows := make([]parquet.Row, 64)
		for {
			n, err := rd.ReadRows(rows)
			for _, row := range rows[:n] {
				c.Rows++
				for _, v := range row {
					if v.Column() != col {
						continue
					}
					key := ""
					if !v.IsNull() {
						key = v.String()
					}
					if f.View == "patient_demographics" {
						key = hasValue(key)
					}
					c.ByKey[key]++
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f.Path, err)
			}
		}
		rd.Close()
		out[f.View] = c
	}
	return out
}

// The worker checks its views folder at start-up: a view that fails
// validation stops it (exit 2) naming the file and, in the spec's words,
// the problem; a missing folder too.
func TestWorkerRefusesBadViewsDir(t *testing.T) {
	requireE2E(t)
	workerBin := buildBinary(t, "./worker")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bp.json"), []byte(`{"resourceType":"ViewDefinition","name":"bp","resource":"Observation","status":"active","select":[{"column":[{"name":"_id","path":"id"}]}]}`), 0o644)
	for _, tc := range []struct{ dir, want string }{
		{dir, "bp.json: view \"bp\": select[0].column[0].name: sql-name: Name is limited to letters, numbers, or underscores"},
		{filepath.Join(dir, "missing"), "views folder: open "},
	} {
		cmd := exec.Command(workerBin, "-views-dir", tc.dir, "-output", t.TempDir(), "-temporal-address", "127.0.0.1:1", "-metrics-addr", "")
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), "worker: -views-dir: ") || !strings.Contains(string(out), tc.want) {
			t.Errorf("-views-dir %s: exit %d:\n%s", tc.dir, code, out)
		}
	}
}

// A view that fails validation refuses the export before the kick-off, not
// retried, with the spec's wording: the server never starts a job.
func TestInvalidViewRefusedBeforeKickoff(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 5, LargeAttachments: -1})
	queue := startWorkerWith(t, t.TempDir(), func(a *activities.Activities) { a.ViewsDir = docViewsDir(t) })
	bad := `{"resourceType":"ViewDefinition","name":"bp","resource":"Observation","status":"active","select":[{"column":[{"name":"id","path":"id"},{"name":"id","path":"status"}]}]}`
	for _, tc := range []struct {
		views []string
		want  string
	}{
		{[]string{"patient_demographics", bad}, `view "bp": select[0].column[1].name: Column Already Defined: "id"`},
		{[]string{"no_such_view"}, `the worker's views folder has no no_such_view.json`},
	} {
		began := time.Now()
		run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Views: tc.views})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := run.Get(ctx, nil)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "before the kick-off") {
			t.Errorf("views %v: err %v, want %q", tc.views[len(tc.views)-1][:min(20, len(tc.views[len(tc.views)-1]))], err, tc.want)
		}
		if d := time.Since(began); d > 30*time.Second {
			t.Errorf("refused after %s: it should be at once (not retried)", d)
		}
	}
	if k := srv.Stats().Kickoffs; k != 0 {
		t.Errorf("the server got %d kick-offs: an invalid view must be refused before", k)
	}
}
