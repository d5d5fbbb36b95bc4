package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// scrape GETs /metrics from the Recorder's mux, as Prometheus would, and
// parses the text exposition.
func scrape(t *testing.T, r *Recorder) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(r.Mux())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse exposition: %v", err)
	}
	return fams
}

// series finds the metric of a family with exactly these labels.
func series(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (*dto.Metric, bool) {
	f, ok := fams[name]
	if !ok {
		return nil, false
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		return m, true
	}
	return nil, false
}

// value is a counter's, gauge's or untyped metric's value, or a histogram's
// sample count.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	m, ok := series(fams, name, labels)
	if !ok {
		t.Fatalf("no series %s%v in the scrape (families: %d)", name, labels, len(fams))
	}
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	t.Fatalf("%s%v: unexpected metric kind", name, labels)
	return 0
}

func TestRecorderMethods(t *testing.T) {
	r := New()
	r.FileDownloaded("epic", "Patient", 100, 4096)
	r.FileDownloaded("epic", "Patient", 50, 1024)
	r.FileDownloaded("epic", "Observation", 7, 700)
	r.FileRetried("epic", "TruncatedFile")
	r.FileRetried("epic", "RateLimited")
	r.FileRetried("epic", "RateLimited")
	r.Throttled("epic", "kickoff")
	r.Throttled("epic", "file")
	r.Throttled("epic", "file")
	r.SetConcurrency("epic", 8, 3)
	r.SetConcurrency("epic", 4, 4) // a gauge: the last value counts
	r.TokenRefreshed("epic")
	r.TokenRefreshed("cerner")
	r.ValidationFailed("epic", "invalid_json")
	r.ExportFinished("epic", "completed", 5400)
	r.ExportFinished("epic", "completed", 120)
	r.ExportFinished("epic", "failed", 30)

	fams := scrape(t, r)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"bulkflow_files_downloaded_total", map[string]string{"server": "epic", "type": "Patient"}, 2},
		{"bulkflow_resources_total", map[string]string{"server": "epic", "type": "Patient"}, 150},
		{"bulkflow_resources_total", map[string]string{"server": "epic", "type": "Observation"}, 7},
		{"bulkflow_bytes_total", map[string]string{"server": "epic", "type": "Patient"}, 5120},
		{"bulkflow_bytes_total", map[string]string{"server": "epic", "type": "Observation"}, 700},
		{"bulkflow_file_retries_total", map[string]string{"server": "epic", "reason": "TruncatedFile"}, 1},
		{"bulkflow_file_retries_total", map[string]string{"server": "epic", "reason": "RateLimited"}, 2},
		{"bulkflow_throttled_total", map[string]string{"server": "epic", "endpoint": "kickoff"}, 1},
		{"bulkflow_throttled_total", map[string]string{"server": "epic", "endpoint": "file"}, 2},
		{"bulkflow_download_concurrency_limit", map[string]string{"server": "epic"}, 4},
		{"bulkflow_downloads_in_flight", map[string]string{"server": "epic"}, 4},
		{"bulkflow_token_refreshes_total", map[string]string{"server": "epic"}, 1},
		{"bulkflow_token_refreshes_total", map[string]string{"server": "cerner"}, 1},
		{"bulkflow_validation_failures_total", map[string]string{"server": "epic", "reason": "invalid_json"}, 1},
		{"bulkflow_export_duration_seconds", map[string]string{"server": "epic", "status": "completed"}, 2},
		{"bulkflow_export_duration_seconds", map[string]string{"server": "epic", "status": "failed"}, 1},
	} {
		if got := value(t, fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	m, _ := series(fams, "bulkflow_export_duration_seconds", map[string]string{"server": "epic", "status": "completed"})
	if got := m.GetHistogram().GetSampleSum(); got != 5520 {
		t.Errorf("export duration sum = %v, want 5520", got)
	}
	if f := fams["bulkflow_export_duration_seconds"]; f.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("bulkflow_export_duration_seconds is a %v", f.GetType())
	}
	// Nothing recorded, no series.
	if _, ok := series(fams, "bulkflow_validation_failures_total", map[string]string{"server": "cerner", "reason": "invalid_json"}); ok {
		t.Error("a series nobody recorded")
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("no go_goroutines: the Go runtime collector is missing")
	}
}

func TestNilRecorderIsSafe(t *testing.T) {
	var r *Recorder
	r.FileDownloaded("s", "Patient", 1, 1)
	r.FileRetried("s", "Transient")
	r.Throttled("s", "status")
	r.SetConcurrency("s", 1, 1)
	r.TokenRefreshed("s")
	r.ValidationFailed("s", "truncated")
	r.ExportFinished("s", "completed", 1)
	if r.Registry() != nil {
		t.Error("nil Recorder has a registry")
	}
	h := r.TemporalMetricsHandler()
	if h == nil {
		t.Fatal("nil Recorder's SDK handler is nil; want a no-op handler")
	}
	h.WithTags(map[string]string{"a": "b"}).Counter("c").Inc(1)
	h.Gauge("g").Update(1)
	h.Timer("t").Record(time.Second)
	if err := r.Close(); err != nil {
		t.Error(err)
	}
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("nil Recorder's handler: %d", rec.Code)
	}
}

