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
	"io"
	"log/slog"
	"net/url"
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
	// Metrics records Prometheus metrics (internal/metrics); nil records none.
	Metrics *metrics.Recorder
	// Keyset, when set, encrypts every staged and committed object at rest
	// (Tink streaming AEAD; internal/atrest). Manifests, watermarks and
	// audit logs stay readable: they hold no PHI.
	Keyset *atrest.Keyset
	// AuditLive, when set, gets a live copy of every audit event (e.g.
	// stdout); the audit log in the output location is always written.
	AuditLive io.Writer

	mu       sync.Mutex
	sinks    map[string]sink.Sink
	limiters map[*bulk.Client]*throttle.Limiter // one per server: its clients are shared
	plans    map[string]*plan                   // small cache: plans are read by every download of a run
	order    []string
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
	TransactionTime     string        `json:"transactionTime"`
	Request             string        `json:"request,omitempty"`
	RequiresAccessToken bool          `json:"requiresAccessToken"`
	Expires             time.Time     `json:"expires,omitempty"`
	Files               []plannedFile `json:"files"`
}

type plannedFile struct {
	Kind     string `json:"kind"`
	Type     string `json:"type"`
	URL      string `json:"url"`
	Count    int64  `json:"count,omitempty"`
	HasCount bool   `json:"hasCount,omitempty"`
	Path     string `json:"path"`
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
		return KickoffResult{}, temporalError(err)
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
		return PollResult{}, temporalError(err)
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
		return PollResult{}, temporalError(err)
	}
	p, err := buildPlan(m, st.Expires)
	if err != nil {
		return PollResult{}, permanent("InvalidManifest", err)
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
	if b, _ := json.Marshal(res); len(b) > maxPollResult {
		// Only server-supplied strings can still be this long.
		return PollResult{}, permanent("PayloadTooLarge", fmt.Errorf("the manifest summary would be %d bytes in workflow history (limit %d): the server's manifest has an oversized transactionTime or request; report it to the server's operators", len(b), maxPollResult))
	}
	rec.Emit("manifest", map[string]any{"transactionTime": p.TransactionTime, "requiresAccessToken": p.RequiresAccessToken,
		"outputFileCount": len(m.Output), "errorFileCount": len(m.Error), "deletedFileCount": len(m.Deleted), "expectedResources": sum.ExpectedResources})
	a.Logger.Info("export ready", "server", serverName(in.ServerRef), "files", sum.Files, "transaction_time", p.TransactionTime)
	return res, nil
}

// clipText bounds a server-supplied string kept in workflow history.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

var resourceTypeName = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)

