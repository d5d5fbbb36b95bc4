package sink

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// Local is a Sink on a local (or shared network) file system.
//
// Layout under Root:
//
//	<run>/...                      committed output; complete iff <run>/_manifest.json exists
//	.staging/<run>/data/...        staged data of plan generation 0
//	.staging/<run>/g<N>/...        staged data of plan generation N (a restart or refresh)
//	.staging/<run>/out/...         the run assembled by Commit (renames), promoted by one directory rename
//	.staging/<run>/work/...        bookkeeping, deleted at commit
//	.staging/<run>/tmp/...         objects being written, renamed into data, g<N> or work when complete
//
// Several workers may share Root only through a file system that gives them
// all the same view (NFS and the like); for output shared across hosts prefer
// object storage.
type Local struct {
	Root string
	gen  int // plan generation of this view (AtGeneration)
}

// AtGeneration implements Generational.
func (l *Local) AtGeneration(gen int) Sink {
	c := *l
	c.gen = gen
	return &c
}

// NewLocal returns a Local sink rooted at root, creating it if needed.
func NewLocal(root string) (*Local, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("output directory %q: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("output directory %q: %w (check that the path is writable)", abs, err)
	}
	return &Local{Root: abs}, nil
}

func (l *Local) stagingDir(run string) string { return filepath.Join(l.Root, ".staging", run) }

func (l *Local) stagedPath(run, name string) string {
	if rest, ok := strings.CutPrefix(name, WorkPrefix); ok {
		return filepath.Join(l.stagingDir(run), "work", filepath.FromSlash(rest))
	}
	return l.stagedData(run, l.gen, name)
}

func (l *Local) stagedData(run string, gen int, name string) string {
	return filepath.Join(l.stagingDir(run), genDir(gen), filepath.FromSlash(name))
}

// Create implements Sink.
func (l *Local) Create(ctx context.Context, run, name string) (Writer, error) {
	return l.create(run, name, true)
}

// CreateUnsynced implements GroupSyncer.
func (l *Local) CreateUnsynced(ctx context.Context, run, name string) (Writer, error) {
	return l.create(run, name, false)
}

// SyncStaged implements GroupSyncer: the files' fsyncs run side by side, so
// the file system commits them together, then each directory once. A name
// that is not staged (its writer aborted) is skipped.
func (l *Local) SyncStaged(ctx context.Context, run string, names []string) error {
	if err := CheckRun(run); err != nil {
		return err
	}
	paths := make([]string, 0, len(names))
	dirs := map[string]bool{}
	for _, n := range names {
		if err := CheckName(n); err != nil {
			return err
		}
		p := l.stagedPath(run, n)
		paths = append(paths, p)
		dirs[filepath.Dir(p)] = true
	}
	for d := range dirs {
		paths = append(paths, d)
	}
	work := make(chan string)
	errs := make(chan error, len(paths))
	var wg sync.WaitGroup
	for range min(16, len(paths)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				f, err := os.Open(p)
				if errors.Is(err, fs.ErrNotExist) {
					continue // aborted: nothing to keep
				}
				if err == nil {
					err = f.Sync()
					f.Close()
				}
				if err != nil {
					errs <- fmt.Errorf("sync %s: %w", p, err)
				}
			}
		}()
	}
	// Files first, then their directories: a directory's entry is durable
	// only once its file is.
	n := len(names)
	for _, p := range paths[:n] {
		work <- p
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		return <-errs
	}
	for _, d := range paths[n:] {
		f, err := os.Open(d)
		if err == nil {
			err = f.Sync()
			f.Close()
		}
		if err != nil {
			return fmt.Errorf("sync %s: %w", d, err)
		}
	}
	return ctx.Err()
}

// partialPath is where the partial file of a writer with the checkpoint
// token (24 hex digits) lives: under tmp/, in one of 16 subdirectories
// named by the token's first digit. A file's creation takes its
// directory's lock: a batch's 16 downloads creating small files in one
// directory spent a third of the worker's CPU on small files in the
// kernel (spinning on that lock); 16 directories cut the create's CPU by a
// third (docs/benchmarks.md).
func (l *Local) partialPath(run, token string) string {
	return filepath.Join(l.stagingDir(run), "tmp", token[:1], token)
}

func (l *Local) create(run, name string, durable bool) (Writer, error) {
	if err := CheckRun(run); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	final := l.stagedPath(run, name)
	// Partial files live outside data/, so a crashed writer's leftovers are
	// never promoted with the run.
	var suffix [12]byte
	_, _ = rand.Read(suffix[:])
	token := hex.EncodeToString(suffix[:])
	tmp := l.partialPath(run, token)
	for _, d := range []string{filepath.Dir(final), filepath.Dir(tmp)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("stage %s: %w", name, err)
		}
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", name, err)
	}
	return &localWriter{f: f, tmp: tmp, final: final, crc: true, unsynced: !durable}, nil
}