func TestLabelGuards(t *testing.T) {
	r := New()
	// Resource types: FHIR resource type names only.
	for _, typ := range []string{"patient", "Patient/123", "../../etc", "MyCustomThing", "", strings.Repeat("A", 300)} {
		r.FileDownloaded("epic", typ, 1, 10)
	}
	r.FileDownloaded("epic", "MedicationRequest", 1, 10)
	r.FileDownloaded("epic", "SubscriptionTopic", 1, 10) // R5

	// Servers: never a URL's credentials, path or query.
	r.TokenRefreshed("url:https://user:secret@fhir.example.org:8443/r4/Patient?_token=abc")
	r.TokenRefreshed("https://other.example.org/fhir?patient=123")
	r.TokenRefreshed("has space")

	// Other labels: tokens, and only so many distinct values.
	for i := range 100 {
		r.FileRetried("epic", fmt.Sprintf("Reason%d", i))
	}
	r.ValidationFailed("epic", "wrong_type") // its own budget, not the retries'
	r.Throttled("epic", "file?x=1")
	r.ExportFinished("epic", "", 1)

	fams := scrape(t, r)
	if got := value(t, fams, "bulkflow_resources_total", map[string]string{"server": "epic", "type": Other}); got != 6 {
		t.Errorf("type=other: %v, want 6", got)
	}
	for _, typ := range []string{"MedicationRequest", "SubscriptionTopic"} {
		value(t, fams, "bulkflow_resources_total", map[string]string{"server": "epic", "type": typ})
	}
	if n := len(fams["bulkflow_resources_total"].GetMetric()); n != 3 {
		t.Errorf("bulkflow_resources_total has %d series, want 3", n)
	}

	value(t, fams, "bulkflow_token_refreshes_total", map[string]string{"server": "url:fhir.example.org:8443"})
	value(t, fams, "bulkflow_token_refreshes_total", map[string]string{"server": "url:other.example.org"})
	value(t, fams, "bulkflow_token_refreshes_total", map[string]string{"server": Other})

	retries := fams["bulkflow_file_retries_total"].GetMetric()
	if len(retries) != maxReasons+1 {
		t.Errorf("file_retries has %d series, want %d reasons + other", len(retries), maxReasons)
	}
	if got := value(t, fams, "bulkflow_file_retries_total", map[string]string{"server": "epic", "reason": Other}); got != 100-maxReasons {
		t.Errorf("reason=other: %v", got)
	}
	value(t, fams, "bulkflow_validation_failures_total", map[string]string{"server": "epic", "reason": "wrong_type"})
	value(t, fams, "bulkflow_throttled_total", map[string]string{"server": "epic", "endpoint": Other})
	value(t, fams, "bulkflow_export_duration_seconds", map[string]string{"server": "epic", "status": "unknown"})

	// No label value anywhere holds what must never be there.
	text := scrapeText(t, r)
	for _, bad := range []string{"secret", "user:", "_token=", "patient=123", "Patient/123", "/r4"} {
		if strings.Contains(text, bad) {
			t.Errorf("exposition contains %q", bad)
		}
	}
}

