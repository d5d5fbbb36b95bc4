package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// The attachments scenario (issue 15): a DocumentReference export whose
// documents are fetched ("attachments": "fetch") from the test server's
// Binary resources: about 0.8 stored documents per patient, 5% of them
// 1 MiB, the rest 0.2-2 KB. Its figures are documents stored per second
// and their MB/s, over the export's wall time and the worker's CPU time.
// Every run is checked: exactly the documents the server can serve on its
// own origin with a matching hash are stored.

const attachmentsScenario = "attachments"

func attachmentScenarios() []scenario {
	return []scenario{{Name: attachmentsScenario, About: "DocumentReference export with attachments fetch (~2,000 documents, ~200 MB at scale 1)",
		opts: func(s float64) testsuite.Options {
			return testsuite.Options{Patients: patients(2400, s), LargeAttachments: -1, Attachments: true, ResourcesPerFile: 500}
		},
		types: []string{"DocumentReference"}, input: workflows.ExportInput{Attachments: activities.AttachmentsFetch}}}
}

type attachmentRun struct {
	stored, bytes int64
	wall, cpu     float64
}

var attachmentRuns []attachmentRun

// attachmentFigures checks one run's attachments and keeps its figures
// (no-op for other scenarios).
func attachmentFigures(sc scenario, srv *testsuite.Server, res workflows.ExportResult, r runResult) error {
	if sc.Name != attachmentsScenario {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(res.Location, "_manifest.json"))
	if err != nil {
		return err
	}
	var m activities.RunManifest
	if err := json.Unmarshal(b, &m); err != nil || m.Attachments == nil {
		return fmt.Errorf("attachments: no attachments section in _manifest.json (%v)", err)
	}
	want, err := srv.Expected(testsuite.Query{Level: "system", Types: sc.types})
	if err != nil {
		return err
	}
	var n, bytes int64
	for _, e := range want.Attachments {
		if e.Servable && e.HashMatches && !e.SecondOrigin {
			n++
			bytes += int64(e.Size)
		}
	}
	if m.Attachments.Files != n || m.Attachments.Bytes != bytes {
		return fmt.Errorf("attachments: stored %d documents, %d bytes; the server serves %d, %d bytes", m.Attachments.Files, m.Attachments.Bytes, n, bytes)
	}
	attachmentRuns = append(attachmentRuns, attachmentRun{stored: n, bytes: bytes, wall: r.wall.Seconds(), cpu: (r.user + r.sys).Seconds()})
	return nil
}

// printAttachments prints the attachments line: medians of the runs.
func printAttachments(w io.Writer) {
	if len(attachmentRuns) == 0 {
		return
	}
	pick := func(f func(attachmentRun) float64) float64 { return medianOf(attachmentRuns, f) }
	r0 := attachmentRuns[0]
	fmt.Fprintf(w, "attachments: %d documents, %.1f MB stored per run; median of %d: %.0f documents/s, %.1f MB/s (wall, whole export); %.0f documents/cpu-s, %.1f MB/cpu-s (worker CPU)\n",
		r0.stored, float64(r0.bytes)/1e6, len(attachmentRuns),
		pick(func(r attachmentRun) float64 { return float64(r.stored) / r.wall }), pick(func(r attachmentRun) float64 { return float64(r.bytes) / 1e6 / r.wall }),
		pick(func(r attachmentRun) float64 { return float64(r.stored) / r.cpu }), pick(func(r attachmentRun) float64 { return float64(r.bytes) / 1e6 / r.cpu }))
}
