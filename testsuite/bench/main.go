// Command bench runs bulkflow exports end to end and measures them: a
// Temporal dev server (the Temporal CLI's), the testsuite FHIR server on
// 127.0.0.1 and the real worker binary as a subprocess, restarted for every
// run so that its peak RSS (VmHWM) and CPU time belong to that run alone.
//
//	go run ./testsuite/bench                       # every scenario (make bench)
//	go run ./testsuite/bench -scale 0.02 -runs 1   # a quick smoke run (make bench-smoke)
//	go run ./testsuite/bench -scenarios scale      # ~1,000,000 resources (make scale)
//
// Every run is verified before it counts: the committed totals must equal
// what the test server says the export yields (testsuite.Server.Expected),
// per type, and the committed files must match their manifest (rows, bytes,
// SHA-256, every line a resource of its type; internal/verify). A fast wrong
// result fails the bench.
//
// Figures: MB are 10^6 bytes of NDJSON as served (uncompressed), whatever
// the output format. MB/s is over the wall time of the whole export
// (kick-off to commit); MB/cpu-s is over the worker process's user+system
// CPU time (/proc/<pid>/stat), the per-core figure on a shared machine.
// Per-file overhead is measured on the small-files scenario; see overhead().
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	sdktest "go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// Synthetic data per patient (seed 1, no large attachments), measured:
// about 40 resources and 28 KB for a system export, 17.6 Observations
// and 13.7 KB of them.
const (
	bytesPerPatient    = 27974
	obsPerPatient      = 17.57
	obsBytesPerPatient = 13691
)

// scenario is one export shape. At -scale 1 the sizes are the ones the
// targets talk about; patients and file counts scale linearly.
type scenario struct {
	Name, About string
	opts        func(scale float64) testsuite.Options
	input       workflows.ExportInput
	types       []string
	history     bool // count history events per workflow afterwards
}

func patients(n float64, scale float64) int { return max(1, int(math.Round(n*scale))) }

func scenarios() []scenario {
	const mb200 = 200e6 / bytesPerPatient
	return append([]scenario{
		{Name: "ndjson-gzip", About: "system export, ~200 MB, NDJSON out, gzip on the wire",
			opts: func(s float64) testsuite.Options {
				return testsuite.Options{Patients: patients(mb200, s), LargeAttachments: -1}
			}},
		{Name: "ndjson-identity", About: "typical: system export, ~200 MB, 10,000 resources per file, NDJSON out, identity on the wire",
			opts: func(s float64) testsuite.Options {
				return testsuite.Options{Patients: patients(mb200, s), LargeAttachments: -1, NoGzip: true}
			}},
		{Name: "parquet", About: "system export, ~200 MB, Parquet (zstd) out, identity on the wire",
			opts: func(s float64) testsuite.Options {
				return testsuite.Options{Patients: patients(mb200, s), LargeAttachments: -1, NoGzip: true}
			},
			input: workflows.ExportInput{Format: "parquet"}},
		{Name: "large-file", About: "one ~2 GB Observation file, NDJSON out, identity on the wire",
			opts: func(s float64) testsuite.Options {
				return testsuite.Options{Patients: patients(2e9/obsBytesPerPatient, s), ResourcesPerFile: 1 << 30, LargeAttachments: -1, NoGzip: true}
			},
			types: []string{"Observation"}},
		{Name: "large-file-parquet", About: "one ~2 GB Observation file, Parquet (zstd) out, identity on the wire",
			opts: func(s float64) testsuite.Options {
				return testsuite.Options{Patients: patients(2e9/obsBytesPerPatient, s), ResourcesPerFile: 1 << 30, LargeAttachments: -1, NoGzip: true}
			},
			types: []string{"Observation"}, input: workflows.ExportInput{Format: "parquet"}},
		{Name: "small-files", About: "2,000 Observation files of 100 resources, NDJSON out, identity on the wire",
			opts: func(s float64) testsuite.Options {
				files := max(20, math.Round(2000*s))
				return testsuite.Options{Patients: int(math.Floor(files * 100 / obsPerPatient)), ResourcesPerFile: 100, LargeAttachments: -1, NoGzip: true}
			},
			types: []string{"Observation"}, history: true},
		{Name: "scale", About: "~1,000,000 resources (25,000 patients), system export, NDJSON out, gzip on the wire",
			opts: func(s float64) testsuite.Options {
				return testsuite.Options{Patients: patients(25000, s), LargeAttachments: -1}
			},
			history: true},
	}, viewScenarios()...)
}

