package activities

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/bulkflow/bulkflow/internal/sink"
)

// RunManifest is the contract with readers: `_manifest.json` at the top of
// a run, written after every file it lists is in place. Its absence means
// the run is incomplete and must be ignored.
type RunManifest struct {
	Format          string         `json:"format"` // "bulkflow-run/1"
	Run             string         `json:"run"`
	WorkflowID      string         `json:"workflowId,omitempty"`
	Request         map[string]any `json:"request"`
	ServerRequest   string         `json:"serverRequest,omitempty"` // the manifest's "request", query removed
	TransactionTime string         `json:"transactionTime"`
	StartedAt       time.Time      `json:"startedAt"`
	CommittedAt     time.Time      `json:"committedAt"`
	Files           []ManifestFile `json:"files"`
	Totals          Totals         `json:"totals"`
	// Views lists each view's tables and rows (files of kind "view"), in
	// the order the export names them.
	Views    []ManifestView `json:"views,omitempty"`
	Warnings []string       `json:"warnings,omitempty"`
	// Attachments summarises attachments/index.ndjson (attachments "fetch").
	Attachments *AttachmentSummary `json:"attachments,omitempty"`
}

// ManifestFile is one object of a committed run.
type ManifestFile struct {
	Path      string `json:"path"`
	Kind      string `json:"kind"` // output, error, deleted (the server's Bundles), tombstone
	Type      string `json:"type"`
	Format    string `json:"format"` // ndjson or parquet
	Gzip      bool   `json:"gzip,omitempty"`
	Partition string `json:"partition,omitempty"`
	Resources int64  `json:"resources"` // lines or rows
	Bytes     int64  `json:"bytes"`
	SHA256    string `json:"sha256"`
	// Source is the position of the server file this object came from in
	// the server's manifest order (by kind, then type).
	Source int `json:"source"`
	// View names the view of a view table (kind "view"; type is the
	// resource type it flattens, resources its rows).
	View string `json:"view,omitempty"`
}

// ManifestView sums one view's tables in a run.
type ManifestView struct {
	Name     string `json:"name"`
	Resource string `json:"resource"`
	Files    int    `json:"files"`
	Rows     int64  `json:"rows"`
}

// Totals sums a run: in the run manifest, the workflow's result and its
// progress (one type for all three; its methods are in types.go).
type Totals struct {
	Files     int              `json:"files"`
	Bytes     int64            `json:"bytes"`
	Resources map[string]int64 `json:"resources"`         // output resources by type
	Deleted   map[string]int64 `json:"deleted,omitempty"` // deletions by type
	Issues    map[string]int64 `json:"issues,omitempty"`  // error[] OperationOutcome issues by severity
	// Failed sums the counts of error[] entries: servers put the number of
	// resources they could not export there. The run holds the rest.
	Failed int64 `json:"failed,omitempty"`
	// Retries counts download attempts beyond the first (workflow result only).
	Retries int `json:"retries,omitempty"`
	// Unsubsetted counts resources that lack the SUBSETTED tag although
	// _elements was asked (a lenient server ignored it).
	Unsubsetted int64 `json:"unsubsetted,omitempty"`
}

