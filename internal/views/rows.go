package views

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"unsafe"

	"github.com/bulkflow/bulkflow/internal/fhirpath"
)

// Row is one output row: Row[i] is the value of View.Columns[i], one of
//
//	nil                      no value
//	string                   string-like and date/time types (dates keep their precision)
//	bool                     boolean
//	int64                    integer, unsignedInt, positiveInt, integer64
//	Decimal                  decimal, exact as written
//	map[string]any / []any   a complex type (Coding, Period, ...), as JSON
//	[]any                    a collection column: a list of the above
type Row []any

// Decimal is an exact decimal as written in the resource ("1.50" keeps its
// trailing zero). It marshals to JSON as a number.
type Decimal string

// MarshalJSON writes the decimal as a JSON number.
func (d Decimal) MarshalJSON() ([]byte, error) { return []byte(d), nil }

// Limits on the repeat directive: a tree cannot cycle, but an expression that
// yields computed values (repeat: ["'x'"]) or climbs back to the resource
// (repeat: ["%resource"]) could go on forever.
const (
	maxRepeatDepth = fhirpath.MaxDepth
	maxRepeatItems = 100_000
	// MaxRows bounds the rows one resource may yield through one view:
	// sibling forEach are a Cartesian product, and a hostile resource with
	// large arrays could otherwise multiply them without limit.
	MaxRows = 100_000
)

// ErrRow is wrapped by every error Rows returns for a resource the view
// cannot flatten (as opposed to an invalid view, which Compile refuses).
var ErrRow = errors.New("view cannot flatten resource")

func (v *View) rowErr(format string, a ...any) error {
	return fmt.Errorf("%w: view %q on %s: %s", ErrRow, v.Name, v.Resource, fmt.Sprintf(format, a...))
}

// contexts keep their evaluation scratch memory from one resource to the
// next: rows hold converted values, never an evaluation's result items.
var contexts = sync.Pool{New: func() any { return new(fhirpath.Context) }}

// Rows flattens one decoded resource. A resource of another type gives no
// rows. Errors name the view and the column, never a value of the resource
// (no PHI in logs).
func (v *View) Rows(res *fhirpath.Node) ([]Row, error) {
	rt := res.Get("resourceType")
	if rt == nil || rt.Kind != fhirpath.String || rt.Str != v.Resource {
		return nil, nil
	}
	ctx := contexts.Get().(*fhirpath.Context)
	defer contexts.Put(ctx)
	ctx.Reset(res, v.constants)
	root := fhirpath.Item{N: res}
	for i, w := range v.where {
		out, err := w.Evaluate(ctx, []fhirpath.Item{root})
		if err != nil {
			return nil, v.rowErr("where[%d]: %v", i, err)
		}
		if len(out) == 0 {
			return nil, nil
		}
		if len(out) > 1 || out[0].N.Kind != fhirpath.Bool {
			return nil, v.rowErr("where[%d]: the path %q must evaluate to a boolean, but gave %s", i, w.String(), describe(out))
		}
		if !out[0].N.Bool {
			return nil, nil
		}
	}
	ra := rowArena{n: len(v.Columns)}
	return v.process(v.sel, root, ctx, 0, &ra)
}

func describe(items []fhirpath.Item) string {
	if len(items) == 1 {
		if t := items[0].Type(); t != "" {
			return "a " + t
		}
		return "a " + items[0].N.Kind.String()
	}
	return fmt.Sprintf("%d items", len(items))
}

// rowArena carves the rows of one Rows call from a few shared backing
// arrays instead of one allocation per row; the three-index slices keep an
// append by a caller from spilling into a neighbour.
//
// It also copies the text the rows hold: a Runner decodes a line in place
// (fhirpath.Decoder.DecodeInPlace), so a string of the tree is part of the
// caller's line buffer, which the rows must outlive. The copies share a
// few chunks, appended to and never written again.
type rowArena struct {
	n     int
	buf   []any
	text  []byte
	items []fhirpath.Item
}

// one is a one-item collection (a focus) carved from a shared chunk.
func (a *rowArena) one(it fhirpath.Item) []fhirpath.Item {
	if len(a.items) == cap(a.items) {
		a.items = make([]fhirpath.Item, 0, 16)
	}
	a.items = append(a.items, it)
	l := len(a.items)
	return a.items[l-1 : l : l]
}

func (a *rowArena) str(s string) string {
	if len(s) == 0 {
		return ""
	}
	if cap(a.text)-len(a.text) < len(s) {
		a.text = make([]byte, 0, max(len(s), 2*cap(a.text), 256))
	}
	l := len(a.text)
	a.text = append(a.text, s...)
	return unsafe.String(&a.text[l], len(s))
}

