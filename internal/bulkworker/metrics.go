package bulkworker

import (
	"context"
	"errors"
	"fmt"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/metrics"
	"github.com/bulkflow/bulkflow/workflows"
)

// metricsInterceptor records what only the worker sees as a whole: how an
// export ended (failed and cancelled too; the Commit activity records the
// committed ones) and every failed kick-off attempt.
type metricsInterceptor struct {
	interceptor.WorkerInterceptorBase
	rec *metrics.Recorder
}

// NewMetricsInterceptor returns the worker interceptor that records export
// outcomes and kick-off failures on rec (nil records nothing).
func NewMetricsInterceptor(rec *metrics.Recorder) interceptor.WorkerInterceptor {
	return &metricsInterceptor{rec: rec}
}

func (m *metricsInterceptor) InterceptWorkflow(ctx workflow.Context, next interceptor.WorkflowInboundInterceptor) interceptor.WorkflowInboundInterceptor {
	return &exportOutcome{WorkflowInboundInterceptorBase: interceptor.WorkflowInboundInterceptorBase{Next: next}, rec: m.rec}
}

func (m *metricsInterceptor) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &kickoffFailures{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, rec: m.rec}
}

type exportOutcome struct {
	interceptor.WorkflowInboundInterceptorBase
	rec *metrics.Recorder
}

func (e *exportOutcome) ExecuteWorkflow(ctx workflow.Context, in *interceptor.ExecuteWorkflowInput) (any, error) {
	res, err := e.Next.ExecuteWorkflow(ctx, in)
	if err == nil || workflow.GetInfo(ctx).WorkflowType.Name != ExportWorkflowName || workflow.IsReplaying(ctx) {
		return res, err // committed: recorded by the Commit activity
	}
	var can *workflow.ContinueAsNewError
	if errors.As(err, &can) {
		return res, err // not the end: the next run goes on
	}
	status := "failed"
	if temporal.IsCanceledError(err) {
		status = "cancelled"
	}
	var export workflows.ExportInput
	if len(in.Args) > 0 {
		switch v := in.Args[0].(type) {
		case workflows.ExportInput:
			export = v
		case *workflows.ExportInput:
			export = *v
		}
	}
	start := workflow.GetInfo(ctx).WorkflowStartTime
	if export.Resume != nil && !export.Resume.StartedAt.IsZero() {
		start = export.Resume.StartedAt // the first run's start, across continue-as-new
	}
	e.rec.ExportFinished(serverOf(export.Server, export.BaseURL), status, workflow.Now(ctx).Sub(start).Seconds())
	return res, err
}

type kickoffFailures struct {
	interceptor.ActivityInboundInterceptorBase
	rec *metrics.Recorder
}

func (k *kickoffFailures) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	res, err := k.Next.ExecuteActivity(ctx, in)
	if err == nil || len(in.Args) == 0 {
		return res, err
	}
	ki, ok := in.Args[0].(activities.KickoffInput)
	if !ok {
		return res, err
	}
	reason := "other"
	var ae *temporal.ApplicationError
	if errors.As(err, &ae) && ae.Type() != "" {
		reason = ae.Type()
	}
	k.rec.KickoffFailed(serverOf(ki.Server, ki.BaseURL), reason)
	return res, err
}

// serverOf is the name metrics get for a server: its configured name, or
// "url:BASE" (Recorder maps a configured base URL to its name).
func serverOf(name, baseURL string) string {
	if name != "" {
		return name
	}
	return "url:" + baseURL
}

// ExportWorkflowName is the name BulkExportWorkflow is registered under.
const ExportWorkflowName = "BulkExportWorkflow"

// RunningByPhase counts the namespace's running exports by phase in
// Temporal's visibility store (needs the ExportPhase search attribute,
// which `docker compose up` and the dev servers register).
func RunningByPhase(c client.Client) metrics.RunningCounter {
	phases := []string{workflows.PhaseKickoff, workflows.PhaseWaiting, workflows.PhaseDownloading,
		workflows.PhaseCommitting, workflows.PhaseCancelled, workflows.PhaseFailed}
	return func(ctx context.Context) (map[string]float64, error) {
		out := map[string]float64{}
		for _, p := range phases {
			q := fmt.Sprintf("WorkflowType = '%s' AND ExecutionStatus = 'Running' AND %s = '%s'", ExportWorkflowName, workflows.ExportPhaseKey.GetName(), p)
			resp, err := c.CountWorkflow(ctx, &workflowservice.CountWorkflowExecutionsRequest{Query: q})
			if err != nil {
				return nil, err
			}
			out[p] = float64(resp.GetCount())
		}
		return out, nil
	}
}
