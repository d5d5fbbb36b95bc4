// Command worker runs bulkflow's Temporal worker: it polls the task queue
// and runs export workflows and their activities. Configuration by flags,
// with environment variables as defaults; secrets only through the servers
// file's references (env var names, file paths).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/atrest"
	"github.com/bulkflow/bulkflow/internal/budget"
	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/internal/codec"
	"github.com/bulkflow/bulkflow/internal/envflag"
	"github.com/bulkflow/bulkflow/internal/logging"
	"github.com/bulkflow/bulkflow/internal/metrics"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/workflows"
)

func main() {
	fs := flag.NewFlagSet("worker", flag.ExitOnError)
	address := envflag.String(fs, "temporal-address", "TEMPORAL_ADDRESS", "localhost:7233", "Temporal frontend host:port")
	namespace := envflag.String(fs, "namespace", "TEMPORAL_NAMESPACE", "default", "Temporal namespace")
	taskQueue := envflag.String(fs, "task-queue", "BULKFLOW_TASK_QUEUE", workflows.TaskQueue, "task queue to poll")
	serversFile := envflag.String(fs, "servers", "BULKFLOW_SERVERS", "", "JSON file of named FHIR servers with their auth and TLS settings")
	output := envflag.String(fs, "output", "BULKFLOW_OUTPUT", "./bulkflow-output", "output root: where runs with no or a relative output location go")
	maxActivities := envflag.Int(fs, "max-activities", "BULKFLOW_MAX_ACTIVITIES", 16, "concurrent activities (downloads) in this worker")
	strict := envflag.Bool(fs, "only-configured-servers", "BULKFLOW_ONLY_CONFIGURED_SERVERS", false, "refuse base URLs that are not in the servers file")
	keysetFile := envflag.String(fs, "encrypt-keyset", "BULKFLOW_ENCRYPT_KEYSET", "", "Tink keyset file (starter keygen): encrypt every output file at rest; read them back with starter decrypt")
	auditStdout := envflag.Bool(fs, "audit-stdout", "BULKFLOW_AUDIT_STDOUT", false, "also print every audit event to stdout as NDJSON (the audit log in the output location is always written)")
	maxLineMiB := envflag.Int(fs, "max-line-mib", "BULKFLOW_MAX_LINE_MIB", 64, "longest accepted NDJSON line (one resource, inline attachments included) in MiB; each download holds at most about this much of a line in memory")
	viewsDir := envflag.String(fs, "views-dir", "BULKFLOW_VIEWS_DIR", "", "folder of SQL on FHIR ViewDefinitions (<name>.json) that exports name in \"views\"; each is validated at start-up (docs/views.md)")
	budgetMode := envflag.String(fs, "download-budget", "BULKFLOW_DOWNLOAD_BUDGET", "fleet", "fleet: each server's maxConcurrentDownloads is shared by every worker on the task queue (a limiter workflow per server); worker: each worker process has its own (the cap is then per worker)")
	leaseTTL := envflag.String(fs, "budget-lease-ttl", "BULKFLOW_BUDGET_LEASE_TTL", "30s", "with -download-budget fleet: a worker that stops renewing its download slots (killed, cut off from Temporal) loses them after this long")
	logFormat := envflag.String(fs, "log-format", "BULKFLOW_LOG_FORMAT", "text", "log format: text or json")
	logLevel := envflag.String(fs, "log-level", "BULKFLOW_LOG_LEVEL", "info", "log level: debug, info, warn, error")
	codecKeyFile := envflag.String(fs, "codec-key-file", codec.EnvKeyFile, "",
		"payload encryption key file: workflow inputs, results and failures are stored encrypted in Temporal (see docs/security.md); without it $"+codec.EnvKey+" is used if set")
	metricsAddr := envflag.String(fs, "metrics-addr", "BULKFLOW_METRICS_ADDR", ":9464",
		"listen address for Prometheus /metrics (bulkflow and Temporal SDK metrics) and /healthz; empty disables (see docs/metrics.md)")
	probe := fs.String("probe", "", "only GET this URL and exit 0 on a 2xx answer, else 1: the container healthcheck (the image has no shell or curl), e.g. http://localhost:9464/healthz")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: worker [flags]\n\nRuns bulkflow's Temporal worker. Flags:")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	if *probe != "" {
		os.Exit(probeURL(*probe, os.Stderr))
	}

	logger, err := logging.New(os.Stderr, *logFormat, *logLevel)
	if err == nil {
		err = envflag.Check()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	ttl, err := time.ParseDuration(*leaseTTL)
	switch {
	case *budgetMode != "fleet" && *budgetMode != "worker":
		fmt.Fprintf(os.Stderr, "worker: -download-budget %q: use fleet or worker\n", *budgetMode)
		os.Exit(2)
	case err != nil || ttl < 3*time.Second || ttl > time.Hour:
		fmt.Fprintf(os.Stderr, "worker: -budget-lease-ttl %q: use a duration from 3s to 1h, e.g. 30s\n", *leaseTTL)
		os.Exit(2)
	}
	reg, err := servers.Load(*serversFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	reg.AllowUnconfigured = !*strict
	reg.UserAgent = "bulkflow"
	// Credentials, TLS files and the output root now, not hours into an export.
	if err := bulkworker.Preflight(reg, *serversFile, *output); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(os.Stderr, "worker:", line)
		}
		os.Exit(2)
	}

	// Views now, not when the first export that names one starts.
	if *viewsDir != "" {
		names, err := activities.CheckViewsDir(*viewsDir)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				fmt.Fprintln(os.Stderr, "worker: -views-dir:", line)
			}
			os.Exit(2)
		}
		logger.Info("views folder", "dir", *viewsDir, "views", names)
	}

	cdc, err := codec.Load(*codecKeyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	// Metrics first, so /healthz is up while the worker dials Temporal. A
	// port already taken (a second worker on the host) costs the metrics,
	// not the worker: loudly, in the log.
	rec, stopMetrics, err := serveMetrics(*metricsAddr, logger)
	if err != nil {
		logger.Error("metrics disabled", "error", err)
		*metricsAddr = ""
	}
	opts := client.Options{HostPort: *address, Namespace: *namespace, Logger: sdklog.NewStructuredLogger(logger)}
	if rec != nil {
		opts.MetricsHandler = rec.TemporalMetricsHandler()
	}
	codec.Apply(&opts, cdc)
	c, err := client.Dial(opts)
	if err != nil {
		stopMetrics()
		fmt.Fprintf(os.Stderr, "worker: cannot reach Temporal at %s (namespace %s): %v\nStart one with `temporal server start-dev` or set TEMPORAL_ADDRESS.\n", *address, *namespace, err)
		os.Exit(1)
	}
	defer c.Close()

	acts := activities.New(reg, *output, logger)
	acts.Metrics = rec // nil (metrics disabled) records nothing
	acts.ViewsDir = *viewsDir
	if *maxLineMiB < 1 || *maxLineMiB > 1024 {
		fmt.Fprintf(os.Stderr, "worker: -max-line-mib %d: use 1 to 1024\n", *maxLineMiB)
		os.Exit(2)
	}
	acts.MaxLineBytes = *maxLineMiB << 20
	var fleet *budget.Fleet
	if *budgetMode == "worker" {
		acts.Budget = &budget.Local{}
	} else {
		fleet = budget.NewFleet(c, *taskQueue, logger)
		fleet.TTL = ttl
		acts.Budget = fleet
	}
	aliasServers(rec, *serversFile)
	rec.CountRunningExports(bulkworker.RunningByPhase(c))
	if *keysetFile != "" {
		ks, err := atrest.LoadKeyset(*keysetFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(2)
		}
		acts.Keyset = ks
	}
	if *auditStdout {
		acts.AuditLive = &lockedWriter{w: os.Stdout}
	}
	w := bulkworker.New(c, *taskQueue, acts, *maxActivities)
	logger.Info("worker starting", slog.String("temporal", *address), slog.String("namespace", *namespace),
		slog.String("task_queue", *taskQueue), slog.String("output", *output), slog.Int("servers", len(reg.Names())),
		slog.Any("codec_key_ids", codecKeyIDs(cdc)), slog.String("metrics", metricsURL(*metricsAddr)))
	// worker.InterruptCh: SIGINT/SIGTERM stop polling and let running activities finish or hand over.
	err = w.Run(worker.InterruptCh())
	if fleet != nil {
		// The downloads have stopped: their slots go back to the fleet now,
		// not when this worker's lease expires.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		fleet.Close(ctx)
		cancel()
	}
	stopMetrics()
	if err != nil {
		logger.Error("worker stopped", "error", err)
		os.Exit(1)
	}
}

