package viewtable

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	"github.com/bulkflow/bulkflow/internal/views"
)

// patientView has one column of each kind the writer maps.
const patientView = `{
  "resourceType": "ViewDefinition", "name": "patient_demo", "resource": "Patient", "status": "active",
  "select": [{"column": [
    {"name": "id", "path": "getResourceKey()", "type": "string"},
    {"name": "active", "path": "active", "type": "boolean"},
    {"name": "births", "path": "multipleBirthInteger", "type": "integer"},
    {"name": "weight", "path": "extension('http://x/weight').value.ofType(decimal)", "type": "decimal"},
    {"name": "birth", "path": "birthDate", "type": "date"},
    {"name": "died", "path": "deceased.ofType(dateTime)", "type": "dateTime"},
    {"name": "given", "path": "name.given", "type": "string", "collection": true},
    {"name": "org", "path": "managingOrganization.getReferenceKey()", "type": "string"},
    {"name": "first_name", "path": "name.first()", "type": "HumanName"},
    {"name": "raw", "path": "gender"}
  ]}]
}`

var patients = []string{
	`{"resourceType":"Patient","id":"p1","active":true,"multipleBirthInteger":2,
	  "extension":[{"url":"http://x/weight","valueDecimal":71.50}],
	  "birthDate":"1970-06","deceasedDateTime":"2020-03-04T10:30:00+02:00",
	  "name":[{"use":"official","given":["Ann","Marie"]},{"given":["Annie"]}],
	  "managingOrganization":{"reference":"https://ehr.example.org/fhir/Organization/o1/_history/3"},"gender":"female"}`,
	`{"resourceType":"Patient","id":"p2","active":false,"birthDate":"1980-01-02","deceasedBoolean":true,
	  "name":[{"family":"Smith"}],"managingOrganization":{"reference":"#org"}}`,
	`{"resourceType":"Patient","id":"p3","birthDate":"not-a-date","deceasedDateTime":"1999"}`,
}

