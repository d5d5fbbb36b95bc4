// Package metrics exposes bulkflow's Prometheus metrics: what the export
// activities did (resources, bytes, retries, throttling, the download
// limiter, token refreshes, validation failures, export durations) and,
// on the same registry, the Temporal SDK's own metrics through its tally
// contrib. One /metrics handler serves both; see docs/metrics.md.
//
// A nil *Recorder is valid and records nothing, so tests and the demo need
// not set one.
//
// Label values are guarded: server labels are configured server names (an
// unconfigured server's "url:BASE" name is cut to "url:HOST", never a path,
// query or user info), resource types are FHIR resource type names only,
// and every other label takes short tokens up to a small number of distinct
// values; anything else is recorded as "other".
package metrics

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/uber-go/tally/v4"
	tallyprom "github.com/uber-go/tally/v4/prometheus"
	"go.temporal.io/sdk/client"
	sdktally "go.temporal.io/sdk/contrib/tally"

	"github.com/bulkflow/bulkflow/internal/fhirtypes"
)

// Other is the label value that stands for anything the guards refuse.
const Other = "other"

// Distinct values a label may take before further new values become Other.
const (
	maxServers  = 64
	maxReasons  = 32
	maxEndpoint = 16
	maxStatus   = 16
	maxTokenLen = 64
)

// exportBuckets suit exports that run from seconds to days (seconds).
var exportBuckets = []float64{
	10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 2 * 3600, 4 * 3600,
	8 * 3600, 16 * 3600, 24 * 3600, 48 * 3600, 96 * 3600,
}

// sdkBuckets are the histogram buckets of the Temporal SDK's timers
// (seconds): request latencies are milliseconds, while bulkflow's download
// activities run for minutes to hours.
var sdkBuckets = []float64{
	0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
	300, 900, 3600, 4 * 3600,
}

// Recorder records bulkflow's metrics on its own Prometheus registry.
// Its methods are safe for concurrent use and on a nil *Recorder.
type Recorder struct {
	reg *prometheus.Registry

	files      *prometheus.CounterVec
	resources  *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	retries    *prometheus.CounterVec
	throttled  *prometheus.CounterVec
	limit      *prometheus.GaugeVec
	inFlight   *prometheus.GaugeVec
	tokens     *prometheus.CounterVec
	validation *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	lastCommit *prometheus.GaugeVec
	kickoffErr *prometheus.CounterVec
	sdkErrors  prometheus.Counter

	aliasMu sync.RWMutex
	aliases map[string]string // normalised base URL -> configured server name

	mu   sync.Mutex
	seen map[string]map[string]bool // label -> values admitted so far

	sdkOnce     sync.Once
	sdkInterval time.Duration // how often tally hands SDK metrics to the registry
	sdk         client.MetricsHandler
	sdkCloser   interface{ Close() error }
}

// New returns a Recorder with every bulkflow metric registered, plus the Go
// runtime and process collectors.
func New() *Recorder {
	r := &Recorder{
		reg:         prometheus.NewRegistry(),
		seen:        map[string]map[string]bool{},
		sdkInterval: time.Second,
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}
	r.files = counter("bulkflow_files_downloaded_total", "Export files downloaded, validated and stored completely.", "server", "type")
	r.resources = counter("bulkflow_resources_total", "FHIR resources (NDJSON lines) in completely downloaded files.", "server", "type")
	r.bytes = counter("bulkflow_bytes_total", "Bytes of completely downloaded export files.", "server", "type")
	r.retries = counter("bulkflow_file_retries_total", "Failed file download attempts that will be retried, by error type.", "server", "reason")
	r.throttled = counter("bulkflow_throttled_total", "HTTP 429 or 503 responses from a FHIR server, by endpoint (kickoff, status, file).", "server", "endpoint")
	r.limit = gauge("bulkflow_download_concurrency_limit", "Current concurrent-download limit of a server's adaptive (AIMD) limiter.", "server")
	r.inFlight = gauge("bulkflow_downloads_in_flight", "File downloads running against a server now.", "server")
	r.tokens = counter("bulkflow_token_refreshes_total", "Access tokens obtained (SMART Backend Services) for a server.", "server")
	r.validation = counter("bulkflow_validation_failures_total", "Downloaded files that failed validation, by reason (truncated, invalid_json, wrong_type, count_mismatch).", "server", "reason")
	r.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "bulkflow_export_duration_seconds",
		Help:    "Wall time of finished exports, from start to the final status, by status (committed, failed, cancelled).",
		Buckets: exportBuckets,
	}, []string{"server", "status"})
	r.lastCommit = gauge("bulkflow_last_commit_timestamp_seconds", "Unix time of the last export of a server that committed (alert on time() minus this).", "server")
	r.kickoffErr = counter("bulkflow_kickoff_failures_total", "Failed kick-off attempts of exports, by error type (retried or final).", "server", "reason")
	r.sdkErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bulkflow_sdk_metric_errors_total",
		Help: "Temporal SDK metrics that could not be registered (a name reused with other labels); those metrics are dropped.",
	})
	r.reg.MustRegister(r.files, r.resources, r.bytes, r.retries, r.throttled, r.limit, r.inFlight,
		r.tokens, r.validation, r.duration, r.lastCommit, r.kickoffErr, r.sdkErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Registry is the registry behind Handler, for callers that add their own
// collectors. Nil for a nil Recorder.
func (r *Recorder) Registry() *prometheus.Registry {
	if r == nil {
		return nil
	}
	return r.reg
}

// Handler serves the registry in the Prometheus exposition formats (mount
// it at /metrics). A nil Recorder's handler answers 404.
func (r *Recorder) Handler() http.Handler {
	if r == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		Registry:            r.reg, // promhttp_metric_handler_errors_total
		ErrorHandling:       promhttp.ContinueOnError,
		Timeout:             10 * time.Second,
		MaxRequestsInFlight: 4,
	})
}

