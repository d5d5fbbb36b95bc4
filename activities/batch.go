package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/bulkflow/bulkflow/internal/sink"
)

// Small files cost almost nothing (issue 14 §1): a file of a few hundred
// resources downloads in milliseconds, while an activity costs Temporal a
// few milliseconds of server CPU and a round trip. DownloadBatch runs
// several small files in one activity; every file is still validated,
// staged, audited and recorded on its own (fetchFile, as DownloadFile), and
// a file that fails is reported back for the workflow to retry alone
// through DownloadFile.

// ChunkHintsInput asks for the size hints of a chunk's files.
type ChunkHintsInput struct {
	Target
	PlanVersion int `json:"planVersion,omitempty"`
	First       int `json:"first"`
	Count       int `json:"count"`
}

// ChunkHints says, for the files First..First+Count-1 of the plan, what the
// server's manifest says about their size: Resources[i] (output files'
// `count`) and Bytes[i] (`fileSize`, when the server gives it), -1 when
// unknown. Kinds and types come as Groups, so the workflow can learn sizes
// per type when the manifest gives none. Numbers only: no URL, no name.
type ChunkHints struct {
	Groups    []Group `json:"groups,omitempty"`
	Resources []int64 `json:"resources,omitempty"`
	Bytes     []int64 `json:"bytes,omitempty"`
}

// maxHintFiles bounds a ChunkHints result (about 16 bytes a file in
// history): a chunk holds at most 2,000 files (options.filesPerChunk).
const maxHintFiles = 4000

// ChunkHints reads the staged plan's size hints for a chunk's files.
func (a *Activities) ChunkHints(ctx context.Context, in ChunkHintsInput) (ChunkHints, error) {
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return ChunkHints{}, err
	}
	p, err := a.loadPlan(ctx, s, in.Target, in.PlanVersion)
	if err != nil {
		return ChunkHints{}, err
	}
	if in.First < 0 || in.Count < 0 || in.Count > maxHintFiles || in.First+in.Count > len(p.Files) {
		return ChunkHints{}, permanent("InvalidInput", fmt.Errorf("files %d..%d are outside the plan's %d files (or more than %d)", in.First, in.First+in.Count-1, len(p.Files), maxHintFiles))
	}
	h := ChunkHints{Resources: make([]int64, in.Count), Bytes: make([]int64, in.Count)}
	for i := range in.Count {
		f := p.Files[in.First+i]
		h.Resources[i], h.Bytes[i] = -1, -1
		// Only an output file's count is its number of lines.
		if f.Kind == KindOutput && f.HasCount {
			h.Resources[i] = f.Count
		}
		if f.HasSize {
			h.Bytes[i] = f.Size
		}
		if n := len(h.Groups); n > 0 && h.Groups[n-1].Kind == f.Kind && h.Groups[n-1].Type == f.Type {
			h.Groups[n-1].Count++
		} else {
			h.Groups = append(h.Groups, Group{Kind: f.Kind, Type: f.Type, First: in.First + i, Count: 1})
		}
	}
	return h, nil
}

// BatchInput names a run of consecutive plan files to download in one
// activity.
type BatchInput struct {
	ServerRef
	Target
	First       int    `json:"first"`
	Count       int    `json:"count"`
	PlanVersion int    `json:"planVersion,omitempty"`
	Generation  int    `json:"generation,omitempty"`
	Layout      Layout `json:"layout,omitempty"`
}

// BatchResult holds one outcome per file of the batch: staged (Files, each
// with its full record staged in the batch record, by reference) or failed
// (Failed, for the workflow to retry alone).
type BatchResult struct {
	Files  []FileResult  `json:"files,omitempty"`
	Failed []FileFailure `json:"failed,omitempty"`
}

// FileFailure is one file of a batch that failed: its error as DownloadFile
// would have returned it (type and message; no URL beyond what errors
// already show).
type FileFailure struct {
	Index int    `json:"index"`
	Type  string `json:"type"`
	Error string `json:"error"`
	// Signature identifies a retryable validation failure (a count
	// mismatch, a repeated id) for DownloadInput.PriorFailure.
	Signature string `json:"signature,omitempty"`
}

// maxBatchFiles bounds a batch: its result (about 200 bytes a file) and
// its record stay small.
const maxBatchFiles = 200

