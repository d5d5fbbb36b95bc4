package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
)

// GCSKMSKeyEnv names the environment variable that Open reads for a Cloud KMS
// key (projects/P/locations/L/keyRings/R/cryptoKeys/K) to encrypt gs:// output
// with (CMEK). Empty means the bucket's default encryption.
const GCSKMSKeyEnv = "BULKFLOW_GCS_KMS_KEY"

// DefaultGCSChunkSize is the resumable-upload chunk: each open Writer buffers
// at most this much, and a failed chunk is retried from that buffer.
const DefaultGCSChunkSize = 16 << 20

// stagedGenerationKey is custom metadata on every committed data object: the
// generation of the staged object it was copied from. It is how a retried
// Commit tells leftovers of its own run (safe to delete) from a new staging of
// a run name that is already taken.
const stagedGenerationKey = "bulkflow-staged-generation"

// gcsParallel bounds concurrent copies and deletes in Commit and Abort.
const gcsParallel = 16

// GCSOptions tunes a GCS sink.
type GCSOptions struct {
	// KMSKeyName, if set, encrypts every object bulkflow writes or copies with
	// this Cloud KMS key instead of the bucket's default.
	KMSKeyName string
	// ChunkSize of resumable uploads; 0 means DefaultGCSChunkSize. The library
	// rounds it up to a multiple of 256 KiB.
	ChunkSize int
}

// GCS is a Sink on Google Cloud Storage, shared safely by workers on many hosts.
//
// Layout under gs://Bucket/Prefix/:
//
//	<run>/...                      committed output; complete iff <run>/_manifest.json exists
//	.staging/<run>/data/...        staged data of plan generation 0, copied server-side by Commit
//	.staging/<run>/g<N>/...        staged data of plan generation N (a restart or refresh)
//	.staging/<run>/work/...        bookkeeping, deleted at commit
//
// GCS has no rename, so Commit copies every listed staged object and only
// then writes the manifest: readers that key off _manifest.json never see a
// partial run.
type GCS struct {
	bucket *storage.BucketHandle
	name   string
	prefix string // "" or "a/b/" (always ends in '/')
	opts   GCSOptions
	gen    int // plan generation of this view (AtGeneration)
}

// AtGeneration implements Generational.
func (g *GCS) AtGeneration(gen int) Sink {
	c := *g
	c.gen = gen
	return &c
}

// NewGCS returns a GCS sink writing under gs://bucket/prefix/ through client.
func NewGCS(ctx context.Context, client *storage.Client, bucket, prefix string, opts GCSOptions) *GCS {
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = DefaultGCSChunkSize
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	// Every request this sink makes is idempotent in effect: an upload or copy
	// repeated replaces the object with the same bytes, a repeated delete finds
	// nothing (ignored), and the manifest write has its own precondition. So
	// retry them all, not only those the library can prove idempotent.
	b := client.Bucket(bucket).Retryer(storage.WithPolicy(storage.RetryAlways))
	return &GCS{bucket: b, name: bucket, prefix: prefix, opts: opts}
}

func (g *GCS) stagingPrefix(run string) string { return g.prefix + ".staging/" + run + "/" }
func (g *GCS) stagedDataPrefix(run string) string {
	return g.stagingPrefix(run) + genDir(0) + "/"
}
func (g *GCS) finalPrefix(run string) string { return g.prefix + run + "/" }

func (g *GCS) stagedObject(run, name string) string {
	if rest, ok := strings.CutPrefix(name, WorkPrefix); ok {
		return g.stagingPrefix(run) + "work/" + rest
	}
	return g.stagingPrefix(run) + genDir(g.gen) + "/" + name
}

