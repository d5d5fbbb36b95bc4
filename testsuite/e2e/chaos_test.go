package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	sdktest "go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// The Temporal server itself restarts while files download: its own dev
// server with a persistent (SQLite) database, stopped and started again on
// the same port. The worker and the client reconnect by themselves; the
// export resumes from its durable history and lands the exact set with a
// single kick-off.
func TestTemporalServerRestartMidRun(t *testing.T) {
	requireE2E(t)
	cli, err := temporalCLI()
	if err != nil {
		t.Fatal(err)
	}
	hostPort := freeHostPort(t)
	db := filepath.Join(t.TempDir(), "temporal.db")
	logf, err := os.Create(filepath.Join(t.TempDir(), "temporal.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	discard := sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler))
	startDev := func() *sdktest.DevServer {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		d, err := sdktest.StartDevServer(ctx, sdktest.DevServerOptions{
			ExistingPath:  cli,
			DBFilename:    db,
			ClientOptions: &client.Options{HostPort: hostPort, Logger: discard},
			LogLevel:      "error",
			Stdout:        logf,
			Stderr:        logf,
		})
		if err != nil {
			t.Fatalf("start the Temporal dev server on %s (log %s): %v", hostPort, logf.Name(), err)
		}
		return d
	}
	first := startDev()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			first.Stop()
		}
	})

	c, err := client.Dial(client.Options{HostPort: hostPort, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Every file's first attempt is slow, so the restart surely falls mid-download.
	srv := fhirServer(t, testsuite.Options{Patients: 40, ResourcesPerFile: 400, LargeAttachments: -1, Faults: "file=slow(bps=20000)@1"})
	out := t.TempDir()
	queue := fmt.Sprintf("e2e-restart-%d", queueSeq.Add(1))
	reg, _ := servers.Load("")
	w := bulkworker.New(c, queue, activities.New(reg, out, slog.New(slog.DiscardHandler)), 16)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	id := fmt.Sprintf("restart-%d", time.Now().UnixNano())
	began := time.Now()
	if _, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: id, TaskQueue: queue}, workflows.BulkExportWorkflow,
		workflows.ExportInput{BaseURL: srv.BaseURL(), Options: workflows.Options{Concurrency: 4}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for srv.Stats().Requests["file"] == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if srv.Stats().Requests["file"] == 0 {
		t.Fatal("the export never started downloading")
	}
	// Stop the Temporal server mid-download, and start it again on the same database.
	if err := first.Stop(); err != nil {
		t.Logf("stop the dev server: %v", err)
	}
	stopped = true
	servedAtStop := srv.Stats().FilesServed
	time.Sleep(time.Second)
	second := startDev()
	defer second.Stop()
	t.Logf("Temporal restarted %s after the start, %d files served before the stop", time.Since(began).Round(100*time.Millisecond), servedAtStop)

	var res workflows.ExportResult
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The client's long poll for the result may see the restart as an
	// error; asking again is safe: the workflow ran on regardless.
	for {
		err := c.GetWorkflow(ctx, id, "").Get(ctx, &res)
		if err == nil {
			break
		}
		if ctx.Err() != nil || isWorkflowFailure(err) {
			t.Fatalf("export after the Temporal restart: %v", err)
		}
		t.Logf("waiting for the result again after: %v", err)
		time.Sleep(time.Second)
	}
	t.Logf("export committed %d files %s after the start, %d retries", res.Totals.Files, time.Since(began).Round(100*time.Millisecond), res.Totals.Retries)
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	assertExact(t, res, want)
	if st := srv.Stats(); st.Kickoffs != 1 {
		t.Errorf("kickoffs = %d: the restart must not start a second export", st.Kickoffs)
	}
	if int64(res.Totals.Files) <= servedAtStop {
		t.Errorf("all %d files were served before the stop: the restart interrupted nothing", res.Totals.Files)
	}
}

// isWorkflowFailure tells the run's own failure from a transport error.
func isWorkflowFailure(err error) bool {
	var we *temporal.WorkflowExecutionError
	return errors.As(err, &we)
}

func freeHostPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
