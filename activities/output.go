package activities

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/lake"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// Layout is how output files land in the lake (docs/lake.md). The zero
// value is plain NDJSON, one object per server file, resumable with Range.
type Layout struct {
	// Format is "ndjson" (default), "parquet", "both", or "none" (with
	// Views: the resources are validated and flattened, not kept).
	Format string `json:"format,omitempty"`
	// Gzip compresses NDJSON output (.ndjson.gz).
	Gzip bool `json:"gzip,omitempty"`
	// PartitionBy is "" (none), "transactionTime" or "lastUpdated":
	// Hive-style <Type>/year=YYYY/month=MM/ folders.
	PartitionBy string `json:"partitionBy,omitempty"`

	// CheckSubsetted counts resources without the SUBSETTED tag: with
	// _elements, a lenient server may have ignored the parameter and sent
	// more data than asked (data minimisation).
	CheckSubsetted bool `json:"checkSubsetted,omitempty"`

	// Strict fails the export when the server reports resources it could
	// not export (error/fatal OperationOutcomes in error[]). By default the
	// rest is committed and the failures are named in the run manifest.
	// Carried here because the layout reaches every download.
	Strict bool `json:"strict,omitempty"`

	// Views names the export's views (docs/views.md); their definitions are
	// staged in the run's work area by the pre-flight, not carried here.
	Views []string `json:"views,omitempty"`
	// Attachments, when set, fetches the documents output resources point
	// at (attachments.go); carried here because the downloads list them.
	Attachments *AttachmentPolicy `json:"attachments,omitempty"`

	transactionTime string   // from the plan, not the caller
	viewSet         *viewSet // the staged Views, loaded by DownloadFile
}

var subsetted = []byte(`"SUBSETTED"`)

var fhirID = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// IsFHIRID reports whether id is a FHIR id (R4 id datatype:
// [A-Za-z0-9\-\.]{1,64}) that is safe as a path segment: "." and ".." are
// refused although the pattern allows them.
func IsFHIRID(id string) bool { return fhirID.MatchString(id) && id != "." && id != ".." }

func clipID(id string) string {
	if len(id) > 40 {
		id = id[:37] + "..."
	}
	return strings.ToValidUTF8(id, "?")
}

func (l Layout) plain() bool {
	return (l.Format == "" || l.Format == "ndjson") && !l.Gzip && l.PartitionBy == ""
}

// Validate reports a layout the lake writer cannot produce.
func (l Layout) Validate() error {
	switch l.Format {
	case "", "ndjson", "parquet", "both":
	case "none":
		if len(l.Views) == 0 {
			return errors.New(`format "none" keeps only view tables: name at least one view in "views", or use "ndjson", "parquet" or "both"`)
		}
		if l.Gzip {
			return errors.New(`gzip applies to NDJSON output; format "none" writes none`)
		}
	default:
		return fmt.Errorf(`format %q: use "ndjson", "parquet", "both" or "none" (with views)`, l.Format)
	}
	switch l.PartitionBy {
	case "", "transactionTime", "lastUpdated":
	default:
		return fmt.Errorf(`partitionBy %q: use "transactionTime" or "lastUpdated" (or leave it empty)`, l.PartitionBy)
	}
	if l.Gzip && l.Format == "parquet" {
		return fmt.Errorf(`gzip applies to NDJSON output; with format "parquet" use the Parquet compression (zstd)`)
	}
	return nil
}

func (l Layout) lakeOptions() (lake.Options, error) {
	o := lake.Options{Gzip: l.Gzip, PartitionBy: l.PartitionBy}
	switch l.Format {
	case "parquet":
		o.Formats = []lake.Format{lake.Parquet}
	case "both":
		o.Formats = []lake.Format{lake.NDJSON, lake.Parquet}
	default:
		o.Formats = []lake.Format{lake.NDJSON}
	}
	tt, err := time.Parse(time.RFC3339Nano, l.transactionTime)
	if err != nil {
		return o, fmt.Errorf("the manifest's transactionTime %q is not an instant: %w", l.transactionTime, err)
	}
	o.TransactionTime = tt
	return o, nil
}