// Create implements Sink with a resumable upload: memory stays within one
// chunk however large the file, and the object appears only when Close
// finalises the upload, replacing any earlier generation.
func (g *GCS) Create(ctx context.Context, run, name string) (Writer, error) {
	if err := CheckRun(run); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if name == ManifestName {
		// A staged data object of this name would be promoted as the manifest.
		return nil, fmt.Errorf("object name %q is reserved for the run manifest", name)
	}
	// The upload lives beyond this call; cancelling its own context is how
	// the library abandons an upload without creating the object.
	wctx, cancel := context.WithCancel(ctx)
	w := g.bucket.Object(g.stagedObject(run, name)).NewWriter(wctx)
	w.ChunkSize = g.opts.ChunkSize
	w.KMSKeyName = g.opts.KMSKeyName
	return &gcsWriter{w: w, cancel: cancel, loc: g.url(g.stagedObject(run, name))}, nil
}

type gcsWriter struct {
	w      *storage.Writer
	cancel context.CancelFunc
	loc    string
	done   bool
}

func (w *gcsWriter) Write(p []byte) (int, error) { return w.w.Write(p) }

func (w *gcsWriter) Close() error {
	if w.done {
		return nil
	}
	w.done = true
	defer w.cancel()
	if err := w.w.Close(); err != nil {
		return fmt.Errorf("upload %s: %w", w.loc, err)
	}
	return nil
}

// Stored implements Checksummed: the CRC32C the service computed.
func (w *gcsWriter) Stored() string {
	if a := w.w.Attrs(); w.done && a != nil {
		return crc32cToken(a.CRC32C)
	}
	return ""
}

func crc32cToken(c uint32) string { return fmt.Sprintf(crc32cPrefix+"%08x", c) }

// crc32cPrefix starts a Stored value that is a CRC32C (GCS, and the local
// sink's files written in one go).
const crc32cPrefix = "crc32c:"

func (w *gcsWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.cancel()
	_ = w.w.Close() // reports the cancellation; waits for the upload goroutine
	return nil
}

