// Package lake writes one downloaded FHIR NDJSON file into the data lake
// layout that DuckDB, Spark and BigQuery read directly: NDJSON (optionally
// gzipped) and/or Parquet, optionally in Hive-style year=/month= partitions.
//
// Everything is written while the source streams in: no temporary file and no
// second pass. Memory stays flat whatever the file size: Parquet row groups are
// flushed once the resource JSON buffered across all open partitions reaches
// Options.RowGroupBytes, and NDJSON goes through small fixed buffers.
//
// Object names are deterministic (type, partition, base name, format), so a
// retried file overwrites its own parts instead of adding new ones. See
// docs/lake.md for the layout and the Parquet columns.
package lake

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/parquet-go/parquet-go"

	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// Format is an output file format.
type Format string

const (
	NDJSON  Format = "ndjson"
	Parquet Format = "parquet"
)

// Partition keys for Options.PartitionBy.
const (
	ByNone            = ""
	ByTransactionTime = "transactionTime"
	ByLastUpdated     = "lastUpdated"
)

// DefaultRowGroupBytes is the default Parquet row group target, counted in
// resource JSON bytes: large enough for good compression and fast scans,
// small enough that a worker holds a few of them at once.
const DefaultRowGroupBytes = 64 << 20

// Options chooses formats and partitioning. The zero value writes plain
// NDJSON under today's names.
type Options struct {
	Formats []Format // default [NDJSON]; both may be given
	Gzip    bool     // gzip the NDJSON output (.ndjson.gz)
	// PartitionBy is ByNone, ByTransactionTime or ByLastUpdated.
	// ByLastUpdated puts a row without a parseable meta.lastUpdated in the
	// transactionTime partition: every row lands somewhere real, and such rows
	// are rare (servers must set lastUpdated in bulk exports).
	PartitionBy string
	// TransactionTime is the export's transactionTime: the partition key and
	// the export_transaction_time column. Required for Parquet or partitions.
	TransactionTime time.Time
	// RowGroupBytes bounds the resource JSON buffered for Parquet across all
	// open partitions of the file (default DefaultRowGroupBytes).
	RowGroupBytes int
	// Compression is the Parquet codec: "zstd" (default) or "snappy".
	Compression string
}

// Opener creates a staged object (wraps sink.Sink.Create for one run).
type Opener func(name string) (sink.Writer, error)

// Part is one object written for a file.
type Part struct {
	Path      string // object name within the run, e.g. "Observation/year=2025/month=01/Observation-0003.parquet"
	Format    Format
	Gzip      bool  // NDJSON part is gzip-compressed
	Rows      int64 // resources in this object
	Bytes     int64 // bytes written to the sink
	SHA256    string
	Stored    string // the storage's own checksum of the object, if it gives one (sink.StoredOf)
	Partition string // e.g. "year=2025/month=01"; "" without partitions
}

// Row is the Parquet schema, one row per resource. Optional string columns
// are null when empty; last_updated is null when meta.lastUpdated is absent
// or not a valid FHIR instant.
type Row struct {
	ID                    string    `parquet:"id"`
	ResourceType          string    `parquet:"resource_type,dict"`
	VersionID             string    `parquet:"version_id,optional"`
	LastUpdated           time.Time `parquet:"last_updated,optional,timestamp(microsecond:utc)"`
	PatientID             string    `parquet:"patient_id,optional"`
	ExportTransactionTime time.Time `parquet:"export_transaction_time,timestamp(microsecond:utc)"`
	SourceFile            string    `parquet:"source_file,dict"`
	Resource              []byte    `parquet:"resource,json"`
}

var (
	typeName = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)
	baseName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// FileWriter writes one source file's resources. It is not safe for
