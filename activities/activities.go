// Package activities holds bulkflow's Temporal activities: the only code that
// talks to FHIR servers and writes output. Workflows orchestrate them and see
// metadata only.
package activities

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/maphash"
	"io"
	"log/slog"
	"math"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.temporal.io/sdk/activity"

	"github.com/bulkflow/bulkflow/internal/atrest"
	"github.com/bulkflow/bulkflow/internal/audit"
	"github.com/bulkflow/bulkflow/internal/budget"
	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/metrics"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/sink"
	"github.com/bulkflow/bulkflow/internal/throttle"
)

// Activities holds what the activities need. One value is registered with
// the worker and shared by every activity it runs.
type Activities struct {
	Servers *servers.Registry
	// OutputRoot is where an empty or relative output location goes.
	OutputRoot string
	Logger     *slog.Logger
	// HeartbeatEvery spaces progress heartbeats of a download (default 5s).
	HeartbeatEvery time.Duration
	// CheckpointBytes spaces durable checkpoints a retry can resume from
	// (default 64 MiB; also at most every HeartbeatEvery).
	CheckpointBytes int64
	// MaxLineBytes caps one NDJSON line, i.e. one resource (default
	// ndjson.DefaultMaxLineBytes, 64 MiB: inline attachments fit, an
	// endless line from a decompression bomb does not). A download holds
	// at most about this much of a line in memory, so a worker's worst case
	// is its concurrent downloads times this (docs/configuration.md).
	MaxLineBytes int
	// Metrics records Prometheus metrics (internal/metrics); nil records none.
	Metrics *metrics.Recorder
	// Keyset, when set, encrypts every staged and committed object at rest
	// (Tink streaming AEAD; internal/atrest). Manifests, watermarks and
	// audit logs stay readable: they hold no PHI.
	Keyset *atrest.Keyset
	// AuditLive, when set, gets a live copy of every audit event (e.g.
	// stdout); the audit log in the output location is always written.
	AuditLive io.Writer
	// ViewsDir is the worker's views folder: an export may name the
	// ViewDefinitions in it (<name>.json) instead of giving them inline.
	ViewsDir string

	// Budget hands out download slots per server. The worker sets the
	// fleet's (budget.NewFleet: one budget per server for every worker);
	// nil means a budget of this process only (budget.Local).
	Budget budget.Budget

	mu       sync.Mutex
	sinks    map[string]sink.Sink
	local    budget.Local
	plans    map[string]*plan // small cache: plans are read by every download of a run
	order    []string
	viewSets map[string]*viewSet // compiled staged views, by run (views.go)
}

// New returns Activities with their defaults.
func New(reg *servers.Registry, outputRoot string, logger *slog.Logger) *Activities {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Activities{Servers: reg, OutputRoot: outputRoot, Logger: logger}
}

// PlanObject is the staged copy of the server's manifest, in plan order.
const PlanObject = sink.WorkPrefix + "plan.json"

// resolveOutput places a run's output location: "" is the worker's root, a
// relative path goes under it (joined as a URL path for an object-storage
// root: filepath.Join would fold "gs://" into "gs:/"), anything absolute
// stands as given.
func resolveOutput(root, output string) string {
	switch {
	case output == "":
		return root
	case strings.Contains(output, "://") || filepath.IsAbs(output):
		return output
	case strings.Contains(root, "://"):
		return strings.TrimRight(root, "/") + "/" + path.Clean(output)
	}
	return filepath.Join(root, output)
}

// planObject names version v of the plan: refreshed manifests (fresh links
// for expired files) are staged beside the first, never over it, so a
// download still running with the old links reads a consistent plan.
func planObject(v int) string {
	if v == 0 {
		return PlanObject
	}
	return fmt.Sprintf("%splan-%d.json", sink.WorkPrefix, v)
}

type plan struct {
	TransactionTime     string    `json:"transactionTime"`
	Request             string    `json:"request,omitempty"`
	RequiresAccessToken bool      `json:"requiresAccessToken"`
	Expires             time.Time `json:"expires,omitempty"`
	Warnings            []string  `json:"warnings,omitempty"`
	// TransactionTimeAhead: transactionTime was in the future when the
	// manifest arrived; the watermark is not advanced to it.
	TransactionTimeAhead bool          `json:"transactionTimeAhead,omitempty"`
	Files                []plannedFile `json:"files"`
}

type plannedFile struct {
	Kind     string `json:"kind"`
	Type     string `json:"type"`
	URL      string `json:"url"`
	Count    int64  `json:"count,omitempty"`
	HasCount bool   `json:"hasCount,omitempty"`
	// Size is the manifest's fileSize (a hint for grouping small files).
	Size    int64  `json:"size,omitempty"`
	HasSize bool   `json:"hasSize,omitempty"`
	Path    string `json:"path"`
}

func (a *Activities) sinkFor(output string) (sink.Sink, error) {
	loc := resolveOutput(a.OutputRoot, output)
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.sinks[loc]; ok {
		return s, nil
	}
	s, err := sink.Open(loc)
	if err != nil {
		return nil, permanent("Config", err)
	}
	if a.Keyset != nil {
		s = atrest.Wrap(s, a.Keyset)
	}
	if a.sinks == nil {
		a.sinks = map[string]sink.Sink{}
	}
	a.sinks[loc] = s
	return s, nil
}

func (a *Activities) client(ref ServerRef) (*bulk.Client, error) {
	c, err := a.Servers.Client(ref.Server, ref.BaseURL)
	if err != nil {
		return nil, permanent("Config", err)
	}
	return c, nil
}

// Kickoff starts the export and returns its status URL. One attempt: the
// workflow drives retries (it shows them in the progress query and bounds
// them).
//
// A kick-off whose 202 is lost (a network error after the server accepted
// it) leaves a job whose status URL bulkflow never learns, so it cannot be
// polled or DELETEd: the Bulk Data protocol has no way to find it. The
// retry starts a new job; servers that allow one export per client answer
// it with 429 until the lost job expires, which the workflow waits out
// (429s do not count against the kick-off's 10 attempts, only against the
// retry deadline). The audit log records every kick-off attempt, so an
// operator can match orphaned jobs on the server's side.
func (a *Activities) Kickoff(ctx context.Context, in KickoffInput) (KickoffResult, error) {
	ctx, _, finish := a.begin(ctx, in.ServerRef, in.Target)
	defer finish()
	c, err := a.client(in.ServerRef)
	if err != nil {
		return KickoffResult{}, err
	}
	req := in.Request()
	if err := req.Validate(); err != nil {
		return KickoffResult{}, permanent("InvalidInput", err)
	}
	statusURL, err := c.Kickoff(ctx, req)
	if err != nil {
		a.observeOutcome(in.ServerRef, "kickoff", err)
		return KickoffResult{}, temporalErrorAt(attemptOf(ctx, in.Attempt), err)
	}
	a.Logger.Info("export started", "server", serverName(in.ServerRef), "level", req.Level, "status_url", stripQuery(statusURL))
	return KickoffResult{StatusURL: statusURL}, nil
}

