// Command starter is bulkflow's CLI: start exports, watch them, check
// status, cancel, and run a self-contained demo.
//
// Exit codes: 0 success; 1 the export failed; 2 bad usage or configuration;
// 3 the export was cancelled; 4 Temporal could not be reached.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"go.temporal.io/sdk/client"

	"github.com/bulkflow/bulkflow/internal/codec"
	"github.com/bulkflow/bulkflow/internal/envflag"
	"github.com/bulkflow/bulkflow/workflows"
)

const (
	exitOK         = 0
	exitFailed     = 1
	exitUsage      = 2
	exitCancelled  = 3
	exitNoTemporal = 4
	// exitInterrupted is Ctrl-C while watching: the export goes on.
	exitInterrupted = 130
)

var commands = []struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) int
}{
	{"export", "start an export (and with --wait, watch it to the end)", runExport},
	{"status", "show an export's progress or result", runStatus},
	{"cancel", "cancel an export (its server job is deleted, staged files removed)", runCancel},
	{"demo", "run a complete export against a built-in test FHIR server and a local Temporal dev server", runDemo},
	{"codec-server", "serve the payload codec to the Temporal UI so people allowed to can read encrypted histories", runCodecServer},
	{"decrypt", "decrypt a file encrypted at rest (streams; detects tampering)", runDecrypt},
	{"keygen", "write a new keyset file for encryption at rest", runKeygen},
	{"schedule", "run exports on Temporal Schedules: create, list, describe, pause, unpause, trigger, delete", runSchedule},
	{"watermark", "show or repair an output location's incremental watermarks (_state/)", runWatermark},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "starter: unknown command %q\nRun 'starter --help' for the commands.\n", args[0])
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: starter <command> [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'starter <command> --help' for a command's flags.")
	fmt.Fprintln(w, "Exit codes: 0 success, 1 export failed, 2 usage/config error, 3 cancelled, 4 Temporal unreachable.")
}

// temporalFlags are shared by every command that talks to Temporal.
type temporalFlags struct {
	address, namespace, taskQueue, uiURL *string
	codecKeyFile                         *string
}

func addTemporalFlags(fs *flag.FlagSet) temporalFlags {
	return temporalFlags{
		address:   envflag.String(fs, "temporal-address", "TEMPORAL_ADDRESS", "localhost:7233", "Temporal frontend host:port"),
		namespace: envflag.String(fs, "namespace", "TEMPORAL_NAMESPACE", "default", "Temporal namespace"),
		taskQueue: envflag.String(fs, "task-queue", "BULKFLOW_TASK_QUEUE", workflows.TaskQueue, "task queue the workers poll"),
		uiURL:     envflag.String(fs, "ui-url", "BULKFLOW_UI_URL", "http://localhost:8233", "Temporal UI base URL, for links"),
		codecKeyFile: envflag.String(fs, "codec-key-file", codec.EnvKeyFile, "",
			"payload encryption key file, the workers' (see docs/security.md); without it $"+codec.EnvKey+" is used if set"),
	}
}

func (t temporalFlags) dial(stderr io.Writer) (client.Client, int) {
	opts := client.Options{HostPort: *t.address, Namespace: *t.namespace, Logger: quietLogger()}
	// Inputs and results are encrypted with the workers' keys: without them the
	// starter could neither write what workers read nor read what they return.
	cdc, err := codec.Load(*t.codecKeyFile)
	if err != nil {
		fmt.Fprintln(stderr, "starter:", err)
		return nil, exitUsage
	}
	codec.Apply(&opts, cdc)
	c, err := client.Dial(opts)
	if err != nil {
		fmt.Fprintf(stderr, "starter: cannot reach Temporal at %s: %v\nStart a server (`temporal server start-dev`, or `make demo`) or set TEMPORAL_ADDRESS.\n", *t.address, err)
		return nil, exitNoTemporal
	}
	return c, exitOK
}

func (t temporalFlags) link(workflowID string) string {
	return fmt.Sprintf("%s/namespaces/%s/workflows/%s", strings.TrimRight(*t.uiURL, "/"), *t.namespace, workflowID)
}

// parse parses fs with flags on either side of positional arguments and
// returns those; -h prints a usage that names the command.
func parse(fs *flag.FlagSet, args []string, synopsis string) ([]string, error) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: starter %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return parseFlags(fs, args)
}

// parseOnly makes commands return after parsing and checking their flags,
// before they dial Temporal or touch a file: the docs test runs every
// example command of README.md and docs/ that way.
var parseOnly bool

func isHelp(err error) bool { return errors.Is(err, flag.ErrHelp) }

// listFlag collects a repeatable flag; commas also split values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// rawListFlag collects a repeatable flag without splitting on commas
// (_typeFilter values contain commas).
type rawListFlag []string

func (l *rawListFlag) String() string     { return strings.Join(*l, " ") }
func (l *rawListFlag) Set(v string) error { *l = append(*l, v); return nil }

func newFS(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

var discardSlog = slog.New(slog.DiscardHandler)
