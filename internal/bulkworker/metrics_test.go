package bulkworker

import (
	"context"
	"errors"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/metrics"
	"github.com/bulkflow/bulkflow/workflows"
)

// gathered finds a series' value (a histogram's count) in rec's registry.
func gathered(t *testing.T, rec *metrics.Recorder, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := rec.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue next
				}
			}
			return value(m)
		}
	}
	return 0
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// §6: failed and cancelled exports are observed in
// bulkflow_export_duration_seconds{status}, and failed kick-offs counted, by
// the worker's interceptor; a server given by URL counts under its name.
func TestMetricsInterceptor(t *testing.T) {
	for _, tc := range []struct {
		name, status string
		fail         func(ctx workflow.Context) error
	}{
		{"failed", "failed", func(ctx workflow.Context) error {
			ao := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute,
				RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 2, InitialInterval: time.Second}})
			return workflow.ExecuteActivity(ao, "Kickoff", activities.KickoffInput{ServerRef: activities.ServerRef{BaseURL: "https://EHR.example.org/fhir/"}}).Get(ctx, nil)
		}},
		{"cancelled", "cancelled", func(ctx workflow.Context) error {
			return temporal.NewCanceledError()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := metrics.New()
			rec.AliasServer("https://ehr.example.org/fhir", "epic")
			var s testsuite.WorkflowTestSuite
			env := s.NewTestWorkflowEnvironment()
			env.SetWorkerOptions(worker.Options{Interceptors: []interceptor.WorkerInterceptor{NewMetricsInterceptor(rec)}})
			env.RegisterWorkflowWithOptions(func(ctx workflow.Context, in workflows.ExportInput) error {
				workflow.Sleep(ctx, time.Hour)
				return tc.fail(ctx)
			}, workflow.RegisterOptions{Name: ExportWorkflowName})
			env.RegisterActivityWithOptions(func(ctx context.Context, in activities.KickoffInput) error {
				return temporal.NewApplicationError("connection refused", "Transient")
			}, activity.RegisterOptions{Name: "Kickoff"})
			env.ExecuteWorkflow(ExportWorkflowName, workflows.ExportInput{BaseURL: "https://ehr.example.org/fhir"})
			if err := env.GetWorkflowError(); err == nil {
				t.Fatal("the workflow did not fail")
			}
			if n := gathered(t, rec, "bulkflow_export_duration_seconds", map[string]string{"server": "epic", "status": tc.status}); n != 1 {
				t.Errorf("bulkflow_export_duration_seconds{server=epic,status=%s} count = %v, want 1", tc.status, n)
			}
			if tc.status == "failed" {
				if n := gathered(t, rec, "bulkflow_kickoff_failures_total", map[string]string{"server": "epic", "reason": "Transient"}); n != 2 {
					t.Errorf("kick-off failures = %v, want 2 (both attempts)", n)
				}
			}
		})
	}
}

// The gauge of running exports by phase comes from the counter given.
func TestRunningExportsGauge(t *testing.T) {
	rec := metrics.New()
	rec.CountRunningExports(func(context.Context) (map[string]float64, error) {
		return map[string]float64{"downloading": 3, "waiting": 1}, nil
	})
	if n := gathered(t, rec, "bulkflow_exports_running", map[string]string{"phase": "downloading"}); n != 3 {
		t.Errorf("downloading = %v", n)
	}
	failing := metrics.New()
	failing.CountRunningExports(func(context.Context) (map[string]float64, error) { return nil, errors.New("visibility down") })
	if _, err := failing.Registry().Gather(); err != nil {
		t.Errorf("a failing count breaks the scrape: %v", err)
	}
}