// concurrent use. After an error from Write, the caller must Abort.
type FileWriter struct {
	open      Opener
	typ, base string
	o         Options
	ndjson    bool
	parquet   bool
	pqOpts    []parquet.WriterOption
	txTime    time.Time

	parts    map[int]*partition // by year*100+month; key 0 without partitions
	objs     []*object          // in creation order, for Close/Abort
	buffered int64              // resource bytes in unflushed Parquet row groups, all partitions
	row      [1]Row             // reused: GenericWriter copies the values
	err      error
	done     bool
}

type partition struct {
	name string // "year=2025/month=01" or ""
	nd   *object
	pq   *object
}

// object is one staged sink object and what feeds it.
type object struct {
	part Part
	sw   *sink.Hashed                // the staged object, its size and SHA-256 kept on the way in
	bw   *bufio.Writer               // NDJSON: buffer in front of the sink
	gz   *gzip.Writer                // NDJSON with Gzip
	pw   *parquet.GenericWriter[Row] // Parquet
	buf  int64                       // Parquet: resource bytes in the open row group
}

// NewFileWriter writes one source file's resources. typ is the resource
// type; base is the source file's deterministic base name (e.g.
// "Observation-0003"). Without partitions, every object is created at once
// (an empty source still yields its empty output, as before); with
// partitions, an object is created when its first row arrives.
func NewFileWriter(open Opener, typ, base string, o Options) (*FileWriter, error) {
	if !typeName.MatchString(typ) {
		return nil, fmt.Errorf("lake: %q is not a resource type", typ)
	}
	if !baseName.MatchString(base) || strings.Contains(base, "..") {
		return nil, fmt.Errorf("lake: base name %q must be a plain file name", base)
	}
	w := &FileWriter{open: open, typ: typ, base: base, o: o, parts: map[int]*partition{}}
	if len(o.Formats) == 0 {
		w.ndjson = true
	}
	for _, f := range o.Formats {
		switch f {
		case NDJSON:
			w.ndjson = true
		case Parquet:
			w.parquet = true
		default:
			return nil, fmt.Errorf("lake: unknown format %q (want %q or %q)", f, NDJSON, Parquet)
		}
	}
	switch o.PartitionBy {
	case ByNone, ByTransactionTime, ByLastUpdated:
	default:
		return nil, fmt.Errorf("lake: unknown partition key %q (want %q or %q)", o.PartitionBy, ByTransactionTime, ByLastUpdated)
	}
	if o.TransactionTime.IsZero() && (w.parquet || o.PartitionBy != ByNone) {
		return nil, errors.New("lake: TransactionTime is required for Parquet output and for partitions")
	}
	w.txTime = o.TransactionTime.UTC().Truncate(time.Microsecond)
	if w.o.RowGroupBytes <= 0 {
		w.o.RowGroupBytes = DefaultRowGroupBytes
	}
	if w.parquet {
		var codec parquet.WriterOption
		switch o.Compression {
		case "", "zstd":
			codec = parquet.Compression(lakeZstd)
		case "snappy":
			codec = parquet.Compression(&parquet.Snappy)
		default:
			return nil, fmt.Errorf("lake: unknown Parquet compression %q (want zstd or snappy)", o.Compression)
		}
		w.pqOpts = []parquet.WriterOption{
			codec,
			parquet.CreatedBy("bulkflow", "", ""),
			parquet.WriteBufferSize(256 << 10),
			// Min/max of whole resources would put multi-MB values in the
			// footer and page index, and no query filters on them.
			parquet.SkipPageBounds("resource"),
			parquet.SkipPageStatistics("resource"),
		}
	}
	if o.PartitionBy == ByNone {
		if _, err := w.partition(0); err != nil {
			w.Abort()
			return nil, err
		}
	}
	return w, nil
}

