package sink

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"cloud.google.com/go/storage"
	"github.com/bulkflow/bulkflow/internal/sink/gcstest"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"google.golang.org/api/option"
)

const testBucket = "lake"

// recorder sits between the sink's client and the in-process fake server: it
// logs each request in order and fails the ones a test chooses, the way a
// crash or an outage would stop a Commit midway.
type recorder struct {
	base http.RoundTripper
	mu   sync.Mutex
	log  []string // "op object" in the order the server saw them
	fail func(op, object string) bool
}

// classify names a request by what it does to which object.
func classify(r *http.Request) (op, object string) {
	q := r.URL.Query()
	p := r.URL.Path
	switch {
	case strings.Contains(p, "/rewriteTo/"):
		dst := p[strings.LastIndex(p, "/o/")+3:]
		return "copy", dst
	case r.Method == http.MethodDelete:
		return "delete", p[strings.Index(p, "/o/")+3:]
	case strings.HasPrefix(p, "/upload/") && q.Get("upload_id") != "":
		return "upload-chunk", q.Get("name")
	case strings.HasPrefix(p, "/upload/"):
		return "upload", q.Get("name")
	}
	return strings.ToLower(r.Method), p
}

func (rec *recorder) RoundTrip(r *http.Request) (*http.Response, error) {
	op, obj := classify(r)
	if u, err := url.PathUnescape(obj); err == nil {
		obj = u
	}
	rec.mu.Lock()
	fail := rec.fail != nil && rec.fail(op, obj)
	if !fail {
		rec.log = append(rec.log, op+" "+obj)
	}
	rec.mu.Unlock()
	if fail {
		if r.Body != nil {
			r.Body.Close()
		}
		return &http.Response{
			StatusCode: http.StatusForbidden,
			Header:     http.Header{"Content-Type": {"application/json"}},
			Body:       io.NopCloser(strings.NewReader(`{"error":{"code":403,"message":"injected fault"}}`)),
			Request:    r,
		}, nil
	}
	return rec.base.RoundTrip(r)
}

func (rec *recorder) setFail(f func(op, object string) bool) {
	rec.mu.Lock()
	rec.fail = f
	rec.mu.Unlock()
}

// failAfter fails every request for op after the first n of them succeeded.
func failAfter(op string, n int) func(string, string) bool {
	seen := 0
	return func(o, _ string) bool {
		if o != op {
			return false
		}
		seen++
		return seen > n
	}
}

func (rec *recorder) ops() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return slices.Clone(rec.log)
}

type gcsFixture struct {
	s   *GCS
	srv *fakestorage.Server
	rec *recorder
}

