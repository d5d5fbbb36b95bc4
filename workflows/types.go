// Package workflows orchestrates FHIR Bulk Data exports. Workflows see URLs,
// counts, names and paths only; every byte of data and every credential stays
// in activities.
package workflows

import (
	"cmp"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/bulkflow/bulkflow/activities"
)

// TaskQueue is the default task queue of workers and starters.
const TaskQueue = "fhir-bulk-export"

// ReplaySampleID is the workflow ID of the recorded run in testdata.
const ReplaySampleID = "bulkflow-replay-sample"

// ExportInput is the workflow's input: plain JSON, so `temporal workflow
// start --input`, the Temporal UI and Schedules can start exports too.
type ExportInput struct {
	// Server names a FHIR server in the worker's servers file; or give BaseURL.
	Server  string `json:"server,omitempty"`
	BaseURL string `json:"baseURL,omitempty"`
	// Level is "system" (default), "patient" or "group" (with Group).
	Level string `json:"level,omitempty"`
	Group string `json:"group,omitempty"`
	// The kick-off parameters of the Bulk Data IG.
	Types                 []string `json:"types,omitempty"`
	Since                 string   `json:"since,omitempty"`
	Until                 string   `json:"until,omitempty"`
	Elements              []string `json:"elements,omitempty"`
	TypeFilters           []string `json:"typeFilters,omitempty"`
	Patients              []string `json:"patients,omitempty"`
	OutputFormat          string   `json:"outputFormat,omitempty"`
	IncludeAssociatedData []string `json:"includeAssociatedData,omitempty"`
	// Incremental takes _since from the watermark of the last run that
	// fully committed for the same server, level, group, types and filters
	// (in the output location's _state/). With none, Since seeds the first
	// run, or it is a full export.
	Incremental bool `json:"incremental,omitempty"`
	// WatermarkPerType keeps one watermark per resource type (needs types):
	// an incremental run uses the oldest of its types'.
	WatermarkPerType bool `json:"watermarkPerType,omitempty"`
	// Method is "GET", "POST" or "" (GET unless patients are given).
	Method  string `json:"method,omitempty"`
	Lenient bool   `json:"lenient,omitempty"`
	// Output is a directory (absolute, or relative to the worker's output
	// root) or file:// URL; "" means the worker's output root.
	Output string `json:"output,omitempty"`
	// Format is "ndjson" (default), "parquet" or "both"; Gzip compresses
	// NDJSON; PartitionBy is "" (none), "transactionTime" or "lastUpdated"
	// (Hive-style <Type>/year=YYYY/month=MM/). See docs/lake.md.
	Format      string `json:"format,omitempty"`
	Gzip        bool   `json:"gzip,omitempty"`
	PartitionBy string `json:"partitionBy,omitempty"`
	// Strict fails the export when the server reports resources it could
	// not export (error/fatal OperationOutcomes in error[]); by default what
	// it did export is committed and the failures are named in the result
	// and _manifest.json.
	Strict bool `json:"strict,omitempty"`
	// Views are SQL on FHIR v2 ViewDefinitions to flatten the resources
	// into, as Parquet tables under views/<name>/ (docs/views.md): each
	// entry is the name of a view in the worker's views folder
	// (-views-dir) or a ViewDefinition in JSON (starting with '{').
	// With Format "none" only the view tables are kept.
	Views []string `json:"views,omitempty"`
	// Attachments is "none" (default) or "fetch": store the documents that
	// DocumentReference, DiagnosticReport, Media and Communication
	// resources point at (attachment.url) under attachments/ in the run,
	// listed by attachments/index.ndjson (docs/lake.md). MaxAttachmentBytes
	// caps one document (default 50 MiB), MaxAttachmentsBytes the run's
	// total (default: no cap); what is over is recorded, not stored.
	// "inline" instead writes the documents of the AttachmentTypes (default
	// text/plain, text/html, text/rtf, application/rtf, application/xml,
	// text/xml) as base64 into attachment.data of the resource lines, up to
	// MaxAttachmentBytes (default 1 MiB) each.
	Attachments         string   `json:"attachments,omitempty"`
	AttachmentTypes     []string `json:"attachmentTypes,omitempty"`
	MaxAttachmentBytes  int64    `json:"maxAttachmentBytes,omitempty"`
	MaxAttachmentsBytes int64    `json:"maxAttachmentsBytes,omitempty"`
	// Run names the run's folder in Output; default: the workflow ID.
	Run     string  `json:"run,omitempty"`
	Options Options `json:"options,omitempty"`

	// Resume carries state across continue-as-new. Not for callers.
	Resume *ResumeState `json:"resume,omitempty"`

	unknown []string // keys of the JSON input that name no field (input.go)
}