func buildPlan(m *bulk.Manifest, expires time.Time) (*plan, error) {
	if m.TransactionTime == "" {
		return nil, errors.New("the server's manifest has no transactionTime")
	}
	if m.OutputOrganizedBy != "" {
		return nil, fmt.Errorf("the server organised output by %s (organizeOutputBy); bulkflow needs one resource type per file, so export without organizeOutputBy", m.OutputOrganizedBy)
	}
	p := &plan{TransactionTime: m.TransactionTime, Request: m.Request, RequiresAccessToken: m.RequiresAccessToken, Expires: expires}
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
				return fmt.Errorf("manifest %s entry %q has type %q, which is not a FHIR resource type", kind, stripQuery(it.URL), typ)
			}
			seq[typ]++
			d := dir
			if d == "" {
				d = typ
			}
			p.Files = append(p.Files, plannedFile{
				Kind: kind, Type: typ, URL: it.URL, Count: it.Count, HasCount: it.HasCount,
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
	s := Plan{TransactionTime: p.TransactionTime, Request: clipText(stripQuery(p.Request), 2048), RequiresAccessToken: p.RequiresAccessToken, Expires: p.Expires, Files: len(p.Files)}
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
	p, err := a.loadPlan(ctx, s, in.Target, in.PlanVersion)
	if err != nil {
		return FileResult{}, err
	}
	if in.Index < 0 || in.Index >= len(p.Files) {
		return FileResult{}, permanent("InvalidInput", fmt.Errorf("file index %d is outside the plan's %d files", in.Index, len(p.Files)))
	}
	item := p.Files[in.Index]
	c, err := a.client(in.ServerRef)
	if err != nil {
		return FileResult{}, err
	}
	lim := a.limiter(c, in.ServerRef)
	slot, err := acquire(ctx, lim, cmp.Or(a.HeartbeatEvery, 5*time.Second))
	if err != nil {
		return FileResult{}, err
	}
	server := serverName(in.ServerRef)
	a.Metrics.SetConcurrency(server, lim.Limit(), lim.InFlight())
	defer func() { a.Metrics.SetConcurrency(server, lim.Limit(), lim.InFlight()) }()
	layout := in.Layout
	layout.transactionTime = p.TransactionTime
	res, err := a.download(ctx, c, s, in.Run, p.RequiresAccessToken, item, layout)
	switch k := bulk.KindOf(err); {
	case err == nil:
		slot.Release(throttle.Success)
	case k == bulk.KindRateLimited:
		slot.Release(throttle.Throttled)
		a.Logger.Info("server throttled downloads", "server", serverName(in.ServerRef), "limit", lim.Limit())
	default:
		slot.Release(throttle.Other)
	}
	if err != nil {
		a.Logger.Warn("download failed", "file", item.Path, "attempt", activity.GetInfo(ctx).Attempt, "error", err)
		te := temporalError(err)
		rec.Emit("download_error", map[string]any{"fileName": item.Path, "resourceType": item.Type, "kind": item.Kind,
			"errorType": errorType(te), "message": err.Error()})
		a.observeOutcome(in.ServerRef, "file", err)
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
	res.Index = in.Index
	res.Attempt = activity.GetInfo(ctx).Attempt
	a.Logger.Info("file staged", "file", item.Path, "resources", res.Resources, "bytes", res.Bytes)
	return res, nil
}

func (a *Activities) download(ctx context.Context, c *bulk.Client, s sink.Sink, run string, requiresToken bool, item plannedFile, layout Layout) (FileResult, error) {
	srcURL := stripQuery(item.URL)
	if !requiresToken {
		srcURL = redactCapability(item.URL) // the URL itself is the credential
	}
	res := FileResult{Kind: item.Kind, Type: item.Type, Path: item.Path}
	h := sha256.New()
	if item.Kind == KindOutput && !layout.plain() {
		return a.downloadToLake(ctx, c, s, run, requiresToken, item, layout, srcURL)
	}

	// Resume from the last durable checkpoint of an earlier attempt when the
	// sink can reopen it and the server honours Range; otherwise start over.
	var cp, resumedFrom checkpoint
	var w sink.Writer
	var offset int64
	if item.Kind == KindOutput && activity.HasHeartbeatDetails(ctx) && activity.GetHeartbeatDetails(ctx, &cp) == nil && cp.Token != "" && cp.Offset > 0 {
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
	f, err := c.OpenFile(ctx, item.URL, requiresToken, offset)
	if err != nil {
		if w != nil {
			w.Abort()
		}
		return FileResult{}, err
	}
	defer f.Body.Close()
	if w != nil && f.Offset != offset {
		// The server ignored the Range and sent the whole file.
		w.Abort()
		w, offset, h, resumedFrom = nil, 0, sha256.New(), checkpoint{}
		res = FileResult{Kind: item.Kind, Type: item.Type, Path: item.Path}
	}
	if w == nil {
		if w, err = s.Create(ctx, run, item.Path); err != nil {
			return FileResult{}, &bulk.Error{Op: "stage", URL: item.Path, Kind: bulk.KindTransient, Err: err}
		}
	} else {
		a.Logger.Info("resuming download", "file", item.Path, "offset", offset, "resources", res.Resources)
	}
	resumable, _ := w.(sink.Resumable)
	if item.Kind != KindOutput {
		resumable = nil // small files; their tombstones and tallies restart with them
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
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 1<<20)
	// progress counts bytes off the wire, not whole lines: a 20 MB line on
	// a slow link still shows it is alive.
	var progress atomic.Int64
	r := ndjson.NewReader(&wireCounter{r: f.Body, n: &progress})
	v := ndjson.Validator{WantType: item.Type}

	// Heartbeats carry the last checkpoint, so a retry resumes from it.
	var mu sync.Mutex
	last := resumedFrom // until the next checkpoint, a retry resumes where this attempt did
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
		line, _, err := nextResource(r, v, item, res.Resources)
		if err == io.EOF {
			break
		}
		if err != nil {
			keepPartial = bulk.KindOf(err) == bulk.KindTruncated || bulk.KindOf(err) == bulk.KindTransient
			return FileResult{}, withURL(err, srcURL)
		}
		if layout.CheckSubsetted && item.Kind == KindOutput && !bytes.Contains(line, subsetted) {
			res.Unsubsetted++
		}
		switch item.Kind {
		case KindError:
			countSeverity(line, &res)
		case KindDeleted:
			if err := tombs.add(line, &res); err != nil {
				return fail(bulk.KindTransient, "write tombstones", err)
			}
		}
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
					Severity: cloneCounts(res.Severity), Deleted: cloneCounts(res.Deleted), Progress: res.Bytes}
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
		return FileResult{}, withURL(err, srcURL)
	}
	if err := bw.Flush(); err != nil {
		return fail(bulk.KindTransient, "write staged file", err)
	}
	if err := w.Close(); err != nil {
		return fail(bulk.KindTransient, "close staged file", err)
	}
	res.SHA256 = hex.EncodeToString(h.Sum(nil))
	res.Resumed = offset > 0
	res.Parts = []Part{{Path: item.Path, Format: "ndjson", Rows: res.Resources, Bytes: res.Bytes, SHA256: res.SHA256}}
	if tombs != nil {
		parts, err := tombs.close()
		if err != nil {
			return fail(bulk.KindTransient, "write tombstones", err)
		}
		res.Parts = append(res.Parts, parts...)
	}
	return res, nil
}

// limiter returns the AIMD download limiter of c's server.
func (a *Activities) limiter(c *bulk.Client, ref ServerRef) *throttle.Limiter {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l, ok := a.limiters[c]; ok {
		return l
	}
	if a.limiters == nil {
		a.limiters = map[*bulk.Client]*throttle.Limiter{}
	}
	l := throttle.New(a.Servers.MaxConcurrentDownloads(ref.Server, ref.BaseURL))
	a.limiters[c] = l
	return l
}

// acquire waits for a download slot, heartbeating so that a long wait
// behind a throttled server is not mistaken for a stalled download.
func acquire(ctx context.Context, l *throttle.Limiter, every time.Duration) (*throttle.Slot, error) {
	for {
		wctx, cancel := context.WithTimeout(ctx, every)
		slot, err := l.Acquire(wctx)
		cancel()
		if err == nil {
			return slot, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		activity.RecordHeartbeat(ctx, checkpoint{})
	}
}

// nextResource reads and validates the next line of a file. Errors say
// what was wrong and where: a body that ends early or a cut last line is
// KindTruncated (fetch again), an invalid line KindInvalidContent (the
// server's fault, naming the line), a transport failure keeps its kind.
func nextResource(r *ndjson.Reader, v ndjson.Validator, item plannedFile, sofar int64) ([]byte, ndjson.Meta, error) {
	line, err := r.Next()
	if err == io.EOF {
		return nil, ndjson.Meta{}, io.EOF
	}
	if err != nil {
		kind := bulk.KindOf(err)
		if kind != bulk.KindTransient && kind != bulk.KindRateLimited && kind != bulk.KindUnauthorized {
			kind = bulk.KindTruncated
		}
		return nil, ndjson.Meta{}, &bulk.Error{Op: "download", Kind: kind, Diagnostics: fmt.Sprintf("%s: body ended after %d resources", item.Path, sofar), Err: err}
	}
	m, err := v.Check(line)
	if err != nil {
		if r.MissingFinalNewline() {
			// A cut last line: the body stopped mid-resource.
			return nil, m, invalid("truncated", bulk.KindTruncated, fmt.Sprintf("%s: the last line (%d) is cut: %v", item.Path, r.Line(), err))
		}
		reason := "wrong_type"
		if ne := (*ndjson.Error)(nil); errors.As(err, &ne) && ne.Syntax {
			reason = "invalid_json"
		}
		return nil, m, invalid(reason, bulk.KindInvalidContent,
			fmt.Sprintf("%s line %d: %v; the server sent invalid NDJSON, report it to the server's operators", item.Path, r.Line(), err))
	}
	return line, m, nil
}

// checkCount compares a finished file with its manifest count, which is
// optional (BD2 L430); when given, it is the check that catches a file cut
// at a line boundary behind an HTTP 200.
func checkCount(item plannedFile, got int64) error {
	if item.HasCount && got != item.Count {
		return invalid("count_mismatch", bulk.KindTruncated, fmt.Sprintf("%s: %d resources received, the manifest says %d", item.Path, got, item.Count))
	}
	return nil
}

// validationError is a file that failed validation; Reason labels it for
// metrics, the wrapped *bulk.Error decides retries.
type validationError struct {
	Reason string
	Err    *bulk.Error
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
	if err := writeJSON(ctx, s, in.Run, chunkObject(in.Chunk), in.Files); err != nil {
		return retryable("Sink", err)
	}
	return nil
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
		return temporalError(err)
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
// (requiresAccessToken false, BD3 L701): its path may be the secret.
func redactCapability(u string) string {
	if pu, err := url.Parse(u); err == nil && pu.Host != "" {
		return pu.Scheme + "://" + pu.Host + "/(capability URL)"
	}
	return "(capability URL)"
}
