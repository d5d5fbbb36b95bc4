package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/internal/audit"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// The audit log in the output holds an event for every request the server
// recorded (retries and polls included), and nothing that is PHI.
func TestAuditLogCoversEveryRequest(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 20, LargeAttachments: -1, ExportDuration: 1500 * time.Millisecond, RetryAfter: 500 * time.Millisecond,
		Faults: "file:Observation=truncate-lines(n=2)@1; file:Condition=429(retry-after=1)@1; status=transient@2"})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Patients: []string{"Patient/" + firstPatient(t, srv)}, Level: "patient"})
	if res.Status != "committed" {
		t.Fatal(res.Status)
	}
	files, _ := filepath.Glob(filepath.Join(out, "_audit", res.Run, "*.ndjson"))
	if len(files) == 0 {
		t.Fatal("no audit log")
	}
	counts := map[string]int{}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var ev audit.Event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if ev.ExportID != res.Run || ev.Server == "" || ev.Timestamp.IsZero() {
				t.Errorf("event without identity: %s", line)
			}
			counts[ev.EventID]++
			// Resource content would bring its elements; the patient parameter's ids must not appear.
			for _, leak := range []string{`"subject"`, `"meta"`, `"Patient/` + firstPatientID, "Bearer "} {
				if leak != "" && strings.Contains(line, leak) {
					t.Errorf("audit event carries %q: %s", leak, line)
				}
			}
		}
	}
	st := srv.Stats()
	check := func(what string, got int, want int64) {
		if int64(got) != want {
			t.Errorf("%s: %d audit events, the server recorded %d requests", what, got, want)
		}
	}
	check("kickoff", counts["kickoff"], st.Requests["kickoff"])
	check("status", counts["status_progress"]+counts["status_complete"]+counts["status_error"]+counts["manifest_page"], st.Requests["status"]+st.Requests["manifest"])
	check("files", counts["download_request"], st.Requests["file"]+st.Requests["storage"]+st.Requests["capability"])
	check("delete", counts["export_delete"], st.Requests["delete"])
	// The truncated file fails its attempt; the 429 is waited out inside
	// its attempt (issue 13 §4), so it is a download_throttled event.
	if counts["download_complete"] != res.Totals.Files || counts["download_error"] < 1 || counts["download_throttled"] < 1 || counts["export_complete"] != 1 {
		t.Errorf("outcome events: %v (files %d)", counts, res.Totals.Files)
	}
	t.Logf("audit events: %v; server requests: %v", counts, st.Requests)
}

var firstPatientID string

func firstPatient(t *testing.T, srv *testsuite.Server) string {
	t.Helper()
	want, err := srv.Expected(testsuite.Query{Level: "system", Types: []string{"Patient"}})
	if err != nil {
		t.Fatal(err)
	}
	for id := range want.IDs["Patient"] {
		firstPatientID = id
		return id
	}
	t.Fatal("no patients")
	return ""
}