// Options tune a run; zero values take the defaults.
type Options struct {
	// Concurrency is how many files download at once (default 8).
	Concurrency int `json:"concurrency,omitempty"`
	// FilesPerChunk is how many files one child workflow downloads (default 500).
	FilesPerChunk int `json:"filesPerChunk,omitempty"`
	// ParallelChunks is how many chunk child workflows run side by side
	// (default 2); each downloads Concurrency files at once.
	ParallelChunks int `json:"parallelChunks,omitempty"`
	// MaxFileAttempts bounds the tries of one file (default 10).
	MaxFileAttempts int `json:"maxFileAttempts,omitempty"`
	// KeepJob skips the DELETE of the server's job after the run. By default
	// it is deleted: some EHRs allow one export per client at a time.
	KeepJob bool `json:"keepJob,omitempty"`
	// HeartbeatTimeout is how long a download may go without receiving a
	// byte before it is retried, e.g. "90s" (default 2m).
	HeartbeatTimeout string `json:"heartbeatTimeout,omitempty"`
	// MaxHistoryEvents is the history length at which a run continues as
	// new even before the server suggests it (default 5000).
	MaxHistoryEvents int `json:"maxHistoryEvents,omitempty"`
	// RetryDeadline is how long the kick-off or the status URL may keep
	// failing (5xx, timeouts, 429s) before the export fails, e.g. "2h"
	// (default 6h).
	RetryDeadline string `json:"retryDeadline,omitempty"`

	unknown []string
}

// Settings are a run's options with every default filled in. They are
// resolved once, when the export starts, and travel in ResumeState across
// continue-as-new: a worker built later with other defaults never changes
// an export already running (docs/versioning.md).
type Settings struct {
	Concurrency      int               `json:"concurrency"`
	FilesPerChunk    int               `json:"filesPerChunk"`
	MaxFileAttempts  int               `json:"maxFileAttempts"`
	HeartbeatTimeout time.Duration     `json:"heartbeatTimeout"`
	KeepJob          bool              `json:"keepJob,omitempty"`
	MaxHistoryEvents int               `json:"maxHistoryEvents"`
	Layout           activities.Layout `json:"layout"`
	RetryDeadline    time.Duration     `json:"retryDeadline,omitempty"`
	// ParallelChunks: 0 in settings resolved before the option existed,
	// which ran chunks one at a time (and still do).
	ParallelChunks int `json:"parallelChunks,omitempty"`
}

// ResumeState is what one workflow run hands the next on continue-as-new:
// small, whatever the export's size.
type ResumeState struct {
	// Settings are the resolved options; nil in state written by versions
	// before they were carried (then they are resolved from the input).
	Settings  *Settings `json:"settings,omitempty"`
	StatusURL string    `json:"statusURL,omitempty"`
	Polls     int       `json:"polls,omitempty"`
	StartedAt time.Time `json:"startedAt"`
	// Since is the _since this run uses, resolved once at its start.
	Since     string           `json:"since,omitempty"`
	SinceFrom string           `json:"sinceFrom,omitempty"`
	Run       string           `json:"run"`
	Plan      *activities.Plan `json:"plan,omitempty"`
	// NextChunk: every chunk before it has finished. ChunksDone lists the
	// finished chunks after it (chunks side by side finish out of order).
	NextChunk  int    `json:"nextChunk,omitempty"`
	ChunksDone []int  `json:"chunksDone,omitempty"`
	Totals     Totals `json:"totals"`
	Progress   string `json:"serverProgress,omitempty"`
	// PlanVersion counts manifest refreshes of this job (fresh links).
	PlanVersion int `json:"planVersion,omitempty"`
	// Generation counts every plan this export had (restarts and
	// refreshes); it never goes back, unlike PlanVersion.
	Generation int      `json:"generation,omitempty"`
	Refreshes  int      `json:"refreshes,omitempty"`
	Restarts   int      `json:"restarts,omitempty"`
	Warnings   []string `json:"warnings,omitempty"`
	// AttachmentChunks counts chunks whose attachments are fetched;
	// Attachments sums them (attachments "fetch").
	AttachmentChunks int                         `json:"attachmentChunks,omitempty"`
	Attachments      activities.AttachmentCounts `json:"attachments,omitzero"`
}

