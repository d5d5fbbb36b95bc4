package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/servers"
)

func obs(id string) string {
	return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final"}`, id)
}

// fixture serves named bodies and stages a one-file plan pointing at them.
type fixture struct {
	t      testing.TB
	acts   *Activities
	out    string
	bodies map[string]string
	srv    *httptest.Server
}

func newFixture(t testing.TB) *fixture {
	f := &fixture{t: t, bodies: map[string]string{}, out: t.TempDir()}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := f.bodies[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		w.Write([]byte(b))
	}))
	t.Cleanup(f.srv.Close)
	reg, _ := servers.Load("")
	f.acts = New(reg, f.out, nil)
	return f
}

func (f *fixture) stage(files ...plannedFile) {
	s, err := f.acts.sinkFor("")
	if err != nil {
		f.t.Fatal(err)
	}
	if err := writeJSON(context.Background(), s, "run", PlanObject, &plan{TransactionTime: "2026-01-01T00:00:00Z", RequiresAccessToken: true, Files: files}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) download(index int) (FileResult, error) {
	var env testsuite.WorkflowTestSuite
	aenv := env.NewTestActivityEnvironment()
	aenv.RegisterActivity(f.acts)
	v, err := aenv.ExecuteActivity(f.acts.DownloadFile, DownloadInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Index: index})
	if err != nil {
		return FileResult{}, err
	}
	var r FileResult
	return r, v.Get(&r)
}

func (f *fixture) staged(name string) string {
	b, _ := os.ReadFile(filepath.Join(f.out, ".staging", "run", "data", filepath.FromSlash(name)))
	return string(b)
}

func TestDownloadFile(t *testing.T) {
	good := obs("1") + "\n" + obs("2") + "\n"
	for _, tc := range []struct {
		name      string
		body      string
		count     int64
		hasCount  bool
		wantType  string // Temporal error type, "" = success
		retryable bool
		wantMsg   string
	}{
		{name: "complete", body: good, count: 2, hasCount: true},
		{name: "no count in manifest", body: good},
		{name: "no final newline", body: strings.TrimSuffix(good, "\n"), count: 2, hasCount: true},
		{name: "blank lines skipped", body: obs("1") + "\n\n" + obs("2") + "\n", count: 2, hasCount: true},
		{name: "cut at a line boundary", body: obs("1") + "\n", count: 2, hasCount: true, wantType: ErrTruncatedFile, retryable: true, wantMsg: "1 resources received, the manifest says 2"},
		{name: "cut mid-line", body: obs("1") + "\n" + obs("2")[:20], count: 2, hasCount: true, wantType: ErrTruncatedFile, retryable: true, wantMsg: "last line (2) is cut"},
		{name: "invalid line", body: obs("1") + "\nnot json\n" + obs("3") + "\n", wantType: ErrInvalidContent, wantMsg: "Observation/Observation-0001.ndjson line 2"},
		{name: "wrong type", body: `{"resourceType":"Patient","id":"p"}` + "\n", wantType: ErrInvalidContent, wantMsg: "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.bodies["/f"] = tc.body
			f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f?token=s3cret", Count: tc.count, HasCount: tc.hasCount, Path: "Observation/Observation-0001.ndjson"})
			r, err := f.download(0)
			if tc.wantType == "" {
				if err != nil {
					t.Fatal(err)
				}
				if r.Resources != 2 || r.Bytes != int64(len(good)) || r.SHA256 == "" {
					t.Fatalf("result %+v", r)
				}
				if got := f.staged(r.Path); got != good {
					t.Fatalf("staged %q, want normalised %q", got, good)
				}
				return
			}
			var ae *temporal.ApplicationError
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v, want an application error", err)
			}
			if ae.Type() != tc.wantType || ae.NonRetryable() == tc.retryable {
				t.Fatalf("type %s nonRetryable %v, want %s retryable %v: %v", ae.Type(), ae.NonRetryable(), tc.wantType, tc.retryable, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("message %q lacks %q", err, tc.wantMsg)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("the URL's query leaked into the error: %v", err)
			}
			if got := f.staged("Observation/Observation-0001.ndjson"); got != "" {
				t.Fatalf("a failed download left staged data: %q", got)
			}
		})
	}
}