var defaultScenarios = []string{"ndjson-gzip", "ndjson-identity", "parquet", "large-file", "small-files"}

// Result is one scenario's figures: medians over its runs.
type Result struct {
	Scenario       string  `json:"scenario"`
	About          string  `json:"about"`
	Runs           int     `json:"runs"`
	Files          int     `json:"files"`
	Resources      int64   `json:"resources"`
	Bytes          int64   `json:"bytes"`
	WireBytes      int64   `json:"wireBytes"`
	WallSeconds    float64 `json:"wallSeconds"`
	WallMin        float64 `json:"wallSecondsMin"`
	WallMax        float64 `json:"wallSecondsMax"`
	MBps           float64 `json:"mbPerSecond"`
	ResPerSec      float64 `json:"resourcesPerSecond"`
	CPUSeconds     float64 `json:"workerCPUSeconds"`
	UserSeconds    float64 `json:"workerUserSeconds"`
	SysSeconds     float64 `json:"workerSysSeconds"`
	MBPerCPUSecond float64 `json:"mbPerCPUSecond"`
	TemporalCPU    float64 `json:"temporalCPUSeconds"`
	PeakRSSMB      float64 `json:"peakWorkerRSSMB"` // the largest of the runs
	Retries        int     `json:"retries"`
	// Per-file overhead (small-files only, with large-file in the same
	// invocation): see overhead().
	OverheadMsPerFile    float64 `json:"overheadMsPerFile,omitempty"`
	CPUOverheadMsPerFile float64 `json:"workerCPUOverheadMsPerFile,omitempty"`
	TemporalCPUMsPerFile float64 `json:"temporalCPUMsPerFile,omitempty"`
	// History (scenarios with history): events of the parent's last run and
	// of the chunk children.
	ParentEvents     int     `json:"parentEvents,omitempty"`
	Chunks           int     `json:"chunks,omitempty"`
	ChunkEventsMax   int     `json:"chunkEventsMax,omitempty"`
	ChunkEventsTotal int     `json:"chunkEventsTotal,omitempty"`
	EventsPerFile    float64 `json:"historyEventsPerFile,omitempty"`
	// The floor (floor.go), measured in the same run: a plain HTTP client
	// GETting every file with the same concurrency. Window is bulkflow's
	// first file GET to commit; FloorRatio the median of window / floor.
	FloorSeconds  float64 `json:"floorSeconds,omitempty"`
	WindowSeconds float64 `json:"windowSeconds,omitempty"`
	FloorRatio    float64 `json:"floorRatio,omitempty"`
	// What the CPU measured in a run's window (first file GET to commit)
	// allows on this machine's cores, even run perfectly in parallel:
	// (worker + Temporal + test server CPU) / cores, over the floor
	// (BoundRatio): the floor ratio can never be below it. BoundRatioNoWorker
	// is the same without the worker's CPU: no change to the worker can take
	// the ratio below it.
	ServerCPU          float64 `json:"testServerCPUSeconds,omitempty"`
	BoundRatio         float64 `json:"cpuBoundFloorRatio,omitempty"`
	BoundRatioNoWorker float64 `json:"cpuBoundFloorRatioWithoutWorker,omitempty"`
}

type env struct {
	dev       *sdktest.DevServer
	tc        client.Client
	workerBin string
	work      string
	verify    bool
	floor     bool // also run the plain-HTTP floor after every run (floor.go)
	phases    bool // print each run's timeline (phases.go)
	log       io.Writer
}

func main() {
	os.Exit(run())
}