// Mux serves Handler at /metrics and a liveness check at /healthz (200
// "ok": the process is up and serving). The worker listens with it on
// -metrics-addr.
func (r *Recorder) Mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", r.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	return mux
}

// FileDownloaded counts one completely downloaded file of a resource type
// with its resources (lines) and bytes.
func (r *Recorder) FileDownloaded(server, resourceType string, resources, bytes int64) {
	if r == nil {
		return
	}
	s, t := r.server(server), resourceTypeLabel(resourceType)
	r.files.WithLabelValues(s, t).Inc()
	r.resources.WithLabelValues(s, t).Add(nonNegative(resources))
	r.bytes.WithLabelValues(s, t).Add(nonNegative(bytes))
}

// FileRetried counts a failed download attempt that will be retried; reason
// is the error type, e.g. "TruncatedFile", "RateLimited", "Transient".
func (r *Recorder) FileRetried(server, reason string) {
	if r == nil {
		return
	}
	r.retries.WithLabelValues(r.server(server), r.token("retry_reason", reason, maxReasons)).Inc()
}

// Throttled counts a 429 or 503 from a server; endpoint is "kickoff",
// "status" or "file".
func (r *Recorder) Throttled(server, endpoint string) {
	if r == nil {
		return
	}
	r.throttled.WithLabelValues(r.server(server), r.token("endpoint", endpoint, maxEndpoint)).Inc()
}

// SetConcurrency reports a server's AIMD limiter: its current limit and the
// downloads in flight.
func (r *Recorder) SetConcurrency(server string, limit, inflight int) {
	if r == nil {
		return
	}
	s := r.server(server)
	r.limit.WithLabelValues(s).Set(float64(limit))
	r.inFlight.WithLabelValues(s).Set(float64(inflight))
}

// TokenRefreshed counts an access token obtained for a server.
func (r *Recorder) TokenRefreshed(server string) {
	if r == nil {
		return
	}
	r.tokens.WithLabelValues(r.server(server)).Inc()
}

// ValidationFailed counts a file that failed validation; reason is
// "truncated", "invalid_json", "wrong_type" or "count_mismatch".
func (r *Recorder) ValidationFailed(server, reason string) {
	if r == nil {
		return
	}
	r.validation.WithLabelValues(r.server(server), r.token("validation_reason", reason, maxReasons)).Inc()
}

// ExportFinished observes the duration of a finished export with its final
// status ("committed", "failed", "cancelled"); a committed one also sets the
// server's last-commit time.
func (r *Recorder) ExportFinished(server, status string, seconds float64) {
	if r == nil {
		return
	}
	if seconds < 0 {
		seconds = 0
	}
	s := r.server(server)
	r.duration.WithLabelValues(s, r.token("status", status, maxStatus)).Observe(seconds)
	if status == "committed" {
		r.lastCommit.WithLabelValues(s).Set(float64(time.Now().Unix()))
	}
}

// KickoffFailed counts a failed kick-off attempt; reason is the error type,
// e.g. "Transient", "Unauthorized", "BadRequest".
func (r *Recorder) KickoffFailed(server, reason string) {
	if r == nil {
		return
	}
	r.kickoffErr.WithLabelValues(r.server(server), r.token("kickoff_reason", reason, maxReasons)).Inc()
}

// AliasServer makes a configured server's base URL count under its name, so
// an export that gives the URL and one that names the server share a label.
func (r *Recorder) AliasServer(baseURL, name string) {
	if r == nil || baseURL == "" || name == "" {
		return
	}
	r.aliasMu.Lock()
	defer r.aliasMu.Unlock()
	if r.aliases == nil {
		r.aliases = map[string]string{}
	}
	r.aliases[normalBase(baseURL)] = name
}

// normalBase compares base URLs as servers.sameBase does: scheme and host
// case-insensitive, no trailing slash.
func normalBase(s string) string {
	u, err := url.Parse(strings.TrimRight(s, "/"))
	if err != nil {
		return s
	}
	u.Scheme, u.Host, u.User = strings.ToLower(u.Scheme), strings.ToLower(u.Host), nil
	u.RawQuery, u.Fragment = "", ""
	return u.String()
}

