package lake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/parquet-go/parquet-go"

	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/sink"
)

var txTime = time.Date(2025, 6, 30, 12, 0, 0, 123456789, time.UTC)

// src is one synthetic resource and what the lake must make of it, stated
// independently of the code under test.
type src struct {
	line        []byte
	id, typ     string
	version     string
	lastUpdated time.Time // zero: none
	patient     string
	partition   string // expected under ByLastUpdated
}

// patients makes n Patient lines; every fifth has no meta at all.
func patients(n int) []src {
	var out []src
	for i := range n {
		s := src{id: fmt.Sprintf("p-%d", i), typ: "Patient", patient: fmt.Sprintf("p-%d", i)}
		if i%5 == 4 {
			s.line = fmt.Appendf(nil, `{"resourceType":"Patient","id":"%s","name":[{"family":"Müller \u00e9 \"q\""}]}`, s.id)
			s.partition = "year=2025/month=06" // falls back to transactionTime
		} else {
			s.version = fmt.Sprint(i%3 + 1)
			s.lastUpdated = time.Date(2024, time.Month(11+i%4), 3+i%20, 8, 30, 15, 250000000, time.UTC)
			s.line = fmt.Appendf(nil, `{"resourceType":"Patient","id":"%s","meta":{"versionId":"%s","lastUpdated":"%s"},"gender":"female","birthDate":"1970-01-0%d"}`,
				s.id, s.version, s.lastUpdated.Format(time.RFC3339Nano), 1+i%9)
			s.partition = fmt.Sprintf("year=%04d/month=%02d", s.lastUpdated.Year(), s.lastUpdated.Month())
		}
		out = append(out, s)
	}
	return out
}

// observations makes n Observation lines with varied subject references and
// zones, plus (if big) one line of about 5 MB.
func observations(n int, big bool) []src {
	refs := []struct{ ref, patient string }{
		{"Patient/p-1", "p-1"},
		{"https://fhir.example.org/r4/Patient/p-2/_history/7", "p-2"},
		{"Group/g-1", ""},
		{"#contained", ""},
		{"Patient/p-3", "p-3"},
	}
	var out []src
	for i := range n {
		r := refs[i%len(refs)]
		s := src{id: fmt.Sprintf("obs-%d", i), typ: "Observation", version: "1", patient: r.patient}
		// Written in +02:00: the first day of a month just after midnight is
		// still the previous month in UTC, which is what partitions use.
		local := time.Date(2025, time.Month(1+i%3), 1, 1, 30, 0, 123456000, time.FixedZone("", 2*3600))
		s.lastUpdated = local.UTC()
		s.partition = fmt.Sprintf("year=%04d/month=%02d", s.lastUpdated.Year(), s.lastUpdated.Month())
		value := fmt.Sprintf(`"valueQuantity":{"value":%d.5,"unit":"mmHg"}`, i)
		if big && i == n/2 {
			value = `"valueString":"` + strings.Repeat("abcdefghij", 500_000) + `"`
		}
		s.line = fmt.Appendf(nil, `{"resourceType":"Observation","id":"%s","meta":{"versionId":"1","lastUpdated":"%s"},"status":"final","code":{"text":"BP"},"subject":{"reference":"%s"},%s}`,
			s.id, local.Format(time.RFC3339Nano), r.ref, value)
		out = append(out, s)
	}
	return out
}

// write streams srcs through a FileWriter into run of s, as the download
// activity does (Inspect, then Write).
func write(t testing.TB, s *sink.Local, run, typ, base string, o Options, srcs []src) []Part {
	t.Helper()
	w, err := NewFileWriter(opener(s, run), typ, base, o)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 1024)
	for _, r := range srcs {
		m, err := ndjson.Inspect(r.line)
		if err != nil {
			t.Fatalf("test data: %v", err)
		}
		// Write must not keep the line: hand it a buffer that is reused.
		buf = append(buf[:0], r.line...)
		if err := w.Write(buf, m); err != nil {
			t.Fatal(err)
		}
		clear(buf)
	}
	parts, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	return parts
}

func opener(s *sink.Local, run string) Opener {
	return func(name string) (sink.Writer, error) { return s.Create(context.Background(), run, name) }
}

