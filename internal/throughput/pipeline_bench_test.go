package throughput

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/lake"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/sink"
	"github.com/bulkflow/bulkflow/testsuite"
)

// body is one real Observation file from the test FHIR server (the bytes
// the end-to-end bench downloads), held in memory so that serving it costs
// little next to the pipeline under test.
var body struct {
	once       sync.Once
	plain, gz  []byte
	lines      int64
	err        error
	resourceTy string
}

func loadBody(tb testing.TB) {
	body.once.Do(func() {
		srv, err := testsuite.NewServer(testsuite.Options{Patients: 3000, ResourcesPerFile: 1 << 30, LargeAttachments: -1, NoGzip: true})
		if err != nil {
			body.err = err
			return
		}
		h := httptest.NewServer(srv.Handler())
		defer h.Close()
		get := func(u string, hdr ...string) (*http.Response, []byte) {
			req, _ := http.NewRequest("GET", u, nil)
			for i := 0; i+1 < len(hdr); i += 2 {
				req.Header.Set(hdr[i], hdr[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				body.err = err
				return nil, nil
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp, b
		}
		resp, _ := get(h.URL+"/fhir/$export?_type=Observation", "Accept", "application/fhir+json", "Prefer", "respond-async")
		if resp == nil {
			return
		}
		status := resp.Header.Get("Content-Location")
		var m struct {
			Output []struct {
				URL   string `json:"url"`
				Count int64  `json:"count"`
			} `json:"output"`
		}
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			resp, b := get(status)
			if resp == nil {
				return
			}
			if resp.StatusCode == 200 {
				body.err = json.Unmarshal(b, &m)
				break
			}
		}
		if body.err != nil || len(m.Output) != 1 {
			body.err = fmt.Errorf("manifest: %v (%d files)", body.err, len(m.Output))
			return
		}
		_, body.plain = get(m.Output[0].URL)
		body.lines = m.Output[0].Count
		body.resourceTy = "Observation"
		var zb bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&zb, gzip.DefaultCompression)
		zw.Write(body.plain)
		zw.Close()
		body.gz = zb.Bytes()
	})
	if body.err != nil {
		tb.Fatal(body.err)
	}
}

// fileServer serves the body as a FHIR server's file endpoint: gzip when
// gzip is true and the client asks (bulk always does), else identity.
func fileServer(gz bool) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := body.plain
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		if gz && strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			b = body.gz
			w.Header().Set("Content-Encoding", "gzip")
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	}))
}

type result struct {
	rows, bytes int64
	sha         string
}

// downloadNDJSON is activities.download's loop for a plain NDJSON output
// file: validate every line, stage it through a 1 MiB buffer with SHA-256.
func downloadNDJSON(ctx context.Context, c *bulk.Client, u string, s sink.Sink, run, path, typ string) (result, error) {
	var res result
	f, err := c.OpenFile(ctx, u, false, 0)
	if err != nil {
		return res, err
	}
	defer f.Body.Close()
	w, err := s.Create(ctx, run, path)
	if err != nil {
		return res, err
	}
	defer w.Abort()
	var h hash.Hash = sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 1<<20)
	r := ndjson.NewReader(f.Body)
	v := ndjson.Validator{WantType: typ}
	for {
		line, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, err
		}
		if _, err := v.Check(line); err != nil {
			return res, err
		}
		bw.Write(line)
		if err := bw.WriteByte('\n'); err != nil {
			return res, err
		}
		res.rows++
		res.bytes += int64(len(line)) + 1
	}
	if err := bw.Flush(); err != nil {
		return res, err
	}
	if err := w.Close(); err != nil {
		return res, err
	}
	res.sha = hex.EncodeToString(h.Sum(nil))
	return res, nil
}

