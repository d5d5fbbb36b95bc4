// Package bulkworker wires bulkflow's workflows and activities into a
// Temporal worker. The worker command and the demo share it.
package bulkworker

import (
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/workflows"
)

// WorkflowRegistry is what workers and replayers share.
type WorkflowRegistry interface {
	RegisterWorkflowWithOptions(w any, options workflow.RegisterOptions)
}

// RegisterWorkflows adds every workflow to w, under stable names that
// `temporal workflow start --type` and Schedules use.
func RegisterWorkflows(w WorkflowRegistry) {
	w.RegisterWorkflowWithOptions(workflows.BulkExportWorkflow, workflow.RegisterOptions{Name: "BulkExportWorkflow"})
	w.RegisterWorkflowWithOptions(workflows.DownloadChunkWorkflow, workflow.RegisterOptions{Name: "DownloadChunkWorkflow"})
}

// Register adds every workflow and the activities to w.
func Register(w worker.Registry, acts *activities.Activities) {
	RegisterWorkflows(w)
	w.RegisterActivity(acts)
}

// New returns a worker on taskQueue with bulkflow registered. maxActivities
// bounds concurrent activities (downloads) in this process.
func New(c client.Client, taskQueue string, acts *activities.Activities, maxActivities int) worker.Worker {
	if maxActivities <= 0 {
		maxActivities = 16
	}
	w := worker.New(c, taskQueue, worker.Options{
		MaxConcurrentActivityExecutionSize: maxActivities,
		// Let in-flight downloads notice the shutdown and stop cleanly; their
		// retries resume on another worker.
		WorkerStopTimeout: 30e9,
		// A cancelled download learns of it from its next heartbeat's
		// response: at most this long, so a cancelled export's cleanup
		// (which waits for its downloads) follows within seconds.
		MaxHeartbeatThrottleInterval: 5e9,
	})
	Register(w, acts)
	return w
}