// Commit writes the run manifest from the staged chunk records and promotes
// the run. Safe to retry: the sink completes an interrupted commit.
func (a *Activities) Commit(ctx context.Context, in CommitInput) (CommitResult, error) {
	// A commit can take minutes (GCS copies every object): heartbeats all
	// along let the workflow's short heartbeat timeout notice a worker that
	// died mid-commit in seconds, and retry it (the sink resumes it).
	stop := heartbeatAlways(ctx, cmp.Or(a.HeartbeatEvery, 5*time.Second))
	defer stop()
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return CommitResult{}, err
	}
	files, err := readChunks(ctx, s, in.Run, in.Chunks)
	if errors.Is(err, sink.ErrNotFound) {
		// A retried commit whose first attempt got as far as promoting the run
		// has no work area left; the sink confirms the commit below.
		if cerr := s.Commit(ctx, in.Run, nil); cerr == nil {
			// Committed by an earlier attempt that may have died before the
			// watermark: advancing it again is idempotent.
			return a.finishCommit(ctx, s, in, in.Plan.Files)
		}
		return CommitResult{}, permanent("Incomplete", fmt.Errorf("commit run %s: chunk records missing (%w); nothing was committed", in.Run, err))
	}
	if err != nil {
		return CommitResult{}, retryable("Sink", err)
	}
	if len(files) != in.Plan.Files {
		return CommitResult{}, permanent("Incomplete", fmt.Errorf("commit run %s: %d files recorded, the plan has %d; nothing was committed", in.Run, len(files), in.Plan.Files))
	}
	m := buildRunManifest(in, files)
	staged := stagedFiles(files)
	if in.Attachments {
		more, sum, err := stageAttachmentIndex(ctx, s, in.Run, in.Chunks) // attachments.go
		if err != nil {
			return CommitResult{}, err
		}
		staged, m.Attachments = append(staged, more...), sum
	}
	m.CommittedAt = time.Now().UTC()
	if in.Watermark != nil {
		if why := watermarkRefusal(in, m.CommittedAt); why != nil {
			if w := fmt.Sprintf("the incremental watermark was not advanced: the transactionTime %v", why); !slices.Contains(m.Warnings, w) {
				m.Warnings = append(m.Warnings, w)
			}
		}
	}
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return CommitResult{}, permanent("Internal", err)
	}
	if err := s.CommitFiles(ctx, in.Run, staged, body); err != nil {
		if errors.Is(err, sink.ErrStagedChanged) {
			// The bytes on storage are not the ones validated: committing
			// them would present unvalidated data as complete.
			return CommitResult{}, permanent("StagedFileChanged", err)
		}
		return CommitResult{}, retryable("Sink", err)
	}
	a.Logger.Info("run committed", "run", in.Run, "location", s.Location(in.Run), "files", len(files))
	res, err := a.finishCommit(ctx, s, in, len(files))
	if err == nil {
		_, rec, finish := a.begin(ctx, ServerRef{Server: stringOf(in.Request["server"]), BaseURL: stringOf(in.Request["baseURL"])}, in.Target)
		secs := time.Since(in.StartedAt).Seconds()
		rec.Emit("export_complete", map[string]any{"transactionTime": in.Plan.TransactionTime, "files": m.Totals.Files,
			"resources": m.Totals.Resources, "bytes": m.Totals.Bytes, "deleted": m.Totals.Deleted, "issues": m.Totals.Issues,
			"duration": secs, "manifest": res.Manifest, "watermark": res.Watermark})
		finish()
		a.Metrics.ExportFinished(rec.Server(), "committed", secs)
	}
	return res, err
}

// stagedFiles lists every object the run manifest lists, where it was
// staged and what it must still hold.
func stagedFiles(files []FileResult) []sink.Staged {
	var out []sink.Staged
	for _, f := range files {
		for _, p := range fileParts(f) {
			out = append(out, sink.Staged{Name: p.Path, Generation: f.Generation, Bytes: p.Bytes, SHA256: p.SHA256, Stored: p.Stored})
		}
	}
	return out
}

// fileParts is what a file became in the run: its parts, or the file itself.
func fileParts(f FileResult) []Part {
	if len(f.Parts) == 0 && !f.NotKept {
		return []Part{{Path: f.Path, Format: "ndjson", Rows: f.Resources, Bytes: f.Bytes, SHA256: f.SHA256}}
	}
	return f.Parts
}

// finishCommit advances the watermark, strictly after the manifest: a crash
// in between leaves the watermark behind (the next run overlaps, nothing is
// skipped), never ahead.
func (a *Activities) finishCommit(ctx context.Context, s sink.Sink, in CommitInput, files int) (CommitResult, error) {
	loc := s.Location(in.Run)
	res := CommitResult{Location: loc, Manifest: loc + "/" + sink.ManifestName, Files: files}
	if in.Watermark != nil && watermarkRefusal(in, time.Now()) == nil {
		ok, err := advanceWatermark(ctx, s, in.Watermark, in.Plan.TransactionTime, in.Run, res.Manifest)
		if err != nil {
			return CommitResult{}, err
		}
		if ok {
			res.Watermark = in.Watermark.Key.Name()
		}
	}
	return res, nil
}

// watermarkRefusal says why this run's transactionTime must not become
// the watermark (nil: it may): flagged as ahead of the clock when the
// manifest arrived, or not a valid, present instant now.
func watermarkRefusal(in CommitInput, now time.Time) error {
	if in.Plan.TransactionTimeAhead {
		if err := CheckWatermarkTime(in.Plan.TransactionTime, now); err != nil {
			return err
		}
		return fmt.Errorf("%s was ahead of the worker's clock when the manifest arrived", in.Plan.TransactionTime)
	}
	return CheckWatermarkTime(in.Plan.TransactionTime, now)
}

