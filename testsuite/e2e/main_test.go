// Package e2e runs bulkflow end to end with real parts: a Temporal dev server
// (the Temporal CLI's, started here), the testsuite FHIR server over HTTP on
// 127.0.0.1, real workers and real files.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	sdktest "go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/workflows"
)

var (
	dev     *sdktest.DevServer
	tclient client.Client
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: -short: end-to-end tests skipped")
		os.Exit(m.Run())
	}
	cli, err := temporalCLI()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	logf, _ := os.CreateTemp("", "bulkflow-e2e-temporal-*.log")
	dev, err = sdktest.StartDevServer(context.Background(), sdktest.DevServerOptions{
		ExistingPath:  cli,
		ClientOptions: &client.Options{Logger: sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler))},
		LogLevel:      "error",
		// bulkflow's search attributes, so exports exercise the ExportPhase upserts.
		SearchAttributes: workflows.SearchAttributesToRegister(),
		// Eager activity execution on, as docs/operations.md recommends: the
		// fleet test then also shows downloads still spread over workers. The
		// chaos and CLI tests' own dev servers keep the server default (off).
		ExtraArgs: []string{"--dynamic-config-value", "system.enableActivityEagerExecution=true"},
		Stdout:    logf,
		Stderr:    logf,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: start the Temporal dev server (%s; log %s): %v\n", cli, logf.Name(), err)
		os.Exit(1)
	}
	tclient = dev.Client()
	code := m.Run()
	dev.Stop()
	os.Exit(code)
}

// temporalCLI finds the Temporal CLI that `make test` installs.
func temporalCLI() (string, error) {
	if p := os.Getenv("BULKFLOW_TEMPORAL_CLI"); p != "" {
		return p, nil
	}
	if p, err := filepath.Abs("../../bin/temporal"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("temporal"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no Temporal CLI: run `make test` (it installs one into ./bin) or set BULKFLOW_TEMPORAL_CLI; use -short to skip end-to-end tests")
}