// serveMetrics listens on addr and serves /metrics and /healthz in the
// background. An empty addr, or one it cannot listen on, disables metrics:
// a nil Recorder, which records nothing. stop flushes the SDK metrics and closes the listener.
func serveMetrics(addr string, logger *slog.Logger) (rec *metrics.Recorder, stop func(), err error) {
	if addr == "" {
		return nil, func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, func() {}, fmt.Errorf("metrics: %w (set -metrics-addr or BULKFLOW_METRICS_ADDR, or empty to disable)", err)
	}
	rec = metrics.New()
	srv := &http.Server{Handler: rec.Mux(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server stopped", "error", err)
		}
	}()
	return rec, func() {
		rec.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// aliasServers gives metrics each configured server's base URL, so an
// export that names the URL counts under the server's name. The file was
// validated by servers.Load already.
func aliasServers(rec *metrics.Recorder, path string) {
	if rec == nil || path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var f servers.File
	if json.Unmarshal(b, &f) != nil {
		return
	}
	for _, s := range f.Servers {
		rec.AliasServer(s.BaseURL, s.Name)
	}
}

// probeURL is a healthcheck: GET url within 5 s, exit code 0 on 2xx.
func probeURL(url string, stderr io.Writer) int {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(stderr, "probe:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		fmt.Fprintln(stderr, "probe:", url, resp.Status)
		return 1
	}
	return 0
}

// metricsURL says in the start-up log where to scrape.
func metricsURL(addr string) string {
	if addr == "" {
		return "disabled"
	}
	if host, port, err := net.SplitHostPort(addr); err == nil && (host == "" || host == "0.0.0.0" || host == "::") {
		addr = net.JoinHostPort("localhost", port)
	}
	return "http://" + addr + "/metrics"
}

// codecKeyIDs says in the start-up log whether payloads are encrypted and
// with which key ids (ids only: never key material).
func codecKeyIDs(c *codec.Codec) []string {
	if c == nil {
		return []string{}
	}
	return c.KeyIDs()
}

// lockedWriter serialises audit lines from concurrent activities.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
