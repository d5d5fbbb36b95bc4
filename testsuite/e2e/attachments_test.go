package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/auth"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/sink/gcstest"
	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/testsuite/authserver"
	"github.com/bulkflow/bulkflow/workflows"
)

var attachmentTypes = []string{"DocumentReference"}

// checkAttachments compares a committed run's attachment index with what
// the test server holds: every servable attachment on an allowed origin is
// stored byte-exact (SHA-256 of the file against the server's bytes), the
// missing and wrong-hash ones are reported as such, the second origin's
// are stored only when it is allowed, and nothing else is listed.
func checkAttachments(t *testing.T, srv *testsuite.Server, res workflows.ExportResult, rep *verify.Report, want testsuite.Expected, secondAllowed bool) {
	t.Helper()
	if len(want.Attachments) < 20 {
		t.Fatalf("only %d expected attachments: the test would prove little", len(want.Attachments))
	}
	got := map[string]activities.AttachmentRecord{}
	for _, r := range rep.Attachments {
		got[r.ResourceType+"/"+r.ID] = r
	}
	if len(got) != len(want.Attachments) || len(rep.Attachments) != len(want.Attachments) {
		t.Errorf("index lists %d attachments (%d distinct resources), the server's DocumentReferences hold %d", len(rep.Attachments), len(got), len(want.Attachments))
	}
	kinds := map[string]int{}
	for _, e := range want.Attachments {
		r, ok := got[e.ResourceType+"/"+e.ID]
		if !ok {
			t.Errorf("%s/%s (%s): not in the index", e.ResourceType, e.ID, e.Kind)
			continue
		}
		kinds[e.Kind]++
		wantStatus := activities.AttachmentStored
		switch {
		case e.SecondOrigin && !secondAllowed:
			wantStatus = activities.AttachmentRefusedOrigin
		case !e.Servable:
			wantStatus = activities.AttachmentMissing
		case !e.HashMatches:
			wantStatus = activities.AttachmentHashMismatch
		}
		if r.Status != wantStatus || r.Index != e.Index {
			t.Errorf("%s/%s (%s): status %q index %d (%s), want %q index %d", e.ResourceType, e.ID, e.Kind, r.Status, r.Index, r.Detail, wantStatus, e.Index)
			continue
		}
		if wantStatus != activities.AttachmentStored {
			if r.Path != "" {
				t.Errorf("%s/%s: %s but has a path %q", e.ResourceType, e.ID, r.Status, r.Path)
			}
			continue
		}
		b, err := os.ReadFile(filepath.Join(res.Location, filepath.FromSlash(r.Path)))
		if err != nil {
			t.Errorf("%s/%s: %v", e.ResourceType, e.ID, err)
			continue
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != e.SHA256 || len(b) != e.Size || r.SHA256 != e.SHA256 {
			t.Errorf("%s/%s (%s): stored %d bytes sha256 %x (index %s), the server's are %d bytes %s", e.ResourceType, e.ID, e.Kind, len(b), sum[:6], r.SHA256, e.Size, e.SHA256)
		}
		id := e.URL[strings.LastIndex(e.URL, "/")+1:]
		if raw, ok := srv.AttachmentBytes(id); !ok || string(raw) != string(b) {
			t.Errorf("%s/%s: stored bytes differ from the server's Binary %s", e.ResourceType, e.ID, id)
		}
		if strings.Contains(r.URL, "?") {
			t.Errorf("%s/%s: index URL keeps a query: %s", e.ResourceType, e.ID, r.URL)
		}
		if want := "attachments/DocumentReference/" + e.ID + "/0."; !strings.HasPrefix(r.Path, want) {
			t.Errorf("%s/%s: path %s, want %s<ext>", e.ResourceType, e.ID, r.Path, want)
		}
	}
	for _, k := range []string{"relative", "nohash", "absolute", "second", "missing", "wronghash", "large", "binaryjson"} {
		if kinds[k] == 0 {
			t.Errorf("no attachment of kind %q in the export: the test did not exercise it", k)
		}
	}
	sum := rep.Manifest.Attachments
	if sum == nil {
		t.Fatal("_manifest.json has no attachments section")
	}
	var stored int64
	for _, r := range rep.Attachments {
		if r.Status == activities.AttachmentStored {
			stored++
		}
	}
	if sum.Files != stored || sum.ByStatus[activities.AttachmentStored] != stored || sum.Entries != int64(len(rep.Attachments)) {
		t.Errorf("manifest attachments section %+v does not match the index (%d stored of %d)", sum, stored, len(rep.Attachments))
	}
	found := false
	for _, w := range res.Warnings {
		found = found || strings.Contains(w, "attachment(s) were not stored")
	}
	if !found {
		t.Errorf("no warning names the attachments that were not stored: %q", res.Warnings)
	}
}

// Issue 15: attachments fetched with a bearer token. The second origin
// (another port) is refused and never contacted unless the servers file
// allows it; then it gets the token, as the FHIR base does. Faults on the
// Binary reads (503, 429) are retried.
func TestAttachmentsFetched(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		name          string
		secondAllowed bool
	}{{"second-origin-refused", false}, {"second-origin-allowed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const token = "e2e-attachment-token"
			faults := "binary:large=transient@1; binary:binaryjson=429(retry-after=1)@1"
			srv := fhirServer(t, testsuite.Options{Patients: 120, ResourcesPerFile: 40, LargeAttachments: -1, Attachments: true, Faults: faults,
				Auth: authserver.Config{Mode: "bearer", StaticToken: token}})
			tokenFile := filepath.Join(t.TempDir(), "token")
			if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			ehr := servers.Server{Name: "ehr", BaseURL: srv.BaseURL(), Auth: auth.Config{Type: "bearer", TokenFile: tokenFile}}
			if tc.secondAllowed {
				ehr.AllowedOrigins = []string{srv.SecondOrigin()}
			}
			queue := faultWorker(t, t.TempDir(), ehr)
			res := runExport(t, queue, workflows.ExportInput{Server: "ehr", Types: attachmentTypes, Attachments: "fetch"})
			want, err := srv.Expected(testsuite.Query{Level: "system", Types: attachmentTypes})
			if err != nil {
				t.Fatal(err)
			}
			rep := assertExact(t, res, want)
			checkAttachments(t, srv, res, rep, want, tc.secondAllowed)
			st := srv.Stats()
			if tc.secondAllowed {
				if st.Requests["binary2"] == 0 || st.AuthHeaderOnSecondOrigin == 0 {
					t.Errorf("second origin allowed: %d requests, %d with the token; want both > 0", st.Requests["binary2"], st.AuthHeaderOnSecondOrigin)
				}
			} else if st.Requests["binary2"] != 0 || st.AuthHeaderOnSecondOrigin != 0 {
				t.Errorf("second origin not allowed, yet it got %d requests (%d with the token)", st.Requests["binary2"], st.AuthHeaderOnSecondOrigin)
			}
			for _, rule := range strings.Split(faults, ";") {
				if st.FaultsFired[strings.TrimSpace(rule)] == 0 {
					t.Errorf("fault %q never fired", rule)
				}
			}
		})
	}
}