func (a *rowArena) row() Row {
	if cap(a.buf)-len(a.buf) < a.n {
		// Most resources yield one row or a few: start with one, double.
		a.buf = make([]any, 0, min(max(a.n, 2*cap(a.buf)), 64*a.n))
	}
	l := len(a.buf)
	a.buf = a.buf[:l+a.n]
	return Row(a.buf[l : l+a.n : l+a.n])
}

// process is the spec's Process(S, N): rows of selection s for focus n.
func (v *View) process(s *selection, n fhirpath.Item, ctx *fhirpath.Context, rowIndex int, ra *rowArena) ([]Row, error) {
	foci := ra.one(n)
	iterating := s.forEach != nil || s.repeat != nil
	var err error
	switch {
	case s.forEach != nil:
		ctx.RowIndex = rowIndex
		if foci, err = s.forEach.Evaluate(ctx, foci); err != nil {
			return nil, v.rowErr("%s: %v", s.path, err)
		}
	case s.repeat != nil:
		if foci, err = v.repeat(s, n, ctx, rowIndex); err != nil {
			return nil, err
		}
	}
	var out []Row
	for i, f := range foci {
		idx := rowIndex
		if iterating {
			idx = i
		}
		var one [1]Row
		one[0] = ra.row()
		rows := one[:]
		ctx.RowIndex = idx
		focus := ra.one(f) // shared by the columns: results are read-only
		for _, c := range s.columns {
			val, err := v.columnValueOf(c, focus, ctx, ra)
			if err != nil {
				return nil, err
			}
			rows[0][c.idx] = val
		}
		for _, sub := range s.selects {
			part, err := v.process(sub, f, ctx, idx, ra)
			if err != nil {
				return nil, err
			}
			if rows, err = v.product(s, rows, part, sub.allCols, ra); err != nil {
				return nil, err
			}
		}
		if len(s.unionAll) > 0 {
			var urows []Row
			for _, u := range s.unionAll {
				part, err := v.process(u, f, ctx, idx, ra)
				if err != nil {
					return nil, err
				}
				urows = append(urows, part...)
			}
			if rows, err = v.product(s, rows, urows, s.unionAll[0].allCols, ra); err != nil {
				return nil, err
			}
		}
		out = append(out, rows...)
		if len(out) > MaxRows {
			return nil, v.rowErr("%s: more than %d rows from one resource", s.path, MaxRows)
		}
	}
	if len(foci) == 0 && s.orNull {
		// The null row: its own columns see an empty focus (so %rowIndex
		// is still 0 and a constant is still itself); nested ones are null.
		r := ra.row()
		ctx.RowIndex = 0
		for _, c := range s.columns {
			val, err := v.columnValueOf(c, nil, ctx, ra)
			if err != nil {
				return nil, err
			}
			if l, ok := val.([]any); ok && len(l) == 0 {
				val = nil // the spec's null row binds null, not an empty list
			}
			r[c.idx] = val
		}
		out = append(out, r)
	}
	return out, nil
}

// product is the Cartesian product of rows with the partial rows of part,
// which bind the columns cols.
func (v *View) product(s *selection, rows, part []Row, cols []int, ra *rowArena) ([]Row, error) {
	switch len(part) {
	case 0:
		return nil, nil
	case 1:
		for _, r := range rows {
			for _, c := range cols {
				r[c] = part[0][c]
			}
		}
		return rows, nil
	}
	if len(rows)*len(part) > MaxRows {
		return nil, v.rowErr("%s: more than %d rows from one resource", s.path, MaxRows)
	}
	out := make([]Row, 0, len(rows)*len(part))
	for _, r := range rows {
		for _, p := range part {
			nr := ra.row()
			copy(nr, r)
			for _, c := range cols {
				nr[c] = p[c]
			}
			out = append(out, nr)
		}
	}
	return out, nil
}