func run() int {
	list := flag.String("scenarios", strings.Join(defaultScenarios, ","), "comma-separated scenarios: "+names())
	scale := flag.Float64("scale", 1, "multiply data sizes by this (e.g. 0.02 for a smoke run)")
	runs := flag.Int("runs", 3, "runs per scenario; the table shows medians (peak RSS: the largest)")
	asJSON := flag.Bool("json", false, "print the results as JSON instead of a table")
	doVerify := flag.Bool("verify", true, "re-read every committed run against its manifest (counts against srv.Expected are always checked)")
	doFloor := flag.Bool("floor", true, "after every run, download the same export with a plain HTTP client (the floor) and print bulkflow's ratio to it")
	doEager := flag.Bool("eager", true, "run the Temporal dev server with eager activity execution, as docs/operations.md recommends")
	doPhases := flag.Bool("phases", false, "after every run, print where its first-GET-to-commit window went, from the histories' timestamps (phases.go)")
	workDir := flag.String("work", "", "directory for the worker binary and outputs (default: a fresh temporary directory, removed afterwards)")
	flag.Parse()
	if *scale <= 0 || *runs < 1 {
		fmt.Fprintln(os.Stderr, "bench: -scale must be > 0 and -runs >= 1")
		return 2
	}
	all := append(scenarios(), attachmentScenarios()...) // attachments.go
	var chosen []scenario
	for _, n := range strings.Split(*list, ",") {
		n = strings.TrimSpace(n)
		i := slices.IndexFunc(all, func(s scenario) bool { return s.Name == n })
		if i < 0 {
			fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s)\n", n, names())
			return 2
		}
		chosen = append(chosen, all[i])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	e, cleanup, err := setup(ctx, *workDir, *doEager)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer cleanup()
	e.verify = *doVerify
	e.floor = *doFloor
	e.phases = *doPhases
	e.log = os.Stderr

	fmt.Fprintf(os.Stderr, "bench: %s; scale %g, %d run(s) per scenario\n", machine(), *scale, *runs)
	var results []Result
	for _, sc := range chosen {
		r, err := e.scenario(ctx, sc, *scale, *runs)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: FAILED: %v\n", sc.Name, err)
			return 1
		}
		results = append(results, r)
	}
	overhead(results)
	viewsRatio(os.Stderr, results)
	if *asJSON {
		out := struct {
			Date    string   `json:"date"`
			Machine string   `json:"machine"`
			Scale   float64  `json:"scale"`
			Results []Result `json:"results"`
		}{time.Now().UTC().Format(time.RFC3339), machine(), *scale, results}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return 0
	}
	printTable(os.Stdout, results, *scale, *doEager)
	printAttachments(os.Stdout) // attachments.go
	return 0
}

func names() string {
	var n []string
	for _, s := range append(scenarios(), attachmentScenarios()...) {
		n = append(n, s.Name)
	}
	return strings.Join(n, ", ")
}

// overhead derives the per-file cost from the small-files run: its wall
// time minus the time its bytes take at the large-file throughput, per
// file. Both run with the same worker and window (8 files at once), so what
// is left is what a file costs beyond its bytes: the activity's scheduling
// through Temporal, the HTTP request, staging file create/fsync/rename, and
// its share of the chunk bookkeeping. The worker-CPU variant does the same
// with CPU seconds; the Temporal variant is the dev server's CPU per file.
func overhead(rs []Result) {
	li := slices.IndexFunc(rs, func(r Result) bool { return r.Scenario == "large-file" })
	for i := range rs {
		r := &rs[i]
		if r.Files > 0 {
			r.TemporalCPUMsPerFile = r.TemporalCPU / float64(r.Files) * 1000
		}
		if r.Scenario != "small-files" || r.Files == 0 {
			continue
		}
		r.TemporalCPUMsPerFile = r.TemporalCPU / float64(r.Files) * 1000
		if li < 0 {
			continue
		}
		l := rs[li]
		r.OverheadMsPerFile = (r.WallSeconds - float64(r.Bytes)/(l.MBps*1e6)) / float64(r.Files) * 1000
		r.CPUOverheadMsPerFile = (r.CPUSeconds - float64(r.Bytes)/(l.MBPerCPUSecond*1e6)) / float64(r.Files) * 1000
	}
}

