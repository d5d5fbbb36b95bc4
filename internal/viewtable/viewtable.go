// Package viewtable writes the rows of a SQL on FHIR view as a Parquet table,
// streaming: rows are appended as resources arrive and flushed to the output
// row group by row group, so memory is bounded by the row group size, not by
// the table.
//
// The schema comes from the view's columns, in the view's order, one optional
// Parquet column per view column (a LIST column when collection: true):
//
//	FHIR type (Column.Kind)             Parquet column
//	string, code, id, uri, ... (string) STRING (BYTE_ARRAY, UTF8)
//	boolean                             BOOLEAN
//	integer, unsignedInt, positiveInt,
//	integer64                           INT64 (INT(64, signed))
//	decimal                             STRING: the exact text as written
//	date                                STRING as written + <name>_start DATE
//	dateTime, instant                   STRING as written + <name>_start TIMESTAMP(MICROS, UTC)
//	time                                STRING as written ("hh:mm:ss", sorts as text)
//	complex type, or no type            JSON (BYTE_ARRAY, JSON logical type)
//
// Why decimals are text: FHIR decimals carry their precision ("1.50" is not
// "1.5") and have no fixed scale, while a Parquet DECIMAL fixes precision and
// scale for the whole column before the first row. Any fixed choice would
// round some value or fail the export on it; the exact text loses nothing and
// casts in SQL (CAST(x AS DECIMAL(18,4)), x::DOUBLE).
//
// Why dates are text plus a typed column: a FHIR date or dateTime may be
// partial ("1970", "1970-06") and carries its time-zone offset; a Parquet
// DATE or TIMESTAMP keeps neither. The text column keeps the value exactly as
// written (its length is its precision); the <name>_start column is the start
// of the period it denotes (lowBoundary: "1970-06" -> 1970-06-01, a dateTime
// without a time or offset is taken as UTC), typed for range filters and date
// arithmetic. A text the parser does not accept gives a null _start, never an
// error. A view whose column names would clash with a _start column is refused
// by New.
//
// The file's key-value metadata "bulkflow.view" records the view's name,
// resource and each column's FHIR type, so a reader can tell a decimal from a
// string column.
package viewtable

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
	"unsafe"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"

	"github.com/bulkflow/bulkflow/internal/lake"
	"github.com/bulkflow/bulkflow/internal/views"
)

// DefaultRowGroupBytes bounds the values buffered before a row group is
// written out. Several views per worker each hold one open row group, so it
// is smaller than the resource tables' default.
const DefaultRowGroupBytes = 16 << 20

// StartSuffix names the typed companion of a date or dateTime column.
const StartSuffix = "_start"

// Options tune a Writer. The zero value is fine.
type Options struct {
	// RowGroupBytes: a row group is flushed once this many bytes of values
	// are buffered (DefaultRowGroupBytes when 0).
	RowGroupBytes int64
	// Compression: "zstd" (default) or "snappy".
	Compression string
}

// leaf is one Parquet column: a view column's own, or its _start companion.
type leaf struct {
	col   int  // index in the view's columns (and in a Row)
	start bool // the typed _start companion of a date/dateTime column
	kind  views.Kind
	list  bool
}

// Writer writes one view's rows to one Parquet file. It is not safe for
// concurrent use. After an error the file is incomplete: the caller must
// discard it, not commit it.
type Writer struct {
	view     *views.View
	pw       *parquet.Writer
	leaves   []leaf
	limit    int64
	buffered int64
	rows     int64
	// Rows are handed to the Parquet writer in batches: one call per row
	// cost more than the values. vals holds the batch's values, pending
	// the rows (slices of vals); both are reused.
	vals    []parquet.Value
	pending []parquet.Row
	err     error
	closed  bool
}

// batchRows is the number of rows handed to the Parquet writer at once.
const batchRows = 256

// Schema is the Parquet schema of a view's table.
func Schema(v *views.View) (*parquet.Schema, error) {
	s, _, err := schemaOf(v)
	return s, err
}