// repeat collects the repeat directive's foci depth first: each node, then
// what the expressions reach from it, in order.
func (v *View) repeat(s *selection, n fhirpath.Item, ctx *fhirpath.Context, rowIndex int) ([]fhirpath.Item, error) {
	var out []fhirpath.Item
	seen := map[*fhirpath.Node]bool{n.N: true}
	var walk func(it fhirpath.Item, depth int) error
	walk = func(it fhirpath.Item, depth int) error {
		if depth > maxRepeatDepth {
			return v.rowErr("%s.repeat: nested deeper than %d levels", s.path, maxRepeatDepth)
		}
		for j, e := range s.repeat {
			ctx.RowIndex = rowIndex
			kids, err := e.Evaluate(ctx, []fhirpath.Item{it})
			if err != nil {
				return v.rowErr("%s.repeat[%d]: %v", s.path, j, err)
			}
			for _, k := range kids {
				if seen[k.N] {
					continue
				}
				seen[k.N] = true
				out = append(out, k)
				if len(out) > maxRepeatItems {
					return v.rowErr("%s.repeat: more than %d items", s.path, maxRepeatItems)
				}
				if err := walk(k, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return out, walk(n, 0)
}

func (v *View) columnValueOf(c compiledColumn, focus []fhirpath.Item, ctx *fhirpath.Context, ra *rowArena) (any, error) {
	vals, err := c.expr.Evaluate(ctx, focus)
	if err != nil {
		return nil, v.rowErr("column %q: %v", c.name, err)
	}
	if c.collection {
		list := make([]any, 0, len(vals))
		for _, it := range vals {
			x, err := ra.convert(it, c.typ)
			if err != nil {
				return nil, v.rowErr("column %q: %v", c.name, err)
			}
			list = append(list, x)
		}
		return list, nil
	}
	switch len(vals) {
	case 0:
		return nil, nil
	case 1:
		x, err := ra.convert(vals[0], c.typ)
		if err != nil {
			return nil, v.rowErr("column %q: %v", c.name, err)
		}
		return x, nil
	}
	return nil, v.rowErr("column %q: Multiple values found but not expected for column (%d values; set collection: true to keep them all)", c.name, len(vals))
}

// convert maps a FHIRPath item to the Go value of a column of FHIR type typ
// ("" = as the value comes).
func (ra *rowArena) convert(it fhirpath.Item, typ string) (any, error) {
	n := it.N
	mismatch := func() error {
		return fmt.Errorf("%s value in a column of type %s", describe([]fhirpath.Item{it}), typ)
	}
	switch typ {
	case "":
		switch n.Kind {
		case fhirpath.Bool:
			return n.Bool, nil
		case fhirpath.String:
			return ra.str(n.Str), nil
		case fhirpath.Number:
			if i, err := strconv.ParseInt(n.Str, 10, 64); err == nil {
				return i, nil
			}
			return Decimal(ra.str(n.Str)), nil
		}
		return ra.toAny(n), nil
	case "boolean":
		if n.Kind != fhirpath.Bool {
			return nil, mismatch()
		}
		return n.Bool, nil
	case "integer", "unsignedInt", "positiveInt", "integer64":
		if n.Kind != fhirpath.Number && !(typ == "integer64" && n.Kind == fhirpath.String) {
			return nil, mismatch()
		}
		i, err := strconv.ParseInt(n.Str, 10, 64)
		if err != nil {
			return nil, mismatch()
		}
		return i, nil
	case "decimal":
		if n.Kind != fhirpath.Number {
			return nil, mismatch()
		}
		return Decimal(ra.str(n.Str)), nil
	case "string", "code", "id", "markdown", "uri", "url", "canonical", "oid", "uuid",
		"base64Binary", "date", "dateTime", "instant", "time", "xhtml":
		switch n.Kind {
		case fhirpath.String:
			return ra.str(n.Str), nil
		case fhirpath.Number: // e.g. a computed %rowIndex into a string column
			return ra.str(n.Str), nil
		}
		return nil, mismatch()
	}
	// A complex type (Coding, Period, a backbone element): the value as JSON.
	if n.Kind != fhirpath.Object && n.Kind != fhirpath.Array {
		return nil, mismatch()
	}
	return ra.toAny(n), nil
}

// toAny converts a node to plain Go values (numbers as Decimal).
func (ra *rowArena) toAny(n *fhirpath.Node) any {
	switch n.Kind {
	case fhirpath.Bool:
		return n.Bool
	case fhirpath.String:
		return ra.str(n.Str)
	case fhirpath.Number:
		return Decimal(ra.str(n.Str))
	case fhirpath.Array:
		out := make([]any, len(n.Kids))
		for i := range n.Kids {
			out[i] = ra.toAny(&n.Kids[i])
		}
		return out
	case fhirpath.Object:
		out := make(map[string]any, len(n.Keys))
		for i, k := range n.Keys {
			out[ra.str(k)] = ra.toAny(&n.Kids[i])
		}
		return out
	}
	return nil
}

// Map returns the row as column name -> value.
func (v *View) Map(r Row) map[string]any {
	m := make(map[string]any, len(r))
	for i, c := range v.Columns {
		m[c.Name] = r[i]
	}
	return m
}

// Runner flattens resources through a set of views, decoding each resource
// once for all of them.
type Runner struct {
	byType map[string][]*View
	// elements per resource type: the names its views navigate by (see
	// Elements).
	elements map[string]projection
	// elementsFn is r.Elements, bound once: a method value made per
	// line would be one allocation per resource (the decoder keeps it).
	elementsFn func(resourceType string) (names []string, all bool)
}

type projection struct {
	names []string
	all   bool
}

// Elements says which top-level elements of a resource of this type Process
// decodes (fhirpath.KeepElement of names, or all): only those its views can
// reach; the rest of the line is checked and skipped
// (fhirpath.Decoder.DecodeProjected). A type no view reads keeps only its
// resourceType and id.
func (r *Runner) Elements(resourceType string) (names []string, all bool) {
	p := r.elements[resourceType]
	return p.names, p.all
}

// NewRunner groups views by resource type.
func NewRunner(vs ...*View) *Runner {
	r := &Runner{byType: map[string][]*View{}, elements: map[string]projection{}}
	for _, v := range vs {
		r.byType[v.Resource] = append(r.byType[v.Resource], v)
		p := r.elements[v.Resource]
		p.all = p.all || v.allElements
		for _, n := range v.elements {
			if !slices.Contains(p.names, n) {
				p.names = append(p.names, n)
			}
		}
		r.elements[v.Resource] = p
	}
	r.elementsFn = r.Elements
	return r
}

// Wants reports whether any view reads resources of this type, so a caller
// can skip decoding the others.
func (r *Runner) Wants(resourceType string) bool { return len(r.byType[resourceType]) > 0 }

// decoders reuse their node arenas from one line to the next, and decode
// the line in place: the rows a view yields hold no node of the tree and
// copy the text they keep (rowArena.str), so the tree is dead once Process
// returns. A Runner may serve
// several goroutines, hence a pool rather than one decoder per Runner.
var decoders = sync.Pool{New: func() any { return new(fhirpath.Decoder) }}

// Process decodes one NDJSON line and hands each view of its type the rows
// it yields. The line is not retained: the rows own their values.
func (r *Runner) Process(line []byte, emit func(v *View, rows []Row) error) error {
	d := decoders.Get().(*fhirpath.Decoder)
	defer decoders.Put(d)
	// Only the top-level elements the views of the line's type can reach
	// are built; the rest is checked and skipped.
	n, err := d.DecodeInPlace(line, r.elementsFn)
	if err != nil {
		return err
	}
	return r.ProcessNode(n, emit)
}

// WithElements returns a Runner of the same views whose decode also builds
// the given top-level elements of every resource (for ProcessChecked's
// check); the views' rows are the same, the projection only grows.
func (r *Runner) WithElements(extra ...string) *Runner {
	c := &Runner{byType: r.byType, elements: make(map[string]projection, len(r.elements))}
	for typ, p := range r.elements {
		q := projection{names: slices.Clone(p.names), all: p.all}
		for _, n := range extra {
			if !slices.Contains(q.names, n) {
				q.names = append(q.names, n)
			}
		}
		c.elements[typ] = q
	}
	c.elementsFn = c.Elements
	return c
}

// ProcessChecked is Process that hands the decoded resource to check before
// any view runs: a caller can take what it must know of the line from the
// same decode (the tree is valid only during the call). An error of check
// is returned as is, and no view runs; a line that does not decode returns
// the decoder's error without check being called.
func (r *Runner) ProcessChecked(line []byte, check func(root *fhirpath.Node) error, emit func(v *View, rows []Row) error) error {
	d := decoders.Get().(*fhirpath.Decoder)
	defer decoders.Put(d)
	n, err := d.DecodeInPlace(line, r.elementsFn)
	if err != nil {
		return err
	}
	if err := check(n); err != nil {
		return err
	}
	return r.ProcessNode(n, emit)
}

// ProcessNode is Process for an already decoded resource.
func (r *Runner) ProcessNode(n *fhirpath.Node, emit func(v *View, rows []Row) error) error {
	rt := n.Get("resourceType")
	if rt == nil || rt.Kind != fhirpath.String {
		return fmt.Errorf("%w: resource has no resourceType", ErrRow)
	}
	for _, v := range r.byType[rt.Str] {
		rows, err := v.Rows(n)
		if err != nil {
			return err
		}
		if err := emit(v, rows); err != nil {
			return err
		}
	}
	return nil
}
