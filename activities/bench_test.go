package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/internal/ndjson"
	fhirtest "github.com/bulkflow/bulkflow/testsuite"
)

// typical is a system export of the test FHIR server as the bench's
// typical scenario serves it (12 types, 10,000 resources per file, no large
// attachments), fetched once and held in memory.
var typical struct {
	once  sync.Once
	files []typicalFile
	bytes int64
	err   error
}

type typicalFile struct {
	typ   string
	count int64
	body  string
}

func loadTypical(tb testing.TB) {
	typical.once.Do(func() {
		srv, err := fhirtest.NewServer(fhirtest.Options{Patients: 700, LargeAttachments: -1, NoGzip: true})
		if err != nil {
			typical.err = err
			return
		}
		h := httptest.NewServer(srv.Handler())
		defer h.Close()
		get := func(u string, hdr ...string) (*http.Response, []byte, error) {
			req, _ := http.NewRequest("GET", u, nil)
			for i := 0; i+1 < len(hdr); i += 2 {
				req.Header.Set(hdr[i], hdr[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return nil, nil, err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return resp, b, err
		}
		resp, _, err := get(h.URL+"/fhir/$export", "Accept", "application/fhir+json", "Prefer", "respond-async")
		if err != nil {
			typical.err = err
			return
		}
		var m struct {
			Output []struct {
				Type  string `json:"type"`
				URL   string `json:"url"`
				Count int64  `json:"count"`
			} `json:"output"`
		}
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			r, b, err := get(resp.Header.Get("Content-Location"))
			if err != nil || time.Now().After(deadline) {
				typical.err = fmt.Errorf("export status: %v", err)
				return
			}
			if r.StatusCode == 200 {
				typical.err = json.Unmarshal(b, &m)
				break
			}
		}
		for _, o := range m.Output {
			_, b, err := get(o.URL)
			if err != nil {
				typical.err = err
				return
			}
			typical.files = append(typical.files, typicalFile{typ: o.Type, count: o.Count, body: string(b)})
			typical.bytes += int64(len(b))
		}
	})
	if typical.err != nil {
		tb.Fatal(typical.err)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDownloadFile runs the DownloadFile activity (the worker's own
// code: bulk.Client over HTTP, ndjson reader, validation, id uniqueness,
// SHA-256, the local sink's staging with fsync and rename) on every file
// of a typical export, one after another on one goroutine. MB/cpu-s is
// NDJSON bytes per CPU-second of this process (the in-memory HTTP server's
// sends included): the per-core figure, less noisy than MB/s on a shared
// machine. Issue 14 §2's target is 300 MB/cpu-s for the worker.
//
//	go test -run - -bench DownloadFile -benchtime 5x ./activities
func BenchmarkDownloadFile(b *testing.B) {
	loadTypical(b)
	f := newFixture(b)
	// Served as bytes: the fixture's handler converts each string body (a
	// copy of the whole file per request, counted in the CPU time).
	bodies := map[string][]byte{}
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		w.Write(bodies[r.URL.Path])
	})
	var plan []plannedFile
	for i, tf := range typical.files {
		p := fmt.Sprintf("/f/%d", i)
		bodies[p] = []byte(tf.body)
		plan = append(plan, plannedFile{Kind: KindOutput, Type: tf.typ, URL: f.srv.URL + p, Count: tf.count, HasCount: true,
			Path: fmt.Sprintf("%s/%s-%04d.ndjson", tf.typ, tf.typ, i)})
	}
	f.stage(plan...)
	b.SetBytes(typical.bytes)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		for i := range plan {
			r, err := f.download(i)
			if err != nil {
				b.Fatal(err)
			}
			if r.Resources != plan[i].Count {
				b.Fatalf("%s: %d resources, want %d", plan[i].Path, r.Resources, plan[i].Count)
			}
		}
		b.StopTimer()
		os.RemoveAll(filepath.Join(f.out, ".staging", "run", "data"))
		b.StartTimer()
	}
	b.ReportMetric(float64(typical.bytes)*float64(b.N)/(cpuTime()-cpu0).Seconds()/1e6, "MB/cpu-s")
}

// BenchmarkValidateTypical is the per-line check alone over the typical
// export's lines, in memory: CheckID as the plain NDJSON download calls it
// (nextResourceID), Check as the lake path does (nextResource).
func BenchmarkValidateTypical(b *testing.B) {
	loadTypical(b)
	type file struct {
		typ   string
		lines [][]byte
	}
	var files []file
	for _, tf := range typical.files {
		f := file{typ: tf.typ}
		for _, l := range strings.Split(strings.TrimSuffix(tf.body, "\n"), "\n") {
			f.lines = append(f.lines, []byte(l))
		}
		files = append(files, f)
	}
	for _, bc := range []struct {
		name  string
		check func(v ndjson.Validator, l []byte) error
	}{
		{"CheckID", func(v ndjson.Validator, l []byte) error { _, err := v.CheckID(l); return err }},
		{"Check", func(v ndjson.Validator, l []byte) error { _, err := v.Check(l); return err }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(typical.bytes)
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				for _, f := range files {
					v := ndjson.Validator{WantType: f.typ}
					for _, l := range f.lines {
						if err := bc.check(v, l); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			b.ReportMetric(float64(typical.bytes)*float64(b.N)/(cpuTime()-cpu0).Seconds()/1e6, "MB/cpu-s")
		})
	}
}

// BenchmarkDownloadFileViews is BenchmarkDownloadFile with the three views
// of docs/views (the bench's "views" scenario, issue 17 §3): the files of a
// type some view reads take the lake path and are flattened while they
// stream; the others stay on the plain path.
//
//	go test -run - -bench DownloadFileViews -benchtime 3x ./activities
func BenchmarkDownloadFileViews(b *testing.B) {
	loadTypical(b)
	f := newFixture(b)
	f.acts.ViewsDir, _ = filepath.Abs("../docs/views")
	bodies := map[string][]byte{}
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		w.Write(bodies[r.URL.Path])
	})
	var plan []plannedFile
	for i, tf := range typical.files {
		p := fmt.Sprintf("/f/%d", i)
		bodies[p] = []byte(tf.body)
		plan = append(plan, plannedFile{Kind: KindOutput, Type: tf.typ, URL: f.srv.URL + p, Count: tf.count, HasCount: true,
			Path: fmt.Sprintf("%s/%s-%04d.ndjson", tf.typ, tf.typ, i)})
	}
	f.stage(plan...)
	names := []string{"patient_demographics", "blood_pressure", "condition_codings"}
	if err := f.acts.CheckTarget(context.Background(), CheckTargetInput{ServerRef: ServerRef{BaseURL: f.srv.URL}, Target: Target{Run: "run"}, Views: names}); err != nil {
		b.Fatal(err)
	}
	layout := Layout{Views: names}
	b.SetBytes(typical.bytes)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		for i := range plan {
			r, err := f.downloadWith(i, layout)
			if err != nil {
				b.Fatal(err)
			}
			if r.Resources != plan[i].Count {
				b.Fatalf("%s: %d resources, want %d", plan[i].Path, r.Resources, plan[i].Count)
			}
		}
		b.StopTimer()
		os.RemoveAll(filepath.Join(f.out, ".staging", "run", "data"))
		b.StartTimer()
	}
	b.ReportMetric(float64(typical.bytes)*float64(b.N)/(cpuTime()-cpu0).Seconds()/1e6, "MB/cpu-s")
}