// batchRecordObject names the staged record of one batch attempt: the
// full result of every file it staged. The chunk's run and the attempt
// make it unique, as fileRecordObject.
func batchRecordObject(first, gen int, chunkRun string, attempt int32) string {
	return fmt.Sprintf("%sbatches/%06d-%s-%d-g%d.json", sink.WorkPrefix, first, chunkRun, attempt, gen)
}

type batchCtxKey struct{}

type priorFailureKey struct{}

// priorDetails decodes an earlier attempt's heartbeat details into cp
// (false if they are unreadable). Inside a batch there are none to trust:
// the details are the batch's, never one file's checkpoint, so a file of a
// batch never resumes another's partial object. A first attempt after the
// file failed in a batch starts from that failure's signature
// (DownloadInput.PriorFailure).
func priorDetails(ctx context.Context, cp *checkpoint) bool {
	if ctx.Value(batchCtxKey{}) != nil {
		return false
	}
	if !activity.HasHeartbeatDetails(ctx) {
		if sig, ok := ctx.Value(priorFailureKey{}).(string); ok {
			cp.Failure = sig
		}
		return true
	}
	return activity.GetHeartbeatDetails(ctx, cp) == nil
}

// batchBeat is a batch's heartbeat: how far it got (informational; a retry
// trusts the staged batch record, not the heartbeat).
type batchBeat struct {
	Done    int   `json:"done"`
	Attempt int32 `json:"attempt"` // whose record holds the files done
}

// DownloadBatch downloads the files First..First+Count-1 of the plan, one
// after another, each exactly as DownloadFile would (validation, staging,
// audit event, metrics). The audit trail of the batch is one fragment with
// one event per request. A file that fails does not stop the batch: it is
// reported in Failed, and the workflow retries it alone. A retried batch
// (the worker died, the heartbeat timed out) skips the files an earlier
// attempt staged and recorded: the batch record is written every heartbeat
// interval and at the end, after the files it lists are durable.
func (a *Activities) DownloadBatch(ctx context.Context, in BatchInput) (BatchResult, error) {
	ctx, rec, finish := a.begin(ctx, in.ServerRef, in.Target)
	defer finish()
	if in.Count < 1 || in.Count > maxBatchFiles {
		return BatchResult{}, permanent("InvalidInput", fmt.Errorf("a batch of %d files: use 1 to %d", in.Count, maxBatchFiles))
	}
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return BatchResult{}, err
	}
	s = sink.AtGeneration(s, in.Generation)
	p, err := a.loadPlan(ctx, s, in.Target, in.PlanVersion)
	if err != nil {
		return BatchResult{}, err
	}
	if in.First < 0 || in.First+in.Count > len(p.Files) {
		return BatchResult{}, permanent("InvalidInput", fmt.Errorf("files %d..%d are outside the plan's %d files", in.First, in.First+in.Count-1, len(p.Files)))
	}
	c, err := a.client(in.ServerRef)
	if err != nil {
		return BatchResult{}, err
	}
	info := activity.GetInfo(ctx)
	chunkRun := info.WorkflowExecution.RunID
	prev := a.earlierBatch(ctx, s, in, chunkRun, info.Attempt)
	ctx = context.WithValue(ctx, batchCtxKey{}, true)
	gs := groupSynced(s)
	j := a.newFileJob(in.ServerRef, in.Target, gs, p, c, in.Layout)
	var out BatchResult
	staged := make([]FileResult, 0, in.Count) // full records, for the batch record
	beat := func(checkpoint) {
		activity.RecordHeartbeat(ctx, batchBeat{Done: len(staged) + len(out.Failed), Attempt: info.Attempt})
	}
	name := batchRecordObject(in.First, in.Generation, chunkRun, info.Attempt)
	written := 0
	record := func() error {
		if len(staged) == written {
			return nil
		}
		// The files first, all at once: the record vouches for them.
		if err := gs.sync(ctx, in.Run); err != nil {
			return retryable("Sink", fmt.Errorf("make files %d..%d durable: %w", in.First, in.First+in.Count-1, err))
		}
		if err := writeJSON(ctx, s, in.Run, name, staged); err != nil {
			return retryable("Sink", fmt.Errorf("stage the record of files %d..%d: %w", in.First, in.First+in.Count-1, err))
		}
		written = len(staged)
		return nil
	}
	lastRecord := time.Now()
	for i := in.First; i < in.First+in.Count; i++ {
		if ctx.Err() != nil {
			return BatchResult{}, ctx.Err()
		}
		if r, ok := prev[i]; ok {
			staged = append(staged, r)
			continue
		}
		res, err := a.fetchFile(ctx, rec, j, i, checkpoint{}, beat)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return BatchResult{}, err
			}
			msg := err.Error()
			if len(msg) > 1024 {
				msg = msg[:1024] + "…"
			}
			out.Failed = append(out.Failed, FileFailure{Index: i, Type: errorType(err), Error: msg, Signature: j.failure})
			continue
		}
		res.Attempt = info.Attempt
		res.Generation = in.Generation
		staged = append(staged, res)
		beat(checkpoint{})
		if time.Since(lastRecord) >= j.every {
			// A worker that dies now loses at most this interval's files.
			if err := record(); err != nil {
				return BatchResult{}, err
			}
			lastRecord = time.Now()
		}
	}
	if err := record(); err != nil {
		return BatchResult{}, err
	}
	for _, r := range staged {
		r.Parts, r.Record = nil, name
		out.Files = append(out.Files, r)
	}
	a.Logger.Info("batch staged", "first", in.First, "files", len(out.Files), "failed", len(out.Failed), "skipped", len(prev))
	return out, nil
}

