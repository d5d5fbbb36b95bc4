package viewtable

import (
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/bulkflow/bulkflow/internal/views"
)

// BenchmarkWrite: rows of the 12-column patient view (every kind, a list, a
// JSON column) written to zstd Parquet; reports rows/s.
func BenchmarkWrite(b *testing.B) {
	v := compile(b, patientView)
	one := rowsOf(b, v, patients[0])[0]
	batch := make([]views.Row, 1000)
	for k := range batch {
		r := slices.Clone(one)
		r[0] = fmt.Sprintf("Patient/%x", mix(uint64(k)))
		batch[k] = r
	}
	w, err := New(io.Discard, v, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := w.Write(batch); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "rows/s")
}