// Resume implements Resumer.
func (l *Local) Resume(ctx context.Context, run, name, token string, size int64) (Writer, error) {
	if err := CheckRun(run); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if token == "" || strings.ContainsAny(token, `/\.`) || size < 0 {
		return nil, fmt.Errorf("resume %s: bad checkpoint", name)
	}
	tmp := l.partialPath(run, token)
	f, err := os.OpenFile(tmp, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// A checkpoint of a worker from before the partials were spread
		// over subdirectories.
		tmp = filepath.Join(l.stagingDir(run), "tmp", token)
		f, err = os.OpenFile(tmp, os.O_WRONLY, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("resume %s: %w", name, err)
	}
	st, err := f.Stat()
	if err == nil && st.Size() < size {
		err = fmt.Errorf("partial file holds %d bytes, the checkpoint says %d", st.Size(), size)
	}
	if err == nil {
		err = f.Truncate(size)
	}
	if err == nil {
		_, err = f.Seek(size, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("resume %s: %w", name, err)
	}
	// No CRC32C for a resumed file: its record's SHA-256 continues a hash
	// state from the checkpoint, so the commit re-hashes the whole file
	// (verifyLocal) to prove the two halves match.
	return &localWriter{f: f, tmp: tmp, final: l.stagedPath(run, name), size: size}, nil
}

type localWriter struct {
	f          *os.File
	tmp, final string
	size       int64
	done       bool
	// crc: keep a CRC32C of every byte written (Stored): the commit then
	// checks the staged file against it instead of re-hashing it with
	// SHA-256 (BenchmarkVerifyStaged: crc32c vs sha256).
	crc      bool
	sum      uint32
	stored   string
	unsynced bool // CreateUnsynced: SyncStaged makes it durable
}

// castagnoli is CRC32C, computed with the CPU's CRC32 instruction
// (SSE4.2, ARMv8) by hash/crc32: several GB/s, against about 1-2 GB/s for
// SHA-256 even with SHA extensions.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (w *localWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.size += int64(n)
	if w.crc {
		w.sum = crc32.Update(w.sum, castagnoli, p[:n])
	}
	return n, err
}

// Stored implements Checksummed: the CRC32C of the bytes written, after a
// successful Close of a file written in one go ("" otherwise).
func (w *localWriter) Stored() string { return w.stored }

// Checkpoint implements Resumable.
func (w *localWriter) Checkpoint() (string, int64, error) {
	if err := w.f.Sync(); err != nil {
		return "", 0, err
	}
	return filepath.Base(w.tmp), w.size, nil
}

// Suspend implements Resumable.
func (w *localWriter) Suspend() error {
	if w.done {
		return nil
	}
	w.done = true
	return w.f.Close()
}

func (w *localWriter) Close() error {
	if w.done {
		return nil
	}
	w.done = true
	// Sync before rename: after a crash the name must never point at a file
	// whose bytes did not reach the disk (unless SyncStaged is to follow).
	if !w.unsynced {
		if err := w.f.Sync(); err != nil {
			w.f.Close()
			os.Remove(w.tmp)
			return fmt.Errorf("sync %s: %w", w.final, err)
		}
	}
	if err := w.f.Close(); err != nil {
		os.Remove(w.tmp)
		return fmt.Errorf("close %s: %w", w.final, err)
	}
	if err := os.Rename(w.tmp, w.final); err != nil {
		os.Remove(w.tmp)
		return fmt.Errorf("rename %s: %w", w.final, err)
	}
	if w.crc {
		w.stored = crc32cToken(w.sum)
	}
	return nil
}

func (w *localWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.f.Close()
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Open implements Sink.
func (l *Local) Open(ctx context.Context, run, name string) (io.ReadCloser, error) {
	if err := CheckRun(run); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	f, err := os.Open(l.stagedPath(run, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open staged %s of run %s: %w", name, run, ErrNotFound)
	}
	return f, err
}

// Commit implements Sink: CommitFiles with every staged data object of
// generation 0, unchecked.
func (l *Local) Commit(ctx context.Context, run string, manifest []byte) error {
	if err := CheckRun(run); err != nil {
		return err
	}
	var files []Staged
	if manifest != nil {
		data := l.stagedData(run, 0, "")
		err := filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, err := filepath.Rel(data, p)
			files = append(files, Staged{Name: filepath.ToSlash(rel), Bytes: -1})
			return err
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("commit run %s: list staged files: %w", run, err)
		}
	}
	return l.CommitFiles(ctx, run, files, manifest)
}

// CommitFiles implements Sink. The listed files are first moved by renames
// from their generation's staging into .staging/<run>/out and checked there
// (a late writer renames into its own staging path, never into out/), then
// out/ becomes the run by a single rename, so readers see either nothing or
// every file; _manifest.json follows. Each step can be repeated, so a retry
// after a crash completes the same run.
func (l *Local) CommitFiles(ctx context.Context, run string, files []Staged, manifest []byte) error {
	if err := CheckRun(run); err != nil {
		return err
	}
	for _, f := range files {
		if err := CheckName(f.Name); err != nil || strings.HasPrefix(f.Name, WorkPrefix) {
			return fmt.Errorf("commit run %s: %q cannot be committed: %v", run, f.Name, err)
		}
	}
	final := filepath.Join(l.Root, run)
	out := filepath.Join(l.stagingDir(run), "out")
	if manifest == nil {
		if exists(filepath.Join(final, ManifestName)) {
			return nil
		}
		return fmt.Errorf("run %s is not committed: %w", run, ErrNotFound)
	}
	staged := exists(out)
	for _, f := range files {
		staged = staged || exists(l.stagedData(run, f.Generation, f.Name))
	}
	switch {
	case exists(filepath.Join(final, ManifestName)):
		if staged {
			return fmt.Errorf("commit run %s: %s is already a committed run; start the export with another run name", run, final)
		}
		// A retried Commit whose first attempt finished: nothing to do.
		return nil
	case exists(final) && staged:
		return fmt.Errorf("commit run %s: %s exists but is not a bulkflow run (no %s); move it away or choose another run name", run, final, ManifestName)
	case exists(final):
		// The first attempt renamed out/ and died before the manifest.
	default:
		if err := l.assemble(ctx, run, out, files); err != nil {
			return err
		}
		if err := os.Rename(out, final); err != nil {
			return fmt.Errorf("commit run %s: promote staged files: %w", run, err)
		}
	}
	if err := writeFileAtomic(filepath.Join(final, ManifestName), manifest); err != nil {
		return fmt.Errorf("commit run %s: %w", run, err)
	}
	syncDir(final)
	syncDir(l.Root)
	// Every generation goes: strays of replaced plans were never promoted.
	if err := os.RemoveAll(l.stagingDir(run)); err != nil {
		return fmt.Errorf("commit run %s: committed, but could not remove staging: %w", run, err)
	}
	return nil
}

// assemble moves files into out (skipping those an earlier attempt moved)
// and checks each there against its record. The checks run side by side
// with the moves, each file as soon as it is in out/ (where no late writer
// reaches it): on a run of many small files the renames and the re-reads
// take about as long as each other (BenchmarkCommitSmallFiles).
func (l *Local) assemble(ctx context.Context, run, out string, files []Staged) error {
	if err := os.MkdirAll(out, 0o750); err != nil { // an empty export stages nothing
		return fmt.Errorf("commit run %s: %w", run, err)
	}
	work := make(chan Staged, 64)
	errs := make(chan error, 1)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	var wg sync.WaitGroup
	// Re-hash in parallel: on a big run this is the commit's cost
	// (BenchmarkVerifyStaged).
	for range max(1, min(runtime.GOMAXPROCS(0), 8)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				if len(errs) > 0 {
					continue
				}
				if err := verifyLocal(filepath.Join(out, filepath.FromSlash(f.Name)), f); err != nil {
					fail(fmt.Errorf("commit run %s: %w", run, err))
				}
			}
		}()
	}
	made := map[string]bool{out: true}
	for _, f := range files {
		if ctx.Err() != nil || len(errs) > 0 {
			break
		}
		if err := l.moveStaged(run, out, f, made); err != nil {
			fail(err)
			break
		}
		work <- f
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	return ctx.Err()
}

// moveStaged renames a file from its generation's staging into out, unless
// an earlier attempt did. made caches the directories that exist.
func (l *Local) moveStaged(run, out string, f Staged, made map[string]bool) error {
	dst := filepath.Join(out, filepath.FromSlash(f.Name))
	if exists(dst) {
		return nil // moved by an earlier attempt (a late writer's re-staged copy stays behind)
	}
	if dir := filepath.Dir(dst); !made[dir] {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("commit run %s: %w", run, err)
		}
		made[dir] = true
	}
	err := os.Rename(l.stagedData(run, f.Generation, f.Name), dst)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("commit run %s: staged %s (plan generation %d) is missing: %w; nothing was committed: export again", run, f.Name, f.Generation, ErrStagedChanged)
	default:
		return fmt.Errorf("commit run %s: assemble %s: %w", run, f.Name, err)
	}
}