// PollStatus asks for the export's status once. When the export is done it
// follows every manifest page, stages the plan and returns its summary.
func (a *Activities) PollStatus(ctx context.Context, in PollInput) (PollResult, error) {
	ctx, rec, finish := a.begin(ctx, in.ServerRef, in.Target)
	defer finish()
	c, err := a.client(in.ServerRef)
	if err != nil {
		return PollResult{}, err
	}
	st, err := c.Status(ctx, in.StatusURL)
	if err != nil {
		a.observeOutcome(in.ServerRef, "status", err)
		return PollResult{}, temporalErrorAt(attemptOf(ctx, in.Attempt), err)
	}
	if !st.Done {
		wait := st.RetryAfter
		if wait <= 0 {
			// BD2 L306: without Retry-After, clients SHOULD back off
			// exponentially. Half the ceiling is fixed, so jitter never
			// turns into a burst of polls.
			c := bulk.BackoffCeiling(in.Poll, 2*time.Second, time.Minute)
			wait = c/2 + bulk.Backoff(in.Poll, 2*time.Second, time.Minute)/2
		}
		wait = max(wait, minPollWait)
		return PollResult{Progress: clipText(st.Progress, 256), Wait: wait}, nil
	}
	m, err := c.FetchAll(ctx, st.Manifest)
	if err != nil {
		return PollResult{}, temporalErrorAt(attemptOf(ctx, in.Attempt), err)
	}
	p, err := buildPlan(m, st.Expires, time.Now())
	if err != nil {
		return PollResult{}, permanent("InvalidManifest", err)
	}
	for _, w := range p.Warnings {
		a.Logger.Warn("manifest warning", "server", serverName(in.ServerRef), "warning", w)
	}
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return PollResult{}, err
	}
	if err := writeJSON(ctx, s, in.Run, planObject(in.PlanVersion), p); err != nil {
		return PollResult{}, retryable("Sink", fmt.Errorf("stage plan: %w", err))
	}
	a.cachePlan(in.Target, in.PlanVersion, p)
	sum := summarize(p)
	res := PollResult{Done: true, Progress: clipText(st.Progress, 256), Plan: &sum}
	if err := checkPollResultSize(res); err != nil {
		return PollResult{}, err
	}
	rec.Emit("manifest", map[string]any{"transactionTime": p.TransactionTime, "requiresAccessToken": p.RequiresAccessToken,
		"outputFileCount": len(m.Output), "errorFileCount": len(m.Error), "deletedFileCount": len(m.Deleted), "expectedResources": sum.ExpectedResources})
	a.Logger.Info("export ready", "server", serverName(in.ServerRef), "files", sum.Files, "transaction_time", p.TransactionTime)
	return res, nil
}

// checkPollResultSize is the last guard before a result enters workflow
// history: every server string in it is validated or clipped already, so a
// result this large is a defect to report, not something to retry.
func checkPollResultSize(res PollResult) error {
	if b, _ := json.Marshal(res); len(b) > maxPollResult {
		return permanent("PayloadTooLarge", fmt.Errorf("the manifest summary would be %d bytes in workflow history (limit %d): the server's manifest has oversized fields; report it to the server's operators", len(b), maxPollResult))
	}
	return nil
}

// clipText bounds a server-supplied string kept in workflow history or an
// error message, and makes it valid UTF-8.
func clipText(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

var resourceTypeName = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)

// ClockSkew is how far ahead of the worker's clock a server timestamp may
// be before it is treated as wrong.
const ClockSkew = 5 * time.Minute

// ParseInstant parses a FHIR instant (RFC 3339 with a time zone), the
// shape of transactionTime and of _since.
func ParseInstant(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || strings.TrimSpace(s) != s || t.Year() < 1900 {
		return time.Time{}, fmt.Errorf("%q is not a FHIR instant (like 2026-01-02T03:04:05.678Z)", clipText(s, 60))
	}
	return t, nil
}

// CheckWatermarkTime says why an instant must not become a watermark
// (the next run's _since): not an instant, or ahead of now by more than
// ClockSkew, which would make every later incremental run skip changes.
func CheckWatermarkTime(s string, now time.Time) error {
	t, err := ParseInstant(s)
	if err != nil {
		return err
	}
	if ahead := t.Sub(now); ahead > ClockSkew {
		return fmt.Errorf("%s is %s ahead of this worker's clock (more than the %s allowed for clock skew)", s, ahead.Round(time.Second), ClockSkew)
	}
	return nil
}

// buildPlan turns the manifest into the run's plan. Server timestamps are
// checked here, once: a transactionTime that is not an instant fails the
// run (it would become the next _since); one in the future is a warning and
// the watermark stays where it is (Commit checks again); an Expires already
// past when the manifest arrives (a "no-cache" Expires: 0 or 1970, or a
// server clock behind ours) is treated as absent, so links are refreshed
// only when a file is actually refused.
func buildPlan(m *bulk.Manifest, expires, now time.Time) (*plan, error) {
	if m.TransactionTime == "" {
		return nil, errors.New("the server's manifest has no transactionTime")
	}
	if _, err := ParseInstant(m.TransactionTime); err != nil {
		return nil, fmt.Errorf("the server's transactionTime %w; it would be the next run's _since, so the export stops here: report it to the server's operators", err)
	}
	var warnings []string
	ahead := false
	if err := CheckWatermarkTime(m.TransactionTime, now); err != nil {
		ahead = true
		warnings = append(warnings, fmt.Sprintf("the server's transactionTime %s; the run is committed but the incremental watermark is not advanced (check the server's clock)", err))
	}
	if !expires.IsZero() && !expires.After(now) {
		warnings = append(warnings, fmt.Sprintf("the server's Expires header (%s) had already passed when the manifest arrived; it is ignored, and file links are refreshed only if the server refuses one", expires.UTC().Format(time.RFC3339)))
		expires = time.Time{}
	}
	if m.OutputOrganizedBy != "" {
		return nil, fmt.Errorf("the server organised output by %s (organizeOutputBy); bulkflow needs one resource type per file, so export without organizeOutputBy", m.OutputOrganizedBy)
	}
	p := &plan{TransactionTime: m.TransactionTime, Request: m.Request, RequiresAccessToken: m.RequiresAccessToken, Expires: expires, Warnings: warnings, TransactionTimeAhead: ahead}
	add := func(kind string, items []bulk.FileItem, fixedType, dir string) error {
		sorted := append([]bulk.FileItem(nil), items...)
		// Stable: files of a type keep the server's order, so names are deterministic.
		sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Type < sorted[j].Type })
		seq := map[string]int{}
		for _, it := range sorted {
			typ := it.Type
			if fixedType != "" && typ == "" {
				typ = fixedType
			}
			if !resourceTypeName.MatchString(typ) {
				// The entry's URL may be a capability URL (the secret in its
				// path) and the type is the server's text: neither goes into
				// history as it came.
				u := stripQuery(it.URL)
				if !m.RequiresAccessToken {
					u = redactCapability(it.URL)
				}
				if len(typ) > 64 {
					typ = typ[:64] + "…"
				}
				return fmt.Errorf("manifest %s entry %q has type %q, which is not a FHIR resource type", kind, u, typ)
			}
			seq[typ]++
			d := dir
			if d == "" {
				d = typ
			}
			p.Files = append(p.Files, plannedFile{
				Kind: kind, Type: typ, URL: it.URL, Count: it.Count, HasCount: it.HasCount, Size: it.FileSize, HasSize: it.HasFileSize,
				Path: fmt.Sprintf("%s/%s-%04d.ndjson", d, typ, seq[typ]),
			})
		}
		return nil
	}
	if err := add(KindOutput, m.Output, "", ""); err != nil {
		return nil, err
	}
	if err := add(KindError, m.Error, "OperationOutcome", "_errors"); err != nil {
		return nil, err
	}
	if err := add(KindDeleted, m.Deleted, "Bundle", "_deleted"); err != nil {
		return nil, err
	}
	return p, nil
}

