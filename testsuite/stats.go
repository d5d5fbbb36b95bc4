package testsuite

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"
)

// Stats are counters a test can assert on (also GET /_admin/stats as JSON).
type Stats struct {
	// Requests per endpoint kind: kickoff, status, file, delete, token,
	// metadata, wellknown, storage (redirect target), capability, admin, other.
	Requests map[string]int64 `json:"requests"`
	// StatusCodes per endpoint kind and HTTP status (0 = connection dropped/reset).
	StatusCodes map[string]map[int]int64 `json:"statusCodes"`
	// BytesServed counts all response body bytes; FileBytesServed only
	// download bodies (file, storage, capability), as sent (compressed or not).
	BytesServed     int64 `json:"bytesServed"`
	FileBytesServed int64 `json:"fileBytesServed"`
	// FilesServed counts complete download bodies (not truncated, reset or partial ranges).
	FilesServed int64 `json:"filesServed"`
	// ConcurrentDownloadsHighWater is the most file downloads in flight at once.
	ConcurrentDownloadsHighWater int64 `json:"concurrentDownloadsHighWater"`
	// DownloadsRejected counts 429s from MaxConcurrentDownloads.
	DownloadsRejected int64 `json:"downloadsRejected"`
	// Kickoffs counts exports started (202 responses to kickoffs).
	Kickoffs int64 `json:"kickoffs"`
	// AuthHeaderOnCapabilityURL counts Authorization headers sent to
	// requiresAccessToken=false capability URLs (BD3 L701: SHALL NOT).
	AuthHeaderOnCapabilityURL int64 `json:"authHeaderOnCapabilityURL"`
	// AuthHeaderForwardedOnRedirect counts Authorization headers that reached
	// the second ("object storage") listener after a 307.
	AuthHeaderForwardedOnRedirect int64 `json:"authHeaderForwardedOnRedirect"`
	// AuthHeaderOnSecondOrigin counts Authorization headers that reached
	// the second listener's attachments (/_attach/); AttachmentsServed
	// counts Binary bodies sent whole (attachments.go).
	AuthHeaderOnSecondOrigin int64 `json:"authHeaderOnSecondOrigin"`
	AttachmentsServed        int64 `json:"attachmentsServed"`
	// RangeRequests counts 206 responses.
	RangeRequests int64 `json:"rangeRequests"`
	// IfRangeMismatches counts Range requests answered with the whole file
	// because their If-Range named another version (RFC 9110 13.1.5).
	IfRangeMismatches int64 `json:"ifRangeMismatches"`
	// FaultsFired counts fault rules fired, by rule text.
	FaultsFired map[string]int64 `json:"faultsFired"`
	// FirstDownloadAt is when the first file request since the last reset
	// arrived (benchmarks time downloads from it).
	FirstDownloadAt time.Time `json:"firstDownloadAt,omitzero"`
}

type statsCollector struct {
	mu       sync.Mutex
	s        Stats
	inflight int64
}

func newStats() *statsCollector {
	c := &statsCollector{}
	c.reset()
	return c
}

func (c *statsCollector) reset() {
	c.mu.Lock()
	c.s = Stats{Requests: map[string]int64{}, StatusCodes: map[string]map[int]int64{}, FaultsFired: map[string]int64{}}
	c.s.ConcurrentDownloadsHighWater = c.inflight
	c.mu.Unlock()
}

func (c *statsCollector) add(f func(s *Stats)) {
	c.mu.Lock()
	f(&c.s)
	c.mu.Unlock()
}

func (c *statsCollector) fault(text string) { c.add(func(s *Stats) { s.FaultsFired[text]++ }) }

// download tracks one in-flight download; it returns the current count.
func (c *statsCollector) downloadStart() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight++
	if c.s.FirstDownloadAt.IsZero() {
		c.s.FirstDownloadAt = time.Now()
	}
	if c.inflight > c.s.ConcurrentDownloadsHighWater {
		c.s.ConcurrentDownloadsHighWater = c.inflight
	}
	return c.inflight
}

func (c *statsCollector) downloadEnd() {
	c.mu.Lock()
	c.inflight--
	c.mu.Unlock()
}

func (c *statsCollector) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.s
	out.Requests = make(map[string]int64, len(c.s.Requests))
	for k, v := range c.s.Requests {
		out.Requests[k] = v
	}
	out.StatusCodes = make(map[string]map[int]int64, len(c.s.StatusCodes))
	for k, m := range c.s.StatusCodes {
		mm := make(map[int]int64, len(m))
		for code, n := range m {
			mm[code] = n
		}
		out.StatusCodes[k] = mm
	}
	out.FaultsFired = make(map[string]int64, len(c.s.FaultsFired))
	for k, v := range c.s.FaultsFired {
		out.FaultsFired[k] = v
	}
	return out
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// ResetStats zeroes the counters (in-flight downloads stay counted).
func (s *Server) ResetStats() { s.stats.reset() }

// recorder captures status and body size for stats and logs. It forwards
// Flush and Hijack (via Unwrap for http.ResponseController) because the
// slow and reset faults need them.
type recorder struct {
	http.ResponseWriter
	status   int
	bytes    int64
	hijacked bool
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = 200
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	r.hijacked = true
	return http.NewResponseController(r.ResponseWriter).Hijack()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