func commit(t testing.TB, s *sink.Local, run string) string {
	t.Helper()
	if err := s.Commit(context.Background(), run, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	return s.Location(run)
}

func TestFileWriter(t *testing.T) {
	pats := patients(40)
	obs := observations(60, true)
	tests := []struct {
		name      string
		typ, base string
		o         Options
		srcs      []src
		wantParts []string // sorted
		key       func(src) string
	}{
		{
			name: "default ndjson keeps today's name", typ: "Observation", base: "Observation-0001",
			srcs: obs, wantParts: []string{"Observation/Observation-0001.ndjson"},
			key: func(src) string { return "" },
		},
		{
			name: "ndjson and parquet, no partitions", typ: "Patient", base: "Patient-0002",
			o:    Options{Formats: []Format{NDJSON, Parquet}, TransactionTime: txTime},
			srcs: pats, wantParts: []string{"Patient/Patient-0002.ndjson", "Patient/Patient-0002.parquet"},
			key: func(src) string { return "" },
		},
		{
			name: "gzip and parquet by transactionTime, snappy", typ: "Observation", base: "Observation-0003",
			o:    Options{Formats: []Format{NDJSON, Parquet}, Gzip: true, PartitionBy: ByTransactionTime, TransactionTime: txTime, Compression: "snappy"},
			srcs: obs,
			wantParts: []string{
				"Observation/year=2025/month=06/Observation-0003.ndjson.gz",
				"Observation/year=2025/month=06/Observation-0003.parquet",
			},
			key: func(src) string { return "year=2025/month=06" },
		},
		{
			name: "parquet by lastUpdated, small row groups", typ: "Observation", base: "Observation-0004",
			o:    Options{Formats: []Format{Parquet}, PartitionBy: ByLastUpdated, TransactionTime: txTime, RowGroupBytes: 4 << 10},
			srcs: obs,
			wantParts: []string{ // 2025-01-01T01:30+02:00 is December 2024 in UTC
				"Observation/year=2024/month=12/Observation-0004.parquet",
				"Observation/year=2025/month=01/Observation-0004.parquet",
				"Observation/year=2025/month=02/Observation-0004.parquet",
			},
			key: func(s src) string { return s.partition },
		},
		{
			name: "both formats by lastUpdated, missing lastUpdated falls back", typ: "Patient", base: "Patient-0001",
			o:    Options{Formats: []Format{Parquet, NDJSON}, PartitionBy: ByLastUpdated, TransactionTime: txTime},
			srcs: pats,
			wantParts: []string{
				"Patient/year=2024/month=11/Patient-0001.ndjson", "Patient/year=2024/month=11/Patient-0001.parquet",
				"Patient/year=2024/month=12/Patient-0001.ndjson", "Patient/year=2024/month=12/Patient-0001.parquet",
				"Patient/year=2025/month=01/Patient-0001.ndjson", "Patient/year=2025/month=01/Patient-0001.parquet",
				"Patient/year=2025/month=02/Patient-0001.ndjson", "Patient/year=2025/month=02/Patient-0001.parquet",
				"Patient/year=2025/month=06/Patient-0001.ndjson", "Patient/year=2025/month=06/Patient-0001.parquet",
			},
			key: func(s src) string { return s.partition },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := sink.NewLocal(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			parts := write(t, s, "run1", tc.typ, tc.base, tc.o, tc.srcs)
			root := commit(t, s, "run1")

			var got []string
			for _, p := range parts {
				got = append(got, p.Path)
			}
			if !slices.Equal(got, tc.wantParts) {
				t.Fatalf("parts:\n got %q\nwant %q", got, tc.wantParts)
			}
			// Every object on disk is a Part, and nothing else was left.
			onDisk := listFiles(t, root)
			if want := append(slices.Clone(tc.wantParts), sink.ManifestName); !slices.Equal(onDisk, sortedCopy(want)) {
				t.Fatalf("files on disk %q, want %q", onDisk, want)
			}

			byPart := map[string][]src{}
			for _, r := range tc.srcs {
				byPart[tc.key(r)] = append(byPart[tc.key(r)], r)
			}
			rowsPerFormat := map[Format]int64{}
			for _, p := range parts {
				data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(p.Path)))
				if err != nil {
					t.Fatal(err)
				}
				if p.Bytes != int64(len(data)) {
					t.Errorf("%s: Bytes %d, file has %d", p.Path, p.Bytes, len(data))
				}
				if sum := sha256.Sum256(data); p.SHA256 != hex.EncodeToString(sum[:]) {
					t.Errorf("%s: SHA256 does not match the file", p.Path)
				}
				want := byPart[p.Partition]
				if !strings.Contains(p.Path, "/"+p.Partition+"/") && p.Partition != "" {
					t.Errorf("%s: partition %q not in path", p.Path, p.Partition)
				}
				if p.Rows != int64(len(want)) {
					t.Errorf("%s: Rows %d, want %d", p.Path, p.Rows, len(want))
				}
				rowsPerFormat[p.Format] += p.Rows
				switch p.Format {
				case NDJSON:
					if p.Gzip != strings.HasSuffix(p.Path, ".gz") {
						t.Errorf("%s: Gzip=%v", p.Path, p.Gzip)
					}
					if p.Gzip {
						data = gunzip(t, data)
					}
					var wantBytes []byte
					for _, r := range want {
						wantBytes = append(append(wantBytes, r.line...), '\n')
					}
					if !bytes.Equal(data, wantBytes) {
						t.Errorf("%s: NDJSON differs from the source lines (%d vs %d bytes)", p.Path, len(data), len(wantBytes))
					}
				case Parquet:
					checkParquet(t, data, tc.base, want, tc.o.RowGroupBytes != 0)
				default:
					t.Errorf("%s: format %q", p.Path, p.Format)
				}
			}
			for f, n := range rowsPerFormat {
				if n != int64(len(tc.srcs)) {
					t.Errorf("%s rows over all parts: %d, want %d", f, n, len(tc.srcs))
				}
			}
		})
	}
}

