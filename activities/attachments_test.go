package activities

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/internal/sink"
)

// extractAttachments finds url-only attachments where R4 keeps them and
// numbers them by position among all of the resource's attachments.
func TestExtractAttachments(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		want       []string // "id/index/url"
	}{
		{"DocumentReference", `{"resourceType":"DocumentReference","id":"d1","content":[{"attachment":{"data":"aGk="}},{"attachment":{"url":"Binary/2","contentType":"text/plain","size":3,"hash":"x"}}]}`, []string{"d1/1/Binary/2"}},
		{"DiagnosticReport", `{"resourceType":"DiagnosticReport","id":"r1","presentedForm":[{"url":"https://x/a"},{"url":"Binary/b"}]}`, []string{"r1/0/https://x/a", "r1/1/Binary/b"}},
		{"Media", `{"resourceType":"Media","id":"m1","content":{"url":"Binary/m","contentType":"image/png"}}`, []string{"m1/0/Binary/m"}},
		{"Communication", `{"resourceType":"Communication","id":"c1","payload":[{"contentString":"x"},{"contentAttachment":{"url":"Binary/c"}}]}`, []string{"c1/0/Binary/c"}},
		{"url and data: inline already", `{"resourceType":"DocumentReference","id":"d2","content":[{"attachment":{"url":"Binary/2","data":"aGk="}}]}`, nil},
		{"id not a FHIR id", `{"resourceType":"DocumentReference","id":"../x","content":[{"attachment":{"url":"Binary/2"}}]}`, nil},
		{"Observation", `{"resourceType":"Observation","id":"o","content":[{"attachment":{"url":"Binary/2"}}]}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, r := range extractAttachments([]byte(tc.line)) {
				got = append(got, r.ID+"/"+itoa(r.Index)+"/"+r.URL)
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// FetchAttachments records each reference with its outcome: stored
// (byte-exact), too-large (declared, or found while streaming), missing
// (404), hash-mismatch (after its tries), refused-origin (never
// requested), over-budget; Commit promotes the stored ones with the index.
// A retry fetches nothing that is already staged.
func TestFetchAttachmentsStatuses(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	hits := map[string]int{}
	bodies := map[string]string{"/Binary/ok": "hello, note", "/Binary/big": strings.Repeat("x", 2000), "/Binary/bad": "tampered", "/Binary/two": "second note"}
	bin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		mu.Unlock()
		b, ok := bodies[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(b))
	}))
	defer bin.Close()
	sha := func(s string) string { h := sha1.Sum([]byte(s)); return base64.StdEncoding.EncodeToString(h[:]) }
	size := func(n int64) *int64 { return &n }
	refs := []attachmentRef{
		{Type: "DocumentReference", ID: "a", Index: 0, URL: "Binary/ok", ContentType: "text/plain", Size: size(11), Hash: sha("hello, note")},
		{Type: "DocumentReference", ID: "b", Index: 0, URL: "Binary/big", ContentType: "text/plain"},
		{Type: "DocumentReference", ID: "c", Index: 0, URL: "Binary/declared-big", Size: size(5000)},
		{Type: "DocumentReference", ID: "d", Index: 0, URL: "Binary/gone"},
		{Type: "DocumentReference", ID: "e", Index: 0, URL: "Binary/bad", Hash: sha("original")},
		{Type: "DocumentReference", ID: "f", Index: 2, URL: "http://127.0.0.2:9/doc?sig=secret", ContentType: "application/pdf"},
		{Type: "DocumentReference", ID: "g", Index: 0, URL: bin.URL + "/Binary/two", ContentType: "application/pdf"},
	}
	const path = "DocumentReference/DocumentReference-0001.ndjson"
	f.stage(plannedFile{Kind: KindOutput, Type: "DocumentReference", URL: f.srv.URL + "/x", Path: path})
	s, _ := f.acts.sinkFor("")
	ctx := context.Background()
	w, _ := s.Create(ctx, "run", attachmentRefsDir+path)
	for _, r := range refs {
		b, _ := json.Marshal(r)
		w.Write(append(b, '\n'))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w, _ = s.Create(ctx, "run", path) // the (empty) data file itself
	w.Close()
	const emptySHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	if err := f.acts.RecordChunk(ctx, RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: []FileResult{{Index: 0, Kind: KindOutput, Type: "DocumentReference", Path: path, SHA256: emptySHA}}}); err != nil {
		t.Fatal(err)
	}
	fetch := func(budget int64) map[string]AttachmentRecord {
		var env testsuite.WorkflowTestSuite
		aenv := env.NewTestActivityEnvironment()
		aenv.RegisterActivity(f.acts)
		in := FetchAttachmentsInput{ServerRef: ServerRef{BaseURL: bin.URL}, Target: Target{Run: "run"}, Chunk: 0,
			Policy: AttachmentPolicy{Mode: AttachmentsFetch, MaxBytes: 1000}, Budget: budget, Concurrency: 3}
		if _, err := aenv.ExecuteActivity(f.acts.FetchAttachments, in); err != nil {
			t.Fatal(err)
		}
		rc, err := s.Open(ctx, "run", attachmentIndexObject(0))
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		out := map[string]AttachmentRecord{}
		dec := json.NewDecoder(rc)
		for {
			var r AttachmentRecord
			if dec.Decode(&r) != nil {
				break
			}
			out[r.ID] = r
		}
		return out
	}
	got := fetch(-1)
	want := map[string]string{"a": AttachmentStored, "b": AttachmentTooLarge, "c": AttachmentTooLarge, "d": AttachmentMissing,
		"e": AttachmentHashMismatch, "f": AttachmentRefusedOrigin, "g": AttachmentStored}
	for id, st := range want {
		if got[id].Status != st {
			t.Errorf("%s: %q (%s), want %q", id, got[id].Status, got[id].Detail, st)
		}
	}
	if got["a"].Path != "attachments/DocumentReference/a/0.txt" || got["g"].Path != "attachments/DocumentReference/g/0.pdf" {
		t.Errorf("paths %q %q", got["a"].Path, got["g"].Path)
	}
	if f.staged("attachments/DocumentReference/a/0.txt") != "hello, note" {
		t.Error("the stored copy is not the server's bytes")
	}
	if strings.Contains(got["f"].URL, "secret") || strings.Contains(got["f"].URL, "/doc") {
		t.Errorf("a foreign URL is in the index as %q", got["f"].URL)
	}
	mu.Lock()
	if hits["/Binary/declared-big"] != 0 || hits["/Binary/bad"] != attachmentAttempts {
		t.Errorf("declared-big requested %d times (want 0), bad %d (want %d)", hits["/Binary/declared-big"], hits["/Binary/bad"], attachmentAttempts)
	}
	okHits := hits["/Binary/ok"]
	mu.Unlock()

	// A retry (the worker died after staging) fetches nothing staged again.
	if again := fetch(-1); again["a"].Status != AttachmentStored || again["a"].SHA256 != got["a"].SHA256 {
		t.Errorf("retry: %+v", again["a"])
	}
	mu.Lock()
	if hits["/Binary/ok"] != okHits {
		t.Errorf("a staged attachment was fetched again on retry (%d requests, then %d)", okHits, hits["/Binary/ok"])
	}
	mu.Unlock()

	// The run's budget: only what fits is stored.
	os.RemoveAll(filepath.Join(f.out, ".staging", "run", "data", "attachments"))
	small := fetch(12)
	if small["a"].Status == small["g"].Status || small["a"].Status != AttachmentStored && small["g"].Status != AttachmentStored {
		t.Errorf("budget 12 for 11 + 11 bytes: a %q, g %q; want one stored, one over-budget", small["a"].Status, small["g"].Status)
	}
	if small["a"].Status != AttachmentOverBudget && small["g"].Status != AttachmentOverBudget {
		t.Error("nothing was over-budget")
	}

	// Commit promotes the stored documents and the merged index.
	fetch(-1)
	res, err := f.acts.Commit(ctx, CommitInput{Target: Target{Run: "run"}, Chunks: 1, Plan: Plan{TransactionTime: "2026-01-01T00:00:00Z", Files: 1},
		Request: map[string]any{"level": "system"}, Attachments: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(res.Location, "attachments", "DocumentReference", "g", "0.pdf"))
	if err != nil || string(b) != "second note" {
		t.Errorf("committed attachment: %q %v", b, err)
	}
	var m RunManifest
	mb, _ := os.ReadFile(filepath.Join(res.Location, "_manifest.json"))
	json.Unmarshal(mb, &m)
	if m.Attachments == nil || m.Attachments.Files != 2 || m.Attachments.Entries != 7 || m.Attachments.ByStatus[AttachmentMissing] != 1 {
		t.Errorf("manifest attachments section: %+v", m.Attachments)
	}
	idx, _ := os.ReadFile(filepath.Join(res.Location, "attachments", "index.ndjson"))
	if n := strings.Count(string(idx), "\n"); n != 7 || strings.Contains(string(idx), "generation") {
		t.Errorf("index: %d lines:\n%s", n, idx)
	}
}

// A deleted resource of a type with attachments gets an index line whose
// path is the prefix its attachments were stored under in earlier runs.
func TestAttachmentTombstones(t *testing.T) {
	f := newFixture(t)
	s, _ := f.acts.sinkFor("")
	ctx := context.Background()
	w, _ := s.Create(ctx, "run", "_deleted/DocumentReference/del-0001.ndjson")
	w.Write([]byte(`{"resourceType":"DocumentReference","id":"doc-7","transactionTime":"t","source":"x"}` + "\n"))
	w.Close()
	fr := FileResult{Index: 3, Kind: KindDeleted, Type: "Bundle", Parts: []Part{
		{Path: "_deleted/DocumentReference/del-0001.ndjson", Kind: KindTombstone, Type: "DocumentReference"},
		{Path: "_deleted/Patient/del-0001.ndjson", Kind: KindTombstone, Type: "Patient"},
	}}
	recs, err := attachmentTombstones(ctx, s, "run", fr)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Status != AttachmentDeleted || recs[0].Path != "attachments/DocumentReference/doc-7/" || recs[0].Source != 3 {
		t.Errorf("tombstones: %+v", recs)
	}
}

// Inline mode: a listed contentType's document lands base64 in
// attachment.data of the staged line (url kept), checked against its hash;
// the others are recorded and their lines left as sent. The same through
// the lake writer (gzip).
func TestInlineAttachments(t *testing.T) {
	for _, layout := range []Layout{{}, {Gzip: true}} {
		f := newFixture(t)
		sha := func(s string) string { h := sha1.Sum([]byte(s)); return base64.StdEncoding.EncodeToString(h[:]) }
		lines := []string{
			`{"resourceType":"DocumentReference","id":"d1","content":[{"attachment":{"contentType":"text/plain","url":"Binary/a","size":5,"hash":"` + sha("hello") + `"}}]}`,
			`{"resourceType":"DocumentReference","id":"d2","content":[{"attachment":{"contentType":"text/plain","url":"Binary/gone"}}]}`,
			`{"resourceType":"DocumentReference","id":"d3","content":[{"attachment":{"contentType":"application/pdf","url":"Binary/a"}}]}`,
			`{"resourceType":"DocumentReference","id":"d4","content":[{"attachment":{"contentType":"text/plain","url":"Binary/a","hash":"` + sha("other") + `"}}]}`,
		}
		f.bodies["/doc"] = strings.Join(lines, "\n") + "\n"
		f.bodies["/Binary/a"] = "hello"
		const path = "DocumentReference/DocumentReference-0001.ndjson"
		f.stage(plannedFile{Kind: KindOutput, Type: "DocumentReference", URL: f.srv.URL + "/doc", Count: 4, HasCount: true, Path: path})
		layout.Attachments = &AttachmentPolicy{Mode: AttachmentsInline}
		res, err := f.downloadWith(0, layout)
		if err != nil {
			t.Fatal(err)
		}
		if res.Resources != 4 {
			t.Fatalf("%d resources", res.Resources)
		}
		if !layout.Gzip {
			staged := f.staged(path)
			got := strings.Split(strings.TrimSuffix(staged, "\n"), "\n")
			want0 := strings.Replace(lines[0], `"url":"Binary/a"`, `"data":"aGVsbG8=","url":"Binary/a"`, 1)
			if len(got) != 4 || got[0] != want0 || got[1] != lines[1] || got[2] != lines[2] || got[3] != lines[3] {
				t.Errorf("staged lines:\n%s", staged)
			}
			if res.Bytes != int64(len(staged)) {
				t.Errorf("recorded %d bytes, staged %d", res.Bytes, len(staged))
			}
		}
		recs := map[string]AttachmentRecord{}
		for _, l := range strings.Split(strings.TrimSpace(f.staged(attachmentRefsDir+path)), "\n") {
			var r AttachmentRecord
			json.Unmarshal([]byte(l), &r)
			recs[r.ID] = r
		}
		for id, st := range map[string]string{"d1": AttachmentInlined, "d2": AttachmentMissing, "d3": AttachmentSkipped, "d4": AttachmentHashMismatch} {
			if recs[id].Status != st {
				t.Errorf("gzip=%v %s: %q (%s), want %q", layout.Gzip, id, recs[id].Status, recs[id].Detail, st)
			}
		}
	}
}

// Inlining never grows a line past the worker's line cap, however many
// attachments a resource lists: the first ones that fit are inlined, the
// rest are recorded too-large, naming the cap.
func TestInlineStaysWithinTheLineCap(t *testing.T) {
	f := newFixture(t)
	f.acts.MaxLineBytes = 2000
	var content []string
	for i := range 6 {
		content = append(content, fmt.Sprintf(`{"attachment":{"contentType":"text/plain","url":"Binary/d%d"}}`, i))
		f.bodies[fmt.Sprintf("/Binary/d%d", i)] = strings.Repeat("x", 400)
	}
	line := `{"resourceType":"DocumentReference","id":"d1","content":[` + strings.Join(content, ",") + `]}`
	f.bodies["/doc"] = line + "\n"
	const path = "DocumentReference/DocumentReference-0001.ndjson"
	f.stage(plannedFile{Kind: KindOutput, Type: "DocumentReference", URL: f.srv.URL + "/doc", Count: 1, HasCount: true, Path: path})
	if _, err := f.downloadWith(0, Layout{Attachments: &AttachmentPolicy{Mode: AttachmentsInline}}); err != nil {
		t.Fatal(err)
	}
	staged := strings.TrimSuffix(f.staged(path), "\n")
	if len(staged) > 2000 {
		t.Errorf("the inlined line has %d bytes, over the 2000-byte line cap", len(staged))
	}
	inlined, capped := 0, 0
	for _, l := range strings.Split(strings.TrimSpace(f.staged(attachmentRefsDir+path)), "\n") {
		var r AttachmentRecord
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		switch {
		case r.Status == AttachmentInlined:
			inlined++
		case r.Status == AttachmentTooLarge && strings.Contains(r.Detail, "line cap"):
			capped++
		default:
			t.Errorf("attachment %d: %s (%s)", r.Index, r.Status, r.Detail)
		}
	}
	if inlined == 0 || capped == 0 || inlined+capped != 6 {
		t.Errorf("%d inlined and %d over the line cap; want some of each, 6 in all", inlined, capped)
	}
}

// A staged sidecar line that does not decode fails the read: skipping it
// would drop an attachment from the index without a word.
func TestDamagedSidecarLineIsAnError(t *testing.T) {
	ctx := context.Background()
	s, err := sink.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const file = "DocumentReference/DocumentReference-0001.ndjson"
	w, err := s.Create(ctx, "r1", attachmentRefsDir+file)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(`{"type":"DocumentReference","id":"d1","index":0,"url":"Binary/1"}` + "\n" + `{"type":"DocumentReference","id":"d2","index":0,"url":7}` + "\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	a := &Activities{}
	if _, err := readRefs(ctx, s, "r1", file, a); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("readRefs = %v, want an error naming line 2", err)
	}
	if _, err := readInlined(ctx, s, "r1", file, a, FileResult{}); err == nil {
		t.Fatal("readInlined accepted a damaged line")
	}
	refs, err := readRefs(ctx, s, "r1", "DocumentReference/none.ndjson", a)
	if err != nil || refs != nil {
		t.Fatalf("no sidecar: got %v, %v; want none", refs, err)
	}
}