func summarize(p *plan) Plan {
	s := Plan{TransactionTime: p.TransactionTime, Request: clipText(stripQuery(p.Request), 2048), RequiresAccessToken: p.RequiresAccessToken, Expires: p.Expires, Files: len(p.Files), Warnings: p.Warnings, TransactionTimeAhead: p.TransactionTimeAhead}
	for i, f := range p.Files {
		if n := len(s.Groups); n > 0 && s.Groups[n-1].Kind == f.Kind && s.Groups[n-1].Type == f.Type {
			s.Groups[n-1].Count++
		} else {
			s.Groups = append(s.Groups, Group{Kind: f.Kind, Type: f.Type, First: i, Count: 1})
		}
		if f.Kind == KindOutput && f.HasCount {
			s.ExpectedResources += f.Count
		}
	}
	h := sha256.New()
	for _, g := range s.Groups {
		fmt.Fprintf(h, "%s\x00%s\x00%d\x00%d\n", g.Kind, g.Type, g.First, g.Count)
	}
	s.Digest = hex.EncodeToString(h.Sum(nil))[:32]
	if len(s.Groups) > MaxPlanGroups {
		s.GroupsOmitted, s.Groups = len(s.Groups), nil
	}
	return s
}

func planKey(t Target, v int) string { return fmt.Sprintf("%s\x00%s\x00%d", t.Output, t.Run, v) }

func (a *Activities) cachePlan(t Target, v int, p *plan) {
	key := planKey(t, v)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.plans == nil {
		a.plans = map[string]*plan{}
	}
	if _, ok := a.plans[key]; !ok {
		a.order = append(a.order, key)
		if len(a.order) > 8 {
			delete(a.plans, a.order[0])
			a.order = a.order[1:]
		}
	}
	a.plans[key] = p
}

func (a *Activities) loadPlan(ctx context.Context, s sink.Sink, t Target, v int) (*plan, error) {
	key := planKey(t, v)
	a.mu.Lock()
	p := a.plans[key]
	a.mu.Unlock()
	if p != nil {
		return p, nil
	}
	rc, err := s.Open(ctx, t.Run, planObject(v))
	if err != nil {
		if errors.Is(err, sink.ErrNotFound) {
			return nil, permanent("PlanMissing", fmt.Errorf("run %s has no staged plan (was its staging area removed?): %w", t.Run, err))
		}
		return nil, retryable("Sink", err)
	}
	defer rc.Close()
	p = new(plan)
	if err := json.NewDecoder(rc).Decode(p); err != nil {
		return nil, permanent("PlanMissing", fmt.Errorf("run %s: staged plan unreadable: %w", t.Run, err))
	}
	a.cachePlan(t, v, p)
	return p, nil
}

// DownloadFile streams one file from the server into the run's staging
// area, validating every line: a JSON object of the file's resource type. A
// short or cut file is a retryable TruncatedFile error, and a retry replaces
// the staged copy: it never appends.
func (a *Activities) DownloadFile(ctx context.Context, in DownloadInput) (FileResult, error) {
	ctx, rec, finish := a.begin(ctx, in.ServerRef, in.Target)
	defer finish()
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return FileResult{}, err
	}
	// Each plan generation stages into its own paths: a late writer of a
	// replaced plan never overwrites this plan's files (issue 13 §3).
	s = sink.AtGeneration(s, in.Generation)
	p, err := a.loadPlan(ctx, s, in.Target, in.PlanVersion)
	if err != nil {
		return FileResult{}, err
	}
	if in.Index < 0 || in.Index >= len(p.Files) {
		return FileResult{}, permanent("InvalidInput", fmt.Errorf("file index %d is outside the plan's %d files", in.Index, len(p.Files)))
	}
	c, err := a.client(in.ServerRef)
	if err != nil {
		return FileResult{}, err
	}
	if in.PriorFailure != "" {
		ctx = context.WithValue(ctx, priorFailureKey{}, in.PriorFailure)
	}
	// Waiting (for a slot, or out a 429) re-sends the resume point an
	// earlier attempt left, never an empty one over it.
	resume := lastCheckpoint(ctx)
	j := a.newFileJob(in.ServerRef, in.Target, s, p, c, in.Layout)
	res, err := a.fetchFile(ctx, rec, j, in.Index, resume, func(cp checkpoint) { activity.RecordHeartbeat(ctx, cp) })
	if err != nil {
		return FileResult{}, err
	}
	item := p.Files[in.Index]
	res.Index = in.Index
	res.Attempt = activity.GetInfo(ctx).Attempt
	res.Generation = in.Generation
	if len(res.Parts) > 0 {
		// A partitioned file can become hundreds of lake objects: their
		// records are staged and referenced, so this result (and the
		// chunk's RecordChunk input) stays small whatever the layout.
		info := activity.GetInfo(ctx)
		name := fileRecordObject(in.Index, in.Generation, info.WorkflowExecution.RunID, res.Attempt)
		if err := writeJSON(ctx, s, in.Run, name, res); err != nil {
			return FileResult{}, retryable("Sink", fmt.Errorf("stage the record of %s: %w", item.Path, err))
		}
		res.Parts, res.Record = nil, name
	}
	a.Logger.Info("file staged", "file", item.Path, "resources", res.Resources, "bytes", res.Bytes)
	return res, nil
}

// fileJob is what the downloads of one activity share: the run's sink (at
// its plan generation), plan, server client and limiter.
type fileJob struct {
	ref    ServerRef
	run    string
	s      sink.Sink
	p      *plan
	c      *bulk.Client
	target Target
	layout Layout
	every  time.Duration
	// failure is the signature of the last file's retryable validation
	// failure ("" if none), for FileFailure.Signature.
	failure string
}

func (a *Activities) newFileJob(ref ServerRef, t Target, s sink.Sink, p *plan, c *bulk.Client, layout Layout) *fileJob {
	layout.transactionTime = p.TransactionTime
	return &fileJob{ref: ref, run: t.Run, target: t, s: s, p: p, c: c, layout: layout, every: cmp.Or(a.HeartbeatEvery, 5*time.Second)}
}