// Totals are the running sums of a run: the same type the run manifest uses.
type Totals = activities.Totals

// ExportResult is what a finished run returns.
type ExportResult struct {
	Status          string `json:"status"` // "committed" or "cancelled"
	Run             string `json:"run"`
	Location        string `json:"location,omitempty"`
	Manifest        string `json:"manifest,omitempty"`
	TransactionTime string `json:"transactionTime,omitempty"`
	// Since is the _since the run used; SinceFrom says where it came from:
	// "watermark", "input" or "" (a full export).
	Since     string `json:"since,omitempty"`
	SinceFrom string `json:"sinceFrom,omitempty"`
	// Watermark names the state object this run advanced, if any.
	Watermark string   `json:"watermark,omitempty"`
	Totals    Totals   `json:"totals"`
	Warnings  []string `json:"warnings,omitempty"`
	Polls     int      `json:"polls"`
	// Restarts counts how often the export was kicked off again because the
	// server lost the job.
	Restarts   int  `json:"restarts,omitempty"`
	JobDeleted bool `json:"jobDeleted"`
	// Attachments counts attachment references by status, and the bytes
	// stored (attachments "fetch" or "inline").
	Attachments *activities.AttachmentCounts `json:"attachments,omitempty"`
}

// Phases of an export, as the progress query reports them.
const (
	PhaseKickoff     = "kickoff"
	PhaseWaiting     = "waiting"
	PhaseDownloading = "downloading"
	PhaseCommitting  = "committing"
	PhaseDone        = "done"
	PhaseCancelled   = "cancelled"
	PhaseFailed      = "failed"
)

// SetConcurrencyUpdate is the Update that changes a running export's
// download window: `temporal workflow update execute --name setConcurrency
// --input 4` or the UI. Validated: 1 to 256. Returns the previous value.
const SetConcurrencyUpdate = "setConcurrency"

const setConcurrencySignal = "set-concurrency"

// ProgressQuery is the name of the query both workflows answer.
const ProgressQuery = "progress"

// Progress answers the progress query.
type Progress struct {
	Phase             string `json:"phase"`
	Run               string `json:"run"`
	ServerProgress    string `json:"serverProgress,omitempty"` // the server's X-Progress
	Polls             int    `json:"polls"`
	FilesDone         int    `json:"filesDone"`
	FilesTotal        int    `json:"filesTotal"`
	Resources         int64  `json:"resources"`
	ExpectedResources int64  `json:"expectedResources"`
	Bytes             int64  `json:"bytes"`
	Retries           int    `json:"retries"`
	TransactionTime   string `json:"transactionTime,omitempty"`
	Error             string `json:"error,omitempty"`
	// Retrying is set while a step is being retried, so a wait caused by a
	// failing server is visible as such (attempt, last error, next try).
	Retrying *RetryInfo `json:"retrying,omitempty"`
}

// RetryInfo describes the step of an export that is being retried now.
type RetryInfo struct {
	Step      string    `json:"step"` // e.g. "kick-off", "status", "Observation file 12 of 300"
	Attempt   int       `json:"attempt"`
	LastError string    `json:"lastError"`
	NextRetry time.Time `json:"nextRetry,omitempty"`
}

var (
	runName       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.=-]{0,199}$`)
	runNameUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.=-]+`)
)