// A retry after a truncated attempt replaces the staged file: never appends.
func TestDownloadRetryReplaces(t *testing.T) {
	f := newFixture(t)
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/f", Count: 3, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
	f.bodies["/f"] = obs("1") + "\n" + obs("2") + "\n" + obs("3") + "\n"
	if _, err := f.download(0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.download(0); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(f.staged("Observation/Observation-0001.ndjson"), "\n"); got != 3 {
		t.Fatalf("%d lines staged after two downloads, want 3", got)
	}
}

func TestCapabilityURLNeverInErrors(t *testing.T) {
	f := newFixture(t)
	f.bodies["/cap/AbCdEfSecret"] = obs("1") + "\n"
	s, _ := f.acts.sinkFor("")
	writeJSON(context.Background(), s, "run", PlanObject, &plan{TransactionTime: "t", RequiresAccessToken: false,
		Files: []plannedFile{{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/cap/AbCdEfSecret", Count: 5, HasCount: true, Path: "Observation/Observation-0001.ndjson"}}})
	_, err := f.download(0)
	if err == nil || strings.Contains(err.Error(), "AbCdEfSecret") {
		t.Fatalf("err = %v: want a truncation error without the capability URL", err)
	}
}

func TestErrorAndDeletedFilesAreSummarised(t *testing.T) {
	f := newFixture(t)
	f.bodies["/e"] = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing"},{"severity":"warning","code":"informational"}]}` + "\n"
	f.bodies["/d"] = `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/1"}},{"request":{"method":"DELETE","url":"Observation/9"}},{"request":{"method":"DELETE","url":"Patient/2"}}]}` + "\n"
	f.stage(
		plannedFile{Kind: KindError, Type: "OperationOutcome", URL: f.srv.URL + "/e", Path: "_errors/OperationOutcome-0001.ndjson"},
		plannedFile{Kind: KindDeleted, Type: "Bundle", URL: f.srv.URL + "/d", Path: "_deleted/Bundle-0001.ndjson"},
	)
	e, err := f.download(0)
	if err != nil {
		t.Fatal(err)
	}
	if e.Severity["error"] != 1 || e.Severity["warning"] != 1 {
		t.Fatalf("severity %v", e.Severity)
	}
	d, err := f.download(1)
	if err != nil {
		t.Fatal(err)
	}
	if d.Deleted["Patient"] != 2 || d.Deleted["Observation"] != 1 {
		t.Fatalf("deleted %v", d.Deleted)
	}
}

func TestBuildPlan(t *testing.T) {
	m := &bulk.Manifest{TransactionTime: "2026-01-01T00:00:00Z", RequiresAccessToken: true,
		Output: []bulk.FileItem{
			{Type: "Patient", URL: "https://s/p1", Count: 3, HasCount: true},
			{Type: "Observation", URL: "https://s/o1", Count: 5, HasCount: true},
			{Type: "Patient", URL: "https://s/p2", Count: 4, HasCount: true},
		},
		Error:   []bulk.FileItem{{URL: "https://s/e1"}},
		Deleted: []bulk.FileItem{{Type: "Bundle", URL: "https://s/d1"}},
	}
	p, err := buildPlan(m, time.Time{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range p.Files {
		paths = append(paths, f.Path)
	}
	want := []string{"Observation/Observation-0001.ndjson", "Patient/Patient-0001.ndjson", "Patient/Patient-0002.ndjson",
		"_errors/OperationOutcome-0001.ndjson", "_deleted/Bundle-0001.ndjson"}
	if strings.Join(paths, " ") != strings.Join(want, " ") {
		t.Fatalf("paths %v, want %v", paths, want)
	}
	if p.Files[1].URL != "https://s/p1" || p.Files[2].URL != "https://s/p2" {
		t.Fatal("files of one type must keep the server's order")
	}
	sum := summarize(p)
	if sum.ExpectedResources != 12 || len(sum.Groups) != 4 || sum.Groups[1] != (Group{Kind: KindOutput, Type: "Patient", First: 1, Count: 2}) {
		t.Fatalf("summary %+v", sum)
	}
	b, _ := json.Marshal(sum)
	if strings.Contains(string(b), "https://s/") {
		t.Fatalf("the plan summary (history) carries file URLs: %s", b)
	}

	for _, bad := range []bulk.FileItem{{Type: "../etc", URL: "u"}, {Type: "", URL: "u"}, {Type: "observation", URL: "u"}} {
		if _, err := buildPlan(&bulk.Manifest{TransactionTime: "2026-01-01T00:00:00Z", Output: []bulk.FileItem{bad}}, time.Time{}, time.Now()); err == nil {
			t.Errorf("type %q accepted", bad.Type)
		}
	}
	if _, err := buildPlan(&bulk.Manifest{TransactionTime: "2026-01-01T00:00:00Z", OutputOrganizedBy: "Patient"}, time.Time{}, time.Now()); err == nil {
		t.Error("organised output accepted")
	}
}

func TestCommitWritesManifestFromChunkRecords(t *testing.T) {
	f := newFixture(t)
	f.bodies["/o"] = obs("1") + "\n" + obs("2") + "\n"
	f.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: f.srv.URL + "/o", Count: 2, HasCount: true, Path: "Observation/Observation-0001.ndjson"})
	r, err := f.download(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	plan := Plan{TransactionTime: "2026-01-01T00:00:00Z", Files: 1}
	in := CommitInput{Target: Target{Run: "run"}, Chunks: 1, Plan: plan, Request: map[string]any{"level": "system"}}
	if _, err := f.acts.Commit(ctx, in); err == nil || !strings.Contains(err.Error(), "chunk") && !strings.Contains(err.Error(), "not found") {
		t.Fatalf("commit without chunk records: %v", err)
	}
	if err := f.acts.RecordChunk(ctx, RecordChunkInput{Target: Target{Run: "run"}, Chunk: 0, Files: []FileResult{r}}); err != nil {
		t.Fatal(err)
	}
	in.Plan.Files = 2
	if _, err := f.acts.Commit(ctx, in); err == nil || !strings.Contains(err.Error(), "1 files recorded, the plan has 2") {
		t.Fatalf("commit with a missing file: %v", err)
	}
	in.Plan.Files = 1
	res, err := f.acts.Commit(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(res.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	var m RunManifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.TransactionTime != plan.TransactionTime || len(m.Files) != 1 || m.Totals.Resources["Observation"] != 2 || m.Files[0].SHA256 != r.SHA256 {
		t.Fatalf("manifest %+v", m)
	}
	if _, err := os.Stat(filepath.Join(f.out, "run", "_work")); !os.IsNotExist(err) {
		t.Fatal("bookkeeping was promoted with the data")
	}
	// A retried commit after success is a no-op.
	if _, err := f.acts.Commit(ctx, in); err != nil {
		t.Fatalf("retried commit: %v", err)
	}
}

func TestResolveOutput(t *testing.T) {
	for _, tc := range []struct{ root, out, want string }{
		{"/data/lake", "", "/data/lake"},
		{"/data/lake", "nightly", "/data/lake/nightly"},
		{"/data/lake", "/abs/elsewhere", "/abs/elsewhere"},
		{"/data/lake", "gs://b/p", "gs://b/p"},
		{"gs://bucket/lake/", "nightly/epic", "gs://bucket/lake/nightly/epic"},
		{"gs://bucket/lake", "", "gs://bucket/lake"},
	} {
		if got := resolveOutput(tc.root, tc.out); got != tc.want {
			t.Errorf("resolveOutput(%q, %q) = %q, want %q", tc.root, tc.out, got, tc.want)
		}
	}
}

func TestValidationReasons(t *testing.T) {
	item := plannedFile{Kind: KindOutput, Type: "Observation", Path: "Observation/Observation-0001.ndjson", Count: 3, HasCount: true}
	read := func(body string) error {
		r := ndjson.NewReader(strings.NewReader(body))
		for {
			_, _, err := nextResource(r, ndjson.Validator{WantType: "Observation"}, item, 0)
			if err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
	}
	for _, tc := range []struct {
		err  error
		want string
		kind bulk.ErrorKind
	}{
		{read(obs("1") + "\nnot json\n"), "invalid_json", bulk.KindInvalidContent},
		{read(`{"resourceType":"Patient","id":"p"}` + "\n"), "wrong_type", bulk.KindInvalidContent},
		{read(obs("1") + "\n" + obs("2")[:15]), "truncated", bulk.KindTruncated},
		{checkCount(item, 2), "count_mismatch", bulk.KindTruncated},
		{errors.New("other"), "", bulk.KindPermanent},
	} {
		if got := validationReason(tc.err); got != tc.want || bulk.KindOf(tc.err) != tc.kind {
			t.Errorf("%v: reason %q kind %v, want %q %v", tc.err, got, bulk.KindOf(tc.err), tc.want, tc.kind)
		}
	}
	if checkCount(item, 3) != nil {
		t.Error("a complete file failed the count check")
	}
}