// fetchFile downloads, validates and stages plan file index: one download
// slot per request, 429s waited out (heartbeating with beat) without using
// up an attempt, one audit event per outcome. Its error is already the
// Temporal error (activities/errors.go). DownloadFile and DownloadBatch
// share it, so a file is checked the same way whichever ran it.
func (a *Activities) fetchFile(ctx context.Context, rec *audit.Recorder, j *fileJob, index int, resume checkpoint, beat func(checkpoint)) (FileResult, error) {
	item := j.p.Files[index]
	server := serverName(j.ref)
	layout := j.layout
	if len(layout.Views) > 0 && item.Kind == KindOutput {
		var err error
		if layout.viewSet, err = a.loadViews(ctx, j.s, j.target, layout.Views); err != nil {
			return FileResult{}, err
		}
	}
	var res FileResult
	var err error
	var waited time.Duration
	for {
		lease, aerr := a.downloadSlot(ctx, j.ref, func() { beat(resume) })
		if aerr != nil {
			return FileResult{}, aerr
		}
		res, err = a.download(ctx, j.c, j.s, j.run, j.p.RequiresAccessToken, item, layout)
		releaseSlot(lease, err)
		if k := bulk.KindOf(err); err != nil && k == bulk.KindRateLimited {
			a.observeOutcome(j.ref, "file", err)
			window, _ := a.budget().Stats(server)
			a.Logger.Info("server throttled downloads", "server", server, "window", window)
		}
		// A 429 on a file is the server asking us to wait, not the file
		// failing: wait here, heartbeating, so it does not use up one of
		// the file's attempts (issue 13 §4).
		wait, ok := rateLimitWait(ctx, err, waited, time.Now())
		if !ok {
			break
		}
		rec.Emit("download_throttled", map[string]any{"fileName": item.Path, "waitMs": wait.Milliseconds(), "waitedMs": waited.Milliseconds()})
		a.Logger.Info("file download throttled: waiting as the server asked", "file", item.Path, "wait", wait, "waited_so_far", waited)
		if err := sleepBeating(ctx, wait, j.every, resume, beat); err != nil {
			return FileResult{}, err
		}
		waited += wait
	}
	err = forbiddenFile(err, j.p)
	j.failure = ""
	if ve := (*validationError)(nil); errors.As(err, &ve) && bulk.IsRetryable(err) {
		j.failure = ve.sig
	}
	if err != nil {
		a.Logger.Warn("download failed", "file", item.Path, "attempt", activity.GetInfo(ctx).Attempt, "error", err)
		te := temporalErrorCtx(ctx, err)
		rec.Emit("download_error", map[string]any{"fileName": item.Path, "resourceType": item.Type, "kind": item.Kind,
			"errorType": errorType(te), "message": err.Error()})
		if bulk.KindOf(err) != bulk.KindRateLimited {
			a.observeOutcome(j.ref, "file", err) // a 429 was counted when it came
		}
		if reason := validationReason(err); reason != "" {
			a.Metrics.ValidationFailed(server, reason)
		}
		if bulk.IsRetryable(err) {
			a.Metrics.FileRetried(server, errorType(te))
		}
		return FileResult{}, te
	}
	rec.Emit("download_complete", map[string]any{"fileName": item.Path, "resourceType": item.Type, "kind": item.Kind,
		"resourceCount": res.Resources, "fileSize": res.Bytes, "objects": len(res.Parts), "resumed": res.Resumed})
	if item.Kind == KindOutput {
		a.Metrics.FileDownloaded(server, item.Type, res.Resources, res.Bytes)
	}
	res.Index = index
	return res, nil
}

// fileRecordObject names the staged record of one download: the
// downloading chunk's run and the attempt make it unique, so a late writer
// of a replaced chunk, attempt or plan generation never overwrites the
// record in use.
func fileRecordObject(index, gen int, chunkRun string, attempt int32) string {
	if gen > 0 {
		return fmt.Sprintf("%sfiles/%06d-%s-%d-g%d.json", sink.WorkPrefix, index, chunkRun, attempt, gen)
	}
	return fmt.Sprintf("%sfiles/%06d-%s-%d.json", sink.WorkPrefix, index, chunkRun, attempt)
}

