package activities

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/bulkflow/bulkflow/internal/fhirpath"
	"github.com/bulkflow/bulkflow/internal/lake"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/sink"
	"github.com/bulkflow/bulkflow/internal/views"
	"github.com/bulkflow/bulkflow/internal/viewtable"
)

// Views in an export (docs/views.md): the export names SQL on FHIR v2
// ViewDefinitions, by name from the worker's views folder or inline. The
// pre-flight (CheckTarget) resolves and validates them once and stages the
// definitions in the run's work area; downloads carry only the names (in
// Layout) and read the staged definitions, so history holds no view JSON
// beyond the workflow input itself, and every file of a run is flattened
// with the same definitions even if the folder changes meanwhile.

// KindView marks the Parquet tables made from output files by a view.
const KindView = "view"

// MaxViews bounds the views of one export.
const MaxViews = 32

// MaxViewBytes bounds one ViewDefinition, inline or in a file.
const MaxViewBytes = 256 << 10

// viewsObject holds the run's resolved view definitions.
const viewsObject = sink.WorkPrefix + "views.json"

// viewName is a view's table name: the spec's sql-name, which is also a safe
// path segment (views/<name>/...) and a safe file name (<name>.json).
var viewName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,63}$`)

// IsInlineView reports whether an entry of an export's views is a
// ViewDefinition itself rather than a name.
func IsInlineView(item string) bool {
	return strings.HasPrefix(strings.TrimLeft(item, " \t\r\n"), "{")
}

// ViewItemName returns the table name of one entry of an export's views: the
// entry itself for a name, the definition's "name" for an inline view.
func ViewItemName(item string) (string, error) {
	if IsInlineView(item) {
		if len(item) > MaxViewBytes {
			return "", fmt.Errorf("an inline view is %d bytes, more than %d: put it in the worker's views folder", len(item), MaxViewBytes)
		}
		var d struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal([]byte(item), &d); err != nil {
			return "", fmt.Errorf("an inline view is not a JSON object: %v", err)
		}
		if d.Name == "" {
			return "", errors.New(`an inline view needs a "name": it names the table (views/<name>/ in the run)`)
		}
		if !viewName.MatchString(d.Name) {
			return "", fmt.Errorf("inline view name %q: use letters, digits and '_', starting with a letter, at most 64 (the spec's sql-name; it names a folder)", clipID(d.Name))
		}
		return d.Name, nil
	}
	if !viewName.MatchString(item) {
		return "", fmt.Errorf("view %q: give the name of a view in the worker's views folder (its file <name>.json; letters, digits and '_', starting with a letter) or an inline ViewDefinition starting with '{'", clipID(item))
	}
	return item, nil
}

// ViewNames checks an export's views and returns their table names, in order.
func ViewNames(items []string) ([]string, error) {
	if len(items) > MaxViews {
		return nil, fmt.Errorf("%d views: at most %d per export", len(items), MaxViews)
	}
	var names []string
	var errs []error
	for _, it := range items {
		n, err := ViewItemName(it)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if slices.Contains(names, n) {
			errs = append(errs, fmt.Errorf("view %q is named twice: each view is one table, views/%s/", n, n))
			continue
		}
		names = append(names, n)
	}
	return names, errors.Join(errs...)
}

// CompileView validates and compiles the definition of the view called name.
// A definition that gives its own "name" must give this one: the table's
// folder and the definition never disagree.
func CompileView(name string, def []byte) (*views.View, error) {
	v, err := views.Compile(def)
	if err != nil {
		return nil, err
	}
	if v.Name != "" && v.Name != name {
		return nil, fmt.Errorf("view %q: the definition is named %q: name its file %s.json, or its \"name\" %q", name, v.Name, v.Name, name)
	}
	v.Name = name
	return v, nil
}

// ReadViewFile reads a view definition from a file, bounded.
func ReadViewFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxViewBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxViewBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", file, MaxViewBytes)
	}
	return b, nil
}

// CheckViewsDir validates every view of a views folder (each <name>.json),
// for the worker's start-up: a broken view is found then, not at the first
// export that names it. It returns the views' names.
func CheckViewsDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("views folder: %w", err)
	}
	var names []string
	var errs []error
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		file := filepath.Join(dir, e.Name())
		if !viewName.MatchString(name) {
			errs = append(errs, fmt.Errorf("%s: a view file is named <name>.json with letters, digits and '_', starting with a letter", file))
			continue
		}
		def, err := ReadViewFile(file)
		if err == nil {
			_, err = CompileView(name, def)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", file, err))
			continue
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names, errors.Join(errs...)
}

// stagedView is one resolved view of a run, as the pre-flight stages it.
type stagedView struct {
	Name       string          `json:"name"`
	Definition json.RawMessage `json:"definition"`
}

// resolveViews reads and validates the export's views. Every failure is
// permanent and says what to change: the export is refused before the kick-off.
func (a *Activities) resolveViews(items []string) ([]stagedView, error) {
	names, err := ViewNames(items)
	if err != nil {
		return nil, permanent("InvalidInput", err)
	}
	out := make([]stagedView, 0, len(items))
	var errs []error
	for i, it := range items {
		name := names[i]
		def := []byte(it)
		if !IsInlineView(it) {
			if a.ViewsDir == "" {
				return nil, permanent("Config", fmt.Errorf("view %q: this worker has no views folder (-views-dir, BULKFLOW_VIEWS_DIR); give the view inline or start the worker with its folder", name))
			}
			def, err = ReadViewFile(filepath.Join(a.ViewsDir, name+".json"))
			if errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("view %q: the worker's views folder has no %s.json", name, name))
				continue
			}
			if err != nil {
				return nil, retryable("Config", fmt.Errorf("view %q: %w", name, err))
			}
		}
		if _, err := CompileView(name, def); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, stagedView{Name: name, Definition: json.RawMessage(def)})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, permanent("InvalidInput", err)
	}
	return out, nil
}

// viewSet is a run's compiled views.
type viewSet struct {
	views  []*views.View
	runner *views.Runner
	// checked is runner whose decode also builds the top-level elements
	// ndjson.Meta comes from (metaElements), so a line of a type the views
	// read is parsed once for its validation and its rows (viewFile.writeChecked).
	checked *views.Runner
}

// metaElements are the top-level elements ndjson.Inspect reads for a Meta
// (resourceType is always decoded).
var metaElements = []string{"id", "meta", "subject", "patient"}

func (s *viewSet) wants(typ string) bool { return s != nil && s.runner.Wants(typ) }

func (s *viewSet) of(typ string) []*views.View {
	var out []*views.View
	for _, v := range s.views {
		if v.Resource == typ {
			out = append(out, v)
		}
	}
	return out
}

// loadViews reads the run's staged views (cached: every download of a run
// needs them) and checks they are the ones the export names.
func (a *Activities) loadViews(ctx context.Context, s sink.Sink, t Target, names []string) (*viewSet, error) {
	key := t.Output + "\x00" + t.Run + "\x00" + strings.Join(names, ",")
	a.mu.Lock()
	vs := a.viewSets[key]
	a.mu.Unlock()
	if vs != nil {
		return vs, nil
	}
	rc, err := s.Open(ctx, t.Run, viewsObject)
	if errors.Is(err, sink.ErrNotFound) {
		return nil, permanent("PlanMissing", fmt.Errorf("run %s: the staged view definitions are missing (the pre-flight stages them); export again", t.Run))
	}
	if err != nil {
		return nil, retryable("Sink", fmt.Errorf("run %s: read the staged views: %w", t.Run, err))
	}
	var staged []stagedView
	err = json.NewDecoder(io.LimitReader(rc, MaxViews*MaxViewBytes+1<<20)).Decode(&staged)
	rc.Close()
	if err != nil {
		return nil, permanent("PlanMissing", fmt.Errorf("run %s: the staged views are unreadable: %w", t.Run, err))
	}
	vs = &viewSet{}
	for i, sv := range staged {
		if i >= len(names) || sv.Name != names[i] {
			break
		}
		v, err := CompileView(sv.Name, sv.Definition)
		if err != nil {
			return nil, permanent("InvalidInput", err)
		}
		vs.views = append(vs.views, v)
	}
	if len(vs.views) != len(names) || len(staged) != len(names) {
		return nil, permanent("PlanMissing", fmt.Errorf("run %s: the staged views are not the export's %v", t.Run, names))
	}
	vs.runner = views.NewRunner(vs.views...)
	vs.checked = vs.runner.WithElements(metaElements...)
	a.mu.Lock()
	if a.viewSets == nil || len(a.viewSets) > 8 {
		a.viewSets = map[string]*viewSet{}
	}
	a.viewSets[key] = vs
	a.mu.Unlock()
	return vs, nil
}

// Memory of the view tables one download writes: each table's open row group
// is flushed at viewRowGroupBytes, and all of the file's tables together
// (several views, partitions) at viewBufferBytes, largest first.
const (
	viewRowGroupBytes = 8 << 20
	viewBufferBytes   = 16 << 20
)

// viewFile writes the view tables of one server file while it streams: each
// resource is decoded once for all views of its type (views.Runner), and its
// rows go to views/<view>/[<partition>/]<file base>.parquet. Names are
// deterministic, so a retry (which starts the file over) overwrites.
type viewFile struct {
	set      *viewSet
	open     lake.Opener
	base     string
	opts     lake.Options
	tables   map[tableKey]*viewTable
	objs     []*viewTable
	buffered int64
	cur      string // the partition of the resource being flattened
	sinkErr  error
}

type viewTable struct {
	part Part
	sw   *sink.Hashed
	w    *viewtable.Writer
}

// newViewFile starts the view tables of a file of type typ. Without
// partitions every table of the type is created at once, so an empty file
// still yields empty tables with their schema (as the resource tables do).
func newViewFile(set *viewSet, open lake.Opener, typ, base string, opts lake.Options) (*viewFile, error) {
	f := &viewFile{set: set, open: open, base: base, opts: opts, tables: map[tableKey]*viewTable{}}
	if opts.PartitionBy == lake.ByNone {
		for _, v := range set.of(typ) {
			if _, err := f.table(v, ""); err != nil {
				f.abort()
				return nil, err
			}
		}
	}
	return f, nil
}

type tableKey struct {
	view      *views.View
	partition string
}

func (f *viewFile) table(v *views.View, partition string) (*viewTable, error) {
	key := tableKey{v, partition}
	if t := f.tables[key]; t != nil {
		return t, nil
	}
	name := "views/" + v.Name + "/"
	if partition != "" {
		name += partition + "/"
	}
	name += f.base + ".parquet"
	if err := sink.CheckName(name); err != nil {
		return nil, err
	}
	sw, err := f.open(name)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	t := &viewTable{part: Part{Path: name, Format: "parquet", Kind: KindView, Type: v.Resource, View: v.Name, Partition: partition}, sw: sink.NewHashed(sw)}
	f.objs = append(f.objs, t)
	if t.w, err = viewtable.New(t.sw, v, viewtable.Options{RowGroupBytes: viewRowGroupBytes}); err != nil {
		return nil, err
	}
	f.tables[key] = t
	return t, nil
}

// errViewWrite marks a failure to write a table (storage), as opposed to a
// resource the view cannot flatten.
type errViewWrite struct{ err error }

func (e errViewWrite) Error() string { return e.err.Error() }
func (e errViewWrite) Unwrap() error { return e.err }

// write flattens one validated resource line through every view of its type.
// An error wrapping errViewWrite is the storage's; any other is the view's
// on this resource.
func (f *viewFile) write(line []byte, m ndjson.Meta) (err error) {
	// The engine is fuzzed and bounded; should a resource still find a
	// panic in it, the file fails with a clear error instead of the worker
	// crashing on every retry.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("flattening the resource failed inside the views engine (%v): report this as a bug", r)
		}
	}()
	f.cur = lake.PartitionOf(f.opts, m)
	return f.set.runner.Process(line, f.emit)
}

// errUnchecked: the decoded resource cannot vouch for the line as
// ndjson.Validator.Check would; the caller checks it the usual way.
var errUnchecked = errors.New("line left to the validator")

// acceptError carries the caller's own error out of writeChecked.
type acceptError struct{ err error }

func (e acceptError) Error() string { return e.err.Error() }

// writeChecked validates and flattens one line with a single decode: the
// views' decoder checks the whole line's JSON grammar (fhirpath.Decoder
// accepts a subset of what ndjson.Inspect accepts: the same grammar, nesting
// bounded at fhirpath.MaxDepth), and the Meta that Validator.Check would
// return comes from the decoded tree (metaOf). accept then runs on the line
// and its Meta before any view does; its error comes back as an acceptError.
//
// checked is false when the line was not accepted here (it does not decode,
// or metaOf cannot vouch for it): nothing was written, and the caller runs
// the validator and write as before, so such a line fails or passes with
// exactly the errors it always did.
func (f *viewFile) writeChecked(line []byte, want string, accept func(m ndjson.Meta) error) (checked bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("flattening the resource failed inside the views engine (%v): report this as a bug", r)
		}
	}()
	err = f.set.checked.ProcessChecked(line, func(root *fhirpath.Node) error {
		m, ok := metaOf(root, want)
		if !ok {
			return errUnchecked
		}
		checked = true
		if err := accept(m); err != nil {
			return acceptError{err}
		}
		f.cur = lake.PartitionOf(f.opts, m)
		return nil
	}, f.emit)
	if !checked {
		return false, nil
	}
	return true, err
}

// metaOf is what ndjson.Validator{WantType: want}.Check returns for a line
// fhirpath.Decoder decoded into root (with metaElements built), read the way
// Inspect reads it: the top-level keys in order, the last string id,
// meta.lastUpdated/versionId and subject (else patient) .reference winning.
// ok is false where the two could differ or Check would refuse the line:
// no, a non-string or a repeated resourceType, the wrong type, or a value
// that is not plain ASCII (the decoder replaces invalid UTF-8, Inspect keeps
// raw bytes). The strings alias the line (DecodeInPlace): whoever keeps one
// past the line copies it (cloneMeta).
func metaOf(root *fhirpath.Node, want string) (m ndjson.Meta, ok bool) {
	if root == nil || root.Kind != fhirpath.Object {
		return m, false
	}
	rtSeen := false
	var patientRef string
	ref := func(n *fhirpath.Node, to *string) {
		for j, k := range n.Keys {
			if k == "reference" && n.Kids[j].Kind == fhirpath.String {
				*to = n.Kids[j].Str
			}
		}
	}
	for i, k := range root.Keys {
		v := &root.Kids[i]
		switch k {
		case "resourceType":
			if rtSeen || v.Kind != fhirpath.String {
				return m, false
			}
			rtSeen = true
			m.ResourceType = v.Str
		case "id":
			if v.Kind == fhirpath.String {
				m.ID = v.Str
			}
		case "meta":
			if v.Kind != fhirpath.Object {
				continue
			}
			for j, k := range v.Keys {
				if v.Kids[j].Kind != fhirpath.String {
					continue
				}
				switch k {
				case "lastUpdated":
					m.LastUpdated = v.Kids[j].Str
				case "versionId":
					m.VersionID = v.Kids[j].Str
				}
			}
		case "subject":
			if v.Kind == fhirpath.Object {
				ref(v, &m.Subject)
			}
		case "patient":
			if v.Kind == fhirpath.Object {
				ref(v, &patientRef)
			}
		}
	}
	if m.Subject == "" {
		m.Subject = patientRef
	}
	if m.ResourceType == "" || (want != "" && m.ResourceType != want) {
		return m, false
	}
	if !ascii(m.ResourceType) || !ascii(m.ID) || !ascii(m.LastUpdated) || !ascii(m.VersionID) || !ascii(m.Subject) {
		return ndjson.Meta{}, false
	}
	if want != "" {
		m.ResourceType = want // the same text, not aliasing the line
	}
	return m, true
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// cloneMeta copies Meta's strings out of the line they alias.
func cloneMeta(m ndjson.Meta) ndjson.Meta {
	return ndjson.Meta{ResourceType: strings.Clone(m.ResourceType), ID: strings.Clone(m.ID), LastUpdated: strings.Clone(m.LastUpdated),
		VersionID: strings.Clone(m.VersionID), Subject: strings.Clone(m.Subject)}
}

func (f *viewFile) emit(v *views.View, rows []views.Row) error {
	if len(rows) == 0 && f.opts.PartitionBy != lake.ByNone {
		return nil // no empty objects for partitions without rows
	}
	t, err := f.table(v, f.cur)
	if err != nil {
		return errViewWrite{err}
	}
	before := t.w.Buffered()
	if err := t.w.Write(rows); err != nil {
		return errViewWrite{err}
	}
	f.buffered += t.w.Buffered() - before
	for f.buffered >= viewBufferBytes {
		var big *viewTable
		for _, o := range f.objs {
			if big == nil || o.w.Buffered() > big.w.Buffered() {
				big = o
			}
		}
		if big == nil || big.w.Buffered() == 0 {
			f.buffered = 0
			break
		}
		n := big.w.Buffered()
		if err := big.w.Flush(); err != nil {
			return errViewWrite{err}
		}
		f.buffered -= n
	}
	return nil
}

// close finishes every table and returns them sorted by path.
func (f *viewFile) close() ([]Part, error) {
	parts := make([]Part, 0, len(f.objs))
	for i, t := range f.objs {
		err := t.w.Close()
		if err == nil {
			err = t.sw.Close()
		}
		if err != nil {
			for _, rest := range f.objs[i:] {
				rest.sw.Abort()
			}
			return nil, fmt.Errorf("close %s: %w", t.part.Path, err)
		}
		t.part.Rows, t.part.Bytes, t.part.SHA256, t.part.Stored = t.w.Rows(), t.sw.Size(), t.sw.SHA256(), t.sw.Stored()
		parts = append(parts, t.part)
	}
	f.objs = nil
	slices.SortFunc(parts, func(a, b Part) int { return cmp.Compare(a.Path, b.Path) })
	return parts, nil
}

func (f *viewFile) abort() {
	for _, t := range f.objs {
		t.sw.Abort()
	}
	f.objs = nil
}

// viewError is the message for a resource a view cannot flatten. It names
// the view, the column and the FHIR type (the views package's errors never
// quote a value of the resource) and the line, and says what to do.
func viewError(err error, line int64) string {
	msg := err.Error()
	if len(msg) > 600 {
		msg = msg[:597] + "..."
	}
	return fmt.Sprintf("line %d: %s; a view must flatten every resource of its type, so the file fails rather than leave rows out: fix the view (a column that gets several values needs \"collection\": true or a forEach) or leave it out of the export", line, strings.ToValidUTF8(msg, "?"))
}
