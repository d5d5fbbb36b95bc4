package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	sdktest "go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/internal/envflag"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// runDemo is the embedded default: a local Temporal dev server (started, or
// reused if one answers), the testsuite FHIR server with synthetic patients,
// and an in-process worker; one system export, verified against what the
// server generated.
func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	patients := fs.Int("patients", 1000, "synthetic patients on the test FHIR server")
	out := fs.String("out", "./bulkflow-demo", "output directory")
	format := fs.String("format", "ndjson", "output format: ndjson, parquet or both")
	partitionBy := fs.String("partition-by", "", "Hive partitions: transactionTime or lastUpdated (default none)")
	keep := fs.Bool("keep", false, "leave Temporal, the FHIR server and the worker running until Ctrl-C")
	address := fs.String("temporal-address", "127.0.0.1:7233", "Temporal dev server address (reused if one is already running there)")
	uiPort := fs.String("ui-port", "8233", "Temporal UI port of a dev server started by the demo")
	cli := envflag.String(fs, "temporal-cli", "BULKFLOW_TEMPORAL_CLI", "", "path to the Temporal CLI (default: ./bin/temporal, then $PATH)")
	pos, err := parse(fs, args, "demo [flags]")
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q", pos[0])
	}
	if err != nil {
		return usageError(stderr, "demo", err)
	}
	if parseOnly {
		return exitOK
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// 1. Temporal.
	c, uiURL, started, shutdown, err := demoTemporal(ctx, *address, *uiPort, *cli, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "starter demo:", err)
		return exitNoTemporal
	}
	defer shutdown()
	defer c.Close()

	// 2. The test FHIR server. A short export duration shows the polling.
	srv, err := testsuite.NewServer(testsuite.Options{Patients: *patients, ExportDuration: 3 * time.Second, RetryAfter: time.Second, ResourcesPerFile: 5000})
	if err == nil {
		err = srv.Start("127.0.0.1:0")
	}
	if err != nil {
		fmt.Fprintln(stderr, "starter demo: test FHIR server:", err)
		return exitFailed
	}
	defer srv.Close()
	fmt.Fprintf(stdout, "Test FHIR server:  %s (%d synthetic patients)\n", srv.BaseURL(), *patients)

	// 3. An in-process worker on a queue of its own, so a shared dev server's
	// other workers never pick up the demo's tasks.
	outAbs, err := filepath.Abs(*out)
	if err != nil {
		fmt.Fprintln(stderr, "starter demo:", err)
		return exitUsage
	}
	reg, _ := servers.Load("")
	queue := fmt.Sprintf("bulkflow-demo-%d", os.Getpid())
	w := bulkworker.New(c, queue, activities.New(reg, outAbs, slog.New(slog.DiscardHandler)), 16)
	if err := w.Start(); err != nil {
		fmt.Fprintln(stderr, "starter demo: worker:", err)
		return exitFailed
	}
	defer w.Stop()

	// 4. The export.
	id := "bulkflow-demo-" + time.Now().UTC().Format("20060102T150405.000Z")
	in := workflows.ExportInput{BaseURL: srv.BaseURL(), Output: outAbs, Format: *format, PartitionBy: *partitionBy}
	if err := in.Validate(); err != nil {
		fmt.Fprintln(stderr, "starter demo:", err)
		return exitUsage
	}
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue, StaticSummary: "bulkflow demo export",
		StaticDetails: staticDetails(in), TypedSearchAttributes: startAttributes(ctx, c, "default", in, stdout)}, workflows.BulkExportWorkflow, in)
	if err != nil {
		fmt.Fprintln(stderr, "starter demo: start workflow:", err)
		return exitFailed
	}
	link := fmt.Sprintf("%s/namespaces/default/workflows/%s", uiURL, id)
	fmt.Fprintf(stdout, "Export workflow:   %s\n  Temporal UI:     %s\n", id, link)
	ns, noKey := "default", ""
	tf := temporalFlags{address: address, namespace: &ns, taskQueue: &queue, uiURL: &uiURL, codecKeyFile: &noKey}
	if code := watch(ctx, c, tf, run.GetID(), stdout, stderr, false); code != exitOK {
		return code
	}

	// 5. Verify the committed run against what the server generated.
	var res workflows.ExportResult
	if err := run.Get(ctx, &res); err != nil {
		fmt.Fprintln(stderr, "starter demo:", err)
		return exitFailed
	}
	if err := verifyDemo(stdout, srv, res.Location); err != nil {
		fmt.Fprintln(stderr, "starter demo: VERIFICATION FAILED:", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "\nOutput:      %s\n%s\n", res.Location, demoUILine(link, *keep, started))
	if *keep {
		fmt.Fprintf(stdout, "Everything keeps running (FHIR server %s, Temporal %s). Ctrl-C to stop.\n", srv.BaseURL(), *address)
		<-ctx.Done()
	}
	return exitOK
}