// Part is one object a server file became (several with Parquet, both
// formats or partitions; tombstones for deleted files).
type Part struct {
	Path   string `json:"path"`
	Format string `json:"format"` // "ndjson" or "parquet"
	Gzip   bool   `json:"gzip,omitempty"`
	Kind   string `json:"kind,omitempty"` // "" = the file's kind; "tombstone"
	Type   string `json:"type,omitempty"` // "" = the file's type
	Rows   int64  `json:"rows"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	// Stored is the storage's own checksum of the staged object
	// (sink.StoredOf); Commit compares it without reading the object.
	Stored    string `json:"stored,omitempty"`
	Partition string `json:"partition,omitempty"`
	// View names the view of a view table (Kind "view"); Type is then the
	// resource type it flattens.
	View string `json:"view,omitempty"`
}

// downloadToLake streams an output file through the lake writer (Parquet,
// gzip, partitions). Such files restart from the beginning on retry: their
// objects are written in parallel and cannot be cut back to a checkpoint.
// Deterministic object names mean a retry overwrites, never doubles.
func (a *Activities) downloadToLake(ctx context.Context, c *bulk.Client, s sink.Sink, run string, requiresToken bool, item plannedFile, layout Layout, srcURL string) (FileResult, error) {
	opts, err := layout.lakeOptions()
	if err != nil {
		return FileResult{}, &bulk.Error{Op: "download", URL: srcURL, Kind: bulk.KindPermanent, Diagnostics: err.Error()}
	}
	base := strings.TrimSuffix(path.Base(item.Path), ".ndjson")
	open := func(name string) (sink.Writer, error) { return s.Create(ctx, run, name) }
	var lw *lake.FileWriter // nil with format "none": the resources are not kept
	if layout.Format != "none" {
		if lw, err = lake.NewFileWriter(open, item.Type, base, opts); err != nil {
			return FileResult{}, &bulk.Error{Op: "stage", URL: item.Path, Kind: bulk.KindPermanent, Err: err}
		}
		defer lw.Abort() // no-op after Close
	}
	var vf *viewFile // the view tables of this file (views.go)
	if layout.viewSet.wants(item.Type) {
		if vf, err = newViewFile(layout.viewSet, open, item.Type, base, opts); err != nil {
			return FileResult{}, &bulk.Error{Op: "stage", URL: item.Path, Kind: bulk.KindTransient, Err: err}
		}
		defer vf.abort() // no-op after close
	}
	f, err := c.OpenFile(ctx, item.URL, requiresToken, 0)
	if err != nil {
		return FileResult{}, err
	}
	defer f.Body.Close()

	// No resume here, but the heartbeat details still carry this
	// attempt's validation failure, so the same one twice is permanent.
	var prev checkpoint
	if !priorDetails(ctx, &prev) {
		prev = checkpoint{}
	}
	var mu sync.Mutex
	var last checkpoint
	var progress atomic.Int64
	stop := heartbeatWhileProgressing(ctx, &progress, a.HeartbeatEvery, func() checkpoint {
		mu.Lock()
		defer mu.Unlock()
		return last
	})
	defer stop()
	res := FileResult{Kind: item.Kind, Type: item.Type, Path: item.Path}
	r := a.newReader(&wireCounter{r: f.Body, n: &progress})
	v := ndjson.Validator{WantType: item.Type}
	ids := newIDSet(item)
	refs := a.newAttachmentRefs(ctx, c, s, run, item, layout) // attachments.go
	defer refs.abort()
	remember := func(sig string, err error) error { return rememberFailure(ctx, prev.Failure, &mu, &last, sig, err) }
	fail := func(kind bulk.ErrorKind, diag string, err error) (FileResult, error) {
		return FileResult{}, &bulk.Error{Op: "download", URL: srcURL, Kind: kind, Diagnostics: diag, Err: err}
	}
	// accept takes a validated line: the checks and writes before its views.
	keepMeta := vf != nil && slices.Contains(opts.Formats, lake.Parquet)
	accept := func(line []byte, m ndjson.Meta) error {
		if err := checkMore(item, res.Resources, res.Bytes, r.Line()); err != nil {
			return withURL(err, srcURL)
		}
		ids.add(m.ID, r.Line())
		if layout.CheckSubsetted && !bytes.Contains(line, subsetted) {
			res.Unsubsetted++
		}
		line = refs.add(line)
		if lw != nil {
			if keepMeta {
				m = cloneMeta(m) // Parquet rows hold the Meta's strings
			}
			if err := lw.Write(line, m); err != nil {
				_, err = fail(bulk.KindTransient, "write lake objects", err)
				return err
			}
		}
		return nil
	}
	viewFailed := func(err error) (FileResult, error) {
		if we := (errViewWrite{}); errors.As(err, &we) {
			return fail(bulk.KindTransient, "write view tables", err)
		}
		// The same resource fails the same way on every retry.
		return fail(bulk.KindPermanent, item.Path+" "+viewError(err, r.Line()), nil)
	}
	for {
		line, err := nextLine(r, item, res.Resources)
		if err == io.EOF {
			break
		}
		if err != nil {
			return FileResult{}, withURL(err, srcURL)
		}
		checked := false
		if vf != nil {
			// One decode validates the line and feeds the views
			// (viewFile.writeChecked); a line it does not vouch for
			// takes the validator below, unwritten.
			var err error
			if checked, err = vf.writeChecked(line, item.Type, func(m ndjson.Meta) error { return accept(line, m) }); err != nil {
				if ae := (acceptError{}); errors.As(err, &ae) {
					return FileResult{}, ae.err
				}
				return viewFailed(err)
			}
		}
		if !checked {
			m, err := v.Check(line)
			if err != nil {
				return FileResult{}, withURL(lineError(r, item, err), srcURL)
			}
			if err := accept(line, m); err != nil {
				return FileResult{}, err
			}
			if vf != nil {
				if err := vf.write(line, m); err != nil {
					return viewFailed(err)
				}
			}
		}
		res.Resources++
		res.Bytes += int64(len(line)) + 1
	}
	if err := checkCount(item, res.Resources); err != nil {
		return FileResult{}, withURL(remember(err.(*validationError).sig, err), srcURL)
	}
	if err := ids.check(); err != nil {
		return FileResult{}, withURL(remember(err.(*validationError).sig, err), srcURL)
	}
	if err := refs.close(); err != nil {
		return FileResult{}, err
	}
	var parts []lake.Part
	if lw != nil {
		if parts, err = lw.Close(); err != nil {
			return fail(bulk.KindTransient, "close lake objects", err)
		}
	}
	for _, p := range parts {
		res.Parts = append(res.Parts, Part{Path: p.Path, Format: string(p.Format), Gzip: p.Gzip, Rows: p.Rows, Bytes: p.Bytes, SHA256: p.SHA256, Stored: p.Stored, Partition: p.Partition})
	}
	if len(parts) > 0 {
		res.Path, res.SHA256 = parts[0].Path, parts[0].SHA256
	}
	if vf != nil {
		vparts, err := vf.close()
		if err != nil {
			return fail(bulk.KindTransient, "close view tables", err)
		}
		res.Parts = append(res.Parts, vparts...)
	}
	res.NotKept = lw == nil
	return res, nil
}

// heartbeatWhileProgressing heartbeats from a ticker, not per line: one
// 20 MB line on a slow link must not look like a stall, so progress counts
// bytes off the wire. A tick with no new bytes sends nothing, so a body that
// really stalls still trips the heartbeat timeout. details, when given,
// supplies the checkpoint a retry can resume from.
func heartbeatWhileProgressing(ctx context.Context, progress *atomic.Int64, every time.Duration, details func() checkpoint) (stop func()) {
	if every <= 0 {
		every = 5 * time.Second
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		var sent int64 = -1
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if b := progress.Load(); b != sent {
					sent = b
					var hb checkpoint
					if details != nil {
						hb = details()
					}
					hb.Progress = b
					activity.RecordHeartbeat(ctx, hb)
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}

// tombstones turns deleted[] Bundles (BD2 L474-496: transaction entries
// with request.method DELETE and request.url Type/id) into one NDJSON
// dataset per type under _deleted/<Type>/, so a downstream merge can apply
// them with a join on (type, id): see README "Deletions".
type tombstones struct {
	ctx             context.Context
	s               sink.Sink
	run, base       string
	transactionTime string
	byType          map[string]*tombFile
}

type tombFile struct {
	w    *sink.Hashed
	bw   *bufio.Writer
	rows int64
	path string
}

func newTombstones(ctx context.Context, s sink.Sink, run string, item plannedFile, transactionTime string) *tombstones {
	return &tombstones{ctx: ctx, s: s, run: run, base: strings.TrimSuffix(path.Base(item.Path), ".ndjson"),
		transactionTime: transactionTime, byType: map[string]*tombFile{}}
}

type tombstone struct {
	ResourceType    string `json:"resourceType"`
	ID              string `json:"id"`
	TransactionTime string `json:"transactionTime"`
	Source          string `json:"source"`
}

func (t *tombstones) add(bundle []byte, res *FileResult) error {
	var b struct {
		Entry []struct {
			Request struct {
				Method string `json:"method"`
				URL    string `json:"url"`
			} `json:"request"`
		} `json:"entry"`
	}
	if json.Unmarshal(bundle, &b) != nil {
		return nil // Validator already checked it is a Bundle; a strange one adds no tombstones
	}
	for _, e := range b.Entry {
		if !strings.EqualFold(e.Request.Method, "DELETE") {
			continue
		}
		typ, id, _ := strings.Cut(strings.TrimPrefix(e.Request.URL, "/"), "/")
		id, _, _ = strings.Cut(id, "/") // drop a trailing _history/...
		if !resourceTypeName.MatchString(typ) {
			continue
		}
		if !IsFHIRID(id) {
			// Tombstones are joined on (type, id) downstream, and ids end up
			// in keys and paths there: "..", "/" or 1 MB of text never do.
			return invalid("invalid_id", bulk.KindInvalidContent, fmt.Sprintf("a DELETE entry of type %s has an id that is not a FHIR id ([A-Za-z0-9-.]{1,64}, not \".\" or \"..\"): %q",
				typ, clipID(id)))
		}
		f := t.byType[typ]
		if f == nil {
			p := fmt.Sprintf("_deleted/%s/%s.ndjson", typ, t.base)
			w, err := t.s.Create(t.ctx, t.run, p)
			if err != nil {
				return err
			}
			f = &tombFile{w: sink.NewHashed(w), path: p}
			f.bw = bufio.NewWriter(f.w)
			t.byType[typ] = f
		}
		line, _ := json.Marshal(tombstone{ResourceType: typ, ID: id, TransactionTime: t.transactionTime, Source: t.base})
		line = append(line, '\n')
		if _, err := f.bw.Write(line); err != nil {
			return err
		}
		f.rows++
		if res.Deleted == nil {
			res.Deleted = map[string]int64{}
		}
		res.Deleted[typ]++
	}
	return nil
}

func (t *tombstones) close() ([]Part, error) {
	var parts []Part
	for typ, f := range t.byType {
		if err := f.bw.Flush(); err != nil {
			return nil, err
		}
		if err := f.w.Close(); err != nil {
			return nil, err
		}
		parts = append(parts, Part{Path: f.path, Format: "ndjson", Kind: KindTombstone, Type: typ, Rows: f.rows, Bytes: f.w.Size(), SHA256: f.w.SHA256(), Stored: f.w.Stored()})
	}
	t.byType = nil
	return parts, nil
}

func (t *tombstones) abort() {
	for _, f := range t.byType {
		f.w.Abort()
	}
}