// Open implements Sink.
func (g *GCS) Open(ctx context.Context, run, name string) (io.ReadCloser, error) {
	if err := CheckRun(run); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	r, err := g.bucket.Object(g.stagedObject(run, name)).NewReader(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return nil, fmt.Errorf("open staged %s of run %s: %w", name, run, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open staged %s of run %s: %w", name, run, err)
	}
	return r, nil
}

// Commit implements Sink. Each step can be repeated, so a Commit retried after
// a crash anywhere completes the same run:
//
//  1. copy each staged data object to <run>/<name> (skipping those an earlier
//     attempt already copied), tagging the copy with the staged generation;
//  2. write <run>/_manifest.json, only if it does not exist yet;
//  3. delete the staging area.
//
// A nil manifest only confirms an earlier commit (finishing its clean-up): it
// fails with ErrNotFound if the run has no manifest, and promotes nothing.
//
// The staged objects promoted are exactly files, each from its generation's
// staging (strays of replaced plans are never copied), after checking its
// size against the record. The copy pins the generation (object version)
// that was checked. GCS writes objects whole and checks them with CRC32C on
// upload, so a staged object cannot be cut short at rest; the size check
// catches an object replaced by a late writer of other length. SHA-256 is
// not re-checked: that would read the whole run again (docs/architecture.md).
func (g *GCS) CommitFiles(ctx context.Context, run string, files []Staged, manifest []byte) error {
	if err := CheckRun(run); err != nil {
		return err
	}
	for _, f := range files {
		if err := CheckName(f.Name); err != nil || strings.HasPrefix(f.Name, WorkPrefix) {
			return fmt.Errorf("commit run %s: %q cannot be committed: %v", run, f.Name, err)
		}
	}
	all, err := g.list(ctx, g.stagingPrefix(run))
	if err != nil {
		return fmt.Errorf("commit run %s: list staged data: %w", run, err)
	}
	staged := map[string]*storage.ObjectAttrs{}
	var missing []Staged
	for _, f := range files {
		if a, ok := all[genDir(f.Generation)+"/"+f.Name]; ok {
			staged[f.Name] = a
		} else {
			missing = append(missing, f)
		}
	}
	if manifest == nil {
		// Confirming: the staged data of generation 0 tells ours from a
		// new export reusing the run name, as before generations.
		for rel, a := range all {
			if name, ok := strings.CutPrefix(rel, genDir(0)+"/"); ok {
				staged[name] = a
			}
		}
	}
	manifestObj := g.bucket.Object(g.finalPrefix(run) + ManifestName)
	_, err = manifestObj.Attrs(ctx)
	switch {
	case err == nil:
		// Committed already. Staged data left over is either ours (an attempt
		// that died while deleting staging: its copies carry its generation)
		// or a new export reusing the run name.
		for name, src := range staged {
			dst, err := g.bucket.Object(g.finalPrefix(run) + name).Attrs(ctx)
			if err != nil && !errors.Is(err, storage.ErrObjectNotExist) {
				return fmt.Errorf("commit run %s: %w", run, err)
			}
			if err != nil || dst.Metadata[stagedGenerationKey] != strconv.FormatInt(src.Generation, 10) {
				if manifest == nil {
					return nil // confirmed; that staging is not ours to drop
				}
				return fmt.Errorf("commit run %s: %s is already a committed run; start the export with another run name", run, g.Location(run))
			}
		}
		return g.dropStaging(ctx, run, "commit")
	case !errors.Is(err, storage.ErrObjectNotExist):
		return fmt.Errorf("commit run %s: check manifest: %w", run, err)
	case manifest == nil:
		return fmt.Errorf("run %s is not committed (%s has no %s): %w", run, g.Location(run), ManifestName, ErrNotFound)
	}

	if len(missing) > 0 {
		f := missing[0]
		return fmt.Errorf("commit run %s: staged %s (plan generation %d) is missing (%d of %d listed files): %w; nothing was committed: export again",
			run, f.Name, f.Generation, len(missing), len(files), ErrStagedChanged)
	}
	for _, f := range files {
		if a := staged[f.Name]; f.Bytes >= 0 && a.Size != f.Bytes {
			return fmt.Errorf("commit run %s: staged %s holds %d bytes, its record says %d: %w (replaced by a late writer); nothing was committed: export again",
				run, f.Name, a.Size, f.Bytes, ErrStagedChanged)
		}
		if a := staged[f.Name]; f.Stored != "" && crc32cToken(a.CRC32C) != f.Stored {
			return fmt.Errorf("commit run %s: staged %s has %s, its record says %s: %w (replaced by a late writer); nothing was committed: export again",
				run, f.Name, crc32cToken(a.CRC32C), f.Stored, ErrStagedChanged)
		}
	}
	if len(staged) > 0 {
		if err := g.promote(ctx, run, staged); err != nil {
			return err
		}
	}
	// Otherwise the staging is gone (an attempt died after its copies and
	// before the manifest) or the export produced no data: write the manifest.

	mw := manifestObj.If(storage.Conditions{DoesNotExist: true}).NewWriter(ctx)
	mw.ContentType = "application/json"
	mw.KMSKeyName = g.opts.KMSKeyName
	mw.ChunkSize = 0 // small: one request
	_, werr := mw.Write(manifest)
	if cerr := mw.Close(); werr == nil {
		werr = cerr
	}
	var gerr *googleapi.Error
	if errors.As(werr, &gerr) && gerr.Code == http.StatusPreconditionFailed {
		// A concurrent attempt of this commit (or a retry of our own request
		// whose answer was lost) wrote it first, from the same staged data.
		werr = nil
	}
	if werr != nil {
		return fmt.Errorf("commit run %s: write %s: %w", run, ManifestName, werr)
	}
	return g.dropStaging(ctx, run, "commit")
}

// Commit implements Sink: CommitFiles with every staged data object of
// generation 0, unchecked.
func (g *GCS) Commit(ctx context.Context, run string, manifest []byte) error {
	if err := CheckRun(run); err != nil {
		return err
	}
	var files []Staged
	if manifest != nil {
		data, err := g.list(ctx, g.stagedDataPrefix(run))
		if err != nil {
			return fmt.Errorf("commit run %s: list staged data: %w", run, err)
		}
		for name := range data {
			files = append(files, Staged{Name: name, Bytes: -1})
		}
	}
	return g.CommitFiles(ctx, run, files, manifest)
}

// promote copies staged data objects into the run's final prefix.
func (g *GCS) promote(ctx context.Context, run string, staged map[string]*storage.ObjectAttrs) error {
	final, err := g.list(ctx, g.finalPrefix(run))
	if err != nil {
		return fmt.Errorf("commit run %s: list %s: %w", run, g.Location(run), err)
	}
	var stale []string
	for name, a := range final {
		if _, ok := a.Metadata[stagedGenerationKey]; !ok {
			return fmt.Errorf("commit run %s: %s exists but is not a bulkflow run (%s has no %s); move it away or choose another run name",
				run, g.Location(run), name, ManifestName)
		}
		if _, ok := staged[name]; !ok {
			// Copied by an earlier attempt from a staging that was since
			// aborted and redone without it: never part of this run.
			stale = append(stale, g.finalPrefix(run)+name)
		}
	}
	var todo []string
	for name, src := range staged {
		if dst, ok := final[name]; ok && dst.Metadata[stagedGenerationKey] == strconv.FormatInt(src.Generation, 10) {
			continue // an earlier attempt copied this very generation
		}
		todo = append(todo, name)
	}
	err = parallel(ctx, todo, func(ctx context.Context, name string) error {
		src := staged[name]
		// Pin the listed generation: if the object was staged again since, the
		// copy fails instead of promoting bytes the listing did not see.
		c := g.bucket.Object(g.finalPrefix(run) + name).CopierFrom(g.bucket.Object(src.Name).Generation(src.Generation))
		c.ContentType = src.ContentType
		c.Metadata = map[string]string{stagedGenerationKey: strconv.FormatInt(src.Generation, 10)}
		c.DestinationKMSKeyName = g.opts.KMSKeyName
		if _, err := c.Run(ctx); err != nil {
			return fmt.Errorf("copy %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit run %s: promote staged files: %w", run, err)
	}
	if err := g.deleteAll(ctx, stale); err != nil {
		return fmt.Errorf("commit run %s: remove stale copies: %w", run, err)
	}
	return nil
}

// Abort implements Sink.
func (g *GCS) Abort(ctx context.Context, run string) error {
	if err := CheckRun(run); err != nil {
		return err
	}
	return g.dropStaging(ctx, run, "abort")
}

func (g *GCS) dropStaging(ctx context.Context, run, op string) error {
	objs, err := g.list(ctx, g.stagingPrefix(run))
	if err == nil {
		names := make([]string, 0, len(objs))
		for _, a := range objs {
			names = append(names, a.Name)
		}
		err = g.deleteAll(ctx, names)
	}
	if err != nil && op == "commit" {
		return fmt.Errorf("commit run %s: committed, but could not remove staging: %w", run, err)
	}
	if err != nil {
		return fmt.Errorf("%s run %s: %w", op, run, err)
	}
	return nil
}

func (g *GCS) deleteAll(ctx context.Context, names []string) error {
	return parallel(ctx, names, func(ctx context.Context, name string) error {
		if err := g.bucket.Object(name).Delete(ctx); err != nil && !errors.Is(err, storage.ErrObjectNotExist) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		return nil
	})
}

// list returns the objects under prefix keyed by their name relative to it.
func (g *GCS) list(ctx context.Context, prefix string) (map[string]*storage.ObjectAttrs, error) {
	q := &storage.Query{Prefix: prefix}
	if err := q.SetAttrSelection([]string{"Name", "Generation", "ContentType", "Metadata", "Size", "CRC32C"}); err != nil {
		return nil, err
	}
	out := map[string]*storage.ObjectAttrs{}
	it := g.bucket.Objects(ctx, q)
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		rel := strings.TrimPrefix(a.Name, prefix)
		if rel == "" || strings.HasSuffix(rel, "/") {
			continue // folder placeholders made by consoles and tools
		}
		out[rel] = a
	}
}

// Location implements Sink.
func (g *GCS) Location(run string) string { return g.url(g.finalPrefix(run)) }

// CreateAux implements Sink.
func (g *GCS) CreateAux(ctx context.Context, name string) (Writer, error) {
	if err := CheckAux(name); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	w := g.bucket.Object(g.prefix + name).NewWriter(wctx)
	w.ChunkSize = g.opts.ChunkSize
	w.KMSKeyName = g.opts.KMSKeyName
	return &gcsWriter{w: w, cancel: cancel, loc: g.url(g.prefix + name)}, nil
}

// ReadState implements Sink.
func (g *GCS) ReadState(ctx context.Context, name string) ([]byte, error) {
	if err := CheckRun(name); err != nil {
		return nil, fmt.Errorf("state name: %w", err)
	}
	r, err := g.bucket.Object(g.prefix + StateDir + "/" + name).NewReader(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return nil, fmt.Errorf("state %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", name, err)
	}
	defer r.Close()
	return io.ReadAll(r)
}

// WriteState implements Sink: one object upload, which GCS makes visible
// atomically.
func (g *GCS) WriteState(ctx context.Context, name string, data []byte) error {
	if err := CheckRun(name); err != nil {
		return fmt.Errorf("state name: %w", err)
	}
	w := g.bucket.Object(g.prefix + StateDir + "/" + name).NewWriter(ctx)
	w.KMSKeyName = g.opts.KMSKeyName
	w.ContentType = "application/json"
	if _, err := w.Write(data); err != nil {
		w.Close()
		return fmt.Errorf("write state %s: %w", name, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("write state %s: %w", name, err)
	}
	return nil
}

func (g *GCS) url(object string) string {
	return "gs://" + g.name + "/" + strings.TrimSuffix(object, "/")
}

// parallel runs fn on every item, gcsParallel at a time, and returns the first
// error; the others are cancelled.
func parallel(ctx context.Context, items []string, fn func(context.Context, string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
		sem      = make(chan struct{}, gcsParallel)
	)
	for _, it := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, it); err != nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$`)

// ParseGCSURL splits gs://bucket[/prefix] into its bucket and prefix.
func ParseGCSURL(location string) (bucket, prefix string, err error) {
	u, err := url.Parse(location)
	if err != nil || u.Scheme != "gs" {
		return "", "", fmt.Errorf("output %q: not a gs://BUCKET[/PREFIX] URL", location)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" || u.Opaque != "" {
		return "", "", fmt.Errorf("output %q: use gs://BUCKET[/PREFIX] with no user, port, query or fragment", location)
	}
	if !bucketName.MatchString(u.Host) {
		return "", "", fmt.Errorf("output %q: bucket name %q is not valid: 3 to 222 characters of lower-case letters, digits, '-', '_' and '.'; use gs://BUCKET[/PREFIX]", location, u.Host)
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix != "" {
		if err := CheckName(prefix); err != nil {
			return "", "", fmt.Errorf("output %q: prefix: %w", location, err)
		}
	}
	return u.Host, prefix, nil
}

// openGCS serves Open for gs:// locations. The client uses Application
// Default Credentials, or STORAGE_EMULATOR_HOST when set (the library's own).
func openGCS(location string) (Sink, error) {
	bucket, prefix, err := ParseGCSURL(location)
	if err != nil {
		return nil, err
	}
	opts := GCSOptions{KMSKeyName: strings.TrimSpace(os.Getenv(GCSKMSKeyEnv))}
	if k := opts.KMSKeyName; k != "" && (!strings.HasPrefix(k, "projects/") || !strings.Contains(k, "/cryptoKeys/")) {
		return nil, fmt.Errorf("output %q: %s=%q is not a key name of the form projects/P/locations/L/keyRings/R/cryptoKeys/K", location, GCSKMSKeyEnv, k)
	}
	// The client outlives this call: the sink is used for the worker's life.
	// JSON reads: the XML read path does not reach emulators such as
	// fake-gcs-server, and real GCS serves both.
	client, err := storage.NewClient(context.Background(), storage.WithJSONReads())
	if err != nil {
		return nil, fmt.Errorf("output %q: Google Cloud Storage client: %w (credentials come from Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, or the metadata server; STORAGE_EMULATOR_HOST points at an emulator)", location, err)
	}
	return NewGCS(context.Background(), client, bucket, prefix, opts), nil
}
