package activities

import (
	"time"

	"github.com/bulkflow/bulkflow/internal/bulk"
)

// The inputs and results below travel through Temporal history. They hold
// URLs, counts, names and paths only: never resource content, tokens or
// credentials. File URLs stay in the staged plan (they can be capability URLs).

// ServerRef names the FHIR server: a name from the worker's servers file, or
// a base URL. Credentials are looked up by the worker.
type ServerRef struct {
	Server  string `json:"server,omitempty"`
	BaseURL string `json:"baseURL,omitempty"`
}

// Target is a run in an output location.
type Target struct {
	Output string `json:"output,omitempty"` // "" = the worker's output root
	Run    string `json:"run"`
}

// KickoffInput starts an export on the server.
type KickoffInput struct {
	ServerRef
	Target
	Level                 string   `json:"level,omitempty"`
	Group                 string   `json:"group,omitempty"`
	Types                 []string `json:"types,omitempty"`
	Since                 string   `json:"since,omitempty"`
	Until                 string   `json:"until,omitempty"`
	Elements              []string `json:"elements,omitempty"`
	TypeFilters           []string `json:"typeFilters,omitempty"`
	Patients              []string `json:"patients,omitempty"`
	OutputFormat          string   `json:"outputFormat,omitempty"`
	IncludeAssociatedData []string `json:"includeAssociatedData,omitempty"`
	Method                string   `json:"method,omitempty"`
	Lenient               bool     `json:"lenient,omitempty"`
	// Attempt is the workflow's attempt number when it drives the retries
	// itself (each activity then runs once): the budgets for refused
	// connections and stalled requests count it (activities/errors.go).
	Attempt int32 `json:"attempt,omitempty"`
}

// Request is the protocol client's kick-off request. The workflow validates
// its input with the same value (bulk.KickoffRequest.Validate), so what the
// workflow accepts the activity accepts too.
func (in KickoffInput) Request() bulk.KickoffRequest {
	r := bulk.KickoffRequest{
		Level: bulk.Level(in.Level), GroupID: in.Group, Types: in.Types, Since: in.Since, Until: in.Until,
		Elements: in.Elements, TypeFilters: in.TypeFilters, Patients: in.Patients, OutputFormat: in.OutputFormat,
		IncludeAssociatedData: in.IncludeAssociatedData, Method: in.Method, Lenient: in.Lenient,
	}
	if r.Level == "" {
		r.Level = bulk.LevelSystem
	}
	return r
}

// KickoffResult is where to poll.
type KickoffResult struct {
	StatusURL string `json:"statusURL"`
}

// PollInput asks for the status of a running export once.
type PollInput struct {
	ServerRef
	Target
	StatusURL string `json:"statusURL"`
	// Poll is the number of earlier polls, for backoff when the server gives no Retry-After.
	Poll int `json:"poll"`
	// PlanVersion > 0 re-fetches a finished manifest for fresh links and
	// stages it as that version of the plan.
	PlanVersion int `json:"planVersion,omitempty"`
	// Attempt: as KickoffInput.Attempt.
	Attempt int32 `json:"attempt,omitempty"`
}

// PollResult is either "wait this long" or the plan of files to download.
type PollResult struct {
	Done     bool          `json:"done"`
	Progress string        `json:"progress,omitempty"` // the server's X-Progress
	Wait     time.Duration `json:"wait,omitempty"`     // Retry-After (clamped) or backoff
	Plan     *Plan         `json:"plan,omitempty"`
}

// File kinds, from the manifest arrays they came from.
const (
	KindOutput  = "output"
	KindError   = "error"
	KindDeleted = "deleted"
	// KindTombstone marks the per-type deletion datasets made from deleted files.
	KindTombstone = "tombstone"
)

// Plan summarises the server's manifest, which itself is staged in the run's
// work area (PlanObject). Files are ordered by kind then type, so each Group
// is a contiguous index range and the workflow's history stays small however
// many files there are.
type Plan struct {
	TransactionTime     string    `json:"transactionTime"`
	Request             string    `json:"request,omitempty"`
	RequiresAccessToken bool      `json:"requiresAccessToken"`
	Expires             time.Time `json:"expires,omitempty"`
	Files               int       `json:"files"`
	// Groups name the files for people (activity summaries). A manifest of
	// more than MaxPlanGroups groups (one per kind and type) leaves them out:
	// the plan must stay small in history whatever the server sends.
	Groups        []Group `json:"groups,omitempty"`
	GroupsOmitted int     `json:"groupsOmitted,omitempty"`
	// Digest hashes every group: a re-fetched manifest for the same job
	// must have the same one.
	Digest string `json:"digest,omitempty"`
	// ExpectedResources sums the manifest counts of output files that have one.
	ExpectedResources int64 `json:"expectedResources"`
	// Warnings about the manifest's timestamps: a transactionTime in the
	// future (the watermark will not move), an Expires already past
	// (ignored). Commit writes them into _manifest.json; the workflow may
	// add them to its result's warnings.
	Warnings []string `json:"warnings,omitempty"`
	// TransactionTimeAhead: transactionTime was more than ClockSkew ahead
	// of the worker's clock; Commit does not advance the watermark to it.
	TransactionTimeAhead bool `json:"transactionTimeAhead,omitempty"`
}

// minPollWait is the shortest wait between status polls, whatever the
// server's Retry-After says.
const minPollWait = time.Second

// MaxPlanGroups bounds the groups a plan summary carries through workflow
// history (about 100 bytes each).
const MaxPlanGroups = 1000