// Write adds one validated resource line (without its newline); m is what
// ndjson.Inspect returned for it. line is not retained.
func (w *FileWriter) Write(line []byte, m ndjson.Meta) error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return errors.New("lake: Write after Close or Abort")
	}
	lu, hasLU := parseInstant(m.LastUpdated)
	key := 0
	switch w.o.PartitionBy {
	case ByTransactionTime:
		key = monthKey(w.txTime)
	case ByLastUpdated:
		// A lastUpdated after the export's transactionTime (plus clock skew)
		// or before 1900 is not when the resource changed: it goes with the
		// rows that have none, so a hostile file cannot open a partition
		// (and its objects) for every month of years 1 to 9999.
		if hasLU && lu.Year() >= 1900 && !lu.After(w.txTime.Add(maxLastUpdatedSkew)) {
			key = monthKey(lu)
		} else {
			key = monthKey(w.txTime)
		}
	}
	p, err := w.partition(key)
	if err != nil {
		w.err = err
		return err
	}
	if p.nd != nil {
		if err := p.nd.writeLine(line); err != nil {
			w.err = fmt.Errorf("lake: write %s: %w", p.nd.part.Path, err)
			return w.err
		}
	}
	if p.pq != nil {
		r := &w.row[0]
		*r = Row{
			ID:                    m.ID,
			ResourceType:          m.ResourceType,
			VersionID:             m.VersionID,
			PatientID:             patientID(m),
			ExportTransactionTime: w.txTime,
			SourceFile:            w.base,
			Resource:              line,
		}
		if r.ResourceType == "" {
			r.ResourceType = w.typ
		}
		if hasLU {
			r.LastUpdated = lu
		}
		_, err := p.pq.pw.Write(w.row[:])
		r.Resource = nil // do not keep the caller's buffer reachable
		if err != nil {
			w.err = fmt.Errorf("lake: write %s: %w", p.pq.part.Path, err)
			return w.err
		}
		p.pq.part.Rows++
		n := int64(len(line))
		p.pq.buf += n
		w.buffered += n
		if w.buffered >= int64(w.o.RowGroupBytes) {
			if err := w.flushLargest(); err != nil {
				w.err = err
				return err
			}
		}
	}
	return nil
}

// flushLargest ends the biggest open row group. With one partition this is
// plain size-based row groups; with many, the total stays bounded at the
// price of smaller row groups in the rarer partitions.
func (w *FileWriter) flushLargest() error {
	for w.buffered >= int64(w.o.RowGroupBytes) {
		var big *object
		for _, o := range w.objs {
			if o.pw != nil && (big == nil || o.buf > big.buf) {
				big = o
			}
		}
		if big == nil || big.buf == 0 {
			w.buffered = 0
			return nil
		}
		if err := big.pw.Flush(); err != nil {
			return fmt.Errorf("lake: flush row group of %s: %w", big.part.Path, err)
		}
		w.buffered -= big.buf
		big.buf = 0
	}
	return nil
}

// Close flushes and closes every object and returns them sorted by path.
// On error, objects not yet closed are aborted; the caller should treat the
// whole file as failed (a retry overwrites whatever was closed).
func (w *FileWriter) Close() ([]Part, error) {
	if w.err != nil {
		w.Abort()
		return nil, w.err
	}
	if w.done {
		return nil, errors.New("lake: Close after Close or Abort")
	}
	w.done = true
	parts := make([]Part, 0, len(w.objs))
	for i, o := range w.objs {
		if err := o.close(); err != nil {
			for _, rest := range w.objs[i:] {
				rest.sw.Abort()
			}
			return nil, fmt.Errorf("lake: close %s: %w", o.part.Path, err)
		}
		parts = append(parts, o.part)
	}
	slices.SortFunc(parts, func(a, b Part) int { return cmp.Compare(a.Path, b.Path) })
	return parts, nil
}

// Abort discards every object of the file. Safe to call more than once and
// after Close (then a no-op for objects already closed).
func (w *FileWriter) Abort() {
	w.done = true
	for _, o := range w.objs {
		o.sw.Abort()
	}
}

