// Package sink stores the files of an export run: first in a staging area that
// readers never see, then promoted atomically by Commit, with the run manifest
// written last. A run whose manifest is missing is, by definition, incomplete.
package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// ManifestName is the run manifest. Readers key off it: it is written only after
// every data file of the run is in place.
const ManifestName = "_manifest.json"

// WorkPrefix marks names that hold bulkflow's own bookkeeping for a run (the
// server's manifest, per-chunk file records). They live beside the staged data
// but are never promoted by Commit: they may contain capability URLs.
const WorkPrefix = "_work/"

// ErrNotFound is returned by Open for a name that was never staged.
var ErrNotFound = errors.New("not found")

// Sink is where one output location's runs are staged and committed.
// Implementations must make Commit idempotent: a retried Commit after a crash
// completes the same run, never duplicates it.
type Sink interface {
	// Create opens name in run's staging area. What is written becomes visible
	// under name only when the Writer is closed without error, replacing any
	// earlier object of that name, so a retried download never appends twice.
	Create(ctx context.Context, run, name string) (Writer, error)
	// Open reads a staged object (data or work).
	Open(ctx context.Context, run, name string) (io.ReadCloser, error)
	// CommitFiles promotes exactly files, each from its generation's staging
	// to its final place, after checking that the staged object is still
	// the one recorded (an error wrapping ErrStagedChanged if not); then
	// writes manifest as ManifestName, then drops the staging area (every
	// generation). Staged objects not listed are never promoted.
	// A nil manifest only confirms: nil if run is already committed, else an
	// error wrapping ErrNotFound; nothing is promoted.
	CommitFiles(ctx context.Context, run string, files []Staged, manifest []byte) error
	// Commit is CommitFiles for every staged data object of generation 0,
	// unchecked: for tools and tests. Exports commit with CommitFiles.
	Commit(ctx context.Context, run string, manifest []byte) error
	// Abort drops run's staging area. Committed output is never touched.
	Abort(ctx context.Context, run string) error
	// Location is a human-readable address of run's committed output.
	Location(run string) string
	// ReadState returns the state object name (kept beside the runs under
	// StateDir, e.g. incremental watermarks); an error wrapping ErrNotFound
	// if there is none.
	ReadState(ctx context.Context, name string) ([]byte, error)
	// WriteState replaces state object name atomically: readers see the
	// old or the new content, never a mix.
	WriteState(ctx context.Context, name string, data []byte) error
	// CreateAux opens an object beside the runs, such as an audit log
	// fragment "_audit/<run>/<part>.ndjson"; it appears when closed. Names
	// must start with "_".
	CreateAux(ctx context.Context, name string) (Writer, error)
}

// Staged is one object a commit promotes.
type Staged struct {
	Name string // in the run, as staged and as committed
	// Generation is the plan generation that staged it (see AtGeneration).
	Generation int
	// Bytes and SHA256 (hex) are what the download wrote; the commit
	// refuses a staged object that no longer matches. Bytes < 0 or an
	// empty SHA256 skip that check.
	Bytes  int64
	SHA256 string
	// Stored is the storage's checksum of the object when it was written
	// (StoredOf); "" skips that check.
	Stored string
}

// Checksummed is a Writer whose storage computes a checksum of the object
// it stores (GCS: CRC32C), so a commit can check the staged object without
// reading it.
type Checksummed interface {
	// Stored returns the checksum, after a successful Close ("" before).
	Stored() string
}

// StoredOf returns w's Stored checksum, or "" if its storage gives none.
func StoredOf(w Writer) string {
	if c, ok := w.(Checksummed); ok {
		return c.Stored()
	}
	return ""
}

// ErrStagedChanged: a staged object is not the one its record describes
// (overwritten by a late writer, truncated). Retrying cannot help.
var ErrStagedChanged = errors.New("staged file differs from its record")

// Generational is a Sink that can stage data objects per plan generation.
type Generational interface {
	// AtGeneration returns a view of the sink whose Create, Open and Resume
	// of data objects (not WorkPrefix ones) use generation gen's staging
	// path, so a late writer of a replaced plan never overwrites a current
	// file. Commit, Abort and state are shared by all generations.
	AtGeneration(gen int) Sink
}

// AtGeneration returns s's view for plan generation gen (s itself for 0 or
// a sink without generations).
func AtGeneration(s Sink, gen int) Sink {
	if g, ok := s.(Generational); ok && gen > 0 {
		return g.AtGeneration(gen)
	}
	return s
}

// genDir names generation gen's staged data directory: generation 0 keeps
// the original "data" so runs staged before generations still commit.
func genDir(gen int) string {
	if gen <= 0 {
		return "data"
	}
	return "g" + strconv.Itoa(gen)
}

// CheckAux rejects aux object names that could collide with runs.
func CheckAux(name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if !strings.HasPrefix(name, "_") || strings.HasPrefix(name, WorkPrefix) {
		return fmt.Errorf("aux object %q must start with '_' (and not %s)", name, WorkPrefix)
	}
	return nil
}

// StateDir holds state objects beside the runs of an output location.
const StateDir = "_state"

// Writer is a staged object being written.
type Writer interface {
	io.Writer
	// Close makes the object visible under its name, atomically.
	Close() error
	// Abort discards what was written. Calling it after Close is a no-op.
	Abort() error
}

// Resumable is a Writer that can checkpoint itself, so that a later
// attempt (in this process or another with the same storage) continues
// from the checkpoint instead of starting over.
type Resumable interface {
	Writer
	// Checkpoint makes everything written so far durable and returns a token
	// naming the partial object and its size.
	Checkpoint() (token string, size int64, err error)
	// Suspend closes the writer but keeps the partial object for Resume.
	Suspend() error
}

// GroupSyncer is a Sink that can make many small staged objects durable at
// once (issue 14 §1): on a local disk one fsync per file costs a journal
// commit each (about 2.5 ms), while fsyncs issued together share one.
type GroupSyncer interface {
	// CreateUnsynced is Create whose Close makes the object visible under
	// its name without waiting for its bytes to reach the disk. SyncStaged
	// must follow before anything relies on the object surviving a crash.
	CreateUnsynced(ctx context.Context, run, name string) (Writer, error)
	// SyncStaged makes the named staged objects (and their directory
	// entries) durable, together.
	SyncStaged(ctx context.Context, run string, names []string) error
}

// Resumer is a Sink that can reopen a checkpointed partial object.
type Resumer interface {
	// Resume reopens the partial object token of name in run, cut back to
	// size bytes, for appending.
	Resume(ctx context.Context, run, name, token string, size int64) (Writer, error)
}

// CheckName rejects names that could escape a run's directory or collide with
// bookkeeping: they come from manifests written by remote servers.
func CheckName(name string) error {
	if name == "" {
		return errors.New("empty object name")
	}
	if strings.ContainsAny(name, "\\\x00") || strings.HasPrefix(name, "/") || path.Clean(name) != name || name == "." ||
		strings.HasPrefix(name, "../") || name == ".." || strings.Contains(name, "/../") {
		return fmt.Errorf("object name %q is not a clean relative path", name)
	}
	return nil
}

// CheckRun rejects run names that are not a single safe path element.
func CheckRun(run string) error {
	if run == "" || run == "." || run == ".." || strings.ContainsAny(run, "/\\\x00") || strings.HasPrefix(run, ".") {
		return fmt.Errorf("run name %q must be a single path element not starting with '.'", run)
	}
	return nil
}