// With strict, an attachment that is not stored fails the export, and
// nothing is committed.
func TestAttachmentsStrictFails(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 40, LargeAttachments: -1, Attachments: true})
	out := t.TempDir()
	queue, _ := startWorker(t, out)
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: attachmentTypes, Attachments: "fetch", Strict: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := run.Get(ctx, nil)
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != "AttachmentsIncomplete" {
		t.Fatalf("strict export with missing attachments: %v, want AttachmentsIncomplete", err)
	}
	assertNothingCommitted(t, out)
}

// A worker process is killed (SIGKILL) while it streams a large attachment;
// a second worker finishes the run: every attachment stored byte-exact,
// and those the first worker had staged are not fetched again.
func TestWorkerKilledMidAttachment(t *testing.T) {
	requireE2E(t)
	workerBin := buildBinary(t, "./worker")
	const slow = "binary:large=slow(bps=100000)@1"
	srv := fhirServer(t, testsuite.Options{Patients: 120, ResourcesPerFile: 40, LargeAttachments: -1, Attachments: true, Faults: slow})
	out := t.TempDir()
	queue := "e2e-kill-att-" + time.Now().Format("150405.000")
	cmd := exec.Command(workerBin, "-temporal-address", dev.FrontendHostPort(), "-task-queue", queue, "-output", out, "-log-level", "error")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	run := start(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: attachmentTypes, Attachments: "fetch",
		Options: workflows.Options{HeartbeatTimeout: "3s", Concurrency: 4}})
	deadline := time.Now().Add(90 * time.Second)
	for (srv.Stats().FaultsFired[slow] == 0 || srv.Stats().AttachmentsServed < 5) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if srv.Stats().FaultsFired[slow] == 0 {
		t.Fatal("the first worker never started a large attachment")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true
	servedBefore := srv.Stats().AttachmentsServed

	startWorker2(t, queue, out)
	var res workflows.ExportResult
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("export after the kill: %v", err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system", Types: attachmentTypes})
	rep := assertExact(t, res, want)
	checkAttachments(t, srv, res, rep, want, false)
	st := srv.Stats()
	if st.Kickoffs != 1 {
		t.Errorf("kickoffs = %d", st.Kickoffs)
	}
	// Every stored document was sent whole once: those the first worker
	// staged were not fetched again by the second. At most the 4 in flight
	// at the kill (sent, not yet staged) may have been sent twice.
	var twice []string
	for _, e := range want.Attachments {
		if !e.Servable || !e.HashMatches || e.SecondOrigin {
			continue
		}
		id := e.URL[strings.LastIndex(e.URL, "/")+1:]
		switch n := srv.AttachmentBodiesServed(id); {
		case n == 0 || n > 2:
			t.Errorf("%s (%s) was sent whole %d times, want once", id, e.Kind, n)
		case n == 2:
			twice = append(twice, id)
		}
	}
	if len(twice) > 4 {
		t.Errorf("%d documents were fetched again after the kill (%d bodies served before it): %v", len(twice), servedBefore, twice)
	}
	if servedBefore == 0 {
		t.Error("nothing was staged before the kill: the resume was not exercised")
	}
}

// Inline mode end to end: each listed (text/plain) document on an allowed
// origin, under the 1 MiB default cap and matching its hash, is in its
// resource line as attachment.data, byte-exact; every other reference is
// left as the server sent it and the index says why.
func TestAttachmentsInline(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 120, ResourcesPerFile: 40, LargeAttachments: -1, Attachments: true})
	queue, _ := startWorker(t, t.TempDir())
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Types: attachmentTypes, Attachments: "inline"})
	want, _ := srv.Expected(testsuite.Query{Level: "system", Types: attachmentTypes})
	rep := assertExact(t, res, want)
	data := map[string][]byte{} // id -> decoded attachment.data of content[0]
	for _, f := range rep.Manifest.Files {
		if f.Kind != activities.KindOutput {
			continue
		}
		b, err := os.ReadFile(filepath.Join(res.Location, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var d struct {
				ID      string
				Content []struct{ Attachment struct{ Data *string } }
			}
			if err := json.Unmarshal([]byte(line), &d); err != nil {
				t.Fatal(err)
			}
			if len(d.Content) > 0 && d.Content[0].Attachment.Data != nil {
				b, err := base64.StdEncoding.DecodeString(*d.Content[0].Attachment.Data)
				if err != nil {
					t.Errorf("%s: attachment.data is not base64: %v", d.ID, err)
				}
				data[d.ID] = b
			}
		}
	}
	status := map[string]string{}
	for _, r := range rep.Attachments {
		status[r.ID] = r.Status
	}
	for _, e := range want.Attachments {
		wantStatus := map[string]string{"relative": activities.AttachmentInlined, "absolute": activities.AttachmentInlined, "binaryjson": activities.AttachmentInlined,
			"nohash": activities.AttachmentSkipped, "second": activities.AttachmentRefusedOrigin, "missing": activities.AttachmentMissing,
			"wronghash": activities.AttachmentHashMismatch, "large": activities.AttachmentTooLarge}[e.Kind]
		if status[e.ID] != wantStatus {
			t.Errorf("%s (%s): %q, want %q", e.ID, e.Kind, status[e.ID], wantStatus)
		}
		got, inlined := data[e.ID]
		if inlined != (wantStatus == activities.AttachmentInlined) {
			t.Errorf("%s (%s): data in the line: %v, want %v", e.ID, e.Kind, inlined, !inlined)
			continue
		}
		if inlined {
			if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != e.SHA256 {
				t.Errorf("%s (%s): inlined %d bytes that are not the server's %d", e.ID, e.Kind, len(got), e.Size)
			}
		}
	}
	if rep.Manifest.Attachments == nil || rep.Manifest.Attachments.ByStatus[activities.AttachmentInlined] == 0 || rep.Manifest.Attachments.Files != 0 {
		t.Errorf("manifest attachments section: %+v", rep.Manifest.Attachments)
	}
}

