package lake

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// benchLines makes n distinct Observation lines of about 1 KB, shaped like a
// real server's (Synthea-like vital signs, random UUIDs so that compression
// ratios are not flattered), spread over 12 months.
func benchLines(n int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	uuid := func() string {
		var b [16]byte
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	}
	pats := make([]string, 500)
	for i := range pats {
		pats[i] = uuid()
	}
	out := make([][]byte, n)
	for i := range out {
		lu := time.Date(2024, time.Month(1+i%12), 1+i%28, i%24, i%60, i%60, (i%1000)*1e6, time.UTC)
		out[i] = fmt.Appendf(nil, `{"resourceType":"Observation","id":"%s","meta":{"versionId":"%d","lastUpdated":"%s","profile":["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"85354-9","display":"Blood pressure panel with all children optional"}],"text":"Blood pressure panel with all children optional"},"subject":{"reference":"Patient/%s"},"encounter":{"reference":"Encounter/%s"},"effectiveDateTime":"%s","issued":"%s","component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4","display":"Diastolic Blood Pressure"}],"text":"Diastolic Blood Pressure"},"valueQuantity":{"value":%d,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic Blood Pressure"}],"text":"Systolic Blood Pressure"},"valueQuantity":{"value":%d,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}`,
			uuid(), 1+i%3, lu.Format(time.RFC3339Nano), pats[rng.IntN(len(pats))], uuid(),
			lu.Add(-time.Hour).Format(time.RFC3339), lu.Format(time.RFC3339Nano), 60+i%40, 100+i%60)
	}
	return out
}

// discardSink is a sink.Writer that drops bytes, so benchmarks measure the
// encoder, not the disk.
type discardSink struct{}

func (discardSink) Write(p []byte) (int, error) { return len(p), nil }
func (discardSink) Close() error                { return nil }
func (discardSink) Abort() error                { return nil }

func discardOpener(string) (sink.Writer, error) { return discardSink{}, nil }

func benchWrite(b *testing.B, o Options) {
	lines := benchLines(4096)
	metas := make([]ndjson.Meta, len(lines))
	var total int64
	for i, l := range lines {
		metas[i], _ = ndjson.Inspect(l)
		total += int64(len(l))
	}
	const perIter = 16384 // rows per iteration: enough for several row groups
	b.SetBytes(total * perIter / int64(len(lines)))
	b.ReportAllocs()
	var out int64
	for b.Loop() {
		w, err := NewFileWriter(discardOpener, "Observation", "Observation-0001", o)
		if err != nil {
			b.Fatal(err)
		}
		for i := range perIter {
			if err := w.Write(lines[i%len(lines)], metas[i%len(lines)]); err != nil {
				b.Fatal(err)
			}
		}
		parts, err := w.Close()
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range parts {
			out += p.Bytes
		}
	}
	b.ReportMetric(float64(out)/float64(b.N)/float64(total*perIter/int64(len(lines))), "out/in")
}

func BenchmarkParquetWrite(b *testing.B) {
	for _, c := range []struct {
		name string
		o    Options
	}{
		{"zstd", Options{Formats: []Format{Parquet}, TransactionTime: txTime, RowGroupBytes: 4 << 20}},
		{"snappy", Options{Formats: []Format{Parquet}, TransactionTime: txTime, RowGroupBytes: 4 << 20, Compression: "snappy"}},
		{"zstd-by-lastUpdated", Options{Formats: []Format{Parquet}, TransactionTime: txTime, RowGroupBytes: 4 << 20, PartitionBy: ByLastUpdated}},
	} {
		b.Run(c.name, func(b *testing.B) { benchWrite(b, c.o) })
	}
}

func BenchmarkNDJSONWrite(b *testing.B) {
	for _, c := range []struct {
		name string
		o    Options
	}{
		{"plain", Options{}},
		{"gzip", Options{Gzip: true}},
	} {
		b.Run(c.name, func(b *testing.B) { benchWrite(b, c.o) })
	}
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
