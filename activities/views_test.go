package activities

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/internal/servers"
)

const bpView = `{"resourceType":"ViewDefinition","name":"obs","resource":"Observation","status":"active",
 "select":[{"column":[{"name":"id","path":"getResourceKey()","type":"string"},{"name":"status","path":"status","type":"code"}]},
           {"forEach":"component","column":[{"name":"code","path":"code.coding.code.first()","type":"code"}]}]}`

// A view that fails validation is refused by the pre-flight, before the
// kick-off, with the spec's wording and where it is; a view the worker
// cannot find says what to do. Valid views are staged for the downloads.
func TestCheckTargetViews(t *testing.T) {
	docs, _ := filepath.Abs("../docs/views")
	renamed := t.TempDir()
	b, err := os.ReadFile(filepath.Join(docs, "blood_pressure.json"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(renamed, "bp.json"), b, 0o644)
	for _, tc := range []struct {
		name     string
		dir      string
		views    []string
		wantType string // "" = passes
		wantMsg  string
	}{
		{"named, from the folder", docs, []string{"patient_demographics", "blood_pressure", "condition_codings"}, "", ""},
		{"inline", "", []string{bpView}, "", ""},
		{"bad column name", "", []string{strings.Replace(bpView, `"name":"status"`, `"name":"_status"`, 1)}, "InvalidInput",
			`select[0].column[1].name: sql-name: Name is limited to letters, numbers, or underscores and cannot start with an underscore`},
		{"bad FHIRPath", "", []string{strings.Replace(bpView, `"path":"status"`, `"path":"status.where("`, 1)}, "InvalidInput", `select[0].column[1].path`},
		{"no resource", "", []string{strings.Replace(bpView, `"resource":"Observation",`, ``, 1)}, "InvalidInput", `resource`},
		{"inline without a name", "", []string{strings.Replace(bpView, `"name":"obs",`, ``, 1)}, "InvalidInput", `an inline view needs a "name"`},
		{"not in the folder", docs, []string{"nope"}, "InvalidInput", `the worker's views folder has no nope.json`},
		{"no folder", "", []string{"patient_demographics"}, "Config", `this worker has no views folder (-views-dir`},
		{"a path, not a name", docs, []string{"../views/blood_pressure"}, "InvalidInput", `give the name of a view`},
		{"named twice", docs, []string{"blood_pressure", "blood_pressure"}, "InvalidInput", `is named twice`},
		{"file and definition disagree", renamed, []string{"bp"}, "InvalidInput", `the definition is named "blood_pressure"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg, _ := servers.Load("")
			acts := New(reg, t.TempDir(), nil)
			acts.ViewsDir = tc.dir
			target := Target{Run: "r1"}
			err := acts.CheckTarget(context.Background(), CheckTargetInput{ServerRef: ServerRef{BaseURL: "https://ehr.example.org/fhir"}, Target: target, Views: tc.views})
			if tc.wantType == "" {
				if err != nil {
					t.Fatalf("want no error, got %v", err)
				}
				s, _ := acts.sinkFor("")
				names, _ := ViewNames(tc.views)
				vs, err := acts.loadViews(context.Background(), s, target, names)
				if err != nil || len(vs.views) != len(tc.views) {
					t.Fatalf("staged views: %v, %v", vs, err)
				}
				return
			}
			var ae *temporal.ApplicationError
			if !errors.As(err, &ae) || ae.Type() != tc.wantType || !ae.NonRetryable() {
				t.Fatalf("want a non-retryable %s error, got %v", tc.wantType, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("message %q lacks %q", err, tc.wantMsg)
			}
		})
	}
}

// A resource a view cannot flatten (here: two values in a column without
// "collection") fails its file at once, permanently, naming the file, the
// line and the view, never a value of the resource. Rows of the other
// resources and a format-none file without views are handled as designed.
func TestViewsInDownload(t *testing.T) {
	twoStatus := `{"resourceType":"ViewDefinition","name":"given","resource":"Observation","status":"active",
	 "select":[{"column":[{"name":"code","path":"code.coding.code","type":"code"}]}]}`
	one := `{"resourceType":"Observation","id":"a","status":"final","code":{"coding":[{"code":"x1"}]},"component":[{"code":{"coding":[{"code":"c1"}]}},{"code":{"coding":[{"code":"c2"}]}}]}`
	two := `{"resourceType":"Observation","id":"b","status":"final","code":{"coding":[{"code":"SECRET1"},{"code":"SECRET2"}]}}`
	for _, tc := range []struct {
		name     string
		views    []string
		format   string
		body     string
		wantErr  string
		wantRows map[string]int64 // view -> rows
	}{
		{"rows", []string{bpView}, "", one + "\n" + two + "\n", "", map[string]int64{"obs": 2}},
		{"format none", []string{bpView}, "none", one + "\n", "", map[string]int64{"obs": 2}},
		{"two values in a single column", []string{twoStatus}, "", one + "\n" + two + "\n", "Observation/Observation-0001.ndjson line 2: ", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			n := strings.Count(tc.body, "\n")
			f.bodies["/f"] = tc.body
			f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: int64(n), HasCount: true, Path: "Observation/Observation-0001.ndjson"})
			err := f.acts.CheckTarget(context.Background(), CheckTargetInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Views: tc.views})
			if err != nil {
				t.Fatal(err)
			}
			names, _ := ViewNames(tc.views)
			r, err := f.runDownload(0, 3, Layout{Format: tc.format, Views: names})
			if tc.wantErr != "" {
				wantFailure(t, err, ErrPermanent, true, tc.wantErr, `view "given" on Observation: column "code"`, "collection")
				if strings.Contains(err.Error(), "SECRET") {
					t.Errorf("a value of the resource is in the message: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			full := r
			if r.Record != "" {
				s, _ := f.acts.sinkFor("")
				recs, err := fullRecords(context.Background(), s, "run", []FileResult{r})
				if err != nil {
					t.Fatal(err)
				}
				full = recs[0]
			}
			got := map[string]int64{}
			for _, p := range full.Parts {
				if p.Kind == KindView {
					got[p.View] += p.Rows
					if _, err := os.Stat(filepath.Join(f.out, ".staging", "run", "data", filepath.FromSlash(p.Path))); err != nil {
						t.Errorf("view table %s not staged: %v", p.Path, err)
					}
				} else if tc.format == "none" {
					t.Errorf("format none kept %s", p.Path)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.wantRows) {
				t.Errorf("rows %v, want %v", got, tc.wantRows)
			}
			if full.Resources != int64(n) {
				t.Errorf("%d resources validated, want %d", full.Resources, n)
			}
			if tc.format == "none" && (!full.NotKept || len(fileParts(FileResult{NotKept: true})) != 0) {
				t.Errorf("format none: NotKept %v", full.NotKept)
			}
		})
	}
}

// Format none needs views; the layout says so.
func TestLayoutFormatNone(t *testing.T) {
	if err := (Layout{Format: "none"}).Validate(); err == nil || !strings.Contains(err.Error(), `name at least one view`) {
		t.Errorf("none without views: %v", err)
	}
	if err := (Layout{Format: "none", Views: []string{"v"}}).Validate(); err != nil {
		t.Errorf("none with views: %v", err)
	}
}

// The worker checks its views folder at start-up: every <name>.json
// compiles, or it names the file and the problem.
func TestCheckViewsDir(t *testing.T) {
	docs, _ := filepath.Abs("../docs/views")
	names, err := CheckViewsDir(docs)
	if err != nil || strings.Join(names, ",") != "blood_pressure,condition_codings,patient_demographics" {
		t.Fatalf("docs/views: %v, %v", names, err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "ok.json"), []byte(strings.Replace(bpView, `"name":"obs"`, `"name":"ok"`, 1)), 0o644)
	os.WriteFile(filepath.Join(bad, "broken.json"), []byte(strings.Replace(bpView, `"name":"obs"`, `"name":"broken","nope":1`, 1)), 0o644)
	os.WriteFile(filepath.Join(bad, "bad-name.json"), []byte(bpView), 0o644)
	os.WriteFile(filepath.Join(bad, "README.md"), []byte("not a view"), 0o644)
	_, err = CheckViewsDir(bad)
	for _, want := range []string{"broken.json: ", "bad-name.json: a view file is named <name>.json"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "ok.json") {
		t.Errorf("a valid view is reported: %v", err)
	}
	if _, err := CheckViewsDir(filepath.Join(bad, "missing")); err == nil {
		t.Error("a missing folder passes")
	}
}

// A file with views that is cut mid-way starts over on the retry (no Range
// resume): its view tables are rewritten under the same names, never
// appended to, so each resource's rows are there once.
func TestViewsRetryStartsOver(t *testing.T) {
	f := newFixture(t)
	body := ""
	for i := range 50 {
		body += fmt.Sprintf(`{"resourceType":"Observation","id":"o%d","status":"final","component":[{"code":{"coding":[{"code":"c"}]}}]}`, i) + "\n"
	}
	n := f.hostile(func(w http.ResponseWriter, r *http.Request, attempt int) {
		if attempt == 1 {
			cutAfter(w, body, len(body)/2, http.Header{"Etag": {`"v1"`}})
			return
		}
		w.Header().Set("Etag", `"v1"`)
		w.Write([]byte(body))
	})
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 50, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
	if err := f.acts.CheckTarget(context.Background(), CheckTargetInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Views: []string{bpView}}); err != nil {
		t.Fatal(err)
	}
	r, err := f.runDownload(0, 3, Layout{Views: []string{"obs"}})
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() != 2 {
		t.Fatalf("%d attempts, want 2", n.Load())
	}
	s, _ := f.acts.sinkFor("")
	recs, err := fullRecords(context.Background(), s, "run", []FileResult{r})
	if err != nil {
		t.Fatal(err)
	}
	var rows int64
	for _, p := range recs[0].Parts {
		if p.Kind == KindView {
			rows += p.Rows
			if st, err := os.Stat(filepath.Join(f.out, ".staging", "run", "data", filepath.FromSlash(p.Path))); err != nil || st.Size() != p.Bytes {
				t.Errorf("%s: staged %v, recorded %d bytes (%v)", p.Path, st, p.Bytes, err)
			}
		}
	}
	if rows != 50 || recs[0].Resumed {
		t.Errorf("%d view rows (resumed %v), want 50 from a fresh start", rows, recs[0].Resumed)
	}
}