func newGCSFixture(t *testing.T, opts GCSOptions) *gcsFixture {
	t.Helper()
	_, srv := gcstest.StartFake(t, testBucket)
	rec := &recorder{base: srv.HTTPClient().Transport}
	client, err := storage.NewClient(context.Background(), option.WithHTTPClient(&http.Client{Transport: rec}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return &gcsFixture{s: NewGCS(context.Background(), client, testBucket, "/exports/fhir/", opts), srv: srv, rec: rec}
}

// objects lists every object in the bucket with its content.
func (f *gcsFixture) objects(t *testing.T) map[string]string {
	t.Helper()
	attrs, _, err := f.srv.ListObjects(testBucket, "", "", false)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, a := range attrs {
		o, err := f.srv.GetObject(testBucket, a.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[a.Name] = string(o.Content)
	}
	return out
}

func (f *gcsFixture) under(t *testing.T, prefix string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, v := range f.objects(t) {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			out[rest] = v
		}
	}
	return out
}

func keys(m map[string]string) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

func TestGCSCommitPromotesDataAndWritesManifestLast(t *testing.T) {
	ctx := context.Background()
	f := newGCSFixture(t, GCSOptions{})
	s := f.s
	write(t, s, "run1", "Patient/Patient-0001.ndjson", "{}\n")
	write(t, s, "run1", "Observation/Observation-0001.ndjson", "{\"a\":1}\n")
	write(t, s, "run1", WorkPrefix+"plan.json", "secret urls")
	if got := f.under(t, "exports/fhir/run1/"); len(got) != 0 {
		t.Fatalf("run visible before commit: %v", keys(got))
	}
	rc, err := s.Open(ctx, "run1", WorkPrefix+"plan.json")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "secret urls" {
		t.Fatalf("work object = %q", b)
	}
	if _, err := s.Open(ctx, "run1", "nope.ndjson"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of a missing object = %v, want ErrNotFound", err)
	}
	before := len(f.rec.ops())
	if err := s.Commit(ctx, "run1", []byte(`{"ok":true}`)); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Patient/Patient-0001.ndjson":         "{}\n",
		"Observation/Observation-0001.ndjson": "{\"a\":1}\n",
		ManifestName:                          `{"ok":true}`,
	}
	got := f.objects(t)
	if len(got) != len(want) {
		t.Fatalf("bucket after commit holds %v; want only the run's data and manifest (no _work, no staging)", keys(got))
	}
	for name, body := range want {
		if got["exports/fhir/run1/"+name] != body {
			t.Errorf("committed %s = %q, want %q", name, got["exports/fhir/run1/"+name], body)
		}
	}
	// Order of the commit's own requests: every copy, then the manifest,
	// then the staging deletes.
	var manifestAt, lastCopy, firstDelete = -1, -1, -1
	for i, op := range f.rec.ops()[before:] {
		switch {
		case strings.HasPrefix(op, "copy "):
			lastCopy = i
		case op == "upload exports/fhir/run1/"+ManifestName:
			manifestAt = i
		case strings.HasPrefix(op, "delete ") && firstDelete < 0:
			firstDelete = i
		}
	}
	if manifestAt < 0 || lastCopy < 0 || firstDelete < 0 || !(lastCopy < manifestAt && manifestAt < firstDelete) {
		t.Fatalf("commit order: last copy %d, manifest %d, first delete %d; log %v", lastCopy, manifestAt, firstDelete, f.rec.ops()[before:])
	}
	if s.Location("run1") != "gs://lake/exports/fhir/run1" {
		t.Errorf("Location = %q", s.Location("run1"))
	}

	// A retried commit (with a new manifest body, as the activity builds one)
	// is a no-op, and so is the confirming commit with no manifest.
	for _, m := range [][]byte{[]byte(`{"ok":"again"}`), nil} {
		before = len(f.rec.ops())
		if err := s.Commit(ctx, "run1", m); err != nil {
			t.Fatalf("retried commit: %v", err)
		}
		for _, op := range f.rec.ops()[before:] {
			if !strings.HasPrefix(op, "get ") {
				t.Errorf("retried commit wrote: %s", op)
			}
		}
	}
	if got := f.objects(t)["exports/fhir/run1/"+ManifestName]; got != `{"ok":true}` {
		t.Fatalf("manifest rewritten by a retry: %q", got)
	}
}

func TestGCSRestageReplacesNeverAppends(t *testing.T) {
	f := newGCSFixture(t, GCSOptions{})
	s := f.s
	write(t, s, "r", "Observation/Observation-0001.ndjson", "a\nb\n")
	// A second attempt that fails midway leaves the first staged copy alone.
	w, err := s.Create(context.Background(), "r", "Observation/Observation-0001.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "partial")
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close after Abort: %v", err)
	}
	rc, err := s.Open(context.Background(), "r", "Observation/Observation-0001.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(rc); string(b) != "a\nb\n" {
		t.Fatalf("aborted attempt changed the staged object: %q", b)
	}
	rc.Close()
	write(t, s, "r", "Observation/Observation-0001.ndjson", "c\n")
	if err := s.Commit(context.Background(), "r", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	got := f.under(t, "exports/fhir/r/")
	if len(got) != 2 || got["Observation/Observation-0001.ndjson"] != "c\n" {
		t.Fatalf("committed %v (data %q), want the last complete attempt only", keys(got), got["Observation/Observation-0001.ndjson"])
	}
}

func TestGCSWriterAbortCreatesNothing(t *testing.T) {
	// Small chunks so that part of the upload reached the server before Abort.
	f := newGCSFixture(t, GCSOptions{ChunkSize: 256 << 10})
	w, err := f.s.Create(context.Background(), "r", "big.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bytes.Repeat([]byte("x"), 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if got := f.objects(t); len(got) != 0 {
		t.Fatalf("aborted upload created %v", keys(got))
	}
	if _, err := f.s.Open(context.Background(), "r", "big.ndjson"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open after Abort = %v", err)
	}
}

// TestGCSCommitResumesAfterCrash stops a Commit at each step, then retries it
// as the activity would (with a fresh manifest body, or none once the chunk
// records are gone) and checks that the run ends up committed exactly once.
func TestGCSCommitResumesAfterCrash(t *testing.T) {
	data := map[string]string{"Patient/p.ndjson": "{}\n", "Observation/o1.ndjson": "1\n", "Observation/o2.ndjson": "2\n"}
	for _, tc := range []struct {
		name         string
		fail         func(string, string) bool
		afterCrash   func(t *testing.T, f *gcsFixture)
		retry        []byte
		wantManifest string
		// What the crash left: committed data objects, staged data objects.
		copied, staged int
	}{
		{name: "during copies", fail: failAfter("copy", 1), retry: []byte("m2"), wantManifest: "m2", copied: 1, staged: 3},
		{name: "before manifest", fail: failAfter("upload", 0), retry: []byte("m2"), wantManifest: "m2", copied: 3, staged: 3},
		{
			name: "before manifest, staging lost", fail: failAfter("upload", 0), retry: []byte("m2"), wantManifest: "m2", copied: 3, staged: 3,
			afterCrash: func(t *testing.T, f *gcsFixture) {
				for name := range f.under(t, "exports/fhir/.staging/r/") {
					if err := f.srv.Backend().DeleteObject(testBucket, "exports/fhir/.staging/r/"+name); err != nil {
						t.Fatal(err)
					}
				}
			},
		},
		{name: "during staging cleanup", fail: failAfter("delete", 1), retry: []byte("m2"), wantManifest: "m1", copied: 3, staged: -1},
		{name: "during staging cleanup, work gone", fail: failAfter("delete", 1), retry: nil, wantManifest: "m1", copied: 3, staged: -1,
			afterCrash: func(t *testing.T, f *gcsFixture) {
				_ = f.srv.Backend().DeleteObject(testBucket, "exports/fhir/.staging/r/work/chunk-0.json")
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newGCSFixture(t, GCSOptions{})
			for name, body := range data {
				write(t, f.s, "r", name, body)
			}
			write(t, f.s, "r", WorkPrefix+"chunk-0.json", "[]")
			f.rec.setFail(tc.fail)
			if err := f.s.Commit(ctx, "r", []byte("m1")); err == nil {
				t.Fatal("commit with an injected fault succeeded")
			}
			f.rec.setFail(nil)
			final := f.under(t, "exports/fhir/r/")
			m, committed := final[ManifestName]
			if committed && m != tc.wantManifest {
				t.Fatalf("manifest %q written out of order", m)
			}
			delete(final, ManifestName)
			staged := len(f.under(t, "exports/fhir/.staging/r/data/"))
			// staged -1: the cleanup was cut short after one delete.
			cut := len(f.under(t, "exports/fhir/.staging/r/")) == len(data) && staged > 0 && committed
			if len(final) != tc.copied || (tc.staged >= 0 && staged != tc.staged) || (tc.staged < 0 && !cut) {
				t.Fatalf("crash left %d copied, %d staged, manifest %v; want %d, %d", len(final), staged, committed, tc.copied, tc.staged)
			}
			if tc.afterCrash != nil {
				tc.afterCrash(t, f)
			}
			if err := f.s.Commit(ctx, "r", tc.retry); err != nil {
				t.Fatalf("retried commit: %v", err)
			}
			got := f.objects(t)
			if len(got) != len(data)+1 {
				t.Fatalf("bucket after retry holds %v", keys(got))
			}
			for name, body := range data {
				if got["exports/fhir/r/"+name] != body {
					t.Errorf("%s = %q, want %q", name, got["exports/fhir/r/"+name], body)
				}
			}
			if got["exports/fhir/r/"+ManifestName] != tc.wantManifest {
				t.Errorf("manifest = %q, want %q", got["exports/fhir/r/"+ManifestName], tc.wantManifest)
			}
		})
	}
}

func TestGCSCommitRefusesToOverwriteAnotherRun(t *testing.T) {
	f := newGCSFixture(t, GCSOptions{})
	s := f.s
	write(t, s, "r", "a.ndjson", "1\n")
	if err := s.Commit(context.Background(), "r", []byte("m1")); err != nil {
		t.Fatal(err)
	}
	write(t, s, "r", "a.ndjson", "2\n")
	write(t, s, "r", "b.ndjson", "3\n")
	err := s.Commit(context.Background(), "r", []byte("m2"))
	if err == nil || !strings.Contains(err.Error(), "already a committed run") {
		t.Fatalf("err = %v", err)
	}
	got := f.under(t, "exports/fhir/r/")
	if len(got) != 2 || got["a.ndjson"] != "1\n" || got[ManifestName] != "m1" {
		t.Fatalf("earlier output changed: %v", got)
	}
	// A confirming commit says the run is committed, and drops nothing.
	if err := s.Commit(context.Background(), "r", nil); err != nil {
		t.Fatalf("confirming commit: %v", err)
	}
	// The new staging is kept for the operator to inspect or abort.
	if len(f.under(t, "exports/fhir/.staging/r/data/")) != 2 {
		t.Fatal("staging of the refused run was dropped")
	}
}

func TestGCSCommitRefusesForeignPrefix(t *testing.T) {
	f := newGCSFixture(t, GCSOptions{})
	f.srv.CreateObject(fakestorage.Object{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: testBucket, Name: "exports/fhir/r/notes.txt"}, Content: []byte("mine")})
	write(t, f.s, "r", "a.ndjson", "1\n")
	err := f.s.Commit(context.Background(), "r", []byte("m"))
	if err == nil || !strings.Contains(err.Error(), "not a bulkflow run") {
		t.Fatalf("err = %v", err)
	}
	if got := f.under(t, "exports/fhir/r/"); len(got) != 1 {
		t.Fatalf("foreign prefix changed: %v", keys(got))
	}
}

func TestGCSCommitDropsStaleCopies(t *testing.T) {
	// An attempt copied a and b, then died; the run was aborted and staged
	// again with a only. The committed run must hold a only.
	ctx := context.Background()
	f := newGCSFixture(t, GCSOptions{})
	write(t, f.s, "r", "a.ndjson", "1\n")
	write(t, f.s, "r", "b.ndjson", "2\n")
	f.rec.setFail(failAfter("upload", 0))
	if err := f.s.Commit(ctx, "r", []byte("m")); err == nil {
		t.Fatal("commit with an injected fault succeeded")
	}
	f.rec.setFail(nil)
	if err := f.s.Abort(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	write(t, f.s, "r", "a.ndjson", "1b\n")
	if err := f.s.Commit(ctx, "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if got := f.under(t, "exports/fhir/r/"); len(got) != 2 || got["a.ndjson"] != "1b\n" {
		t.Fatalf("committed %v", got)
	}
}

func TestGCSCommitWithoutManifestNeedsACommittedRun(t *testing.T) {
	f := newGCSFixture(t, GCSOptions{})
	write(t, f.s, "r", "a.ndjson", "1\n")
	err := f.s.Commit(context.Background(), "r", nil)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	if got := f.under(t, "exports/fhir/r/"); len(got) != 0 {
		t.Fatalf("confirming commit wrote %v", keys(got))
	}
}

func TestGCSEmptyRunCommits(t *testing.T) {
	f := newGCSFixture(t, GCSOptions{})
	if err := f.s.Commit(context.Background(), "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if got := f.under(t, "exports/fhir/r/"); len(got) != 1 || got[ManifestName] != "m" {
		t.Fatalf("committed %v", got)
	}
}

func TestGCSAbortKeepsCommittedOutput(t *testing.T) {
	ctx := context.Background()
	f := newGCSFixture(t, GCSOptions{})
	write(t, f.s, "r", "a.ndjson", "1\n")
	if err := f.s.Commit(ctx, "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	write(t, f.s, "r", "a.ndjson", "2\n")
	write(t, f.s, "r", WorkPrefix+"plan.json", "p")
	if err := f.s.Abort(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.Open(ctx, "r", "a.ndjson"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("staged object survived Abort: %v", err)
	}
	if got := f.objects(t); len(got) != 2 || got["exports/fhir/r/a.ndjson"] != "1\n" {
		t.Fatalf("after Abort the bucket holds %v", got)
	}
}

func TestGCSLargeObjectStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("20 MB upload")
	}
	ctx := context.Background()
	f := newGCSFixture(t, GCSOptions{}) // default 16 MiB chunks: two of them
	body := make([]byte, 20<<20)
	rand.Read(body)
	w, err := f.s.Create(ctx, "r", "Patient/big.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	// Small writes, as the downloader makes them.
	for rest := body; len(rest) > 0; {
		n := min(len(rest), 64<<10)
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.Join(f.rec.ops(), "\n"), "upload-chunk"); n < 2 {
		t.Errorf("a 20 MB object went up in one request (%d chunk requests); want a chunked resumable upload: %v", n, f.rec.ops())
	}
	rc, err := f.s.Open(ctx, "r", "Patient/big.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	want := sha256.Sum256(body)
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("staged object differs from what was written")
	}
	if err := f.s.Commit(ctx, "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	o, err := f.srv.GetObject(testBucket, "exports/fhir/r/Patient/big.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if got := sha256.Sum256(o.Content); got != want {
		t.Fatalf("committed object differs (%d bytes, want %d)", len(o.Content), len(body))
	}
}

func TestGCSKMSKeyIsSetOnEveryWrite(t *testing.T) {
	const key = "projects/p/locations/eu/keyRings/r/cryptoKeys/k"
	ctx := context.Background()
	f := newGCSFixture(t, GCSOptions{KMSKeyName: key})
	var mu sync.Mutex
	var queries []url.Values
	f.rec.base = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if op, _ := classify(r); op == "upload" || op == "copy" {
			mu.Lock()
			queries = append(queries, r.URL.Query())
			mu.Unlock()
		}
		return f.srv.HTTPClient().Transport.RoundTrip(r)
	})
	w, err := f.s.Create(ctx, "r", "a.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if got := w.(*gcsWriter).w.KMSKeyName; got != key {
		t.Fatalf("writer KMSKeyName = %q", got)
	}
	io.WriteString(w, "1\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Commit(ctx, "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if len(queries) != 3 { // staged upload, copy, manifest
		t.Fatalf("saw %d uploads and copies, want 3", len(queries))
	}
	for _, q := range queries {
		if q.Get("kmsKeyName") != key && q.Get("destinationKmsKeyName") != key {
			t.Errorf("request without the KMS key: %v", q)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestGCSNamesAreChecked(t *testing.T) {
	f := newGCSFixture(t, GCSOptions{})
	for _, tc := range []struct{ run, name string }{
		{"r", "../escape"}, {"r", "/abs"}, {"r", "a/../../b"}, {"r", ""}, {"../r", "a"}, {".staging", "a"}, {"a/b", "a"}, {"r", ManifestName},
	} {
		if _, err := f.s.Create(context.Background(), tc.run, tc.name); err == nil {
			t.Errorf("Create(%q, %q) accepted", tc.run, tc.name)
		}
	}
	if err := f.s.Commit(context.Background(), "../r", []byte("m")); err == nil {
		t.Error("Commit of a bad run name accepted")
	}
}

func TestOpenGCSLocation(t *testing.T) {
	_, srv := gcstest.StartFake(t, testBucket)
	t.Setenv("STORAGE_EMULATOR_HOST", gcstest.EmulatorHost(srv))
	t.Setenv(GCSKMSKeyEnv, "")
	for _, tc := range []struct {
		loc, kms, wantErr string
	}{
		{"gs://lake", "", ""},
		{"gs://lake/exports/fhir/", "", ""},
		{"gs://lake/x", "projects/p/locations/l/keyRings/r/cryptoKeys/k", ""},
		{"gs://lake/x", "my-key", "not a key name"},
		{"gs://", "", "bucket name"},
		{"gs:///x", "", "bucket name"},
		{"gs://Lake/x", "", "bucket name"},
		{"gs://lake/a/../b", "", "prefix"},
		{"gs://lake/x?y=1", "", "no user, port, query"},
		{"gs://lake:443/x", "", "no user, port, query"},
	} {
		t.Setenv(GCSKMSKeyEnv, tc.kms)
		s, err := Open(tc.loc)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Open(%q) with key %q = %v, want %q", tc.loc, tc.kms, err, tc.wantErr)
			continue
		}
		if err == nil && tc.kms != "" && s.(*GCS).opts.KMSKeyName != tc.kms {
			t.Errorf("Open(%q): KMS key %q not taken from %s", tc.loc, s.(*GCS).opts.KMSKeyName, GCSKMSKeyEnv)
		}
	}

	// Through the emulator, end to end.
	t.Setenv(GCSKMSKeyEnv, "")
	s, err := Open("gs://lake/exports")
	if err != nil {
		t.Fatal(err)
	}
	write(t, s, "r", "a.ndjson", "1\n")
	if err := s.Commit(context.Background(), "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if o, err := srv.GetObject(testBucket, "exports/r/"+ManifestName); err != nil || string(o.Content) != "m" {
		t.Fatalf("manifest via emulator: %q, %v", o.Content, err)
	}
	if s.Location("r") != "gs://lake/exports/r" {
		t.Errorf("Location = %q", s.Location("r"))
	}
}

// Found by the end-to-end export: a sink opened from a gs:// URL (the
// worker's path, through STORAGE_EMULATOR_HOST) must read back what it
// staged; the library's default XML reads never reached the emulator.
func TestOpenedGCSSinkReadsBackStagedObjects(t *testing.T) {
	_, srv := gcstest.StartFake(t, "reads")
	t.Setenv("STORAGE_EMULATOR_HOST", gcstest.EmulatorHost(srv))
	s, err := Open("gs://reads/pfx")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{WorkPrefix + "chunks/000000.json", "Patient/Patient-0001.ndjson"} {
		w, err := s.Create(ctx, "r", name)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, "hello "+name)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		rc, err := s.Open(ctx, "r", name)
		if err != nil {
			t.Fatalf("read back %s: %v", name, err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if string(b) != "hello "+name {
			t.Fatalf("%s = %q", name, b)
		}
	}
}