func (a *Activities) download(ctx context.Context, c *bulk.Client, s sink.Sink, run string, requiresToken bool, item plannedFile, layout Layout) (FileResult, error) {
	// A URL fetched without credentials may itself be the credential: only
	// its origin and a hash appear in errors and logs (bulk.RedactFileURL).
	srcURL := c.RedactFileURL(item.URL, requiresToken)
	res := FileResult{Kind: item.Kind, Type: item.Type, Path: item.Path}
	h := sha256.New()
	if item.Kind == KindOutput && (!layout.plain() || layout.viewSet.wants(item.Type)) {
		return a.downloadToLake(ctx, c, s, run, requiresToken, item, layout, srcURL)
	}

	// Resume from the last durable checkpoint of an earlier attempt when the
	// sink can reopen it and the server honours Range; otherwise start over.
	// A resume needs the file's validator (ETag or a strong
	// Last-Modified) so the server can tell us, with If-Range, that the file
	// changed since: bytes of two versions are never spliced together.
	var cp, resumedFrom checkpoint
	var w sink.Writer
	var offset int64
	if !priorDetails(ctx, &cp) {
		cp = checkpoint{}
	}
	if item.Kind == KindOutput && cp.Token != "" && cp.Offset > 0 && cp.Validator != "" {
		if rs, ok := s.(sink.Resumer); ok {
			if hw, err := restoreHash(cp.Hash); err == nil {
				if rw, err := rs.Resume(ctx, run, item.Path, cp.Token, cp.Size); err == nil {
					w, offset, h, resumedFrom = rw, cp.Offset, hw, cp
					res.Resources, res.Bytes, res.Severity, res.Deleted = cp.Resources, cp.Size, cp.Severity, cp.Deleted
				} else {
					a.Logger.Info("cannot resume, downloading again", "file", item.Path, "reason", err)
				}
			}
		}
	}
	f, err := c.OpenFileFrom(ctx, item.URL, requiresToken, offset, resumedFrom.Validator)
	if err != nil {
		if w != nil {
			w.Abort()
		}
		return FileResult{}, err
	}
	defer f.Body.Close()
	if w != nil && f.Offset != offset {
		// The server sent the whole file: it changed since the checkpoint
		// (If-Range did not match) or it ignores Range. Start from zero:
		// staged bytes and hash state of the old version are dropped.
		a.Logger.Info("file changed or Range ignored, downloading it again from the start", "file", item.Path)
		w.Abort()
		w, offset, h, resumedFrom = nil, 0, sha256.New(), checkpoint{}
		res = FileResult{Kind: item.Kind, Type: item.Type, Path: item.Path}
	}
	validator := f.Validator
	if w == nil {
		if w, err = s.Create(ctx, run, item.Path); err != nil {
			return FileResult{}, &bulk.Error{Op: "stage", URL: item.Path, Kind: bulk.KindTransient, Err: err}
		}
	} else {
		a.Logger.Info("resuming download", "file", item.Path, "offset", offset, "resources", res.Resources)
	}
	resumable, _ := w.(sink.Resumable)
	if item.Kind != KindOutput || validator == "" {
		// Small files: their tombstones and tallies restart with them. A
		// file without a validator cannot be resumed safely.
		resumable = nil
	}
	keepPartial := false
	defer func() {
		// A retryable failure keeps the checkpointed partial file for the
		// next attempt; anything else discards it.
		if keepPartial && resumable != nil {
			resumable.Suspend()
			return
		}
		w.Abort() // no-op once closed
	}()

	var tombs *tombstones
	if item.Kind == KindDeleted {
		tombs = newTombstones(ctx, s, run, item, layout.transactionTime)
		defer tombs.abort()
	}
	refs := a.newAttachmentRefs(ctx, c, s, run, item, layout) // attachments.go
	defer refs.abort()
	if refs != nil {
		resumable = nil // a resumed file would skip the references before the offset
	}
	bw := stagingWriter(io.MultiWriter(w, h))
	defer releaseWriter(bw)
	// progress counts bytes off the wire, not whole lines: a 20 MB line on
	// a slow link still shows it is alive.
	var progress atomic.Int64
	br := readBuffers.Get().(*bufio.Reader)
	defer releaseReader(br)
	r := ndjson.NewReaderBuffer(br, &wireCounter{r: f.Body, n: &progress})
	r.SetMaxLineBytes(a.maxLine())
	v := ndjson.Validator{WantType: item.Type}
	ids := newIDSet(item)

	// Heartbeats carry the last checkpoint, so a retry resumes from it.
	var mu sync.Mutex
	last := resumedFrom // until the next checkpoint, a retry resumes where this attempt did
	// remember fails the file with err, unless the previous attempt failed
	// the same way: then the server produces the file that way and a retry
	// cannot help. The failure's signature travels in the heartbeat details,
	// which the SDK flushes with a failure and hands to the next attempt.
	last.Failure = "" // only the attempt right before this one counts
	remember := func(sig string, err error) error { return rememberFailure(ctx, cp.Failure, &mu, &last, sig, err) }
	stop := heartbeatWhileProgressing(ctx, &progress, a.HeartbeatEvery, func() checkpoint {
		mu.Lock()
		defer mu.Unlock()
		return last
	})
	defer stop()
	every := cmp.Or(a.HeartbeatEvery, 5*time.Second)
	cpEvery := cmp.Or(a.CheckpointBytes, checkpointBytes)
	nextCheckpoint := res.Bytes + cpEvery
	lastCheckpoint := time.Now()
	fail := func(kind bulk.ErrorKind, diag string, err error) (FileResult, error) {
		keepPartial = kind == bulk.KindTruncated || kind == bulk.KindTransient
		return FileResult{}, &bulk.Error{Op: "download", URL: srcURL, Kind: kind, Diagnostics: diag, Err: err}
	}
	for {
		line, id, err := nextResourceID(r, v, item, res.Resources)
		if err == io.EOF {
			break
		}
		if err != nil {
			keepPartial = bulk.KindOf(err) == bulk.KindTruncated || bulk.KindOf(err) == bulk.KindTransient
			return FileResult{}, withURL(err, srcURL)
		}
		if err := checkMore(item, res.Resources, res.Bytes, r.Line()); err != nil {
			return FileResult{}, withURL(err, srcURL)
		}
		ids.addBytes(id, r.Line())
		if layout.CheckSubsetted && item.Kind == KindOutput && !bytes.Contains(line, subsetted) {
			res.Unsubsetted++
		}
		switch item.Kind {
		case KindError:
			countSeverity(line, &res)
		case KindDeleted:
			if err := tombs.add(line, &res); err != nil {
				var ve *validationError
				if errors.As(err, &ve) {
					return FileResult{}, withURL(invalid(ve.Reason, ve.Err.Kind, fmt.Sprintf("%s line %d: %s", item.Path, r.Line(), ve.Err.Diagnostics)), srcURL)
				}
				return fail(bulk.KindTransient, "write tombstones", err)
			}
		}
		line = refs.add(line)
		bw.Write(line)
		if err := bw.WriteByte('\n'); err != nil {
			return fail(bulk.KindTransient, "write staged file", err)
		}
		res.Resources++
		res.Bytes += int64(len(line)) + 1
		if resumable != nil && !r.MissingFinalNewline() && (res.Bytes >= nextCheckpoint || time.Since(lastCheckpoint) >= every) {
			// Durable before it is announced: a later attempt trusts it.
			if err := bw.Flush(); err != nil {
				return fail(bulk.KindTransient, "write staged file", err)
			}
			token, size, err := resumable.Checkpoint()
			if err == nil {
				hs, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
				cp := checkpoint{Token: token, Size: size, Offset: offset + r.Offset(), Resources: res.Resources, Hash: hs,
					Severity: cloneCounts(res.Severity), Deleted: cloneCounts(res.Deleted), Progress: res.Bytes, Validator: validator}
				mu.Lock()
				last = cp
				mu.Unlock()
				// The SDK throttles heartbeats and sends the latest details with
				// a failure, so the next attempt sees this checkpoint.
				activity.RecordHeartbeat(ctx, cp)
			}
			nextCheckpoint = res.Bytes + cpEvery
			lastCheckpoint = time.Now()
		}
	}
	if err := checkCount(item, res.Resources); err != nil {
		keepPartial = true
		return FileResult{}, withURL(remember(err.(*validationError).sig, err), srcURL)
	}
	if err := ids.check(); err != nil {
		mu.Lock()
		last = checkpoint{} // the staged part is suspect: the next attempt starts from zero
		mu.Unlock()
		return FileResult{}, withURL(remember(err.(*validationError).sig, err), srcURL)
	}
	if err := checkStrict(item, layout, &res); err != nil {
		return FileResult{}, withURL(err, srcURL)
	}
	if err := bw.Flush(); err != nil {
		return fail(bulk.KindTransient, "write staged file", err)
	}
	if err := refs.close(); err != nil {
		return FileResult{}, err
	}
	if err := w.Close(); err != nil {
		return fail(bulk.KindTransient, "close staged file", err)
	}
	res.SHA256 = hex.EncodeToString(h.Sum(nil))
	res.Resumed = offset > 0
	res.Parts = []Part{{Path: item.Path, Format: "ndjson", Rows: res.Resources, Bytes: res.Bytes, SHA256: res.SHA256, Stored: sink.StoredOf(w)}}
	if tombs != nil {
		parts, err := tombs.close()
		if err != nil {
			return fail(bulk.KindTransient, "write tombstones", err)
		}
		res.Parts = append(res.Parts, parts...)
	}
	return res, nil
}

// stagingBuffers reuses the 1 MiB write buffers of staged files: a new one
// per file was most of the worker's allocation (and GC) on small files
// (activities BenchmarkDownloadBatch: 1 GB allocated per 1,000 files).
var stagingBuffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1<<20) }}

// readBuffers reuses the read buffers of downloads (256 KiB each): on
// small files a new one per file was half a GB of allocation per 2,000
// files, zeroed and collected.
var readBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, ndjson.DefaultBufferSize) }}

// releaseReader returns br to the pool, dropping its source.
func releaseReader(br *bufio.Reader) {
	br.Reset(nil)
	readBuffers.Put(br)
}

func stagingWriter(w io.Writer) *bufio.Writer {
	bw := stagingBuffers.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

// releaseWriter returns bw to the pool; what it still buffers is dropped
// (a failed download's tail).
func releaseWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	stagingBuffers.Put(bw)
}

