// Package throughput holds benchmarks only: the download pipeline of an
// export file composed from bulkflow's own packages, as the worker runs it,
// without Temporal: bulk.Client.OpenFile against a local HTTP server →
// ndjson.Reader → ndjson.Validator.Check → the local sink with SHA-256 (or
// the lake's Parquet writer). It measures what one file costs one core.
//
//	go test -run - -bench . -benchmem ./internal/throughput
package throughput