func schemaOf(v *views.View) (*parquet.Schema, []leaf, error) {
	g := orderedGroup{Group: parquet.Group{}}
	var leaves []leaf
	add := func(name string, n parquet.Node, lf leaf) error {
		if _, dup := g.Group[name]; dup {
			return fmt.Errorf("viewtable: view %q: column %q clashes with the typed %s column of a date or dateTime column (or repeats a name); rename it", v.Name, name, StartSuffix)
		}
		if lf.list {
			n = parquet.List(parquet.Optional(n))
		}
		g.Group[name] = parquet.Optional(n)
		g.order = append(g.order, name)
		leaves = append(leaves, lf)
		return nil
	}
	for i, c := range v.Columns {
		k := c.Kind()
		lf := leaf{col: i, kind: k, list: c.Collection}
		if err := add(c.Name, nodeOf(k), lf); err != nil {
			return nil, nil, err
		}
		if k == views.KindDate || k == views.KindDateTime {
			lf.start = true
			n := parquet.Date()
			if k == views.KindDateTime {
				n = parquet.TimestampAdjusted(parquet.Microsecond, true)
			}
			if err := add(c.Name+StartSuffix, n, lf); err != nil {
				return nil, nil, fmt.Errorf("viewtable: view %q: column %q clashes with %q, the typed start of date column %q; rename it", v.Name, c.Name+StartSuffix, c.Name+StartSuffix, c.Name)
			}
		}
	}
	// A clash the other way round (x_start declared after the date x) is
	// caught by add too: whichever comes second finds the name taken.
	name := v.Name
	if name == "" {
		name = v.Resource
	}
	return parquet.NewSchema(name, g), leaves, nil
}

func nodeOf(k views.Kind) parquet.Node {
	switch k {
	case views.KindBool:
		return parquet.Leaf(parquet.BooleanType)
	case views.KindInt64:
		return parquet.Int(64)
	case views.KindString, views.KindDecimal, views.KindDate, views.KindDateTime, views.KindTime:
		return parquet.String()
	}
	return parquet.JSON() // KindJSON, KindAny
}

// orderedGroup keeps the view's column order (parquet.Group sorts by name).
type orderedGroup struct {
	parquet.Group
	order []string
}

func (g orderedGroup) Fields() []parquet.Field {
	byName := map[string]parquet.Field{}
	for _, f := range g.Group.Fields() {
		byName[f.Name()] = f
	}
	out := make([]parquet.Field, len(g.order))
	for i, n := range g.order {
		out[i] = byName[n]
	}
	return out
}

// columnMeta is what "bulkflow.view" records per Parquet column.
type columnMeta struct {
	Name       string `json:"name"`
	FHIRType   string `json:"fhirType,omitempty"`
	Collection bool   `json:"collection,omitempty"`
	StartOf    string `json:"startOf,omitempty"` // for a _start column: the text column it derives from
}

// New starts a Parquet file for view v on out. Nothing is written to out
// until the first row group is flushed or the writer is closed.
func New(out io.Writer, v *views.View, o Options) (*Writer, error) {
	schema, leaves, err := schemaOf(v)
	if err != nil {
		return nil, err
	}
	var codec compress.Codec
	switch o.Compression {
	case "", "zstd":
		codec = lake.Zstd
	case "snappy":
		codec = &parquet.Snappy
	default:
		return nil, fmt.Errorf("viewtable: unknown compression %q (want zstd or snappy)", o.Compression)
	}
	meta := struct {
		View     string       `json:"view"`
		Resource string       `json:"resource"`
		Columns  []columnMeta `json:"columns"`
	}{View: v.Name, Resource: v.Resource}
	opts := []parquet.WriterOption{
		schema,
		parquet.Compression(codec),
		parquet.CreatedBy("bulkflow", "", ""),
		parquet.WriteBufferSize(256 << 10),
	}
	for _, lf := range leaves {
		c := v.Columns[lf.col]
		cm := columnMeta{Name: c.Name, FHIRType: c.Type, Collection: c.Collection}
		if lf.start {
			cm = columnMeta{Name: c.Name + StartSuffix, Collection: c.Collection, StartOf: c.Name}
		}
		meta.Columns = append(meta.Columns, cm)
		if lf.kind == views.KindJSON || lf.kind == views.KindAny {
			// min/max of whole JSON values would bloat the footer; no query filters on them
			path := []string{c.Name}
			if lf.list {
				path = append(path, "list", "element")
			}
			opts = append(opts, parquet.SkipPageBounds(path...), parquet.SkipPageStatistics(path...))
		}
	}
	mj, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("viewtable: %w", err)
	}
	opts = append(opts, parquet.KeyValueMetadata("bulkflow.view", string(mj)))
	cfg, err := parquet.NewWriterConfig(opts...)
	if err != nil {
		return nil, fmt.Errorf("viewtable: view %q: %w", v.Name, err)
	}
	limit := o.RowGroupBytes
	if limit <= 0 {
		limit = DefaultRowGroupBytes
	}
	return &Writer{view: v, pw: parquet.NewWriter(out, cfg), leaves: leaves, limit: limit}, nil
}