// demoUILine is the demo's last word on the UI: no link to a dev server
// that stops as the demo ends.
func demoUILine(link string, keep, startedServer bool) string {
	if keep || !startedServer {
		return "Temporal UI: " + link
	}
	return "Temporal UI: the demo's Temporal dev server stops now; run `go run ./starter demo --keep` to keep it and browse the export"
}

func verifyDemo(stdout io.Writer, srv *testsuite.Server, dir string) error {
	want, err := srv.Expected(testsuite.Query{Level: "system"})
	if err != nil {
		return err
	}
	rep, err := verify.Run(dir, true)
	if err != nil {
		return err
	}
	if rep.Duplicates > 0 {
		return fmt.Errorf("%d duplicated resources", rep.Duplicates)
	}
	types := make([]string, 0, len(want.Counts))
	for t := range want.Counts {
		types = append(types, t)
	}
	for t := range rep.IDs {
		if _, ok := want.Counts[t]; !ok {
			types = append(types, t)
		}
	}
	sort.Strings(types)
	fmt.Fprintf(stdout, "\nVerification against the server's generated data:\n  %-22s %10s %10s\n", "type", "expected", "exported")
	var problems []error
	for _, t := range types {
		got := rep.IDs[t]
		fmt.Fprintf(stdout, "  %-22s %10d %10d\n", t, want.Counts[t], len(got))
		if len(got) != want.Counts[t] {
			problems = append(problems, fmt.Errorf("%s: %d exported, %d expected", t, len(got), want.Counts[t]))
			continue
		}
		for id := range want.IDs[t] {
			if _, ok := got[id]; !ok {
				problems = append(problems, fmt.Errorf("%s/%s is missing", t, id))
				break
			}
		}
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	fmt.Fprintln(stdout, "  OK: every resource exported exactly once; line counts, sizes and SHA-256 match _manifest.json")
	return nil
}

// demoTemporal connects to a dev server at address, or starts one from the
// Temporal CLI.
func demoTemporal(ctx context.Context, address, uiPort, cli string, stdout io.Writer) (c client.Client, uiURL string, started bool, shutdown func(), err error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	c, err = client.DialContext(dctx, client.Options{HostPort: address, Logger: quietLogger()})
	cancel()
	if err == nil {
		fmt.Fprintf(stdout, "Temporal:          reusing the server at %s\n", address)
		return c, "http://localhost:" + uiPort, false, func() {}, nil
	}
	path, err := findTemporalCLI(cli)
	if err != nil {
		return nil, "", false, nil, err
	}
	fmt.Fprintf(stdout, "Temporal:          starting a dev server at %s (%s)\n", address, path)
	logf, _ := os.CreateTemp("", "bulkflow-demo-temporal-*.log")
	srv, err := sdktest.StartDevServer(ctx, sdktest.DevServerOptions{
		ExistingPath:  path,
		ClientOptions: &client.Options{HostPort: address, Logger: quietLogger()},
		EnableUI:      true,
		UIPort:        uiPort,
		// So exports are searchable by server, level, phase and types in the UI.
		SearchAttributes: workflows.SearchAttributesToRegister(),
		// As recommended for deployments (docs/operations.md, "Eager activity execution").
		ExtraArgs: []string{"--dynamic-config-value", "system.enableActivityEagerExecution=true"},
		LogLevel:  "error",
		Stdout:    logf,
		Stderr:    logf,
	})
	if err != nil {
		return nil, "", false, nil, fmt.Errorf("start the Temporal dev server (log: %s): %w", logf.Name(), err)
	}
	return srv.Client(), "http://localhost:" + uiPort, true, func() { srv.Stop(); logf.Close() }, nil
}

func findTemporalCLI(explicit string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("Temporal CLI %s: %w", explicit, err)
		}
		return explicit, nil
	}
	if p, err := filepath.Abs(filepath.Join("bin", "temporal")); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("temporal"); err == nil {
		return p, nil
	}
	return "", errors.New("no Temporal CLI found: run `make demo` (it installs one into ./bin), or set BULKFLOW_TEMPORAL_CLI")
}