// partition returns the partition for key, creating its objects on first use.
func (w *FileWriter) partition(key int) (*partition, error) {
	if p, ok := w.parts[key]; ok {
		return p, nil
	}
	p := &partition{}
	dir := w.typ + "/"
	if w.o.PartitionBy != ByNone {
		p.name = fmt.Sprintf("year=%04d/month=%02d", key/100, key%100)
		dir += p.name + "/"
	}
	if w.ndjson {
		name := dir + w.base + ".ndjson"
		if w.o.Gzip {
			name += ".gz"
		}
		o, err := w.create(name, NDJSON, p.name)
		if err != nil {
			return nil, err
		}
		o.part.Gzip = w.o.Gzip
		o.bw = bufio.NewWriterSize(o.sw, 256<<10)
		if w.o.Gzip {
			o.gz = gzip.NewWriter(o.bw)
		}
		p.nd = o
	}
	if w.parquet {
		o, err := w.create(dir+w.base+".parquet", Parquet, p.name)
		if err != nil {
			return nil, err
		}
		o.pw = parquet.NewGenericWriter[Row](o.sw, w.pqOpts...)
		p.pq = o
	}
	w.parts[key] = p
	return p, nil
}

func (w *FileWriter) create(name string, f Format, part string) (*object, error) {
	if err := sink.CheckName(name); err != nil {
		return nil, fmt.Errorf("lake: %w", err)
	}
	sw, err := w.open(name)
	if err != nil {
		return nil, fmt.Errorf("lake: create %s: %w", name, err)
	}
	o := &object{part: Part{Path: name, Format: f, Partition: part}, sw: sink.NewHashed(sw)}
	w.objs = append(w.objs, o)
	return o, nil
}

func (o *object) writeLine(line []byte) error {
	var out interface {
		Write([]byte) (int, error)
	} = o.bw
	if o.gz != nil {
		out = o.gz
	}
	if _, err := out.Write(line); err != nil {
		return err
	}
	if _, err := out.Write(newline); err != nil {
		return err
	}
	o.part.Rows++
	return nil
}

var newline = []byte{'\n'}

func (o *object) close() error {
	if o.gz != nil {
		if err := o.gz.Close(); err != nil {
			return err
		}
	}
	if o.bw != nil {
		if err := o.bw.Flush(); err != nil {
			return err
		}
	}
	if o.pw != nil {
		if err := o.pw.Close(); err != nil {
			return err
		}
	}
	if err := o.sw.Close(); err != nil {
		return err
	}
	o.part.Bytes, o.part.SHA256, o.part.Stored = o.sw.Size(), o.sw.SHA256(), o.sw.Stored()
	return nil
}

func monthKey(t time.Time) int { return t.Year()*100 + int(t.Month()) }

// parseInstant parses a FHIR instant (RFC 3339 with seconds and zone) into
// UTC at microsecond precision, the Parquet column's unit.
// maxLastUpdatedSkew is how far past transactionTime a meta.lastUpdated
// may be and still choose its partition (server clocks drift).
const maxLastUpdatedSkew = 5 * time.Minute

func parseInstant(s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() < 1 || t.Year() > 9999 {
		return time.Time{}, false
	}
	return t.UTC().Truncate(time.Microsecond), true
}

// patientID is the logical id of the patient a resource belongs to: the
// resource's own id for a Patient, else the id in a subject/patient reference
// to a Patient (relative "Patient/1", absolute ".../Patient/1", with or
// without "/_history/n"). Other references (Group, contained "#x", urn:uuid)
// give "".
func patientID(m ndjson.Meta) string {
	if m.ResourceType == "Patient" {
		return m.ID
	}
	ref := m.Subject
	i := strings.LastIndex(ref, "Patient/")
	if i < 0 || (i > 0 && ref[i-1] != '/') {
		return ""
	}
	id := ref[i+len("Patient/"):]
	id, _, _ = strings.Cut(id, "/")
	if id == "" || strings.ContainsAny(id, "?#") {
		return ""
	}
	return id
}
