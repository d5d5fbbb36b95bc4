package lake

import (
	"context"
	"fmt"
	"sort"
	"testing"

	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// A meta.lastUpdated the export could not have seen (after its
// transactionTime, or before 1900) does not choose a partition: one file
// cannot open objects for thousands of months.
func TestLastUpdatedOutsideTheExportIsNotAPartition(t *testing.T) {
	s, _ := sink.NewLocal(t.TempDir())
	ctx := context.Background()
	w, err := NewFileWriter(func(name string) (sink.Writer, error) { return s.Create(ctx, "run", name) }, "Patient", "Patient-0001",
		Options{Formats: []Format{NDJSON}, PartitionBy: ByLastUpdated, TransactionTime: txTime})
	if err != nil {
		t.Fatal(err)
	}
	lus := []string{"2025-03-04T05:06:07Z", "2025-06-30T12:04:00Z"} // real, and within the clock skew
	for y := 1; y <= 9999; y += 37 {
		lus = append(lus, fmt.Sprintf("%04d-01-01T00:00:00Z", y))
	}
	lus = append(lus, "2025-07-01T00:00:00Z", "not a date")
	for i, lu := range lus {
		line := fmt.Appendf(nil, `{"resourceType":"Patient","id":"p%d","meta":{"lastUpdated":%q}}`, i, lu)
		m, err := ndjson.Inspect(line)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(line, m); err != nil {
			t.Fatal(err)
		}
	}
	parts, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range parts {
		got = append(got, p.Partition)
	}
	sort.Strings(got)
	// 1900-2025 in steps of 37 years from year 1: 1925, 1962, 1999 (January).
	want := []string{"year=1925/month=01", "year=1962/month=01", "year=1999/month=01", "year=2025/month=03", "year=2025/month=06"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("partitions %v, want %v", got, want)
	}
}
