package lake

import (
	"testing"

	"github.com/bulkflow/bulkflow/internal/ndjson"
)

// PartitionOf puts a resource where FileWriter.Write puts it, so view
// tables partition exactly as the resource tables (the srcs state the
// expected partitions independently).
func TestPartitionOf(t *testing.T) {
	future := `{"resourceType":"Patient","id":"f","meta":{"lastUpdated":"2031-01-01T00:00:00Z"}}`
	old := `{"resourceType":"Patient","id":"o","meta":{"lastUpdated":"1850-01-01T00:00:00Z"}}`
	srcs := append(patients(10), src{line: []byte(future), partition: "year=2025/month=06"}, src{line: []byte(old), partition: "year=2025/month=06"})
	for _, s := range srcs {
		m, err := ndjson.Inspect(s.line)
		if err != nil {
			t.Fatal(err)
		}
		if got := PartitionOf(Options{PartitionBy: ByLastUpdated, TransactionTime: txTime}, m); got != s.partition {
			t.Errorf("%s: lastUpdated partition %q, want %q", s.line, got, s.partition)
		}
		if got := PartitionOf(Options{PartitionBy: ByTransactionTime, TransactionTime: txTime}, m); got != "year=2025/month=06" {
			t.Errorf("transactionTime partition %q", got)
		}
		if got := PartitionOf(Options{TransactionTime: txTime}, m); got != "" {
			t.Errorf("no partitions: %q", got)
		}
	}
}