func setup(ctx context.Context, workDir string, eager bool) (*env, func(), error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, nil, err
	}
	tmp := workDir
	removeTmp := false
	if tmp == "" {
		if tmp, err = os.MkdirTemp("", "bulkflow-bench-"); err != nil {
			return nil, nil, err
		}
		removeTmp = true
	} else if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, nil, err
	}
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	if removeTmp {
		undo = append(undo, func() { os.RemoveAll(tmp) })
	}
	e := &env{work: tmp, workerBin: filepath.Join(tmp, "worker")}
	fmt.Fprintln(os.Stderr, "bench: building ./worker")
	build := exec.CommandContext(ctx, "go", "build", "-o", e.workerBin, "./worker")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("go build ./worker: %v\n%s", err, out)
	}
	cli := os.Getenv("BULKFLOW_TEMPORAL_CLI")
	if cli == "" {
		cli = filepath.Join(root, "bin", "temporal")
	}
	if _, err := os.Stat(cli); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("no Temporal CLI at %s: run `make temporal-cli` or set BULKFLOW_TEMPORAL_CLI", cli)
	}
	logf, err := os.Create(filepath.Join(tmp, "temporal.log"))
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	fmt.Fprintln(os.Stderr, "bench: starting the Temporal dev server")
	e.dev, err = sdktest.StartDevServer(ctx, sdktest.DevServerOptions{
		ExistingPath:  cli,
		ClientOptions: &client.Options{Logger: sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler))},
		LogLevel:      "error",
		// As recommended for deployments (docs/operations.md, "Eager activity
		// execution"); -eager=false measures without it.
		ExtraArgs: eagerArgs(eager),
		Stdout:    logf,
		Stderr:    logf,
	})
	if err != nil {
		logf.Close()
		cleanup()
		return nil, nil, fmt.Errorf("start the Temporal dev server (%s): %w", cli, err)
	}
	e.tc = e.dev.Client()
	undo = append(undo, func() { e.dev.Stop(); logf.Close() })
	return e, cleanup, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// eagerArgs are the dev server's flags for eager activity execution.
func eagerArgs(on bool) []string {
	return []string{"--dynamic-config-value", fmt.Sprintf("system.enableActivityEagerExecution=%t", on)}
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/bulkflow/bulkflow\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("run from inside the bulkflow module (no go.mod above %s)", dir)
		}
	}
}

// runResult is one verified run.
type runResult struct {
	files                       int
	resources, bytes, wireBytes int64
	wall                        time.Duration
	user, sys                   time.Duration
	temporal                    time.Duration
	server                      time.Duration // this process: the test server (and the bench's idle client)
	windowCPU, windowNoWorker   time.Duration // worker + Temporal + this process (without the worker), first file GET to commit
	hwm                         int64
	retries                     int
	parentEvents, chunks        int
	chunkMax, chunkTotal        int
	window, floor               time.Duration // see floor.go
}