// heartbeatAlways heartbeats at once and then every interval until stopped.
func heartbeatAlways(ctx context.Context, every time.Duration) (stop func()) {
	if !activity.IsActivity(ctx) {
		return func() {}
	}
	done := make(chan struct{})
	activity.RecordHeartbeat(ctx)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				activity.RecordHeartbeat(ctx)
			}
		}
	}()
	return func() { close(done) }
}

func stringOf(v any) string {
	s, _ := v.(string)
	return s
}

func readChunks(ctx context.Context, s sink.Sink, run string, chunks int) ([]FileResult, error) {
	var all []FileResult
	for i := 0; i < chunks; i++ {
		rc, err := s.Open(ctx, run, chunkObject(i))
		if err != nil {
			return nil, err
		}
		var part []FileResult
		err = json.NewDecoder(rc).Decode(&part)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("chunk record %d: %w", i, err)
		}
		all = append(all, part...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Index < all[j].Index })
	for i, f := range all {
		if f.Index != i {
			return nil, fmt.Errorf("chunk records are inconsistent at file %d (found index %d)", i, f.Index)
		}
	}
	return all, nil
}

func buildRunManifest(in CommitInput, files []FileResult) RunManifest {
	m := RunManifest{
		Format: "bulkflow-run/1", Run: in.Run, WorkflowID: in.Workflow, Request: in.Request, Warnings: append([]string(nil), in.Warnings...),
		ServerRequest: in.Plan.Request, TransactionTime: in.Plan.TransactionTime, StartedAt: in.StartedAt,
		Files:  make([]ManifestFile, 0, len(files)),
		Totals: Totals{Resources: map[string]int64{}},
	}
	for _, v := range in.Views {
		m.Views = append(m.Views, ManifestView{Name: v}) // listed even without a table (no resource of its type)
	}
	for _, f := range files {
		for _, p := range fileParts(f) {
			mf := ManifestFile{Path: p.Path, Kind: cmp.Or(p.Kind, f.Kind), Type: cmp.Or(p.Type, f.Type), Format: p.Format, Gzip: p.Gzip,
				Partition: p.Partition, Resources: p.Rows, Bytes: p.Bytes, SHA256: p.SHA256, Source: f.Index, View: p.View}
			m.Files = append(m.Files, mf)
			if p.Kind == KindView {
				m.addView(p)
			}
			m.Totals.Files++
			m.Totals.Bytes += p.Bytes
		}
		switch f.Kind {
		case KindOutput:
			m.Totals.Resources[f.Type] += f.Resources
		case KindDeleted:
			m.Totals.Deleted = AddCounts(m.Totals.Deleted, f.Deleted)
		case KindError:
			m.Totals.Issues = AddCounts(m.Totals.Issues, f.Severity)
			m.Totals.Failed += f.Failed
		}
	}
	if m.Totals.Failed > 0 {
		m.Warnings = append(m.Warnings, fmt.Sprintf("partial export: the server could not export %d resource(s) (the counts of its error[] entries); the resources it did export are committed; see _errors/ for its OperationOutcomes", m.Totals.Failed))
	}
	for _, w := range in.Plan.Warnings {
		if !slices.Contains(m.Warnings, w) {
			m.Warnings = append(m.Warnings, w)
		}
	}
	for _, sev := range []string{"fatal", "error", "warning", "information"} {
		if n := m.Totals.Issues[sev]; n > 0 {
			m.Warnings = append(m.Warnings, fmt.Sprintf("the server reported %d %s issue(s) in error[]; see _errors/", n, sev))
		}
	}
	return m
}

// addView counts a view table. Views are listed in the order the export
// names them (CommitInput.Views), then any other in the order met.
func (m *RunManifest) addView(p Part) {
	for i := range m.Views {
		if m.Views[i].Name == p.View {
			m.Views[i].Resource = p.Type
			m.Views[i].Files++
			m.Views[i].Rows += p.Rows
			return
		}
	}
	m.Views = append(m.Views, ManifestView{Name: p.View, Resource: p.Type, Files: 1, Rows: p.Rows})
}

// AddCounts adds src into dst (allocated on first use) and returns it.
func AddCounts(dst, src map[string]int64) map[string]int64 {
	if len(src) == 0 {
		return dst
	}
	if dst == nil {
		dst = map[string]int64{}
	}
	for k, v := range src {
		dst[k] += v
	}
	return dst
}