// downloadLake is activities.downloadToLake's loop: validate every line and
// hand it with its Meta to the lake writer.
func downloadLake(ctx context.Context, c *bulk.Client, u string, s sink.Sink, run, typ string, o lake.Options) (result, error) {
	var res result
	lw, err := lake.NewFileWriter(func(name string) (sink.Writer, error) { return s.Create(ctx, run, name) }, typ, typ+"-0001", o)
	if err != nil {
		return res, err
	}
	defer lw.Abort()
	f, err := c.OpenFile(ctx, u, false, 0)
	if err != nil {
		return res, err
	}
	defer f.Body.Close()
	r := ndjson.NewReader(f.Body)
	v := ndjson.Validator{WantType: typ}
	for {
		line, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, err
		}
		m, err := v.Check(line)
		if err != nil {
			return res, err
		}
		if err := lw.Write(line, m); err != nil {
			return res, err
		}
		res.rows++
		res.bytes += int64(len(line)) + 1
	}
	parts, err := lw.Close()
	if err != nil {
		return res, err
	}
	if len(parts) > 0 {
		res.sha = parts[0].SHA256
	}
	return res, nil
}

// validateOnly reads and validates, writing nothing: the sink's share is
// the difference from the NDJSON case.
func validateOnly(ctx context.Context, c *bulk.Client, u, typ string) (result, error) {
	var res result
	f, err := c.OpenFile(ctx, u, false, 0)
	if err != nil {
		return res, err
	}
	defer f.Body.Close()
	r := ndjson.NewReader(f.Body)
	v := ndjson.Validator{WantType: typ}
	for {
		line, err := r.Next()
		if err == io.EOF {
			return res, nil
		}
		if err != nil {
			return res, err
		}
		if _, err := v.Check(line); err != nil {
			return res, err
		}
		res.rows++
		res.bytes += int64(len(line)) + 1
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDownload runs one ~40 MB Observation file through the pipeline
// per iteration. MB/s is wall clock; MB/cpu-s is bytes per CPU-second of
// this process (the in-memory HTTP server's sends included, a few percent),
// the per-core figure on a shared machine. Targets: NDJSON >= 250 MB/cpu-s,
// Parquet >= 100 MB/cpu-s.
func BenchmarkDownload(b *testing.B) {
	loadBody(b)
	reg, _ := servers.Load("")
	cases := []struct {
		name string
		gzip bool
		run  func(ctx context.Context, c *bulk.Client, u string, s sink.Sink, run string) (result, error)
	}{
		{"validate-only/identity", false, func(ctx context.Context, c *bulk.Client, u string, _ sink.Sink, _ string) (result, error) {
			return validateOnly(ctx, c, u, body.resourceTy)
		}},
		{"ndjson/identity", false, func(ctx context.Context, c *bulk.Client, u string, s sink.Sink, run string) (result, error) {
			return downloadNDJSON(ctx, c, u, s, run, "Observation/Observation-0001.ndjson", body.resourceTy)
		}},
		{"ndjson/gzip", true, func(ctx context.Context, c *bulk.Client, u string, s sink.Sink, run string) (result, error) {
			return downloadNDJSON(ctx, c, u, s, run, "Observation/Observation-0001.ndjson", body.resourceTy)
		}},
		{"parquet/identity", false, func(ctx context.Context, c *bulk.Client, u string, s sink.Sink, run string) (result, error) {
			return downloadLake(ctx, c, u, s, run, body.resourceTy, lake.Options{Formats: []lake.Format{lake.Parquet}, TransactionTime: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)})
		}},
		{"ndjson-gzip-out/identity", false, func(ctx context.Context, c *bulk.Client, u string, s sink.Sink, run string) (result, error) {
			return downloadLake(ctx, c, u, s, run, body.resourceTy, lake.Options{Gzip: true})
		}},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			hs := fileServer(bc.gzip)
			defer hs.Close()
			c, err := reg.Client("", hs.URL+"/fhir")
			if err != nil {
				b.Fatal(err)
			}
			s, err := sink.NewLocal(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			u := hs.URL + "/fhir/file/Observation.ndjson"
			b.SetBytes(int64(len(body.plain)))
			b.ReportAllocs()
			cpu0 := cpuTime()
			for i := 0; b.Loop(); i++ {
				res, err := bc.run(ctx, c, u, s, fmt.Sprintf("run-%d", i))
				if err != nil {
					b.Fatal(err)
				}
				if res.rows != body.lines || res.bytes != int64(len(body.plain)) {
					b.Fatalf("%d rows, %d bytes; want %d, %d", res.rows, res.bytes, body.lines, len(body.plain))
				}
			}
			b.ReportMetric(float64(len(body.plain))*float64(b.N)/(cpuTime()-cpu0).Seconds()/1e6, "MB/cpu-s")
		})
	}
}