func (e *env) scenario(ctx context.Context, sc scenario, scale float64, runs int) (Result, error) {
	opts := sc.opts(scale)
	fmt.Fprintf(e.log, "bench: %s: %s (%d patients, scale %g)\n", sc.Name, sc.About, opts.Patients, scale)
	srv, err := testsuite.NewServer(opts)
	if err != nil {
		return Result{}, err
	}
	if err := srv.Start("127.0.0.1:0"); err != nil {
		return Result{}, err
	}
	defer srv.Close()
	want, err := srv.Expected(testsuite.Query{Level: "system", Types: sc.types})
	if err != nil {
		return Result{}, err
	}
	want.IDs = nil // counts are enough here; verify checks every line
	var rs []runResult
	for i := range runs {
		r, err := e.once(ctx, sc, srv, want, i)
		if err != nil {
			return Result{}, fmt.Errorf("run %d: %w", i+1, err)
		}
		fmt.Fprintf(e.log, "bench: %s run %d: %d files, %d resources, %.1f MB in %.2fs, worker CPU %.2fs, peak RSS %.0f MB (verified)\n",
			sc.Name, i+1, r.files, r.resources, float64(r.bytes)/1e6, r.wall.Seconds(), (r.user + r.sys).Seconds(), float64(r.hwm)/1e6)
		rs = append(rs, r)
	}
	return summarize(sc, rs), nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianOf is the median of f over the runs.
func medianOf[R any](runs []R, f func(R) float64) float64 {
	xs := make([]float64, 0, len(runs))
	for _, r := range runs {
		xs = append(xs, f(r))
	}
	return median(xs)
}

func summarize(sc scenario, rs []runResult) Result {
	pick := func(f func(runResult) float64) float64 { return medianOf(rs, f) }
	r0 := rs[0]
	res := Result{Scenario: sc.Name, About: sc.About, Runs: len(rs), Files: r0.files, Resources: r0.resources, Bytes: r0.bytes, WireBytes: r0.wireBytes}
	res.WallSeconds = pick(func(r runResult) float64 { return r.wall.Seconds() })
	res.WallMin, res.WallMax = math.Inf(1), 0
	for _, r := range rs {
		res.WallMin = min(res.WallMin, r.wall.Seconds())
		res.WallMax = max(res.WallMax, r.wall.Seconds())
		res.PeakRSSMB = max(res.PeakRSSMB, float64(r.hwm)/1e6)
		res.Retries += r.retries
	}
	res.MBps = pick(func(r runResult) float64 { return float64(r.bytes) / 1e6 / r.wall.Seconds() })
	res.ResPerSec = pick(func(r runResult) float64 { return float64(r.resources) / r.wall.Seconds() })
	res.CPUSeconds = pick(func(r runResult) float64 { return (r.user + r.sys).Seconds() })
	res.UserSeconds = pick(func(r runResult) float64 { return r.user.Seconds() })
	res.SysSeconds = pick(func(r runResult) float64 { return r.sys.Seconds() })
	res.MBPerCPUSecond = pick(func(r runResult) float64 { return float64(r.bytes) / 1e6 / (r.user + r.sys).Seconds() })
	res.TemporalCPU = pick(func(r runResult) float64 { return r.temporal.Seconds() })
	res.ServerCPU = pick(func(r runResult) float64 { return r.server.Seconds() })
	if r0.floor > 0 {
		res.FloorSeconds = pick(func(r runResult) float64 { return r.floor.Seconds() })
		res.WindowSeconds = pick(func(r runResult) float64 { return r.window.Seconds() })
		res.FloorRatio = pick(func(r runResult) float64 { return r.window.Seconds() / r.floor.Seconds() })
		cores := float64(runtime.NumCPU())
		res.BoundRatio = pick(func(r runResult) float64 { return r.windowCPU.Seconds() / cores / r.floor.Seconds() })
		res.BoundRatioNoWorker = pick(func(r runResult) float64 { return r.windowNoWorker.Seconds() / cores / r.floor.Seconds() })
	}
	if sc.history {
		res.ParentEvents = int(pick(func(r runResult) float64 { return float64(r.parentEvents) }))
		res.Chunks = r0.chunks
		res.ChunkEventsMax = int(pick(func(r runResult) float64 { return float64(r.chunkMax) }))
		res.ChunkEventsTotal = int(pick(func(r runResult) float64 { return float64(r.chunkTotal) }))
		if res.Files > 0 {
			res.EventsPerFile = float64(res.ChunkEventsTotal) / float64(res.Files)
		}
	}
	return res
}

// once runs one export with a fresh worker process and verifies it.
func (e *env) once(ctx context.Context, sc scenario, srv *testsuite.Server, want testsuite.Expected, i int) (runResult, error) {
	var r runResult
	out := filepath.Join(e.work, "out")
	os.RemoveAll(out)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return r, err
	}
	defer os.RemoveAll(out)
	queue := fmt.Sprintf("bench-%s-%d-%d", sc.Name, os.Getpid(), i)
	wlog, err := os.Create(filepath.Join(e.work, fmt.Sprintf("worker-%s-%d.log", sc.Name, i+1)))
	if err != nil {
		return r, err
	}
	defer wlog.Close()
	cmd := exec.Command(e.workerBin, "-temporal-address", e.dev.FrontendHostPort(), "-task-queue", queue,
		"-output", out, "-log-level", "warn", "-metrics-addr", "")
	cmd.Stdout, cmd.Stderr = wlog, wlog
	if err := cmd.Start(); err != nil {
		return r, err
	}
	stopped := false
	stopWorker := func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
	}
	defer stopWorker()
	if err := e.waitForPollers(ctx, queue); err != nil {
		return r, fmt.Errorf("worker never polled (log %s): %w", wlog.Name(), err)
	}
	pid := cmd.Process.Pid
	u0, s0, err := procCPU(pid)
	if err != nil {
		return r, err
	}
	tpid := temporalPID()
	t0 := time.Duration(0)
	if tpid > 0 {
		tu, ts, _ := procCPU(tpid)
		t0 = tu + ts
	}
	su0, ss0, err := procCPU(os.Getpid())
	if err != nil {
		return r, err
	}
	srv.ResetStats()

	in := sc.input
	in.BaseURL = srv.BaseURL()
	in.Types = sc.types
	in.Run = "run"
	id := fmt.Sprintf("bench-%s-%d-%d", sc.Name, os.Getpid(), i)
	// The CPU of the three processes when the first file GET arrives, so
	// that the bound covers the same window as x floor (the test server's
	// preparation and the kick-off are before it).
	cpuNow := func() (all, noWorker time.Duration) {
		for _, p := range []int{pid, tpid, os.Getpid()} {
			if p > 0 {
				u, s, _ := procCPU(p)
				all += u + s
				if p != pid {
					noWorker += u + s
				}
			}
		}
		return all, noWorker
	}
	atFirst := make(chan [2]time.Duration, 1)
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopWatch:
				return
			case <-tick.C:
				if !srv.Stats().FirstDownloadAt.IsZero() {
					all, noWorker := cpuNow()
					atFirst <- [2]time.Duration{all, noWorker}
					return
				}
			}
		}
	}()
	start := time.Now()
	wr, err := e.tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, workflows.BulkExportWorkflow, in)
	if err != nil {
		return r, err
	}
	var res workflows.ExportResult
	if err := wr.Get(ctx, &res); err != nil {
		return r, fmt.Errorf("export %s: %w (worker log %s)", id, err, wlog.Name())
	}
	r.wall = time.Since(start)
	if first := srv.Stats().FirstDownloadAt; !first.IsZero() {
		r.window = time.Since(first)
	}
	u1, s1, err := procCPU(pid)
	if err != nil {
		return r, err
	}
	r.user, r.sys = u1-u0, s1-s0
	if su1, ss1, err := procCPU(os.Getpid()); err == nil {
		r.server = su1 + ss1 - su0 - ss0
	}
	if tpid > 0 {
		tu, ts, _ := procCPU(tpid)
		r.temporal = tu + ts - t0
	}
	select {
	case c := <-atFirst:
		all, noWorker := cpuNow()
		r.windowCPU, r.windowNoWorker = all-c[0], noWorker-c[1]
	default: // no file GET seen (nothing to download)
	}
	if r.hwm, err = procHWM(pid); err != nil {
		return r, err
	}
	stopWorker()
	st := srv.Stats()
	r.files, r.resources, r.bytes, r.retries = res.Totals.Files, res.Totals.ResourceCount(), res.Totals.Bytes, res.Totals.Retries
	r.wireBytes = st.FileBytesServed

	// Exact counts, per type, against what the server generated.
	if res.Status != "committed" {
		return r, fmt.Errorf("status %q", res.Status)
	}
	var problems []string
	for typ, n := range want.Counts {
		if got := res.Totals.Resources[typ]; got != int64(n) {
			problems = append(problems, fmt.Sprintf("%s: %d exported, %d expected", typ, got, n))
		}
	}
	for typ, got := range res.Totals.Resources {
		if _, ok := want.Counts[typ]; !ok {
			problems = append(problems, fmt.Sprintf("%s: %d exported, none expected", typ, got))
		}
	}
	if st.FilesServed < int64(r.files) {
		problems = append(problems, fmt.Sprintf("%d files in the result, the server completed only %d bodies", r.files, st.FilesServed))
	}
	if len(problems) > 0 {
		return r, fmt.Errorf("wrong result: %s", strings.Join(problems, "; "))
	}
	if e.verify {
		rep, err := verify.Run(res.Location, false)
		if err != nil {
			return r, fmt.Errorf("verify %s: %w", res.Location, err)
		}
		for typ, n := range want.Counts {
			if got := rep.Manifest.Totals.Resources[typ]; got != int64(n) {
				return r, fmt.Errorf("verify: manifest says %d %s, expected %d", got, typ, n)
			}
		}
	}
	if err := attachmentFigures(sc, srv, res, r); err != nil { // attachments.go
		return r, err
	}
	if sc.history {
		if err := e.history(ctx, id, &r); err != nil {
			return r, err
		}
	}
	if first := srv.Stats().FirstDownloadAt; e.phases && !first.IsZero() {
		if err := e.timeline(ctx, id, first, e.log); err != nil {
			return r, err
		}
	}
	if e.floor {
		dir := filepath.Join(e.work, "floor")
		fr, err := floor(ctx, srv.BaseURL(), sc.types, dir)
		os.RemoveAll(dir)
		if err != nil {
			return r, fmt.Errorf("floor: %w", err)
		}
		if fr.files != r.files {
			return r, fmt.Errorf("floor: %d files, bulkflow %d", fr.files, r.files)
		}
		r.floor = fr.wall
		fmt.Fprintf(e.log, "bench: %s run %d: floor %.2fs for %d files (%.1f MB); bulkflow first GET to commit %.2fs (%.2fx)\n",
			sc.Name, i+1, fr.wall.Seconds(), fr.files, float64(fr.bytes)/1e6, r.window.Seconds(), r.window.Seconds()/fr.wall.Seconds())
	}
	return r, nil
}