// downloadSlot takes one of the server's download slots from the budget
// (the fleet's, shared by every worker, or this process's): every request
// for a file's body goes through it, and gives the lease back with
// releaseSlot. While it waits it calls beat every HeartbeatEvery, so a long
// wait behind a busy or throttled server is not mistaken for a stalled
// activity.
func (a *Activities) downloadSlot(ctx context.Context, ref ServerRef, beat func()) (budget.Lease, error) {
	b := a.budget()
	server := serverName(ref)
	every := cmp.Or(a.HeartbeatEvery, 5*time.Second)
	lease, err := acquire(ctx, b, server, a.Servers.MaxConcurrentDownloads(ref.Server, ref.BaseURL), every, beat)
	if err != nil {
		return nil, err
	}
	gauge := func() {
		window, inUse := b.Stats(server)
		a.Metrics.SetConcurrency(server, window, inUse)
	}
	gauge()
	return &meteredLease{Lease: lease, set: gauge}, nil
}

func (a *Activities) budget() budget.Budget {
	if a.Budget != nil {
		return a.Budget
	}
	return &a.local
}

// meteredLease updates the concurrency gauges when it is released.
type meteredLease struct {
	budget.Lease
	set func()
}

func (l *meteredLease) Release(o throttle.Outcome) {
	l.Lease.Release(o)
	l.set()
}

// releaseSlot gives a download's slot back with how its request ended: a
// 429 (or 503 with Retry-After) shrinks the server's window.
func releaseSlot(l budget.Lease, err error) {
	switch k := bulk.KindOf(err); {
	case err == nil:
		l.Release(throttle.Success)
	case k == bulk.KindRateLimited:
		l.Release(throttle.Throttled)
	default:
		l.Release(throttle.Other)
	}
}

// acquire waits for a slot, calling beat every interval while it waits.
func acquire(ctx context.Context, b budget.Budget, server string, maxSlots int, every time.Duration, beat func()) (budget.Lease, error) {
	for {
		wctx, cancel := context.WithTimeout(ctx, every)
		l, err := b.Acquire(wctx, server, maxSlots)
		cancel()
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		beat()
	}
}

// rememberFailure returns err for a validation failure with signature sig
// (a count mismatch, a duplicated id) and records sig in the heartbeat
// details, which the SDK flushes with the failure and hands to the next
// attempt. When prev, the previous attempt's signature, is the same, the
// server produces the file that way: the error becomes non-retryable.
func rememberFailure(ctx context.Context, prev string, mu *sync.Mutex, last *checkpoint, sig string, err error) error {
	if sig != "" && sig == prev {
		return repeated(err)
	}
	mu.Lock()
	last.Failure = sig
	hb := *last
	mu.Unlock()
	activity.RecordHeartbeat(ctx, hb)
	return err
}

// repeated turns a retryable validation failure seen on two attempts in a
// row into a permanent one that says so.
func repeated(err error) error {
	var ve *validationError
	if !errors.As(err, &ve) {
		return err
	}
	c := *ve.Err
	c.Kind = bulk.KindInvalidContent
	c.Diagnostics += "; the same on the previous attempt, so the server produces the file this way: not retried, report it to the server's operators"
	return &validationError{Reason: ve.Reason, Err: &c}
}

// newReader opens an NDJSON reader with the worker's line cap.
func (a *Activities) newReader(r io.Reader) *ndjson.Reader {
	nr := ndjson.NewReader(r)
	nr.SetMaxLineBytes(a.maxLine())
	return nr
}

func (a *Activities) maxLine() int { return cmp.Or(a.MaxLineBytes, ndjson.DefaultMaxLineBytes) }

// checkMore stops a file as soon as it has more resources than its
// manifest count, before the extra line is staged: with the line cap, a
// file can never stage more than count x cap bytes, so a file whose
// manifest says 3 cannot fill the disk. The server sends the file this way,
// so it is not retried.
func checkMore(item plannedFile, sofar, staged int64, line int64) error {
	if item.Kind != KindOutput || !item.HasCount || sofar < item.Count {
		return nil
	}
	return invalid("too_many", bulk.KindInvalidContent, fmt.Sprintf(
		"%s: the server sent more resources than the manifest's count of %d (line %d is resource %d; stopped after %d bytes staged): the file does not match its manifest, report it to the server's operators",
		item.Path, item.Count, line, sofar+1, staged))
}

// idSet checks that every resource id of an output file is unique: a
// file regenerated or spliced while it was served repeats some ids (and
// misses others) while its line count can still match. Each id is kept as
// a 64-bit hash (per-attempt seed: a collision would be a retryable false
// alarm that does not repeat) with its line, 16 bytes per resource
// (BenchmarkIDSet), sorted once at the end of the file; the manifest count
// bounds how many there can be. After a resume (same validator, If-Range)
// only the ids read by this attempt are checked.
type idSet struct {
	seed maphash.Seed
	ents []idEnt
	path string
}

type idEnt struct {
	h    uint64
	line uint32 // saturates: a file of 4 billion lines is refused long before
}

func newIDSet(item plannedFile) *idSet {
	if item.Kind != KindOutput {
		return nil
	}
	n := 0
	if item.HasCount {
		n = int(min(item.Count, 1<<20)) // a hint: the count is the server's word
	}
	return &idSet{seed: maphash.MakeSeed(), ents: make([]idEnt, 0, n), path: item.Path}
}

func (s *idSet) add(id string, line int64) {
	if s == nil || id == "" {
		return
	}
	s.ents = append(s.ents, idEnt{h: maphash.String(s.seed, id), line: uint32(min(line, math.MaxUint32))})
}

// addBytes is add for an id still in the line (the same hash).
func (s *idSet) addBytes(id []byte, line int64) {
	if s == nil || len(id) == 0 {
		return
	}
	s.ents = append(s.ents, idEnt{h: maphash.Bytes(s.seed, id), line: uint32(min(line, math.MaxUint32))})
}

// check reports the first repeated id (by its lines: ids can identify
// patients) once the whole file is read.
func (s *idSet) check() error {
	if s == nil {
		return nil
	}
	sortIDHashes(s.ents)
	// The report: of every group of equal ids, its first line and its
	// second; the group whose second line comes first.
	found, first, dup := false, uint32(0), uint32(0)
	for i := 0; i < len(s.ents); {
		j := i + 1
		for j < len(s.ents) && s.ents[j].h == s.ents[i].h {
			j++
		}
		if j-i > 1 {
			m1, m2 := uint32(math.MaxUint32), uint32(math.MaxUint32)
			for _, e := range s.ents[i:j] {
				if e.line < m1 {
					m1, m2 = e.line, m1
				} else if e.line < m2 {
					m2 = e.line
				}
			}
			if !found || m2 < dup {
				found, first, dup = true, m1, m2
			}
		}
		i = j
	}
	if !found {
		return nil
	}
	ve := invalid("duplicate_id", bulk.KindTruncated, fmt.Sprintf(
		"%s: lines %d and %d hold the same resource id; the file changed while it was served or the server repeated a resource, so it is downloaded again from the start",
		s.path, first, dup)).(*validationError)
	ve.sig = fmt.Sprintf("duplicate %d %d", first, dup)
	return ve
}

// lastCheckpoint is the checkpoint an earlier attempt heartbeated, or the
// zero checkpoint.
func lastCheckpoint(ctx context.Context) checkpoint {
	var cp checkpoint
	if !priorDetails(ctx, &cp) {
		return checkpoint{}
	}
	return cp
}

