package lake

import (
	"fmt"
	"time"

	"github.com/bulkflow/bulkflow/internal/ndjson"
)

// PartitionOf is the partition ("year=YYYY/month=MM", or "" without
// partitions) that FileWriter.Write puts a resource with meta m in, so that
// tables derived from the same resources (views) partition alike.
func PartitionOf(o Options, m ndjson.Meta) string {
	tx := o.TransactionTime.UTC().Truncate(time.Microsecond)
	var key int
	switch o.PartitionBy {
	case ByTransactionTime:
		key = monthKey(tx)
	case ByLastUpdated:
		if lu, ok := parseInstant(m.LastUpdated); ok && lu.Year() >= 1900 && !lu.After(tx.Add(maxLastUpdatedSkew)) {
			key = monthKey(lu)
		} else {
			key = monthKey(tx)
		}
	default:
		return ""
	}
	return fmt.Sprintf("year=%04d/month=%02d", key/100, key%100)
}