func (e *env) history(ctx context.Context, id string, r *runResult) error {
	var children []string // chunk IDs carry the parent run's identity: read them from history
	count := func(wid string) (int, error) {
		it := e.tc.GetWorkflowHistory(ctx, wid, "", false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		n := 0
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				return n, err
			}
			if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil && wid == id {
				children = append(children, a.GetWorkflowExecution().GetWorkflowId())
			}
			n++
		}
		return n, nil
	}
	var err error
	if r.parentEvents, err = count(id); err != nil {
		return err
	}
	for _, child := range children {
		n, err := count(child)
		if err != nil || n == 0 {
			break
		}
		r.chunks++
		r.chunkTotal += n
		r.chunkMax = max(r.chunkMax, n)
	}
	return nil
}

func (e *env) waitForPollers(ctx context.Context, queue string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ok := true
		for _, tt := range []enums.TaskQueueType{enums.TASK_QUEUE_TYPE_WORKFLOW, enums.TASK_QUEUE_TYPE_ACTIVITY} {
			d, err := e.tc.DescribeTaskQueue(ctx, queue, tt)
			if err != nil || len(d.GetPollers()) == 0 {
				ok = false
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("timed out")
}

const clkTck = 100 // USER_HZ: 100 on every Linux the bench runs on

// procCPU reads utime and stime of pid from /proc/<pid>/stat.
func procCPU(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 (1-based), i.e. 11 and 12 after ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	tick := time.Second / time.Duration(clkTck)
	return time.Duration(ut) * tick, time.Duration(st) * tick, nil
}

// procHWM reads the peak resident set size (VmHWM) of pid, in bytes.
func procHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/<pid>/status")
}

// temporalPID finds the dev server: our child process named temporal.
func temporalPID() int {
	ents, _ := os.ReadDir("/proc")
	self := strconv.Itoa(os.Getpid())
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp {
			continue
		}
		f := strings.Fields(s[rp+1:])
		if len(f) > 1 && f[1] == self && strings.HasPrefix(s[lp+1:rp], "temporal") {
			return pid
		}
	}
	return 0
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%d CPUs (%s), %s, %s/%s%s", runtime.NumCPU(), model, runtime.Version(), runtime.GOOS, runtime.GOARCH, load)
}