// maxPollResult bounds a PollStatus result: far below Temporal's 2 MB
// payload limit, whatever the manifest holds.
const maxPollResult = 256 << 10

// Group is a run of plan files of one kind and type.
type Group struct {
	Kind  string `json:"kind"`
	Type  string `json:"type"`
	First int    `json:"first"`
	Count int    `json:"count"`
}

// DownloadInput names one file of the staged plan by index.
type DownloadInput struct {
	ServerRef
	Target
	Index       int `json:"index"`
	PlanVersion int `json:"planVersion,omitempty"`
	// Generation numbers the plan this download belongs to: it grows with
	// every restart and manifest refresh of the export, so staging can keep
	// a replaced plan's late writers apart from the current plan's files.
	Generation int    `json:"generation,omitempty"`
	Layout     Layout `json:"layout,omitempty"`
	// PriorFailure is the signature of the validation failure of this
	// file's try in a DownloadBatch (FileFailure.Signature): the first
	// attempt here that fails the same way is permanent, as a second
	// attempt of DownloadFile would be.
	PriorFailure string `json:"priorFailure,omitempty"`
}

// FileResult describes one staged file. It is what the run manifest lists.
type FileResult struct {
	Index     int    `json:"index"`
	Kind      string `json:"kind"`
	Type      string `json:"type"`
	Path      string `json:"path"`
	Resources int64  `json:"resources"`
	Bytes     int64  `json:"bytes"`
	SHA256    string `json:"sha256"`
	Attempt   int32  `json:"attempt"`
	Resumed   bool   `json:"resumed,omitempty"` // continued from an earlier attempt's checkpoint with Range
	// Generation is the plan generation that staged it: Commit promotes its
	// objects from that generation's staging path.
	Generation int `json:"generation,omitempty"`
	// Severity counts OperationOutcome issues by severity (error files).
	Severity map[string]int64 `json:"severity,omitempty"`
	// Failed is an error file's manifest count: servers give the number of
	// resources that could not be exported there (error files).
	Failed int64 `json:"failed,omitempty"`
	// Deleted counts deletions by resource type (deleted files).
	Deleted map[string]int64 `json:"deleted,omitempty"`
	// Unsubsetted counts resources without the SUBSETTED tag (with _elements).
	Unsubsetted int64 `json:"unsubsetted,omitempty"`
	// Parts are the objects the file became in the lake. DownloadFile
	// returns them by reference: in Record, a staged object that RecordChunk
	// reads, so Temporal never carries hundreds of partition objects.
	Parts  []Part `json:"parts,omitempty"`
	Record string `json:"record,omitempty"`
	// NotKept: with format "none" the file's resources were validated and
	// flattened into view tables (its Parts, if any) but not kept.
	NotKept bool `json:"notKept,omitempty"`
}

// RecordChunkInput stores a chunk's file results in the run's work area, so
// that Commit can list every file without the parent workflow carrying them.
type RecordChunkInput struct {
	Target
	Chunk int          `json:"chunk"`
	Files []FileResult `json:"files"`
}

// CommitInput promotes a run.
type CommitInput struct {
	Target
	Chunks    int            `json:"chunks"`
	Plan      Plan           `json:"plan"`
	Request   map[string]any `json:"request"` // what was asked, for the run manifest
	StartedAt time.Time      `json:"startedAt"`
	Workflow  string         `json:"workflowId"`
	Warnings  []string       `json:"warnings,omitempty"`
	// Watermark, when set, is advanced after the manifest is written.
	Watermark *WatermarkUpdate `json:"watermark,omitempty"`
	// Views names the export's views, for the manifest's "views".
	Views []string `json:"views,omitempty"`
	// Attachments: FetchAttachments ran for every chunk; their records
	// become attachments/index.ndjson and their documents are committed.
	Attachments bool `json:"attachments,omitempty"`
}

// CommitResult says where the run landed.
type CommitResult struct {
	Location string `json:"location"`
	Manifest string `json:"manifest"`
	Files    int    `json:"files"`
	// Watermark names the state object advanced to this run's
	// transactionTime ("" if none was).
	Watermark string `json:"watermark,omitempty"`
}

// DeleteJobInput asks the server to drop an export job.
type DeleteJobInput struct {
	ServerRef
	Target
	StatusURL string `json:"statusURL"`
}

// Add counts one downloaded file.
func (t *Totals) Add(f FileResult) {
	t.Files++
	t.Unsubsetted += f.Unsubsetted
	t.Bytes += f.Bytes
	if f.Attempt > 1 {
		t.Retries += int(f.Attempt - 1)
	}
	switch f.Kind {
	case KindOutput:
		t.Resources = AddCounts(t.Resources, map[string]int64{f.Type: f.Resources})
	case KindDeleted:
		t.Deleted = AddCounts(t.Deleted, f.Deleted)
	case KindError:
		t.Issues = AddCounts(t.Issues, f.Severity)
		t.Failed += f.Failed
	}
}

// Merge adds o into t.
func (t *Totals) Merge(o Totals) {
	t.Files += o.Files
	t.Unsubsetted += o.Unsubsetted
	t.Bytes += o.Bytes
	t.Retries += o.Retries
	t.Resources = AddCounts(t.Resources, o.Resources)
	t.Deleted = AddCounts(t.Deleted, o.Deleted)
	t.Issues = AddCounts(t.Issues, o.Issues)
	t.Failed += o.Failed
}

// ResourceCount sums resources over types.
func (t Totals) ResourceCount() int64 {
	var n int64
	for _, v := range t.Resources {
		n += v
	}
	return n
}
