package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/envflag"
	"github.com/bulkflow/bulkflow/internal/fhirtypes"
	"github.com/bulkflow/bulkflow/workflows"
)

// exportFlags are the flags of every field of workflows.ExportInput, shared
// by `starter export` and `starter schedule create` so that both name each
// field the same way. TestEveryInputFieldHasAFlag keeps it complete.
type exportFlags struct {
	in                                 workflows.ExportInput
	types, elements, patients, include listFlag
	attachmentTypes                    listFlag
	typeFilters                        rawListFlag
	views                              rawListFlag
	viewErrs                           []error // --view files that cannot be read or are invalid
	schedule                           bool
	set                                map[string]bool // flags given on the command line
}

// addExportFlags defines the export flags on fs. For a schedule the
// defaults and help differ where runs repeat: --incremental defaults to
// true and --run is refused (each run needs a folder of its own).
func addExportFlags(fs *flag.FlagSet, schedule bool) *exportFlags {
	f := &exportFlags{schedule: schedule}
	in := &f.in
	fs.StringVar(&in.BaseURL, "fhir-url", "", "FHIR base URL, e.g. https://ehr.example.org/fhir (or use --server)")
	fs.StringVar(&in.Server, "server", "", "a server name from the worker's servers file (credentials stay with the worker)")
	fs.StringVar(&in.Level, "level", "system", "export level: system, patient or group")
	fs.StringVar(&in.Group, "group", "", "Group id, with --level group")
	fs.Var(&f.types, "types", "resource types, comma-separated or repeated (_type)")
	since := "only resources changed after this instant (_since), e.g. 2024-01-01T00:00:00Z"
	if schedule {
		since = "_since of the first run (later incremental runs take it from the watermark), e.g. 2024-01-01T00:00:00Z"
	}
	fs.StringVar(&in.Since, "since", "", since)
	fs.StringVar(&in.Until, "until", "", "only resources changed before this instant (_until, Bulk Data STU3); not with --incremental")
	fs.Var(&f.elements, "elements", "elements to keep (_elements)")
	fs.Var(&f.typeFilters, "type-filter", "a _typeFilter query such as 'Observation?category=laboratory'; repeatable")
	fs.Var(&f.patients, "patient", "a Patient reference such as Patient/123 (POST kick-off); repeatable")
	fs.StringVar(&in.OutputFormat, "output-format", "", "_outputFormat asked of the server (default application/fhir+ndjson)")
	fs.Var(&f.include, "include-associated-data", "includeAssociatedData values, e.g. LatestProvenanceResources; repeatable")
	incr := "take _since from the watermark committed with the last complete run of the same query"
	if schedule {
		incr = `each run takes _since from the committed watermark (--incremental=false: the same query every run)`
	}
	fs.BoolVar(&in.Incremental, "incremental", schedule, incr)
	fs.BoolVar(&in.WatermarkPerType, "watermark-per-type", false, "keep one watermark per resource type (needs --types)")
	fs.StringVar(&in.Method, "method", "", "kick-off method: GET or POST (default GET, POST with --patient)")
	fs.BoolVar(&in.Lenient, "lenient", false, "send Prefer: handling=lenient")
	fs.BoolVar(&in.Strict, "strict", false, "fail the export when the server reports resources it could not export (error[]), instead of committing what succeeded")
	out := "output directory or URL (default: the worker's output root)"
	if schedule {
		out += "; each run gets a folder named after its workflow ID"
	}
	fs.StringVar(&in.Output, "out", "", out)
	fs.StringVar(&in.Format, "format", "", "lake format: ndjson (default), parquet, both, or none (only the --view tables) (docs/lake.md)")
	fs.BoolVar(&in.Gzip, "gzip", false, "gzip the NDJSON files")
	fs.StringVar(&in.PartitionBy, "partition-by", "", "Hive partitions: transactionTime or lastUpdated (default none)")
	fs.Var(&f.views, "view", "a SQL on FHIR ViewDefinition to flatten into views/<name>/ Parquet: a .json file (sent inline) or a view name from the worker's -views-dir; repeatable (docs/views.md)")
	fs.StringVar(&in.Run, "run", "", "run folder name (default: the workflow ID)")
	// Attachments (issue 15, docs/lake.md).
	fs.StringVar(&in.Attachments, "attachments", "", "none (default), fetch (store the documents DocumentReference, DiagnosticReport, Media and Communication point at under attachments/ in the run) or inline (base64 into attachment.data)")
	fs.Var(&f.attachmentTypes, "attachment-type", "with --attachments inline: a contentType to inline, e.g. text/plain; repeatable (default text/plain, text/html, text/rtf, application/rtf, application/xml, text/xml)")
	fs.Int64Var(&in.MaxAttachmentBytes, "max-attachment-bytes", 0, "bytes one attachment may have; larger ones are recorded, not stored (default 52428800, 50 MiB; inline: 1048576)")
	fs.Int64Var(&in.MaxAttachmentsBytes, "max-attachments-bytes", 0, "with --attachments fetch: bytes of attachments one run may store; the rest are recorded as over-budget (default no cap)")
	fs.IntVar(&in.Options.Concurrency, "concurrency", 0, "files each chunk downloads at once (default 8)")
	fs.IntVar(&in.Options.FilesPerChunk, "files-per-chunk", 0, "files per child workflow (default 500)")
	fs.IntVar(&in.Options.ParallelChunks, "parallel-chunks", 0, "chunk child workflows side by side, each downloading --concurrency files at once (default 2)")
	fs.IntVar(&in.Options.MaxFileAttempts, "max-file-attempts", 0, "tries of one file before the export fails (default 10)")
	fs.BoolVar(&in.Options.KeepJob, "keep-job", false, "do not DELETE the server's export job at the end")
	fs.StringVar(&in.Options.RetryDeadline, "retry-deadline", "", "how long a failing kick-off or status URL is retried before the export fails, e.g. 2h (default 6h)")
	fs.IntVar(&in.Options.MaxHistoryEvents, "max-history-events", 0, "history length at which a run continues as new (default 5000; for tests)")
	fs.StringVar(&in.Options.HeartbeatTimeout, "heartbeat-timeout", "", "how long a download may receive nothing before it is retried, e.g. 90s (default 2m)")
	return f
}