// Validate checks the input before anything is sent to the server; messages
// say what to change. The kick-off parameters are checked by the protocol
// client's own validator (one set of rules for the workflow and the
// activity); the rest are the workflow's.
func (in *ExportInput) Validate() error {
	var errs []error
	for _, k := range append(append([]string(nil), in.unknown...), in.Options.unknown...) {
		errs = append(errs, errors.New(k))
	}
	if in.Server == "" && in.BaseURL == "" {
		errs = append(errs, errors.New(`give "server" (a name from the worker's servers file) or "baseURL"`))
	}
	if in.BaseURL != "" && !strings.HasPrefix(in.BaseURL, "http://") && !strings.HasPrefix(in.BaseURL, "https://") {
		errs = append(errs, fmt.Errorf(`"baseURL" %q must start with https:// (or http:// for local test servers)`, in.BaseURL))
	}
	for _, p := range kickoffProblems(in.kickoff(activities.ServerRef{}, activities.Target{}, in.Since)) {
		errs = append(errs, errors.New(p))
	}
	if in.WatermarkPerType && len(in.Types) == 0 {
		errs = append(errs, errors.New(`"watermarkPerType" needs "types": the watermark is kept per listed type`))
	}
	if in.Incremental && in.Until != "" {
		errs = append(errs, errors.New(`"incremental" and "until" do not go together: an incremental run exports everything changed since the watermark`))
	}
	if in.Run != "" && !runName.MatchString(in.Run) {
		errs = append(errs, fmt.Errorf(`"run" %q: use letters, digits, '.', '_', '=', '-' (it names a folder)`, in.Run))
	}
	if _, err := activities.ViewNames(in.Views); err != nil {
		errs = append(errs, fmt.Errorf(`"views": %w`, err))
	}
	if err := in.layout().Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := in.attachmentPolicy().Validate(); err != nil {
		errs = append(errs, err)
	}
	if in.attachmentPolicy() == nil && (in.MaxAttachmentBytes != 0 || in.MaxAttachmentsBytes != 0 || len(in.AttachmentTypes) > 0) {
		errs = append(errs, errors.New(`"maxAttachmentBytes", "maxAttachmentsBytes" and "attachmentTypes" need "attachments": "fetch" or "inline"`))
	}
	o := in.Options
	if o.Concurrency < 0 || o.Concurrency > 256 {
		errs = append(errs, fmt.Errorf(`"options.concurrency" %d: use 1 to 256`, o.Concurrency))
	}
	if o.FilesPerChunk < 0 || o.FilesPerChunk > 2000 {
		errs = append(errs, fmt.Errorf(`"options.filesPerChunk" %d: use 1 to 2000 (it bounds each child workflow's history)`, o.FilesPerChunk))
	}
	if o.ParallelChunks < 0 || o.ParallelChunks > maxParallelChunks {
		errs = append(errs, fmt.Errorf(`"options.parallelChunks" %d: use 1 to %d (chunk child workflows side by side)`, o.ParallelChunks, maxParallelChunks))
	}
	if o.HeartbeatTimeout != "" {
		if d, err := time.ParseDuration(o.HeartbeatTimeout); err != nil || d < time.Second {
			errs = append(errs, fmt.Errorf(`"options.heartbeatTimeout" %q: use a duration of at least 1s, such as "90s"`, o.HeartbeatTimeout))
		}
	}
	if o.RetryDeadline != "" {
		if d, err := time.ParseDuration(o.RetryDeadline); err != nil || d < time.Minute {
			errs = append(errs, fmt.Errorf(`"options.retryDeadline" %q: use a duration of at least 1m, such as "2h"`, o.RetryDeadline))
		}
	}
	if o.MaxFileAttempts < 0 {
		errs = append(errs, fmt.Errorf(`"options.maxFileAttempts" %d must not be negative`, o.MaxFileAttempts))
	}
	if o.MaxHistoryEvents != 0 && (o.MaxHistoryEvents < 10 || o.MaxHistoryEvents > 40000) {
		errs = append(errs, fmt.Errorf(`"options.maxHistoryEvents" %d: use 10 to 40000 (Temporal's hard limit is 51,200 events)`, o.MaxHistoryEvents))
	}
	return errors.Join(errs...)
}

func (in *ExportInput) layout() activities.Layout {
	names, _ := activities.ViewNames(in.Views) // validated input: one name per view
	return activities.Layout{Format: in.Format, Gzip: in.Gzip, PartitionBy: in.PartitionBy, CheckSubsetted: len(in.Elements) > 0, Strict: in.Strict, Views: names,
		Attachments: in.attachmentPolicy()}
}