// checkParquet reads a Parquet object back and compares every column with
// what the source line says.
func checkParquet(t *testing.T, data []byte, base string, want []src, manyGroups bool) {
	t.Helper()
	f, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	schema := map[string]string{}
	for _, field := range f.Schema().Fields() {
		lt := "<none>"
		if l := field.Type().LogicalType(); l != nil {
			lt = l.String()
		}
		schema[field.Name()] = fmt.Sprintf("%v %s optional=%v", field.Type().Kind(), lt, field.Optional())
	}
	wantSchema := map[string]string{
		"id":                      "BYTE_ARRAY STRING optional=false",
		"resource_type":           "BYTE_ARRAY STRING optional=false",
		"version_id":              "BYTE_ARRAY STRING optional=true",
		"last_updated":            "INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS) optional=true",
		"patient_id":              "BYTE_ARRAY STRING optional=true",
		"export_transaction_time": "INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS) optional=false",
		"source_file":             "BYTE_ARRAY STRING optional=false",
		"resource":                "BYTE_ARRAY JSON optional=false",
	}
	for k, v := range wantSchema {
		if schema[k] != v {
			t.Errorf("column %s: %q, want %q", k, schema[k], v)
		}
	}
	if len(schema) != len(wantSchema) {
		t.Errorf("columns %v", schema)
	}
	if manyGroups && len(want) > 10 && len(f.RowGroups()) < 2 {
		t.Errorf("%d row groups for %d rows with a small RowGroupBytes", len(f.RowGroups()), len(want))
	}

	rows, err := parquet.Read[Row](bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(rows), len(want))
	}
	for i, r := range rows {
		w := want[i]
		if r.ID != w.id || r.ResourceType != w.typ || r.VersionID != w.version || r.PatientID != w.patient || r.SourceFile != base {
			t.Errorf("row %d: id=%q type=%q version=%q patient=%q source=%q; want %q %q %q %q %q",
				i, r.ID, r.ResourceType, r.VersionID, r.PatientID, r.SourceFile, w.id, w.typ, w.version, w.patient, base)
		}
		if !r.LastUpdated.Equal(w.lastUpdated) || (!w.lastUpdated.IsZero() && r.LastUpdated.Location() != time.UTC) {
			t.Errorf("row %d: last_updated %v, want %v", i, r.LastUpdated, w.lastUpdated)
		}
		if !r.ExportTransactionTime.Equal(txTime.Truncate(time.Microsecond)) {
			t.Errorf("row %d: export_transaction_time %v", i, r.ExportTransactionTime)
		}
		if !bytes.Equal(r.Resource, w.line) {
			t.Errorf("row %d: resource differs from the source line (%d vs %d bytes)", i, len(r.Resource), len(w.line))
		}
	}
	// Optional columns must hold real nulls, not empty strings, so that
	// "patient_id IS NULL" works in SQL.
	nulls := 0
	for _, w := range want {
		if w.patient == "" {
			nulls++
		}
	}
	col, _ := f.Schema().Lookup("patient_id")
	var got int64
	for _, rg := range f.Metadata().RowGroups {
		got += rg.Columns[col.ColumnIndex].MetaData.Statistics.NullCount
	}
	if got != int64(nulls) {
		t.Errorf("patient_id nulls: %d, want %d", got, nulls)
	}
}

