package testsuite

import (
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// cpuTime is this process's user+system CPU time (server and client both).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkServeNDJSON measures generating + serving uncompressed NDJSON
// over loopback HTTP (target: >= 300 MB/s per core).
func BenchmarkServeNDJSON(b *testing.B) {
	s := startServer(b, Options{Patients: 3000, ResourcesPerFile: 1 << 20, LargeAttachments: -1})
	m := poll(b, kickoff(b, req(b, "GET", s.BaseURL()+"/$export?_type=Observation", nil, kickHeaders...)))
	u := m.Output[0].URL
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	get := func() int64 {
		resp, err := c.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			b.Fatal(resp.StatusCode, err)
		}
		return n
	}
	size := get()
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		get()
	}
	// MB per CPU-second, client included: the wall-clock MB/s on a shared
	// 2-core box depends on neighbours; this is the per-core figure.
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(float64(size)*float64(b.N)/cpu.Seconds()/1e6, "MB/cpu-s")
	}
}