// input returns the workflow input the flags describe. Call after parsing.
func (f *exportFlags) input(fs *flag.FlagSet) workflows.ExportInput {
	f.set = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	in := f.in
	in.Types, in.Elements, in.Patients, in.TypeFilters, in.IncludeAssociatedData = f.types, f.elements, f.patients, f.typeFilters, f.include
	in.Views, f.viewErrs = resolveViewFlags(f.views)
	in.AttachmentTypes = f.attachmentTypes
	if in.Output != "" && !strings.Contains(in.Output, "://") {
		// The worker resolves relative paths against its own root; the user
		// means this shell's directory.
		if abs, err := filepath.Abs(in.Output); err == nil {
			in.Output = abs
		}
	}
	return in
}

// resolveViewFlags turns --view values into the input's views: a path to a
// .json file is read and sent inline (validated here, with the spec's
// wording), a bare name goes to the worker, which resolves it in its views
// folder and validates it before the kick-off.
func resolveViewFlags(items []string) ([]string, []error) {
	var out []string
	var errs []error
	for _, it := range items {
		def, what := []byte(it), "(inline)"
		switch {
		case activities.IsInlineView(it):
		case strings.HasSuffix(it, ".json") || strings.ContainsAny(it, `/\`):
			var err error
			if def, err = activities.ReadViewFile(it); err != nil {
				errs = append(errs, fmt.Errorf("--view %s: %w", it, err))
				continue
			}
			what = it
		default:
			out = append(out, it) // a name from the worker's views folder
			continue
		}
		name, err := activities.ViewItemName(string(def))
		if err == nil {
			_, err = activities.CompileView(name, def)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("--view %s: %w", what, err))
			continue
		}
		var compact bytes.Buffer
		if json.Compact(&compact, def) == nil {
			def = compact.Bytes()
		}
		out = append(out, string(def))
	}
	return out, errs
}

// check refuses, before anything starts, what the user cannot have meant;
// each message is one line naming the flag and what to write instead. The
// workflow's own Validate runs after it.
func (f *exportFlags) check(in workflows.ExportInput) error {
	var errs []error
	if in.Server != "" && in.BaseURL != "" {
		errs = append(errs, serverURLConflict(in.Server, in.BaseURL))
	}
	for _, t := range in.Types {
		if !fhirtypes.Known(t) {
			errs = append(errs, unknownType("--types", t))
		}
	}
	for _, tf := range in.TypeFilters {
		t, _, _ := strings.Cut(tf, "?")
		if !fhirtypes.Known(t) {
			errs = append(errs, fmt.Errorf("--type-filter %q: %q is not a FHIR resource type; write e.g. --type-filter 'Observation?category=laboratory'", tf, t))
		}
	}
	for _, fl := range []struct{ name, v string }{{"since", in.Since}, {"until", in.Until}} {
		if fl.v == "" {
			continue
		}
		if _, err := time.Parse(time.RFC3339Nano, fl.v); err != nil {
			example := time.Now().UTC().AddDate(0, 0, -1).Format("2006-01-02") + "T00:00:00Z"
			errs = append(errs, fmt.Errorf("--%s %q is not a FHIR instant; write a UTC time such as --%s %s", fl.name, fl.v, fl.name, example))
		}
	}
	switch {
	case in.Level == "group" && in.Group == "":
		errs = append(errs, errors.New("--level group needs the Group's id: add --group ID (e.g. --group 42)"))
	case in.Group != "" && in.Level != "group":
		errs = append(errs, fmt.Errorf("--group goes with --level group: write --level group --group %s", in.Group))
	}
	errs = append(errs, f.viewErrs...)
	if f.schedule && in.Run != "" {
		errs = append(errs, errors.New("--run does not go with a schedule: every run needs a folder of its own, named after its workflow ID; drop --run"))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return in.Validate()
}

func unknownType(flagName, t string) error {
	if s := fhirtypes.Suggest(t); s != "" {
		return fmt.Errorf("%s: %q is not a FHIR resource type; did you mean %s?", flagName, t, s)
	}
	return fmt.Errorf("%s: %q is not a FHIR resource type; write names such as Patient,Observation (case matters)", flagName, t)
}

// serverURLConflict explains why --server and --fhir-url do not go
// together: the worker's servers file decides a named server's URL, and a
// different one would be refused there, after the export was started.
func serverURLConflict(name, baseURL string) error {
	return fmt.Errorf("give --server %s or --fhir-url %s, not both: the worker's servers file decides a named server's URL", name, baseURL)
}

// usageError prints one line per problem and a hint, not the whole usage.
func usageError(stderr io.Writer, cmd string, err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(stderr, "starter %s: %s\n", cmd, line)
	}
	fmt.Fprintf(stderr, "Run 'starter %s --help' for usage.\n", cmd)
	return exitUsage
}

// parseFlags parses flags wherever they are among args (`status ID --json`
// as well as `status --json ID`) and returns the positional arguments.
// Nothing is printed for an error (the caller prints one line and a hint);
// -h prints the usage.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	out, help := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	defer func() { fs.SetOutput(out); fs.Usage = help }()
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(out)
				help()
			}
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// A "--" ends the flags: what follows is positional.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, envflag.Check()
}