// RunningCounter counts running exports by phase, e.g. from Temporal's
// visibility store; see CountRunningExports.
type RunningCounter func(ctx context.Context) (map[string]float64, error)

// CountRunningExports adds bulkflow_exports_running{phase}, asked of count
// at scrape time (at most every 15 s, bounded by 10 s). Phases count every
// export of the namespace, not only this worker's: every worker reports the
// same values (aggregate with max, not sum).
func (r *Recorder) CountRunningExports(count RunningCounter) {
	if r == nil || count == nil {
		return
	}
	r.reg.MustRegister(&runningCollector{count: count, desc: prometheus.NewDesc("bulkflow_exports_running",
		"Exports running now in the namespace, by phase (kickoff, waiting, downloading, committing, ...); the same on every worker.", []string{"phase"}, nil)})
}

type runningCollector struct {
	count RunningCounter
	desc  *prometheus.Desc

	mu   sync.Mutex
	at   time.Time
	last map[string]float64
}

func (c *runningCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *runningCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil || time.Since(c.at) > 15*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m, err := c.count(ctx)
		cancel()
		if err == nil {
			c.last, c.at = m, time.Now()
		}
	}
	for phase, n := range c.last {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, n, phase)
	}
}

// TemporalMetricsHandler returns the handler to set as
// client.Options.MetricsHandler: the Temporal SDK's metrics (temporal_*),
// through go.temporal.io/sdk/contrib/tally and tally's Prometheus reporter,
// land on this Recorder's registry and so on the same /metrics. Counters get
// a _total suffix and timers are histograms in seconds, as in Temporal's
// own samples. Values reach the registry within a second. Call Close when
// done. A nil Recorder returns client.MetricsNopHandler.
func (r *Recorder) TemporalMetricsHandler() client.MetricsHandler {
	if r == nil {
		return client.MetricsNopHandler
	}
	r.sdkOnce.Do(func() {
		reporter := tallyprom.NewReporter(tallyprom.Options{
			Registerer:              r.reg,
			DefaultTimerType:        tallyprom.HistogramTimerType,
			DefaultHistogramBuckets: sdkBuckets,
			// The default panics; a clash must never take the worker down.
			OnRegisterError: func(error) { r.sdkErrors.Inc() },
		})
		scope, closer := tally.NewRootScope(tally.ScopeOptions{
			CachedReporter:  reporter,
			Separator:       tallyprom.DefaultSeparator,
			SanitizeOptions: &sdktally.PrometheusSanitizeOptions,
		}, r.sdkInterval)
		r.sdkCloser = closer
		r.sdk = sdktally.NewMetricsHandler(sdktally.NewPrometheusNamingScope(scope))
	})
	if r.sdk == nil { // after Close
		return client.MetricsNopHandler
	}
	return r.sdk
}

// Close stops the SDK metrics' reporting loop after a last report. The
// Recorder's own metrics keep working. Safe on nil and more than once.
func (r *Recorder) Close() error {
	if r == nil {
		return nil
	}
	r.sdkOnce.Do(func() {}) // no handler made after Close
	r.mu.Lock()
	c := r.sdkCloser
	r.sdkCloser = nil
	r.mu.Unlock()
	if c == nil {
		return nil
	}
	return c.Close()
}

func nonNegative(n int64) float64 {
	if n < 0 {
		return 0
	}
	return float64(n)
}

// resourceTypeLabel admits FHIR resource type names only.
func resourceTypeLabel(t string) string {
	if fhirtypes.Known(t) {
		return t
	}
	return Other
}

// server turns a server name into its label: configured names as they are;
// an unconfigured server's "url:BASE" (or any URL) only as "url:HOST", so
// credentials, paths and query strings never reach a label.
func (r *Recorder) server(name string) string {
	if rest, ok := strings.CutPrefix(name, "url:"); ok || strings.Contains(name, "://") {
		if !ok {
			rest = name
		}
		r.aliasMu.RLock()
		alias, found := r.aliases[normalBase(rest)]
		r.aliasMu.RUnlock()
		if found {
			return r.token("server", alias, maxServers)
		}
		u, err := url.Parse(rest)
		if err != nil || u.Host == "" {
			return Other
		}
		name = "url:" + u.Host // Host excludes user info
	}
	return r.token("server", name, maxServers)
}

// token (label is a key of r.seen) admits short values of [A-Za-z0-9_.:-] and at most max distinct
// values per label; anything else is Other. Empty is "unknown".
func (r *Recorder) token(label, v string, max int) string {
	if v == "" {
		return "unknown"
	}
	if len(v) > maxTokenLen {
		return Other
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == ':' || c == '-') {
			return Other
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := r.seen[label]
	if seen == nil {
		seen = map[string]bool{}
		r.seen[label] = seen
	}
	if !seen[v] {
		if len(seen) >= max {
			return Other
		}
		seen[v] = true
	}
	return v
}
