package views_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/internal/fhirpath"
	"github.com/bulkflow/bulkflow/internal/views"
	"github.com/bulkflow/bulkflow/internal/viewtable"
	"github.com/bulkflow/bulkflow/testsuite"
)

// The views of the bench scenario (issue 17 §3), as files:
// patient_demographics and blood_pressure are docs/views.md's,
// condition_codings unnests Condition.code.coding (the test server gives
// two codings from different systems), observation_values flattens every
// Observation (value[x] columns, forEachOrNull over component).
func benchViews(tb testing.TB, names ...string) []*views.View {
	var out []*views.View
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join("testdata", "bench", n+".json"))
		if err != nil {
			tb.Fatal(err)
		}
		v, err := views.Compile(data)
		if err != nil {
			tb.Fatalf("%s: %v", n, err)
		}
		out = append(out, v)
	}
	return out
}

var (
	corpusOnce  sync.Once
	corpusLines [][]byte
	corpusBytes int64
	corpusErr   error
)

// benchCorpus is the test server's NDJSON for Patient, Observation and
// Condition (deterministic: fixed seed and epoch), fetched once over
// loopback as an export would, one slice per line.
func benchCorpus(tb testing.TB) ([][]byte, int64) {
	corpusOnce.Do(func() { corpusLines, corpusBytes, corpusErr = fetchCorpus(300) })
	if corpusErr != nil {
		tb.Fatal(corpusErr)
	}
	return corpusLines, corpusBytes
}

func fetchCorpus(patients int) ([][]byte, int64, error) {
	s, err := testsuite.NewServer(testsuite.Options{Patients: patients, LargeAttachments: -1, ResourcesPerFile: 1 << 20})
	if err != nil {
		return nil, 0, err
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		return nil, 0, err
	}
	defer s.Close()
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 30 * time.Second}
	get := func(method, u string, h ...string) (*http.Response, []byte, error) {
		r, err := http.NewRequest(method, u, nil)
		if err != nil {
			return nil, nil, err
		}
		for i := 0; i+1 < len(h); i += 2 {
			r.Header.Set(h[i], h[i+1])
		}
		resp, err := c.Do(r)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp, body, err
	}
	resp, body, err := get("GET", s.BaseURL()+"/$export?_type=Patient,Observation,Condition",
		"Accept", "application/fhir+json", "Prefer", "respond-async")
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != 202 {
		return nil, 0, fmt.Errorf("kickoff: %d %s", resp.StatusCode, body)
	}
	status := resp.Header.Get("Content-Location")
	var m struct {
		Output []struct{ URL string }
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, body, err = get("GET", status, "Accept", "application/json")
		if err != nil {
			return nil, 0, err
		}
		if resp.StatusCode == 200 {
			if err := json.Unmarshal(body, &m); err != nil {
				return nil, 0, err
			}
			break
		}
		if resp.StatusCode != 202 || time.Now().After(deadline) {
			return nil, 0, fmt.Errorf("status: %d %s", resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var lines [][]byte
	var total int64
	for _, o := range m.Output {
		resp, body, err := get("GET", o.URL)
		if err != nil {
			return nil, 0, err
		}
		if resp.StatusCode != 200 {
			return nil, 0, fmt.Errorf("file: %d", resp.StatusCode)
		}
		total += int64(len(body))
		for l := range bytes.Lines(body) {
			lines = append(lines, bytes.TrimSuffix(l, []byte("\n")))
		}
	}
	return lines, total, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRunner3Views is the flattening stage of an export with views:
// each NDJSON line of the test server's Patient, Observation and Condition
// files is decoded once, run through every view of its type, and the rows
// written to each view's Parquet table (zstd, to io.Discard). One op is the
// whole corpus; MB/s is NDJSON bytes per wall second of this single
// goroutine, MB/cpu-s the same per CPU-second of the process (GC and the
// Parquet writer included), the "MB per worker CPU-second".
//
//	docs: the three views of the issue (demographics, blood pressure
//	      components, condition codings) as docs/views.md writes them
//	all-obs: blood pressure replaced by a view of every Observation
//	      (value[x] columns, forEachOrNull over component)
//	flatten-only: docs, without the Parquet writers
func BenchmarkRunner3Views(b *testing.B) {
	for _, bc := range []struct {
		name    string
		views   []string
		parquet bool
	}{
		{"docs", []string{"patient_demographics", "blood_pressure", "condition_codings"}, true},
		{"all-obs", []string{"patient_demographics", "observation_values", "condition_codings"}, true},
		{"flatten-only", []string{"patient_demographics", "blood_pressure", "condition_codings"}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			lines, size := benchCorpus(b)
			vs := benchViews(b, bc.views...)
			r := views.NewRunner(vs...)
			b.SetBytes(size)
			b.ReportAllocs()
			rows := 0
			var cpu time.Duration
			for b.Loop() {
				ws := map[*views.View]*viewtable.Writer{}
				if bc.parquet {
					for _, v := range vs {
						w, err := viewtable.New(io.Discard, v, viewtable.Options{})
						if err != nil {
							b.Fatal(err)
						}
						ws[v] = w
					}
				}
				cpu0 := cpuTime()
				for _, l := range lines {
					err := r.Process(l, func(v *views.View, rs []views.Row) error {
						rows += len(rs)
						if w := ws[v]; w != nil {
							return w.Write(rs)
						}
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
				}
				for _, w := range ws {
					if err := w.Close(); err != nil {
						b.Fatal(err)
					}
				}
				cpu += cpuTime() - cpu0
			}
			if cpu > 0 {
				b.ReportMetric(float64(size)*float64(b.N)/1e6/cpu.Seconds(), "MB/cpu-s")
			}
			b.ReportMetric(float64(rows)/float64(b.N), "rows/op")
			b.ReportMetric(float64(len(lines)), "lines/op")
		})
	}
}

// BenchmarkDecodeCorpus is the decoding alone on the same corpus: every
// element (ParseJSON, and a Decoder reusing its arenas), and only the
// elements the three views reach (what Runner.Process decodes).
func BenchmarkDecodeCorpus(b *testing.B) {
	lines, size := benchCorpus(b)
	r := views.NewRunner(benchViews(b, "patient_demographics", "blood_pressure", "condition_codings")...)
	var d fhirpath.Decoder
	elements := r.Elements
	for _, bc := range []struct {
		name   string
		decode func([]byte) error
	}{
		{"ParseJSON", func(l []byte) error { _, err := fhirpath.ParseJSON(l); return err }},
		{"Decoder", func(l []byte) error { _, err := d.Decode(l); return err }},
		{"projected", func(l []byte) error { _, err := d.DecodeProjected(l, elements); return err }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				for _, l := range lines {
					if err := bc.decode(l); err != nil {
						b.Fatal(err)
					}
				}
			}
			if cpu := cpuTime() - cpu0; cpu > 0 {
				b.ReportMetric(float64(size)*float64(b.N)/1e6/cpu.Seconds(), "MB/cpu-s")
			}
		})
	}
}
