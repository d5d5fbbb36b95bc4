package activities

import (
	"context"
	"strings"
	"testing"
)

// TestViewsFileLinesStillChecked: a file of a type a view reads is
// validated by the views' decode (viewFile.writeChecked), not by the NDJSON
// validator's own pass; every line must still be checked as before, with
// the same failure as the same file without views: invalid JSON, a wrong
// or repeated resourceType, a repeated id, a count that does not match.
func TestViewsFileLinesStillChecked(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		want []string
	}{
		{"invalid JSON", obs("a") + "\n" + `{"resourceType":"Observation","id":"b",}` + "\n", []string{"line 2", "invalid JSON"}},
		{"wrong type", obs("a") + "\n" + `{"resourceType":"Patient","id":"b"}` + "\n", []string{"line 2", `"Patient"`}},
		{"repeated resourceType", obs("a") + "\n" + `{"resourceType":"Observation","resourceType":"Observation","id":"b"}` + "\n", []string{"line 2", "duplicate top-level resourceType"}},
		{"not an object", obs("a") + "\n" + `["Observation"]` + "\n", []string{"line 2"}},
		{"repeated id", obs("a") + "\n" + obs("b") + "\n" + obs("a") + "\n", []string{"lines 1 and 3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var msgs [2]string
			for i, withViews := range []bool{false, true} {
				f := newFixture(t)
				f.bodies["/f"] = tc.body
				n := strings.Count(tc.body, "\n")
				f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: int64(n), HasCount: true, Path: "Observation/Observation-0001.ndjson"})
				layout := Layout{Format: "parquet"} // the lake path, as views take
				if withViews {
					if err := f.acts.CheckTarget(context.Background(), CheckTargetInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Views: []string{bpView}}); err != nil {
						t.Fatal(err)
					}
					names, _ := ViewNames([]string{bpView})
					layout.Views = names
				}
				_, err := f.runDownload(0, 3, layout)
				if err == nil {
					t.Fatalf("views %v: the file was accepted", withViews)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("views %v: %v lacks %q", withViews, err, w)
					}
				}
				msgs[i] = strings.ReplaceAll(err.Error(), f.srv.URL, "SERVER")
			}
			if msgs[0] != msgs[1] {
				t.Errorf("with views the file fails otherwise:\n%s\nwithout:\n%s", msgs[1], msgs[0])
			}
		})
	}
}