func TestDeterministicNames(t *testing.T) {
	obs := observations(30, false)
	o := Options{Formats: []Format{NDJSON, Parquet}, Gzip: true, PartitionBy: ByLastUpdated, TransactionTime: txTime}
	s, err := sink.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a := write(t, s, "a", "Observation", "Observation-0007", o, obs)
	// A retry in the same run overwrites: same names, nothing added.
	b := write(t, s, "a", "Observation", "Observation-0007", o, obs)
	c := write(t, s, "c", "Observation", "Observation-0007", o, obs)
	if len(a) != 6 || !slices.Equal(a, b) || !slices.Equal(a, c) {
		t.Fatalf("parts differ between identical writes:\n%v\n%v\n%v", a, b, c)
	}
	rootA, rootC := commit(t, s, "a"), commit(t, s, "c")
	filesA, filesC := listFiles(t, rootA), listFiles(t, rootC)
	if !slices.Equal(filesA, filesC) || len(filesA) != len(a)+1 {
		t.Fatalf("files: %q vs %q", filesA, filesC)
	}
	for _, p := range a {
		da, _ := os.ReadFile(filepath.Join(rootA, p.Path))
		dc, _ := os.ReadFile(filepath.Join(rootC, p.Path))
		if !bytes.Equal(da, dc) {
			t.Errorf("%s differs between runs", p.Path)
		}
	}
}

func TestAbort(t *testing.T) {
	for _, o := range []Options{
		{},
		{Formats: []Format{NDJSON, Parquet}, Gzip: true, PartitionBy: ByLastUpdated, TransactionTime: txTime},
	} {
		dir := t.TempDir()
		s, err := sink.NewLocal(dir)
		if err != nil {
			t.Fatal(err)
		}
		w, err := NewFileWriter(opener(s, "r"), "Observation", "Observation-0001", o)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range observations(20, false) {
			m, _ := ndjson.Inspect(r.line)
			if err := w.Write(r.line, m); err != nil {
				t.Fatal(err)
			}
		}
		w.Abort()
		w.Abort() // idempotent
		if err := w.Write([]byte(`{}`), ndjson.Meta{}); err == nil {
			t.Error("Write after Abort succeeded")
		}
		if files := listFiles(t, dir); len(files) != 0 {
			t.Errorf("%+v: Abort left %q", o, files)
		}
	}
}

func TestEmptyFile(t *testing.T) {
	s, err := sink.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Without partitions an empty source still yields its (empty) objects,
	// as the download activity always did; with partitions, nothing.
	parts := write(t, s, "r", "Patient", "Patient-0001", Options{Formats: []Format{NDJSON, Parquet}, TransactionTime: txTime}, nil)
	if len(parts) != 2 || parts[0].Bytes != 0 || parts[1].Rows != 0 {
		t.Fatalf("parts %+v", parts)
	}
	parts = write(t, s, "r", "Patient", "Patient-0002", Options{Formats: []Format{Parquet}, PartitionBy: ByTransactionTime, TransactionTime: txTime}, nil)
	if len(parts) != 0 {
		t.Fatalf("partitioned empty file: %+v", parts)
	}
	root := commit(t, s, "r")
	rows, err := parquet.ReadFile[Row](filepath.Join(root, "Patient/Patient-0001.parquet"))
	if err != nil || len(rows) != 0 {
		t.Fatalf("empty parquet: %v rows, %v", len(rows), err)
	}
}