// Write appends rows of the writer's view (as View.Rows gives them). Rows
// are passed on to the Parquet writer in batches; an error of that writer
// shows on a later Write or on Close.
func (w *Writer) Write(rows []views.Row) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("viewtable: write after Close")
	}
	for _, r := range rows {
		if len(r) != len(w.view.Columns) {
			w.err = fmt.Errorf("viewtable: view %q: row has %d values for %d columns", w.view.Name, len(r), len(w.view.Columns))
			return w.err
		}
		start := len(w.vals)
		for ci, lf := range w.leaves {
			var err error
			if w.vals, err = w.appendLeaf(w.vals, lf, ci, r[lf.col]); err != nil {
				w.err = err
				return err
			}
		}
		w.pending = append(w.pending, w.vals[start:len(w.vals):len(w.vals)])
		w.rows++
		if len(w.pending) >= batchRows {
			if err := w.flushPending(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flushPending hands the pending rows to the Parquet writer, and flushes a
// row group once enough values are buffered.
func (w *Writer) flushPending() error {
	if len(w.pending) == 0 {
		return nil
	}
	if _, err := w.pw.WriteRows(w.pending); err != nil {
		w.err = fmt.Errorf("viewtable: view %q: write row: %w", w.view.Name, err)
		return w.err
	}
	// The writer copied the values: the buffers serve the next batch.
	clear(w.vals)
	clear(w.pending)
	w.vals, w.pending = w.vals[:0], w.pending[:0]
	if w.buffered >= w.limit {
		if err := w.pw.Flush(); err != nil {
			w.err = fmt.Errorf("viewtable: view %q: flush row group: %w", w.view.Name, err)
			return w.err
		}
		w.buffered = 0
	}
	return nil
}

// Rows is the number of rows written so far.
func (w *Writer) Rows() int64 { return w.rows }

// Close flushes the last row group and writes the footer. It does not close
// the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.flushPending(); err != nil {
		return err
	}
	if err := w.pw.Close(); err != nil {
		w.err = fmt.Errorf("viewtable: view %q: close: %w", w.view.Name, err)
		return w.err
	}
	return nil
}

// appendLeaf appends the Parquet values of one leaf column for one row value.
// Levels: a scalar column is optional (definition 1 = present); a list column
// is optional LIST of optional elements (0 = null list, 1 = empty list,
// 2 = null element, 3 = element; repetition 1 for every element after the first).
func (w *Writer) appendLeaf(p parquet.Row, lf leaf, ci int, x any) (parquet.Row, error) {
	if !lf.list {
		if x == nil {
			return append(p, parquet.NullValue().Level(0, 0, ci)), nil
		}
		v, ok, err := w.value(lf, x)
		if err != nil {
			return p, err
		}
		if !ok {
			return append(p, parquet.NullValue().Level(0, 0, ci)), nil
		}
		return append(p, v.Level(0, 1, ci)), nil
	}
	if x == nil {
		return append(p, parquet.NullValue().Level(0, 0, ci)), nil
	}
	list, isList := x.([]any)
	if !isList {
		list = []any{x}
	}
	if len(list) == 0 {
		return append(p, parquet.NullValue().Level(0, 1, ci)), nil
	}
	for k, e := range list {
		rep := 0
		if k > 0 {
			rep = 1
		}
		if e == nil {
			p = append(p, parquet.NullValue().Level(rep, 2, ci))
			continue
		}
		v, ok, err := w.value(lf, e)
		if err != nil {
			return p, err
		}
		if !ok {
			p = append(p, parquet.NullValue().Level(rep, 2, ci))
			continue
		}
		p = append(p, v.Level(rep, 3, ci))
	}
	return p, nil
}

// value converts one non-nil value; ok false means null (a _start the
// parser does not accept).
func (w *Writer) value(lf leaf, x any) (parquet.Value, bool, error) {
	c := &w.view.Columns[lf.col]
	if lf.start {
		s, isStr := x.(string)
		if !isStr {
			return parquet.Value{}, false, nil
		}
		t, ok := lowBoundary(s)
		if !ok {
			return parquet.Value{}, false, nil
		}
		w.buffered += 8
		if lf.kind == views.KindDate {
			return parquet.Int32Value(int32(t.Unix() / 86400)), true, nil
		}
		return parquet.Int64Value(t.UnixMicro()), true, nil
	}
	switch lf.kind {
	case views.KindBool:
		b, ok := x.(bool)
		if !ok {
			return parquet.Value{}, false, w.mismatch(c, x)
		}
		w.buffered++
		return parquet.BooleanValue(b), true, nil
	case views.KindInt64:
		i, ok := x.(int64)
		if !ok {
			return parquet.Value{}, false, w.mismatch(c, x)
		}
		w.buffered += 8
		return parquet.Int64Value(i), true, nil
	case views.KindString, views.KindDecimal, views.KindDate, views.KindDateTime, views.KindTime:
		var s string
		switch t := x.(type) {
		case string:
			s = t
		case views.Decimal:
			s = string(t)
		case int64:
			s = strconv.FormatInt(t, 10)
		case bool:
			s = strconv.FormatBool(t)
		default:
			return parquet.Value{}, false, w.mismatch(c, x)
		}
		w.buffered += int64(len(s))
		// No copy: the writer copies values into its column buffers and
		// never writes into them, and a string is immutable.
		return parquet.ByteArrayValue(unsafe.Slice(unsafe.StringData(s), len(s))), true, nil
	}
	// JSON and untyped columns: the value as JSON (a Decimal stays exact).
	b, err := json.Marshal(x)
	if err != nil {
		return parquet.Value{}, false, fmt.Errorf("viewtable: view %q: column %q: %w", w.view.Name, c.Name, err)
	}
	w.buffered += int64(len(b))
	return parquet.ByteArrayValue(b), true, nil
}

// mismatch names the column and the Go type, never the value (no PHI in errors).
func (w *Writer) mismatch(c *views.Column, x any) error {
	return fmt.Errorf("viewtable: view %q: column %q of type %s got a %T value", w.view.Name, c.Name, c.Kind(), x)
}

// lowBoundary is the start of the period a FHIR date or dateTime denotes:
// "1970" -> 1970-01-01T00:00Z, "1970-06-15T10:30:00+02:00" -> 08:30Z. A
// dateTime without offset is taken as UTC.
func lowBoundary(s string) (time.Time, bool) {
	var layout string
	switch {
	case len(s) == 4:
		layout = "2006"
	case len(s) == 7:
		layout = "2006-01"
	case len(s) == 10:
		layout = "2006-01-02"
	case len(s) > 10 && s[10] == 'T':
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t, validYear(t)
		}
		layout = "2006-01-02T15:04:05.999999999"
	default:
		return time.Time{}, false
	}
	t, err := time.Parse(layout, s)
	if err != nil {
		return time.Time{}, false
	}
	return t, validYear(t)
}

// validYear keeps timestamps in the range every engine reads (FHIR's too).
func validYear(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 1 && y <= 9999
}