func compile(t testing.TB, def string) *views.View {
	t.Helper()
	v, err := views.Compile([]byte(def))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func rowsOf(t testing.TB, v *views.View, lines ...string) []views.Row {
	t.Helper()
	var out []views.Row
	r := views.NewRunner(v)
	for _, l := range lines {
		if err := r.Process([]byte(l), func(_ *views.View, rows []views.Row) error {
			out = append(out, rows...)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// readBack returns, per row, per Parquet column, the values as text ("null"
// for a null, a list as [a b], an empty list as []), decoding each logical
// type as a reader would.
func readBack(t testing.TB, data []byte) (*parquet.File, [][]string) {
	t.Helper()
	f, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	leaves := f.Schema().Columns()
	var out [][]string
	for _, rg := range f.RowGroups() {
		rows := rg.Rows()
		buf := make([]parquet.Row, 64)
		for {
			n, err := rows.ReadRows(buf)
			for _, row := range buf[:n] {
				cells := make([]string, len(leaves))
				row.Range(func(ci int, vals []parquet.Value) bool {
					leaf, _ := f.Schema().Lookup(leaves[ci]...)
					maxDef := leaf.MaxDefinitionLevel
					list := leaf.MaxRepetitionLevel > 0
					var items []string
					for _, v := range vals {
						switch {
						case v.DefinitionLevel() == maxDef:
							items = append(items, text(leaf.Node.Type(), v))
						case list && v.DefinitionLevel() == 1:
							// empty list
						case list && v.DefinitionLevel() == 2:
							items = append(items, "null")
						default:
							cells[ci] = "null"
							return true
						}
					}
					if list {
						cells[ci] = "[" + strings.Join(items, " ") + "]"
					} else {
						cells[ci] = items[0]
					}
					return true
				})
				out = append(out, cells)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		rows.Close()
	}
	return f, out
}

func text(typ parquet.Type, v parquet.Value) string {
	lt := typ.LogicalType()
	switch {
	case is[*format.DateType](lt):
		return time.Unix(int64(v.Int32())*86400, 0).UTC().Format("2006-01-02")
	case is[*format.TimestampType](lt):
		return time.UnixMicro(v.Int64()).UTC().Format(time.RFC3339Nano)
	case v.Kind() == parquet.Boolean:
		return fmt.Sprint(v.Boolean())
	case v.Kind() == parquet.Int64:
		return fmt.Sprint(v.Int64())
	}
	return string(v.ByteArray())
}

func write(t testing.TB, v *views.View, o Options, rows []views.Row) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := New(&buf, v, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Rows() != int64(len(rows)) {
		t.Errorf("Rows() = %d, want %d", w.Rows(), len(rows))
	}
	return buf.Bytes()
}

// TestSchemaAndValues writes a view's rows and reads them back: the columns
// come in the view's order with the documented logical types, and every
// value survives exactly (decimals keep their text, partial dates their
// precision, offsets are applied in the typed _start).
func TestSchemaAndValues(t *testing.T) {
	v := compile(t, patientView)
	f, got := readBack(t, write(t, v, Options{}, rowsOf(t, v, patients...)))

	type colWant struct {
		name     string
		physical parquet.Kind
		logical  func(*format.LogicalType) bool
		list     bool
	}
	isString := is[*format.StringType]
	isJSON := is[*format.JsonType]
	wantCols := []colWant{
		{"id", parquet.ByteArray, isString, false},
		{"active", parquet.Boolean, func(l *format.LogicalType) bool { return l == nil }, false},
		{"births", parquet.Int64, func(l *format.LogicalType) bool {
			it, ok := valueOf[*format.IntType](l)
			return ok && it.BitWidth == 64 && it.IsSigned
		}, false},
		{"weight", parquet.ByteArray, isString, false},
		{"birth", parquet.ByteArray, isString, false},
		{"birth_start", parquet.Int32, is[*format.DateType], false},
		{"died", parquet.ByteArray, isString, false},
		{"died_start", parquet.Int64, func(l *format.LogicalType) bool {
			ts, ok := valueOf[*format.TimestampType](l)
			return ok && ts.IsAdjustedToUTC && is2[*format.MicroSeconds](ts.Unit.Value)
		}, false},
		{"given", parquet.ByteArray, isString, true},
		{"org", parquet.ByteArray, isString, false},
		{"first_name", parquet.ByteArray, isJSON, false},
		{"raw", parquet.ByteArray, isJSON, false},
	}
	fields := f.Schema().Fields()
	if len(fields) != len(wantCols) {
		t.Fatalf("%d columns, want %d: %v", len(fields), len(wantCols), f.Schema())
	}
	for i, w := range wantCols {
		fl := fields[i]
		if fl.Name() != w.name {
			t.Errorf("column %d is %q, want %q (the view's order)", i, fl.Name(), w.name)
			continue
		}
		if !fl.Optional() {
			t.Errorf("%s: not optional", w.name)
		}
		leaf := parquet.Node(fl)
		if w.list {
			if !is[*format.ListType](fl.Type().LogicalType()) {
				t.Errorf("%s: not a LIST", w.name)
				continue
			}
			leaf = fl.Fields()[0].Fields()[0]
		}
		if k := leaf.Type().Kind(); k != w.physical {
			t.Errorf("%s: physical %v, want %v", w.name, k, w.physical)
		}
		if !w.logical(leaf.Type().LogicalType()) {
			t.Errorf("%s: logical type %v", w.name, leaf.Type().LogicalType())
		}
	}

	want := [][]string{
		{"Patient/p1", "true", "2", "71.50", "1970-06", "1970-06-01", "2020-03-04T10:30:00+02:00", "2020-03-04T08:30:00Z",
			"[Ann Marie Annie]", "Organization/o1", `{"given":["Ann","Marie"],"use":"official"}`, `"female"`},
		{"Patient/p2", "false", "null", "null", "1980-01-02", "1980-01-02", "null", "null", "[]", "null", `{"family":"Smith"}`, "null"},
		{"Patient/p3", "null", "null", "null", "not-a-date", "null", "1999", "1999-01-01T00:00:00Z", "[]", "null", "null", "null"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		for c := range want[i] {
			if got[i][c] != want[i][c] {
				t.Errorf("row %d %s = %s, want %s", i, wantCols[c].name, got[i][c], want[i][c])
			}
		}
	}

	meta, _ := f.Lookup("bulkflow.view")
	var m struct {
		View    string
		Columns []struct {
			Name, FHIRType, StartOf string
		}
	}
	if err := json.Unmarshal([]byte(meta), &m); err != nil || m.View != "patient_demo" || len(m.Columns) != len(wantCols) ||
		m.Columns[3].FHIRType != "decimal" || m.Columns[5].StartOf != "birth" {
		t.Errorf("bulkflow.view metadata %s (%v)", meta, err)
	}
}

// TestNullsInCollections: a null list, an empty list and a list holding a
// null element are told apart.
func TestNullsInCollections(t *testing.T) {
	v := compile(t, `{"resourceType":"ViewDefinition","name":"c","resource":"Patient","status":"active",
	  "select":[{"column":[{"name":"d","path":"birthDate","type":"date","collection":true}]}]}`)
	rows := []views.Row{{nil}, {[]any{}}, {[]any{"2001", nil, "bad"}}}
	_, got := readBack(t, write(t, v, Options{}, rows))
	want := [][]string{{"null", "null"}, {"[]", "[]"}, {"[2001 null bad]", "[2001-01-01 null null]"}}
	for i := range want {
		if strings.Join(got[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("row %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestStartColumnClash(t *testing.T) {
	for _, cols := range []string{
		`{"name":"birth","path":"birthDate","type":"date"},{"name":"birth_start","path":"id","type":"string"}`,
		`{"name":"birth_start","path":"id","type":"string"},{"name":"birth","path":"birthDate","type":"date"}`,
	} {
		v := compile(t, `{"resourceType":"ViewDefinition","name":"c","resource":"Patient","status":"active","select":[{"column":[`+cols+`]}]}`)
		_, err := New(io.Discard, v, Options{})
		if err == nil || !strings.Contains(err.Error(), `"birth_start"`) || !strings.Contains(err.Error(), "rename") {
			t.Errorf("clash not refused clearly: %v", err)
		}
	}
}

// TestTypeMismatchIsAnError: a value of the wrong Go type (a bug upstream)
// is an error naming the column, never a panic and never the value.
func TestTypeMismatchIsAnError(t *testing.T) {
	v := compile(t, patientView)
	w, err := New(io.Discard, v, Options{})
	if err != nil {
		t.Fatal(err)
	}
	row := make(views.Row, len(v.Columns))
	row[1] = "secret-value"
	err = w.Write([]views.Row{row})
	if err == nil || !strings.Contains(err.Error(), `"active"`) || strings.Contains(err.Error(), "secret") {
		t.Errorf("error %v", err)
	}
	if w.Close() == nil {
		t.Error("Close after a failed Write succeeded: a half-written file would look complete")
	}
	if err := w.Write([]views.Row{make(views.Row, 3)}); err == nil {
		t.Error("short row accepted")
	}
}

// TestRowGroupsBoundMemory: rows are flushed by row groups as they come, so
// the heap stays flat however many rows are written.
func TestRowGroupsBoundMemory(t *testing.T) {
	v := compile(t, patientView)
	one := rowsOf(t, v, patients[0])[0]
	batch := make([]views.Row, 1000)
	for i := range batch {
		batch[i] = one
	}
	cw := &countingWriter{}
	w, err := New(cw, v, Options{RowGroupBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var peak uint64
	var ms runtime.MemStats
	const batches = 400 // 400k rows, ~60 MB of values
	for i := 0; i < batches; i++ {
		for k := range batch {
			// distinct values, so the output does not compress to nothing
			// and sit in the writer's buffer
			r := slices.Clone(one)
			r[0] = fmt.Sprintf("Patient/%x", mix(uint64(i*1000+k)))
			r[6] = fmt.Sprintf("2020-03-04T10:%02d:%02d+02:00", k%60, i%60)
			batch[k] = r
		}
		if err := w.Write(batch); err != nil {
			t.Fatal(err)
		}
		if i%40 == 39 {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			if cw.n == 0 {
				t.Fatal("nothing reached the output: rows are being held, not streamed")
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rows, %d bytes out, peak heap %d MB", w.Rows(), cw.n, peak>>20)
	if peak > 48<<20 {
		t.Errorf("peak heap %d MB while writing with 1 MB row groups", peak>>20)
	}
	f, err := parquet.OpenFile(bytes.NewReader(cw.buf.Bytes()), int64(cw.buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(f.RowGroups()); n < 10 {
		t.Errorf("%d row groups for ~60 MB of values at 1 MB each", n)
	}
	if f.NumRows() != batches*1000 {
		t.Errorf("%d rows read back", f.NumRows())
	}
}

// countingWriter keeps the file (to read it back; it is counted in the heap
// figure, compressed) and counts the bytes written.
type countingWriter struct {
	buf bytes.Buffer
	n   int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.buf.Write(p)
}

func TestUnknownCompression(t *testing.T) {
	if _, err := New(io.Discard, compile(t, patientView), Options{Compression: "lz4"}); err == nil {
		t.Error("unknown compression accepted")
	}
}

func TestSnappyReadsBack(t *testing.T) {
	v := compile(t, patientView)
	_, got := readBack(t, write(t, v, Options{Compression: "snappy"}, rowsOf(t, v, patients...)))
	if len(got) != 3 || got[0][0] != "Patient/p1" {
		t.Errorf("%v", got)
	}
}

func valueOf[T format.LogicalTypeValue](l *format.LogicalType) (T, bool) {
	var zero T
	if l == nil {
		return zero, false
	}
	v, ok := l.Value.(T)
	return v, ok
}

func is[T format.LogicalTypeValue](l *format.LogicalType) bool {
	_, ok := valueOf[T](l)
	return ok
}

func is2[T any](v any) bool {
	_, ok := v.(T)
	return ok
}

func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// TestJSONCollection: a complex-typed collection is a LIST of JSON values
// (and its statistics are skipped by path, which must name the leaf).
func TestJSONCollection(t *testing.T) {
	v := compile(t, `{"resourceType":"ViewDefinition","name":"n","resource":"Patient","status":"active",
	  "select":[{"column":[{"name":"names","path":"name","type":"HumanName","collection":true}]}]}`)
	f, got := readBack(t, write(t, v, Options{}, rowsOf(t, v, patients...)))
	want := []string{`[{"given":["Ann","Marie"],"use":"official"} {"given":["Annie"]}]`, `[{"family":"Smith"}]`, `[]`}
	for i := range want {
		if got[i][0] != want[i] {
			t.Errorf("row %d = %s, want %s", i, got[i][0], want[i])
		}
	}
	leaf := f.Schema().Fields()[0].Fields()[0].Fields()[0]
	if !is[*format.JsonType](leaf.Type().LogicalType()) {
		t.Errorf("element type %v", leaf.Type().LogicalType())
	}
	for _, rg := range f.Metadata().RowGroups {
		if st := rg.Columns[0].MetaData.Statistics; len(st.MinValue) > 0 || len(st.MaxValue) > 0 || len(st.Min) > 0 {
			t.Errorf("JSON column has min/max statistics: whole values would go to the footer")
		}
	}
}