func TestBadOptions(t *testing.T) {
	s, err := sink.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, typ, base string
		o               Options
		want            string
	}{
		{"format", "Patient", "Patient-0001", Options{Formats: []Format{"csv"}}, "unknown format"},
		{"partition key", "Patient", "Patient-0001", Options{PartitionBy: "month", TransactionTime: txTime}, "unknown partition key"},
		{"compression", "Patient", "Patient-0001", Options{Formats: []Format{Parquet}, Compression: "lzo", TransactionTime: txTime}, "compression"},
		{"no transaction time for parquet", "Patient", "Patient-0001", Options{Formats: []Format{Parquet}}, "TransactionTime"},
		{"no transaction time for partitions", "Patient", "Patient-0001", Options{PartitionBy: ByLastUpdated}, "TransactionTime"},
		{"type", "../x", "Patient-0001", Options{}, "resource type"},
		{"base with slash", "Patient", "a/b", Options{}, "base name"},
		{"base dotdot", "Patient", "..", Options{}, "base name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewFileWriter(opener(s, "r"), tc.typ, tc.base, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestPatientID(t *testing.T) {
	tests := []struct {
		m    ndjson.Meta
		want string
	}{
		{ndjson.Meta{ResourceType: "Patient", ID: "p1"}, "p1"},
		{ndjson.Meta{ResourceType: "Patient", ID: "p1", Subject: "Patient/other"}, "p1"},
		{ndjson.Meta{ResourceType: "Observation", Subject: "Patient/123"}, "123"},
		{ndjson.Meta{ResourceType: "Observation", Subject: "Patient/123/_history/4"}, "123"},
		{ndjson.Meta{ResourceType: "Observation", Subject: "https://h/fhir/Patient/a.b-c"}, "a.b-c"},
		{ndjson.Meta{ResourceType: "Observation", Subject: "Group/9"}, ""},
		{ndjson.Meta{ResourceType: "Observation", Subject: "RelatedPatient/9"}, ""},
		{ndjson.Meta{ResourceType: "Observation", Subject: "#p"}, ""},
		{ndjson.Meta{ResourceType: "Observation", Subject: "Patient/"}, ""},
		{ndjson.Meta{ResourceType: "Observation", Subject: "urn:uuid:1234"}, ""},
		{ndjson.Meta{ResourceType: "Observation"}, ""},
	}
	for _, tc := range tests {
		if got := patientID(tc.m); got != tc.want {
			t.Errorf("patientID(%+v) = %q, want %q", tc.m, got, tc.want)
		}
	}
}

func TestParseInstant(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"2025-01-31T23:30:00Z", time.Date(2025, 1, 31, 23, 30, 0, 0, time.UTC), true},
		{"2025-02-01T01:30:00.1234567+02:00", time.Date(2025, 1, 31, 23, 30, 0, 123456000, time.UTC), true},
		{"2025-02-01", time.Time{}, false}, // a date is not an instant
		{"", time.Time{}, false},
		{"yesterday", time.Time{}, false},
	}
	for _, tc := range tests {
		got, ok := parseInstant(tc.in)
		if ok != tc.ok || !got.Equal(tc.want) || (ok && got.Location() != time.UTC) {
			t.Errorf("parseInstant(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestMemoryFlat writes far more Parquet data than the row group budget and
// checks that the heap does not grow with it.
func TestMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 96 MB")
	}
	s, err := sink.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const budget = 4 << 20
	w, err := NewFileWriter(opener(s, "r"), "Observation", "Observation-0001",
		Options{Formats: []Format{Parquet, NDJSON}, PartitionBy: ByLastUpdated, TransactionTime: txTime, RowGroupBytes: budget})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	lines := benchLines(1000)
	metas := make([]ndjson.Meta, len(lines))
	for i, l := range lines {
		metas[i], _ = ndjson.Inspect(l)
	}
	var peak uint64
	var written int
	for i := 0; written < 96<<20; i++ {
		l := lines[i%len(lines)]
		if err := w.Write(l, metas[i%len(lines)]); err != nil {
			t.Fatal(err)
		}
		written += len(l)
		if i%20000 == 19999 { // after a GC: live memory, not garbage
			runtime.GC()
			peak = max(peak, heapInUse())
		}
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d MB, peak heap in use %d MB", written>>20, peak>>20)
	// 12 partitions x 2 formats of buffers, zstd state and one 4 MB row
	// group budget come to ~20 MB; growth with the data would blow past this.
	if peak > 48<<20 {
		t.Errorf("peak heap %d MB for a %d MB row group budget: memory is not flat", peak>>20, budget>>20)
	}
}

func gunzip(t *testing.T, data []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// listFiles lists the regular files under root (slash paths, sorted).
func listFiles(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestWriteSample writes a small partitioned run into $LAKE_SAMPLE_DIR for
// checking the output with other readers by hand (docs/lake.md, DuckDB).
func TestWriteSample(t *testing.T) {
	dir := os.Getenv("LAKE_SAMPLE_DIR")
	if dir == "" {
		t.Skip("set LAKE_SAMPLE_DIR to write a sample run")
	}
	s, err := sink.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Formats: []Format{NDJSON, Parquet}, Gzip: true, PartitionBy: ByLastUpdated, TransactionTime: txTime}
	var bench []src
	for _, l := range benchLines(2000) {
		bench = append(bench, src{line: l})
	}
	write(t, s, "sample", "Patient", "Patient-0001", o, patients(40))
	write(t, s, "sample", "Observation", "Observation-0001", o, observations(60, true))
	write(t, s, "sample", "Observation", "Observation-0002", o, bench)
	t.Logf("wrote %s", commit(t, s, "sample"))
}