func scrapeText(t *testing.T, r *Recorder) string {
	t.Helper()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestHealthz(t *testing.T) {
	rec := httptest.NewRecorder()
	New().Mux().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != "ok" {
		t.Errorf("/healthz: %d %q", rec.Code, rec.Body.String())
	}
}

// eventually scrapes until cond holds (the SDK's metrics reach the registry
// on tally's reporting interval).
func eventually(t *testing.T, r *Recorder, what string, cond func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams := scrape(t, r)
		if cond(fams) {
			return fams
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in the scrape after 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTemporalMetricsOnSameRegistry(t *testing.T) {
	r := New()
	r.sdkInterval = 10 * time.Millisecond
	defer r.Close()
	h := r.TemporalMetricsHandler()
	if h != r.TemporalMetricsHandler() {
		t.Error("a second SDK handler")
	}
	tagged := h.WithTags(map[string]string{"namespace": "default", "task_queue": "q"})
	tagged.Counter("temporal_request").Inc(2)
	tagged.Timer("temporal_request_latency").Record(30 * time.Millisecond)
	tagged.Gauge("temporal_worker_task_slots_available").Update(5)
	r.FileDownloaded("epic", "Patient", 1, 1)

	labels := map[string]string{"namespace": "default", "task_queue": "q"}
	fams := eventually(t, r, "temporal_request_total", func(f map[string]*dto.MetricFamily) bool {
		m, ok := series(f, "temporal_request_total", labels)
		return ok && m.GetCounter().GetValue() == 2
	})
	if f := fams["temporal_request_latency_seconds"]; f.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("SDK timer is a %v, want a histogram in seconds", f.GetType())
	} else if m, _ := series(fams, "temporal_request_latency_seconds", labels); m.GetHistogram().GetSampleCount() != 1 {
		t.Errorf("SDK timer samples: %v", m)
	}
	if got := value(t, fams, "temporal_worker_task_slots_available", labels); got != 5 {
		t.Errorf("SDK gauge = %v", got)
	}
	// One handler, both kinds.
	value(t, fams, "bulkflow_files_downloaded_total", map[string]string{"server": "epic", "type": "Patient"})

	// The same SDK metric name with other tag keys must not panic the
	// worker: it is dropped and counted.
	h.Counter("temporal_clash").Inc(1)
	h.WithTags(map[string]string{"extra": "x"}).Counter("temporal_clash").Inc(1)
	eventually(t, r, "bulkflow_sdk_metric_errors_total > 0", func(f map[string]*dto.MetricFamily) bool {
		m, ok := series(f, "bulkflow_sdk_metric_errors_total", map[string]string{})
		return ok && m.GetCounter().GetValue() > 0
	})

	if err := r.Close(); err != nil {
		t.Error(err)
	}
	if err := r.Close(); err != nil {
		t.Error("second Close:", err)
	}
}

// The real SDK hands the handler to workflow code (wrapped to skip replays)
// and what workflow code records reaches /metrics. (The SDK's test
// environment emits no temporal_* metrics of its own; a worker against a dev
// server does, see docs/metrics.md.)
func TestTemporalSDKEmitsThroughHandler(t *testing.T) {
	r := New()
	r.sdkInterval = 10 * time.Millisecond
	defer r.Close()
	var s testsuite.WorkflowTestSuite
	s.SetMetricsHandler(r.TemporalMetricsHandler())
	env := s.NewTestWorkflowEnvironment()
	hello := func(ctx workflow.Context) (string, error) {
		workflow.GetMetricsHandler(ctx).Counter("bulkflow_test_workflow_counter").Inc(1)
		return "hi", nil
	}
	env.RegisterWorkflowWithOptions(hello, workflow.RegisterOptions{Name: "hello"})
	env.ExecuteWorkflow("hello")
	if !env.IsWorkflowCompleted() || env.GetWorkflowError() != nil {
		t.Fatalf("workflow: %v", env.GetWorkflowError())
	}
	eventually(t, r, "a workflow's counter", func(f map[string]*dto.MetricFamily) bool {
		m, ok := series(f, "bulkflow_test_workflow_counter_total", map[string]string{})
		return ok && m.GetCounter().GetValue() == 1
	})
	fams := scrape(t, r)
	if m, ok := series(fams, "bulkflow_sdk_metric_errors_total", map[string]string{}); ok && m.GetCounter().GetValue() != 0 {
		t.Errorf("SDK metrics clashed: %v", m.GetCounter().GetValue())
	}
}

// §6: a committed export sets its server's last-commit time, a failed one
// does not; a server's base URL counts under its configured name.
func TestLastCommitAndOneLabelPerServer(t *testing.T) {
	r := New()
	r.AliasServer("https://ehr.example.org/fhir/", "epic")
	before := float64(time.Now().Unix())
	r.ExportFinished("url:https://EHR.example.org/fhir", "committed", 10)
	r.ExportFinished("epic", "failed", 5)
	r.ExportFinished("url:https://other.example.org/fhir", "failed", 5)
	r.KickoffFailed("https://ehr.example.org/fhir", "Transient")
	fams := scrape(t, r)
	if v := value(t, fams, "bulkflow_last_commit_timestamp_seconds", map[string]string{"server": "epic"}); v < before {
		t.Errorf("last commit %v, want at least %v", v, before)
	}
	if _, ok := series(fams, "bulkflow_last_commit_timestamp_seconds", map[string]string{"server": "url:other.example.org"}); ok {
		t.Error("a failed export set the last-commit time")
	}
	for _, status := range []string{"committed", "failed"} {
		if v := value(t, fams, "bulkflow_export_duration_seconds", map[string]string{"server": "epic", "status": status}); v != 1 {
			t.Errorf("duration{epic,%s} count %v", status, v)
		}
	}
	if v := value(t, fams, "bulkflow_kickoff_failures_total", map[string]string{"server": "epic", "reason": "Transient"}); v != 1 {
		t.Errorf("kick-off failures %v", v)
	}
}
