// Package bulkworker wires bulkflow's workflows and activities into a
// Temporal worker. The worker command and the demo share it.
package bulkworker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/budget"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/workflows"
)

// WorkflowRegistry is what workers and replayers share.
type WorkflowRegistry interface {
	RegisterWorkflowWithOptions(w any, options workflow.RegisterOptions)
}

// RegisterWorkflows adds every workflow to w, under stable names that
// `temporal workflow start --type` and Schedules use.
func RegisterWorkflows(w WorkflowRegistry) {
	w.RegisterWorkflowWithOptions(workflows.BulkExportWorkflow, workflow.RegisterOptions{Name: ExportWorkflowName})
	w.RegisterWorkflowWithOptions(workflows.DownloadChunkWorkflow, workflow.RegisterOptions{Name: "DownloadChunkWorkflow"})
	// The per-server download budget shared by the fleet (internal/budget).
	w.RegisterWorkflowWithOptions(budget.LimiterWorkflow, workflow.RegisterOptions{Name: budget.WorkflowName})
}

// Register adds every workflow and the activities to w.
func Register(w worker.Registry, acts *activities.Activities) {
	RegisterWorkflows(w)
	w.RegisterActivity(acts)
}

// New returns a worker on taskQueue with bulkflow registered. maxActivities
// bounds concurrent activities (downloads) in this process. Downloads share
// each server's budget with every worker on the queue (budget.Fleet) unless
// acts.Budget is already set.
func New(c client.Client, taskQueue string, acts *activities.Activities, maxActivities int) worker.Worker {
	if maxActivities <= 0 {
		maxActivities = 16
	}
	if acts.Budget == nil {
		acts.Budget = budget.NewFleet(c, taskQueue, acts.Logger)
	}
	w := worker.New(c, taskQueue, worker.Options{
		MaxConcurrentActivityExecutionSize: maxActivities,
		// Let in-flight downloads notice the shutdown and stop cleanly; their
		// retries resume on another worker.
		WorkerStopTimeout: 30e9,
		// Export outcomes (failed, cancelled) and kick-off failures.
		Interceptors: []interceptor.WorkerInterceptor{NewMetricsInterceptor(acts.Metrics)},
		// A cancelled download learns of it from its next heartbeat's
		// response: at most this long, so a cancelled export's cleanup
		// (which waits for its downloads) follows within seconds.
		MaxHeartbeatThrottleInterval: 5e9,
	})
	Register(w, acts)
	return w
}

// Preflight checks at start-up what an export would otherwise find only
// after the EHR has done hours of work: every configured server's
// credentials resolve (a bearer tokenEnv that is set, secret and key files
// that exist) and its TLS files load, and the output root is writable. It
// reads secrets but makes no network request; messages say what to fix.
func Preflight(reg *servers.Registry, serversFile, outputRoot string) error {
	var errs []error
	names := reg.Names()
	sort.Strings(names)
	for _, name := range names {
		if _, err := reg.Client(name, ""); err != nil {
			errs = append(errs, fmt.Errorf("servers file %s: %w: set it in the worker's environment or fix the file, then restart", serversFile, err))
		}
	}
	if err := checkWritable(outputRoot); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkWritable checks that the output root, or the nearest directory
// above it that exists (the root is created on first use), takes a file:
// it writes and removes one. URLs other than file:// are checked by their
// sink on use.
func checkWritable(root string) error {
	if strings.Contains(root, "://") {
		p, ok := strings.CutPrefix(root, "file://")
		if !ok {
			return nil
		}
		root = p
	}
	fix := "give -output (or $BULKFLOW_OUTPUT) a directory the worker's user can write"
	dir := filepath.Clean(root)
	for {
		st, err := os.Stat(dir)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("output root %s cannot be created: %s is not a directory; %s", root, dir, fix)
			}
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return fmt.Errorf("output root %s: %w; %s", root, err, fix)
		}
		dir = parent
	}
	f, err := os.CreateTemp(dir, ".bulkflow-write-check-*")
	if err != nil {
		return fmt.Errorf("output root %s is not writable: %w; %s", root, err, fix)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}