// maxRateLimitWait bounds the time one download attempt waits out 429s.
// Past it (or too near the attempt's deadline), the 429 is returned with
// its Retry-After as the next retry's delay, as before.
const maxRateLimitWait = 30 * time.Minute

// rateLimitWait says how long to wait before trying a rate-limited download
// again within the same attempt: the server's Retry-After (clamped by the
// client), else a backoff; ok=false when err is not a 429 or the wait would
// pass maxRateLimitWait or the attempt's deadline (less a minute to spare).
func rateLimitWait(ctx context.Context, err error, waited time.Duration, now time.Time) (time.Duration, bool) {
	if bulk.KindOf(err) != bulk.KindRateLimited {
		return 0, false
	}
	var wait time.Duration
	if be := (*bulk.Error)(nil); errors.As(err, &be) {
		wait = be.RetryAfter
	}
	if wait <= 0 {
		wait = bulk.BackoffCeiling(int(waited/(10*time.Second)), 5*time.Second, 2*time.Minute)
	}
	if waited+wait > maxRateLimitWait {
		return 0, false
	}
	if activity.IsActivity(ctx) {
		if dl := activity.GetInfo(ctx).Deadline; !dl.IsZero() && now.Add(wait+time.Minute).After(dl) {
			return 0, false
		}
	}
	return wait, true
}

// sleepBeating waits d, heartbeating resume every so often.
func sleepBeating(ctx context.Context, d, every time.Duration, resume checkpoint, beat func(checkpoint)) error {
	t := time.NewTimer(d)
	defer t.Stop()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case <-tick.C:
			beat(resume)
		}
	}
}

// forbiddenFile reads a 403 on a file. Only links that can expire (signed
// capability URLs, or a manifest whose Expires has passed) make it an
// expired link worth a fresh manifest (FileGone); a file fetched with the
// token before any expiry was refused on purpose: the client's scopes do
// not cover it, and a new manifest would not change that.
func forbiddenFile(err error, p *plan) error {
	var be *bulk.Error
	if !errors.As(err, &be) || be.StatusCode != 403 || be.Kind != bulk.KindFileGone {
		return err
	}
	mayExpire := !p.RequiresAccessToken || (!p.Expires.IsZero() && time.Now().After(p.Expires))
	if mayExpire {
		return err
	}
	be.Kind = bulk.KindPermanent
	be.Err = errors.Join(be.Err, errors.New("the server refused the file with 403 Forbidden although its links have not expired: check the client's scopes (e.g. system/<Type>.rs) for this server"))
	return err
}

// nextResource reads and validates the next line of a file. Errors say
// what was wrong and where: a body that ends early or a cut last line is
// KindTruncated (fetch again), an invalid line KindInvalidContent (the
// server's fault, naming the line), a transport failure keeps its kind.
func nextResource(r *ndjson.Reader, v ndjson.Validator, item plannedFile, sofar int64) ([]byte, ndjson.Meta, error) {
	line, err := nextLine(r, item, sofar)
	if err != nil {
		return nil, ndjson.Meta{}, err
	}
	m, err := v.Check(line)
	if err != nil {
		return nil, m, lineError(r, item, err)
	}
	return line, m, nil
}

// nextResourceID is nextResource for the plain NDJSON path, which needs
// only the id: returned as a slice of the line, without allocating
// (ndjson.Validator.CheckID).
func nextResourceID(r *ndjson.Reader, v ndjson.Validator, item plannedFile, sofar int64) ([]byte, []byte, error) {
	line, err := nextLine(r, item, sofar)
	if err != nil {
		return nil, nil, err
	}
	id, err := v.CheckID(line)
	if err != nil {
		return nil, nil, lineError(r, item, err)
	}
	return line, id, nil
}

// nextLine reads the next line, turning reader errors into download
// errors.
func nextLine(r *ndjson.Reader, item plannedFile, sofar int64) ([]byte, error) {
	line, err := r.Next()
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		if lt := (*ndjson.LineTooLongError)(nil); errors.As(err, &lt) {
			// The server's data, not the transfer: fetching again cannot help.
			return nil, invalid("line_too_long", bulk.KindInvalidContent, fmt.Sprintf(
				"%s: %v (after %d resources); a resource that large is refused: report it to the server's operators, or raise the worker's -max-line-mib if it is genuine",
				item.Path, lt, sofar))
		}
		kind := bulk.KindOf(err)
		if kind != bulk.KindTransient && kind != bulk.KindRateLimited && kind != bulk.KindUnauthorized {
			kind = bulk.KindTruncated
		}
		return nil, &bulk.Error{Op: "download", Kind: kind, Diagnostics: fmt.Sprintf("%s: body ended after %d resources", item.Path, sofar), Err: err}
	}
	return line, nil
}

// lineError explains a line the validator refused.
func lineError(r *ndjson.Reader, item plannedFile, err error) error {
	if r.MissingFinalNewline() {
		// A cut last line: the body stopped mid-resource.
		return invalid("truncated", bulk.KindTruncated, fmt.Sprintf("%s: the last line (%d) is cut: %v", item.Path, r.Line(), err))
	}
	reason := "wrong_type"
	if ne := (*ndjson.Error)(nil); errors.As(err, &ne) && ne.Syntax {
		reason = "invalid_json"
	}
	return invalid(reason, bulk.KindInvalidContent,
		fmt.Sprintf("%s line %d: %v; the server sent invalid NDJSON, report it to the server's operators", item.Path, r.Line(), err))
}

// checkCount compares a finished output file with its manifest count,
// which is optional (BD2 L430); when given, it is the check that catches a
// file cut at a line boundary behind an HTTP 200. Only output[]: servers
// give an error[] entry the number of resources that failed as its count,
// while the file holds a few OperationOutcomes (../shared/spec/bulk-data-checklist.md §3).
func checkCount(item plannedFile, got int64) error {
	if item.Kind == KindOutput && item.HasCount && got != item.Count {
		ve := invalid("count_mismatch", bulk.KindTruncated, fmt.Sprintf("%s: %d resources received, the manifest says %d", item.Path, got, item.Count)).(*validationError)
		ve.sig = fmt.Sprintf("count %d %d", got, item.Count)
		return ve
	}
	return nil
}

// checkStrict fails an error[] file that reports failed resources when the
// user asked for strict mode; by default such an export commits what
// succeeded and names the failures (the run manifest's warnings and totals).
func checkStrict(item plannedFile, layout Layout, res *FileResult) error {
	if item.Kind != KindError {
		return nil
	}
	if item.HasCount {
		res.Failed = item.Count
	}
	if !layout.Strict {
		return nil
	}
	bad := res.Severity["error"] + res.Severity["fatal"]
	if bad == 0 {
		return nil // warnings and information only
	}
	what := fmt.Sprintf("%d error/fatal issue(s)", bad)
	if res.Failed > 0 {
		what = fmt.Sprintf("%d resource(s) it could not export (%d error/fatal issue(s))", res.Failed, bad)
	}
	return invalid("partial_export", bulk.KindPermanent, fmt.Sprintf("%s: the server reported %s, and the export runs in strict mode: nothing is committed; without strict the rest would be", item.Path, what))
}

