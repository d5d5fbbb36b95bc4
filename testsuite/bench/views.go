package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// The views scenarios (issue 17 §3): the same ~200 MB system export with
// the three views of docs/views.md (patient demographics; blood pressure
// with forEach over component and value[x]; conditions with codings
// unnested) and without them, in the same bench run, so the cost of
// flattening reads as the ratio of the two MB per worker CPU-second.

// viewDocs are the views, sent inline (the bench's worker has no views folder).
var viewDocs = []string{"patient_demographics", "blood_pressure", "condition_codings"}

func init() { defaultScenarios = append(defaultScenarios, "views-off", "views") }

func viewScenarios() []scenario {
	const mb200 = 200e6 / bytesPerPatient
	opts := func(s float64) testsuite.Options {
		return testsuite.Options{Patients: patients(mb200, s), LargeAttachments: -1, NoGzip: true}
	}
	var inline []string
	root, err := moduleRoot()
	for _, v := range viewDocs {
		if err != nil {
			break
		}
		var b []byte
		if b, err = os.ReadFile(filepath.Join(root, "docs", "views", v+".json")); err == nil {
			var c bytes.Buffer
			if err = json.Compact(&c, b); err == nil {
				inline = append(inline, c.String())
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: the views scenario is unavailable:", err)
		return nil
	}
	return []scenario{
		{Name: "views-off", About: "system export, ~200 MB, NDJSON out, identity on the wire, no views (the baseline of \"views\")", opts: opts},
		{Name: "views", About: "the same, plus the 3 views of docs/views.md flattened to Parquet while the files stream", opts: opts,
			input: workflows.ExportInput{Views: inline}},
	}
}

// viewsRatio prints MB of NDJSON per worker CPU-second with and without
// views, measured in this bench run (issue 17 §3 target: >= 100 with views).
func viewsRatio(w io.Writer, rs []Result) {
	on := slices.IndexFunc(rs, func(r Result) bool { return r.Scenario == "views" })
	off := slices.IndexFunc(rs, func(r Result) bool { return r.Scenario == "views-off" })
	if on < 0 || off < 0 {
		return
	}
	fmt.Fprintf(w, "bench: views: %.1f MB of NDJSON per worker CPU-second with the 3 views, %.1f without (%.0f%%; target >= 100 with views)\n",
		rs[on].MBPerCPUSecond, rs[off].MBPerCPUSecond, 100*rs[on].MBPerCPUSecond/rs[off].MBPerCPUSecond)
}