// verifyLocal checks a staged file's size, then its content, streamed:
// against the CRC32C its writer kept (Stored) when there is one, else
// against the SHA-256 of its record.
//
// Why CRC32C is enough here: the file's SHA-256 was computed from the very
// bytes that went through the writer and its CRC32C, so the question left
// is only "is this still the file that writer produced?" (a late writer of
// another attempt, a truncation). CRC32C answers that for any accidental
// change (every burst of up to 32 bits, all but 2^-32 of the rest), as the
// GCS sink's stored CRC32C does; it is no defence against someone who can
// write into the staging directory and forges a collision, which the
// SHA-256 re-read was not either (they can write after the commit). It
// costs a few percent of SHA-256 (BenchmarkVerifyStaged).
func verifyLocal(p string, f Staged) error {
	if f.Bytes < 0 && f.SHA256 == "" && f.Stored == "" {
		return nil
	}
	fh, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("check staged %s: %w", f.Name, err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("check staged %s: %w", f.Name, err)
	}
	if f.Bytes >= 0 && st.Size() != f.Bytes {
		return fmt.Errorf("staged %s holds %d bytes, its record says %d: %w (overwritten by a late writer or truncated); nothing was committed: export again", f.Name, st.Size(), f.Bytes, ErrStagedChanged)
	}
	if strings.HasPrefix(f.Stored, crc32cPrefix) {
		h := crc32.New(castagnoli)
		if _, err := io.Copy(h, fh); err != nil {
			return fmt.Errorf("check staged %s: %w", f.Name, err)
		}
		if got := crc32cToken(h.Sum32()); got != f.Stored {
			return fmt.Errorf("staged %s has checksum %s, its writer stored %s: %w (overwritten by a late writer); nothing was committed: export again", f.Name, got, f.Stored, ErrStagedChanged)
		}
		return nil
	}
	if f.SHA256 == "" {
		return nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return fmt.Errorf("check staged %s: %w", f.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("staged %s has SHA-256 %s, its record says %s: %w (overwritten by a late writer); nothing was committed: export again", f.Name, got, f.SHA256, ErrStagedChanged)
	}
	return nil
}

// Abort implements Sink.
func (l *Local) Abort(ctx context.Context, run string) error {
	if err := CheckRun(run); err != nil {
		return err
	}
	if err := os.RemoveAll(l.stagingDir(run)); err != nil {
		return fmt.Errorf("abort run %s: %w", run, err)
	}
	return nil
}

// Location implements Sink.
func (l *Local) Location(run string) string { return filepath.Join(l.Root, run) }

// CreateAux implements Sink.
func (l *Local) CreateAux(ctx context.Context, name string) (Writer, error) {
	if err := CheckAux(name); err != nil {
		return nil, err
	}
	final := filepath.Join(l.Root, filepath.FromSlash(name))
	tmpDir := filepath.Join(l.Root, ".staging", "_aux")
	for _, d := range []string{filepath.Dir(final), tmpDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
	}
	f, err := os.CreateTemp(tmpDir, "aux-")
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	return &localWriter{f: f, tmp: f.Name(), final: final}, nil
}

// ReadState implements Sink.
func (l *Local) ReadState(ctx context.Context, name string) ([]byte, error) {
	if err := CheckRun(name); err != nil {
		return nil, fmt.Errorf("state name: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(l.Root, StateDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("state %s: %w", name, ErrNotFound)
	}
	return b, err
}

// WriteState implements Sink.
func (l *Local) WriteState(ctx context.Context, name string, data []byte) error {
	if err := CheckRun(name); err != nil {
		return fmt.Errorf("state name: %w", err)
	}
	dir := filepath.Join(l.Root, StateDir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, name), data); err != nil {
		return fmt.Errorf("write state %s: %w", name, err)
	}
	syncDir(dir)
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func writeFileAtomic(name string, data []byte) error {
	tmp := name + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// Open returns the Sink for an output location: a local directory (a plain
// path or a file:// URL) or gs://BUCKET[/PREFIX] (see NewGCS and docs/gcs.md;
// the Cloud KMS key, if any, comes from the BULKFLOW_GCS_KMS_KEY variable).
func Open(location string) (Sink, error) {
	switch {
	case strings.HasPrefix(location, "gs://"):
		return openGCS(location)
	case strings.Contains(location, "://") && !strings.HasPrefix(location, "file://"):
		return nil, fmt.Errorf("output %q: unsupported scheme; use a directory path or file:///path", location)
	}
	return NewLocal(strings.TrimPrefix(location, "file://"))
}
