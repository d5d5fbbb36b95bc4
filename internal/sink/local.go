package sink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Local is a Sink on a local (or shared network) file system.
//
// Layout under Root:
//
//	<run>/...                      committed output; complete iff <run>/_manifest.json exists
//	.staging/<run>/data/...        staged data, promoted by one directory rename
//	.staging/<run>/work/...        bookkeeping, deleted at commit
//	.staging/<run>/tmp/...         objects being written, renamed into data or work when complete
//
// Several workers may share Root only through a file system that gives them
// all the same view (NFS and the like); for output shared across hosts prefer
// object storage.
type Local struct {
	Root string
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
	return filepath.Join(l.stagingDir(run), "data", filepath.FromSlash(name))
}

// Create implements Sink.
func (l *Local) Create(ctx context.Context, run, name string) (Writer, error) {
	if err := CheckRun(run); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	final := l.stagedPath(run, name)
	tmpDir := filepath.Join(l.stagingDir(run), "tmp")
	for _, d := range []string{filepath.Dir(final), tmpDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("stage %s: %w", name, err)
		}
	}
	// Partial files live outside data/, so a crashed writer's leftovers are
	// never promoted with the run.
	var suffix [12]byte
	_, _ = rand.Read(suffix[:])
	tmp := filepath.Join(tmpDir, hex.EncodeToString(suffix[:]))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", name, err)
	}
	return &localWriter{f: f, tmp: tmp, final: final}, nil
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
	tmp := filepath.Join(l.stagingDir(run), "tmp", token)
	f, err := os.OpenFile(tmp, os.O_WRONLY, 0)
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
	return &localWriter{f: f, tmp: tmp, final: l.stagedPath(run, name), size: size}, nil
}

type localWriter struct {
	f          *os.File
	tmp, final string
	size       int64
	done       bool
}

func (w *localWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.size += int64(n)
	return n, err
}

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
	// whose bytes did not reach the disk.
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		os.Remove(w.tmp)
		return fmt.Errorf("sync %s: %w", w.final, err)
	}
	if err := w.f.Close(); err != nil {
		os.Remove(w.tmp)
		return fmt.Errorf("close %s: %w", w.final, err)
	}
	if err := os.Rename(w.tmp, w.final); err != nil {
		os.Remove(w.tmp)
		return fmt.Errorf("rename %s: %w", w.final, err)
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

// Commit implements Sink. The data directory is promoted by a single rename,
// so readers see either nothing or every file; _manifest.json follows.
func (l *Local) Commit(ctx context.Context, run string, manifest []byte) error {
	if err := CheckRun(run); err != nil {
		return err
	}
	final := filepath.Join(l.Root, run)
	data := filepath.Join(l.stagingDir(run), "data")
	finalExists := exists(final)
	dataExists := exists(data)
	if manifest == nil {
		if exists(filepath.Join(final, ManifestName)) {
			return nil
		}
		return fmt.Errorf("run %s is not committed: %w", run, ErrNotFound)
	}
	switch {
	case exists(filepath.Join(final, ManifestName)):
		if dataExists {
			return fmt.Errorf("commit run %s: %s is already a committed run; start the export with another run name", run, final)
		}
		// A retried Commit whose first attempt finished: nothing to do.
		return nil
	case finalExists && dataExists:
		return fmt.Errorf("commit run %s: %s exists but is not a bulkflow run (no %s); move it away or choose another run name", run, final, ManifestName)
	case finalExists:
		// The first attempt renamed the data and died before the manifest.
	default:
		if err := os.MkdirAll(data, 0o750); err != nil { // an empty export stages nothing
			return fmt.Errorf("commit run %s: %w", run, err)
		}
		if err := os.Rename(data, final); err != nil {
			return fmt.Errorf("commit run %s: promote staged files: %w", run, err)
		}
	}
	if err := writeFileAtomic(filepath.Join(final, ManifestName), manifest); err != nil {
		return fmt.Errorf("commit run %s: %w", run, err)
	}
	syncDir(final)
	syncDir(l.Root)
	if err := os.RemoveAll(l.stagingDir(run)); err != nil {
		return fmt.Errorf("commit run %s: committed, but could not remove staging: %w", run, err)
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
