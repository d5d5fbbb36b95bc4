package sink

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, s Sink, run, name, body string) {
	t.Helper()
	w, err := s.Create(context.Background(), run, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLocalCommitPromotesDataAndWritesManifestLast(t *testing.T) {
	ctx := context.Background()
	s, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	write(t, s, "run1", "Patient/Patient-0001.ndjson", "{}\n")
	write(t, s, "run1", WorkPrefix+"plan.json", "secret urls")
	if _, err := os.Stat(s.Location("run1")); !os.IsNotExist(err) {
		t.Fatalf("run visible before commit: %v", err)
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
	if err := s.Commit(ctx, "run1", []byte(`{"ok":true}`)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(s.Location("run1"), "Patient", "Patient-0001.ndjson"))
	if err != nil || string(got) != "{}\n" {
		t.Fatalf("committed data = %q, %v", got, err)
	}
	if m, _ := os.ReadFile(filepath.Join(s.Location("run1"), ManifestName)); string(m) != `{"ok":true}` {
		t.Fatalf("manifest = %q", m)
	}
	if _, err := os.Stat(filepath.Join(s.Location("run1"), "_work")); !os.IsNotExist(err) {
		t.Fatal("work objects were promoted with the data")
	}
	if _, err := os.Stat(filepath.Join(s.Root, ".staging", "run1")); !os.IsNotExist(err) {
		t.Fatal("staging left behind")
	}
	// A retried commit is a no-op.
	if err := s.Commit(ctx, "run1", []byte(`{"ok":true}`)); err != nil {
		t.Fatalf("retried commit: %v", err)
	}
}

func TestLocalCommitNilOnlyConfirms(t *testing.T) {
	s, _ := NewLocal(t.TempDir())
	write(t, s, "r", "a.ndjson", "1\n")
	if err := s.Commit(context.Background(), "r", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("confirm before commit = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(s.Location("r")); !os.IsNotExist(err) {
		t.Fatal("a confirming commit promoted the run")
	}
	if err := s.Commit(context.Background(), "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), "r", nil); err != nil {
		t.Fatalf("confirm after commit = %v", err)
	}
}

func TestLocalRestageReplacesNeverAppends(t *testing.T) {
	s, _ := NewLocal(t.TempDir())
	write(t, s, "r", "Observation/Observation-0001.ndjson", "a\nb\n")
	// A second attempt that fails midway leaves the first staged copy alone.
	w, _ := s.Create(context.Background(), "r", "Observation/Observation-0001.ndjson")
	io.WriteString(w, "partial")
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	write(t, s, "r", "Observation/Observation-0001.ndjson", "c\n")
	if err := s.Commit(context.Background(), "r", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(s.Location("r"), "Observation", "Observation-0001.ndjson"))
	if string(got) != "c\n" {
		t.Fatalf("got %q, want the last complete attempt only", got)
	}
	entries, _ := os.ReadDir(filepath.Join(s.Location("r"), "Observation"))
	if len(entries) != 1 {
		t.Fatalf("leftover part files: %v", entries)
	}
}

func TestLocalCommitResumesAfterCrashBeforeManifest(t *testing.T) {
	s, _ := NewLocal(t.TempDir())
	write(t, s, "r", "Patient/p.ndjson", "{}\n")
	// Simulate a commit that renamed the data and died.
	if err := os.Rename(filepath.Join(s.Root, ".staging", "r", "data"), s.Location("r")); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if m, _ := os.ReadFile(filepath.Join(s.Location("r"), ManifestName)); string(m) != "m" {
		t.Fatalf("manifest = %q", m)
	}
}

func TestLocalCommitRefusesToOverwriteAnotherRun(t *testing.T) {
	s, _ := NewLocal(t.TempDir())
	write(t, s, "r", "a.ndjson", "1\n")
	if err := s.Commit(context.Background(), "r", []byte("m1")); err != nil {
		t.Fatal(err)
	}
	write(t, s, "r", "a.ndjson", "2\n")
	err := s.Commit(context.Background(), "r", []byte("m2"))
	if err == nil || !strings.Contains(err.Error(), "already a committed run") {
		t.Fatalf("err = %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.Location("r"), "a.ndjson")); string(got) != "1\n" {
		t.Fatalf("earlier output changed: %q", got)
	}
}

func TestLocalAbortKeepsCommittedOutput(t *testing.T) {
	s, _ := NewLocal(t.TempDir())
	write(t, s, "r", "a.ndjson", "1\n")
	if err := s.Abort(context.Background(), "r"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(context.Background(), "r", "a.ndjson"); err == nil {
		t.Fatal("staged object survived Abort")
	}
}

func TestNamesAreChecked(t *testing.T) {
	s, _ := NewLocal(t.TempDir())
	for _, tc := range []struct{ run, name string }{
		{"r", "../escape"}, {"r", "/abs"}, {"r", "a/../../b"}, {"r", ""}, {"../r", "a"}, {".staging", "a"}, {"a/b", "a"},
	} {
		if _, err := s.Create(context.Background(), tc.run, tc.name); err == nil {
			t.Errorf("Create(%q, %q) accepted", tc.run, tc.name)
		}
	}
}

func TestOpenLocation(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		loc     string
		wantErr string
	}{
		{dir, ""}, {"file://" + dir, ""}, {"gs://Bucket/x", "bucket name"}, {"s3://b/x", "unsupported scheme"},
	} {
		_, err := Open(tc.loc)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Open(%q) = %v, want %q", tc.loc, err, tc.wantErr)
		}
	}
}

func TestLocalResumeFromCheckpoint(t *testing.T) {
	ctx := context.Background()
	s, _ := NewLocal(t.TempDir())
	w, err := s.Create(ctx, "r", "Observation/o.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	rw := w.(Resumable)
	io.WriteString(rw, "line1\nline2\n")
	token, size, err := rw.Checkpoint()
	if err != nil || size != 12 {
		t.Fatalf("checkpoint %q %d %v", token, size, err)
	}
	io.WriteString(rw, "partial-after-checkpoint")
	if err := rw.Suspend(); err != nil {
		t.Fatal(err)
	}
	if err := rw.Abort(); err != nil { // the deferred Abort of a failed attempt must keep the partial
		t.Fatal(err)
	}
	w2, err := s.Resume(ctx, "r", "Observation/o.ndjson", token, size)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w2, "line3\n")
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(s.Location("r"), "Observation", "o.ndjson"))
	if string(got) != "line1\nline2\nline3\n" {
		t.Fatalf("resumed file %q", got)
	}
	for _, bad := range []struct {
		token string
		size  int64
	}{{"../x", 1}, {token, 1 << 40}, {"nope", 0}} {
		if _, err := s.Resume(ctx, "r2", "a", bad.token, bad.size); err == nil {
			t.Errorf("Resume(%q, %d) accepted", bad.token, bad.size)
		}
	}
}

// A crashed writer's partial file never reaches the committed run.
func TestLocalLeftoverPartialsAreNotPromoted(t *testing.T) {
	ctx := context.Background()
	s, _ := NewLocal(t.TempDir())
	w, _ := s.Create(ctx, "r", "Patient/p.ndjson")
	io.WriteString(w, "half")
	// no Close, no Abort: the process died
	write(t, s, "r", "Patient/p.ndjson", "{}\n")
	if err := s.Commit(ctx, "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(s.Location("r"), "Patient"))
	if len(entries) != 1 || entries[0].Name() != "p.ndjson" {
		t.Fatalf("committed Patient/ holds %v", entries)
	}
}

// TestLocalStoredChecksum: a file written in one go carries the CRC32C of
// its bytes, and the commit checks the staged file against it instead of
// re-hashing it with SHA-256 (the SHA-256 of such a record is not read
// again: a wrong one still commits); a resumed file carries none, so its
// commit re-hashes it against its SHA-256, which continued a checkpointed
// hash state.
func TestLocalStoredChecksum(t *testing.T) {
	ctx := context.Background()
	const body = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n"
	s, _ := NewLocal(t.TempDir())
	stored := writeStored(t, s, "r", "P.ndjson", body)
	if want := fmt.Sprintf("crc32c:%08x", crc32.Checksum([]byte(body), crc32.MakeTable(crc32.Castagnoli))); stored != want {
		t.Fatalf("Stored = %q, want %q", stored, want)
	}
	rec := Staged{Name: "P.ndjson", Bytes: int64(len(body)), SHA256: sha("not the body"), Stored: stored}
	if err := s.CommitFiles(ctx, "r", []Staged{rec}, []byte("m")); err != nil {
		t.Fatalf("commit with the stored CRC32C: %v", err)
	}

	w, _ := s.Create(ctx, "r2", "P.ndjson")
	io.WriteString(w, body)
	token, size, err := w.(Resumable).Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	w.(Resumable).Suspend()
	w2, err := s.Resume(ctx, "r2", "P.ndjson", token, size)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w2, body)
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := StoredOf(w2); got != "" {
		t.Fatalf("a resumed file stored %q, want none", got)
	}
	rec = Staged{Name: "P.ndjson", Bytes: int64(2 * len(body)), SHA256: sha("not the body")}
	if err := s.CommitFiles(ctx, "r2", []Staged{rec}, []byte("m")); !errors.Is(err, ErrStagedChanged) {
		t.Fatalf("resumed file committed against a wrong SHA-256: %v", err)
	}
}

// Partials are spread over 16 subdirectories of tmp/ by their token's first
// digit (creations in one directory contend for its lock), and a checkpoint
// of a worker from before that (a partial directly in tmp/) still resumes.
func TestLocalPartialsSpreadAndLegacyResume(t *testing.T) {
	ctx := context.Background()
	s, _ := NewLocal(t.TempDir())
	shards := map[string]bool{}
	for i := range 64 {
		w, err := s.Create(ctx, "r", fmt.Sprintf("Observation/o%d.ndjson", i))
		if err != nil {
			t.Fatal(err)
		}
		token, _, err := w.(Resumable).Checkpoint()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(s.stagingDir("r"), "tmp", token[:1], token)); err != nil {
			t.Fatalf("partial of token %s: %v", token, err)
		}
		shards[token[:1]] = true
		w.Abort()
	}
	if len(shards) < 4 {
		t.Errorf("64 partials in %d subdirectories of tmp/", len(shards))
	}
	// A legacy partial: tmp/<token>.
	token := "0123456789abcdef01234567"
	legacy := filepath.Join(s.stagingDir("r"), "tmp", token)
	if err := os.WriteFile(legacy, []byte("line1\nrest-of-a-torn-line"), 0o640); err != nil {
		t.Fatal(err)
	}
	w, err := s.Resume(ctx, "r", "Observation/legacy.ndjson", token, 6)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "line2\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "r", []byte("m")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.Location("r"), "Observation", "legacy.ndjson")); string(got) != "line1\nline2\n" {
		t.Fatalf("resumed legacy partial %q", got)
	}
}

// The commit checks every file it moves, while it moves the others: one
// file changed after staging, anywhere in a large run, stops the commit
// with nothing promoted, and a retry (the run's records unchanged) stops
// again, on the files an earlier attempt moved as on the others.
func TestLocalCommitChecksEveryFileOfMany(t *testing.T) {
	ctx := context.Background()
	for _, bad := range []int{0, 37, 199} {
		s, _ := NewLocal(t.TempDir())
		var recs []Staged
		for i := range 200 {
			name := fmt.Sprintf("Observation/o%03d.ndjson", i)
			body := fmt.Sprintf("{\"resourceType\":\"Observation\",\"id\":\"%d\"}\n", i)
			recs = append(recs, Staged{Name: name, Bytes: int64(len(body)), Stored: writeStored(t, s, "r", name, body)})
		}
		// A late writer's copy of the same size: only its checksum differs.
		p := s.stagedData("r", 0, recs[bad].Name)
		b, _ := os.ReadFile(p)
		b[len(b)-3] ^= 1
		os.WriteFile(p, b, 0o640)
		for attempt := range 2 {
			if err := s.CommitFiles(ctx, "r", recs, []byte("m")); !errors.Is(err, ErrStagedChanged) {
				t.Fatalf("file %d changed, attempt %d: %v", bad, attempt+1, err)
			}
			if exists(s.Location("r")) {
				t.Fatalf("file %d changed, attempt %d: the run was promoted", bad, attempt+1)
			}
		}
	}
}