// validationError is a file that failed validation; Reason labels it for
// metrics, the wrapped *bulk.Error decides retries.
type validationError struct {
	Reason string
	Err    *bulk.Error
	sig    string // identifies a retryable failure, to spot the same one twice in a row
}

func (e *validationError) Error() string { return e.Err.Error() }
func (e *validationError) Unwrap() error { return e.Err }

func invalid(reason string, kind bulk.ErrorKind, diag string) error {
	return &validationError{Reason: reason, Err: &bulk.Error{Op: "download", Kind: kind, Diagnostics: diag}}
}

// withURL names the source in a download error (the URL is redacted by the caller).
func withURL(err error, srcURL string) error {
	var be *bulk.Error
	if errors.As(err, &be) && be.URL == "" {
		be.URL = srcURL
	}
	return err
}

// wireCounter counts the bytes read from a body, for heartbeats.
type wireCounter struct {
	r io.Reader
	n *atomic.Int64
}

func (w *wireCounter) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	w.n.Add(int64(n))
	return n, err
}

// checkpointBytes spaces durable checkpoints of a download.
const checkpointBytes = 64 << 20

// checkpoint is a download's heartbeat: where a retry can resume. Offsets
// and counts only, never content.
type checkpoint struct {
	Token     string           `json:"token,omitempty"`  // the sink's partial object
	Size      int64            `json:"size,omitempty"`   // its durable size
	Offset    int64            `json:"offset,omitempty"` // source bytes consumed through the last staged line
	Resources int64            `json:"resources,omitempty"`
	Hash      []byte           `json:"hash,omitempty"` // SHA-256 state of the staged bytes
	Severity  map[string]int64 `json:"severity,omitempty"`
	Deleted   map[string]int64 `json:"deleted,omitempty"`
	Progress  int64            `json:"progress"` // bytes read from the server so far
	// Validator is the file's ETag or strong Last-Modified (If-Range on a
	// resume); without one a checkpoint is never resumed.
	Validator string `json:"validator,omitempty"`
	// Failure identifies this attempt's retryable validation failure (a
	// count mismatch, a repeated id): the same one on the next attempt is
	// permanent.
	Failure string `json:"failure,omitempty"`
}

func restoreHash(state []byte) (hash.Hash, error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, err
	}
	return h, nil
}

func cloneCounts(m map[string]int64) map[string]int64 {
	if m == nil {
		return nil
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// countSeverity tallies OperationOutcome issues by severity. Error files are
// small, so a plain decode is fine here.
func countSeverity(line []byte, res *FileResult) {
	var oo struct {
		Issue []struct {
			Severity string `json:"severity"`
		} `json:"issue"`
	}
	if json.Unmarshal(line, &oo) != nil {
		return
	}
	if res.Severity == nil {
		res.Severity = map[string]int64{}
	}
	for _, is := range oo.Issue {
		sev := is.Severity
		if sev == "" {
			sev = "unknown"
		}
		res.Severity[sev]++
	}
}

// RecordChunk stages one chunk's file results for Commit.
func (a *Activities) RecordChunk(ctx context.Context, in RecordChunkInput) error {
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return err
	}
	files, err := fullRecords(ctx, s, in.Run, in.Files)
	if err != nil {
		return err
	}
	if err := writeJSON(ctx, s, in.Run, chunkObject(in.Chunk), files); err != nil {
		return retryable("Sink", err)
	}
	return nil
}

// fullRecords replaces each result that references its staged record (see
// DownloadFile and DownloadBatch) with that record, reading a few at a
// time. A batch's record lists several files and is read once.
func fullRecords(ctx context.Context, s sink.Sink, run string, in []FileResult) ([]FileResult, error) {
	out := make([]FileResult, len(in))
	byRecord := map[string][]int{} // record -> positions in in
	var names []string
	for i, f := range in {
		out[i] = f
		if f.Record == "" {
			continue
		}
		if _, ok := byRecord[f.Record]; !ok {
			names = append(names, f.Record)
		}
		byRecord[f.Record] = append(byRecord[f.Record], i)
	}
	errs := make([]error, len(names))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for n, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			first := in[byRecord[name][0]]
			rc, err := s.Open(ctx, run, name)
			if err != nil {
				errs[n] = retryable("Sink", fmt.Errorf("read the staged record of file %d (%s): %w", first.Index, first.Path, err))
				return
			}
			defer rc.Close()
			var recs []FileResult
			if isBatchRecord(name) {
				err = json.NewDecoder(rc).Decode(&recs)
			} else {
				var one FileResult
				err = json.NewDecoder(rc).Decode(&one)
				recs = []FileResult{one}
			}
			found := make(map[int]FileResult, len(recs))
			for _, r := range recs {
				found[r.Index] = r
			}
			for _, i := range byRecord[name] {
				full, ok := found[in[i].Index]
				if err != nil || !ok {
					errs[n] = permanent("Incomplete", fmt.Errorf("staged record of file %d (%s) is unreadable or another file's (%v); nothing was committed", in[i].Index, in[i].Path, err))
					return
				}
				full.Record = ""
				out[i] = full
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func chunkObject(i int) string { return fmt.Sprintf("%schunks/%06d.json", sink.WorkPrefix, i) }

// DeleteJob tells the server the job is finished or cancelled (BD2 L287).
// A job that is already gone is success.
func (a *Activities) DeleteJob(ctx context.Context, in DeleteJobInput) error {
	ctx, _, finish := a.begin(ctx, in.ServerRef, in.Target)
	defer finish()
	c, err := a.client(in.ServerRef)
	if err != nil {
		return err
	}
	if err := c.Delete(ctx, in.StatusURL); err != nil {
		return temporalErrorCtx(ctx, err)
	}
	return nil
}

// Abort drops a run's staging area; committed runs are untouched.
func (a *Activities) Abort(ctx context.Context, t Target) error {
	s, err := a.sinkFor(t.Output)
	if err != nil {
		return err
	}
	a.mu.Lock()
	prefix := planKey(t, 0)
	prefix = prefix[:len(prefix)-1]
	for k := range a.plans {
		if strings.HasPrefix(k, prefix) {
			delete(a.plans, k)
		}
	}
	a.mu.Unlock()
	if err := s.Abort(ctx, t.Run); err != nil {
		return retryable("Sink", err)
	}
	return nil
}

func writeJSON(ctx context.Context, s sink.Sink, run, name string, v any) error {
	w, err := s.Create(ctx, run, name)
	if err != nil {
		return err
	}
	if err := json.NewEncoder(w).Encode(v); err != nil {
		w.Abort()
		return err
	}
	return w.Close()
}

func serverName(r ServerRef) string {
	if r.Server != "" {
		return r.Server
	}
	return r.BaseURL
}

// stripQuery drops a URL's query and fragment: capability URLs carry their
// secret there.
func stripQuery(u string) string {
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		return u[:i]
	}
	return u
}

// redactCapability keeps only the origin of a capability URL
// (requiresAccessToken false, BD3 L701), whose path as well as query may be
// the secret, and a short hash to tell files apart (bulk.RedactCapability).
func redactCapability(u string) string {
	return bulk.RedactCapability(u)
}