// attachmentPolicy is nil unless the input asks for attachments.
func (in *ExportInput) attachmentPolicy() *activities.AttachmentPolicy {
	if in.Attachments == "" || in.Attachments == "none" {
		return nil
	}
	return &activities.AttachmentPolicy{Mode: in.Attachments, MaxBytes: in.MaxAttachmentBytes, MaxTotal: in.MaxAttachmentsBytes, Types: in.AttachmentTypes}
}

// chunks is the number of child workflows for a plan of files.
func (s Settings) chunks(files int) int { return (files + s.FilesPerChunk - 1) / s.FilesPerChunk }

// Defaults of the options. Changing one affects exports started afterwards
// only: running ones carry their resolved Settings.
const (
	defaultConcurrency      = 8
	defaultFilesPerChunk    = 500
	defaultMaxFileAttempts  = 10
	defaultHeartbeatTimeout = 2 * time.Minute
	defaultMaxHistoryEvents = 5000
	defaultRetryDeadline    = 6 * time.Hour
	// Two chunks of 8 downloads fill one worker's defaults (-max-activities
	// 16, maxConcurrentDownloads 16 per server), and one chunk's ramp-down
	// and bookkeeping (its last files, RecordChunk, the next child's start)
	// overlap the other's downloads. Fleets raise it (docs/scale.md).
	defaultParallelChunks = 2
	// maxParallelChunks bounds the parent's history: each chunk in flight
	// adds a progress signal every 15 s, and the window drains before
	// continue-as-new.
	maxParallelChunks = 16
)

// settings resolves the options against today's defaults (validated input).
func (in *ExportInput) settings() Settings {
	o := in.Options
	s := Settings{Concurrency: cmp.Or(o.Concurrency, defaultConcurrency), FilesPerChunk: cmp.Or(o.FilesPerChunk, defaultFilesPerChunk),
		MaxFileAttempts: cmp.Or(o.MaxFileAttempts, defaultMaxFileAttempts), HeartbeatTimeout: defaultHeartbeatTimeout,
		KeepJob: o.KeepJob, MaxHistoryEvents: cmp.Or(o.MaxHistoryEvents, defaultMaxHistoryEvents), Layout: in.layout(),
		ParallelChunks: cmp.Or(o.ParallelChunks, defaultParallelChunks)}
	if d, err := time.ParseDuration(o.HeartbeatTimeout); err == nil {
		s.HeartbeatTimeout = d
	}
	s.RetryDeadline = defaultRetryDeadline
	if d, err := time.ParseDuration(o.RetryDeadline); err == nil {
		s.RetryDeadline = d
	}
	return s
}

// RunName derives a folder name from a workflow ID.
func RunName(workflowID string) string {
	s := runNameUnsafe.ReplaceAllString(workflowID, "_")
	s = strings.TrimLeft(s, "._-=")
	if len(s) > 200 {
		s = s[:200]
	}
	if s == "" {
		s = "run"
	}
	return s
}

// requestSummary is what the run manifest records of the request: no patient
// list (it can be long and identifying), its size instead.
func (in *ExportInput) requestSummary() map[string]any {
	m := map[string]any{"level": orDefault(in.Level, "system")}
	set := func(k string, v any, ok bool) {
		if ok {
			m[k] = v
		}
	}
	set("server", in.Server, in.Server != "")
	set("baseURL", in.BaseURL, in.BaseURL != "")
	set("group", in.Group, in.Group != "")
	set("types", in.Types, len(in.Types) > 0)
	set("since", in.Since, in.Since != "")
	set("until", in.Until, in.Until != "")
	set("elements", in.Elements, len(in.Elements) > 0)
	set("typeFilters", in.TypeFilters, len(in.TypeFilters) > 0)
	set("patientCount", len(in.Patients), len(in.Patients) > 0)
	set("outputFormat", in.OutputFormat, in.OutputFormat != "")
	set("format", in.Format, in.Format != "")
	set("gzip", in.Gzip, in.Gzip)
	set("partitionBy", in.PartitionBy, in.PartitionBy != "")
	set("strict", in.Strict, in.Strict)
	if names, _ := activities.ViewNames(in.Views); len(names) > 0 {
		set("views", names, true) // names only: a definition is in the run's tables' metadata
	}
	set("attachments", in.Attachments, in.Attachments != "" && in.Attachments != "none")
	return m
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