func printTable(w io.Writer, rs []Result, scale float64, eager bool) {
	fmt.Fprintf(w, "bulkflow bench %s, scale %g, Temporal dev server with eager activity execution %s\n%s\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), scale, onOff(eager), machine())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tfiles\tresources\tMB\twire MB\twall s\tMB/s\tres/s\tworker CPU s (usr+sys)\tMB/cpu-s\tpeak RSS MB\tper-file overhead ms\tfloor s\tx floor\tCPU bound x\t")
	for _, r := range rs {
		oh := "-"
		if r.OverheadMsPerFile != 0 || r.CPUOverheadMsPerFile != 0 {
			oh = fmt.Sprintf("%.1f wall, %.1f CPU", r.OverheadMsPerFile, r.CPUOverheadMsPerFile)
		}
		fl, ratio, bound := "-", "-", "-"
		if r.FloorSeconds > 0 {
			fl, ratio = fmt.Sprintf("%.2f", r.FloorSeconds), fmt.Sprintf("%.2f", r.FloorRatio)
			bound = fmt.Sprintf("%.2f", r.BoundRatio)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.2f\t%.1f\t%.0f\t%.2f (%.2f+%.2f)\t%.1f\t%.0f\t%s\t%s\t%s\t%s\t\n",
			r.Scenario, r.Files, r.Resources, float64(r.Bytes)/1e6, float64(r.WireBytes)/1e6, r.WallSeconds, r.MBps, r.ResPerSec,
			r.CPUSeconds, r.UserSeconds, r.SysSeconds, r.MBPerCPUSecond, r.PeakRSSMB, oh, fl, ratio, bound)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range rs {
		if r.Runs > 1 {
			fmt.Fprintf(w, "%s: median of %d runs, wall %.2f–%.2f s", r.Scenario, r.Runs, r.WallMin, r.WallMax)
		} else {
			fmt.Fprintf(w, "%s: 1 run", r.Scenario)
		}
		if r.Retries > 0 {
			fmt.Fprintf(w, ", %d retries", r.Retries)
		}
		if r.TemporalCPU > 0 {
			fmt.Fprintf(w, ", Temporal dev server CPU %.2f s", r.TemporalCPU)
		}
		if r.TemporalCPUMsPerFile > 0 {
			fmt.Fprintf(w, " (%.1f ms/file)", r.TemporalCPUMsPerFile)
		}
		if r.BoundRatioNoWorker > 0 {
			fmt.Fprintf(w, ", test server CPU %.2f s; Temporal and the test server alone bound x floor at %.2f", r.ServerCPU, r.BoundRatioNoWorker)
		}
		if r.Chunks > 0 {
			fmt.Fprintf(w, "; history: parent %d events, %d chunk(s), largest %d events, %.2f events/file", r.ParentEvents, r.Chunks, r.ChunkEventsMax, r.EventsPerFile)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "\nMB = 10^6 bytes of NDJSON as served; MB/s over wall time kick-off to commit; MB/cpu-s over the worker's user+sys CPU.")
	fmt.Fprintln(w, "Per-file overhead (small-files): (wall - MB / large-file MB/s) / files; CPU: the same with worker CPU seconds.")
	fmt.Fprintf(w, "floor: a plain Go HTTP client, %d GETs at once, every manifest URL to disk, no validation (first GET to last file written);\n", floorConcurrency)
	fmt.Fprintln(w, "x floor: bulkflow's first file GET to commit over the floor's time, median of the per-run ratios (docs/benchmarks.md).")
	fmt.Fprintf(w, "CPU bound x: (worker + Temporal + test server CPU seconds, first file GET to commit) / %d cores / floor: the least x floor\n", runtime.NumCPU())
	fmt.Fprintln(w, "  that this much CPU allows on this machine even run perfectly in parallel (docs/benchmarks.md, \"The floor ratio's bound\").")
}