// earlierBatch reads the record of the latest earlier attempt of this batch
// that left one (the one its last heartbeat names, else attempt-1 down to
// 1): the files it lists were staged, durably (the record is written after
// them), and need not be fetched again; the commit still checks each one's
// size and hash. An unreadable record is ignored: those files are fetched
// again, which is always safe.
func (a *Activities) earlierBatch(ctx context.Context, s sink.Sink, in BatchInput, chunkRun string, attempt int32) map[int]FileResult {
	var tries []int32
	var hb batchBeat
	if activity.HasHeartbeatDetails(ctx) && activity.GetHeartbeatDetails(ctx, &hb) == nil && hb.Attempt > 0 {
		tries = append(tries, hb.Attempt)
	}
	for at := attempt - 1; at >= 1; at-- {
		tries = append(tries, at)
	}
	for _, at := range tries {
		rc, err := s.Open(ctx, in.Run, batchRecordObject(in.First, in.Generation, chunkRun, at))
		if err != nil {
			continue
		}
		var files []FileResult
		err = json.NewDecoder(rc).Decode(&files)
		rc.Close()
		if err != nil {
			continue
		}
		prev := make(map[int]FileResult, len(files))
		for _, f := range files {
			if f.Index >= in.First && f.Index < in.First+in.Count && f.Generation == in.Generation {
				prev[f.Index] = f
			}
		}
		return prev
	}
	return nil
}

// batchSink stages a batch's files without one fsync each when the sink
// can make a group durable at once (sink.GroupSyncer, the local disk): the
// batch syncs them together before its record names them. Bookkeeping
// objects keep the sink's own Create.
type batchSink struct {
	sink.Sink
	g     sink.GroupSyncer // nil: every Create is the sink's own
	mu    sync.Mutex
	names []string // staged since the last sync
}

func groupSynced(s sink.Sink) *batchSink {
	g, _ := s.(sink.GroupSyncer)
	return &batchSink{Sink: s, g: g}
}

func (b *batchSink) Create(ctx context.Context, run, name string) (sink.Writer, error) {
	if b.g == nil || strings.HasPrefix(name, sink.WorkPrefix) {
		return b.Sink.Create(ctx, run, name)
	}
	w, err := b.g.CreateUnsynced(ctx, run, name)
	if err == nil {
		b.mu.Lock()
		b.names = append(b.names, name)
		b.mu.Unlock()
	}
	return w, err
}

// sync makes every object created since the last sync durable. An object
// created but aborted is simply missing: skipped.
func (b *batchSink) sync(ctx context.Context, run string) error {
	b.mu.Lock()
	names := b.names
	b.names = nil
	b.mu.Unlock()
	if b.g == nil || len(names) == 0 {
		return nil
	}
	return b.g.SyncStaged(ctx, run, names)
}

// isBatchRecord says whether a staged record name is a batch's (a list of
// results) rather than one file's.
func isBatchRecord(name string) bool { return strings.HasPrefix(name, sink.WorkPrefix+"batches/") }