// Attachments to Google Cloud Storage (fake-gcs-server) with Parquet
// output: the references are listed by the lake writer's download loop,
// the documents staged as objects and promoted by server-side copies;
// verify re-reads every stored document against the index.
func TestAttachmentsToGCSParquet(t *testing.T) {
	requireE2E(t)
	client, gcs := gcstest.StartFake(t, "lake")
	t.Setenv("STORAGE_EMULATOR_HOST", gcstest.EmulatorHost(gcs))
	srv := fhirServer(t, testsuite.Options{Patients: 60, LargeAttachments: -1, Attachments: true})
	queue, _ := startWorker(t, t.TempDir())
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Output: "gs://lake/bulk", Format: "parquet", Types: attachmentTypes, Attachments: "fetch"})
	prefix := strings.TrimPrefix(res.Location, "gs://lake/") + "/"
	bucket := client.Bucket("lake")
	rep, err := verify.FS(verify.OpenFunc(func(name string) (io.ReadCloser, error) {
		return bucket.Object(prefix + name).NewReader(context.Background())
	}), true)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system", Types: attachmentTypes})
	var stored int64
	for _, e := range want.Attachments {
		if e.Servable && e.HashMatches && !e.SecondOrigin {
			stored++
		}
	}
	if a := rep.Manifest.Attachments; a == nil || a.Files != stored || stored == 0 || int(a.Entries) != len(want.Attachments) {
		t.Errorf("attachments section %+v; want %d stored of %d", a, stored, len(want.Attachments))
	}
}
