package activities

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// Attachments (issue 15, docs/lake.md "Attachments"). Output resources of
// the types below point at their documents with attachment.url. With
// attachments "fetch", each download writes, beside the staged file, a
// sidecar list of those references (_attachment-refs/<file path>, a staged
// data object of the file's generation that is never committed); after the
// downloads the workflow runs FetchAttachments once per chunk, which
// streams every referenced document into the run's staging area as
// attachments/<type>/<id>/<index>.<ext> and records one index line per
// reference; Commit promotes the stored documents with the run (checked by
// size and SHA-256 like every file) and merges the chunks' lines into
// attachments/index.ndjson. Resource lines are never rewritten.

// Attachment modes.
const (
	AttachmentsNone   = ""
	AttachmentsFetch  = "fetch"
	AttachmentsInline = "inline"
)

// DefaultInlineTypes are inlined when the export lists no attachmentTypes.
var DefaultInlineTypes = []string{"text/plain", "text/html", "text/rtf", "application/rtf", "application/xml", "text/xml"}

// DefaultMaxInlineBytes caps one inlined attachment unless the export says
// otherwise: its base64 lands in the resource line.
const DefaultMaxInlineBytes = 1 << 20

// Attachment statuses in the index.
const (
	AttachmentStored        = "stored"
	AttachmentMissing       = "missing"        // 403/404/410, or another 4xx (detail says which)
	AttachmentTooLarge      = "too-large"      // over maxAttachmentBytes (declared or while streaming)
	AttachmentOverBudget    = "over-budget"    // the run's maxAttachmentsBytes was used up
	AttachmentHashMismatch  = "hash-mismatch"  // size or SHA-1 differed from the attachment's, on every try
	AttachmentRefusedOrigin = "refused-origin" // not the FHIR server's origin nor in allowedOrigins
	AttachmentInvalid       = "invalid"        // unusable URL
	AttachmentDeleted       = "deleted"        // a tombstone: the resource was deleted (path is a prefix)
	AttachmentInlined       = "inlined"        // inline mode: base64 written into attachment.data
	AttachmentSkipped       = "skipped"        // inline mode: contentType not in attachmentTypes
)

// DefaultMaxAttachmentBytes caps one attachment unless the export says otherwise.
const DefaultMaxAttachmentBytes = 50 << 20

// AttachmentPolicy is the export's attachment option, carried in Layout so
// every download sees it.
type AttachmentPolicy struct {
	Mode string `json:"mode"`
	// MaxBytes caps one attachment (0: DefaultMaxAttachmentBytes).
	MaxBytes int64 `json:"maxBytes,omitempty"`
	// MaxTotal caps the bytes stored per run (0: no cap).
	MaxTotal int64 `json:"maxTotal,omitempty"`
	// Types are the contentTypes inlined (inline mode; default
	// DefaultInlineTypes).
	Types []string `json:"types,omitempty"`
}

func (p *AttachmentPolicy) enabled() bool {
	return p != nil && (p.Mode == AttachmentsFetch || p.Mode == AttachmentsInline)
}

func (p *AttachmentPolicy) maxBytes() int64 {
	if p.Mode == AttachmentsInline {
		return cmp.Or(p.MaxBytes, DefaultMaxInlineBytes)
	}
	return cmp.Or(p.MaxBytes, DefaultMaxAttachmentBytes)
}

// inlines reports whether contentType is one the inline mode inlines.
func (p *AttachmentPolicy) inlines(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	types := p.Types
	if len(types) == 0 {
		types = DefaultInlineTypes
	}
	for _, t := range types {
		if strings.EqualFold(strings.TrimSpace(t), mt) {
			return true
		}
	}
	return false
}

// Validate reports an attachment policy bulkflow cannot run.
func (p *AttachmentPolicy) Validate() error {
	if p == nil {
		return nil
	}
	switch p.Mode {
	case AttachmentsNone, AttachmentsFetch, AttachmentsInline:
	default:
		return fmt.Errorf(`attachments %q: use "none", "fetch" or "inline"`, p.Mode)
	}
	if len(p.Types) > 0 && p.Mode != AttachmentsInline {
		return errors.New(`"attachmentTypes" applies to attachments "inline" only`)
	}
	for _, t := range p.Types {
		if mt, _, err := mime.ParseMediaType(t); err != nil || !strings.Contains(mt, "/") {
			return fmt.Errorf(`"attachmentTypes": %q is not a MIME type such as text/plain`, t)
		}
	}
	if p.Mode == AttachmentsInline && p.MaxTotal > 0 {
		return errors.New(`"maxAttachmentsBytes" applies to attachments "fetch" (inline documents are capped one by one with "maxAttachmentBytes")`)
	}
	if p.Mode == AttachmentsInline && p.MaxBytes > 16<<20 {
		return errors.New(`"maxAttachmentBytes" with attachments "inline" is at most 16777216 (16 MiB): inlined documents are held in memory and grow the resource line; use "fetch" for larger ones`)
	}
	if p.MaxBytes < 0 || p.MaxTotal < 0 {
		return errors.New(`"maxAttachmentBytes" and "maxAttachmentsBytes" must not be negative`)
	}
	return nil
}

// attachmentTypes are the resource types whose attachments are fetched, with
// where their attachments live (R4).
var attachmentTypes = map[string]bool{"DocumentReference": true, "DiagnosticReport": true, "Media": true, "Communication": true}

// HasAttachments reports whether resources of type typ can carry attachments
// that bulkflow fetches.
func HasAttachments(typ string) bool { return attachmentTypes[typ] }

const attachmentRefsDir = "_attachment-refs/"

// attachmentRef is one line of a sidecar: a reference found in a resource.
type attachmentRef struct {
	Type        string `json:"t"`
	ID          string `json:"id"`
	Index       int    `json:"i"`
	URL         string `json:"url"`
	ContentType string `json:"ct,omitempty"`
	Size        *int64 `json:"size,omitempty"`
	Hash        string `json:"hash,omitempty"`
}

// attachmentRefs collects the references of one downloaded file. nil (no
// policy, or a type without attachments) collects nothing: every method is
// a no-op then, so the download loop calls it unconditionally.
type attachmentRefs struct {
	w   sink.Writer
	bw  *bufio.Writer
	err error
	// inline mode: the documents are fetched here, while the file
	// downloads, and their records (not references) go to the sidecar.
	inline *inliner
}

// newAttachmentRefs starts the sidecar of item, or returns nil.
func (a *Activities) newAttachmentRefs(ctx context.Context, c *bulk.Client, s sink.Sink, run string, item plannedFile, layout Layout) *attachmentRefs {
	if !layout.Attachments.enabled() || item.Kind != KindOutput || !attachmentTypes[item.Type] {
		return nil
	}
	r := &attachmentRefs{}
	if layout.Attachments.Mode == AttachmentsInline {
		r.inline = &inliner{a: a, ctx: ctx, c: c, policy: layout.Attachments}
	}
	r.w, r.err = s.Create(ctx, run, attachmentRefsDir+item.Path)
	if r.err == nil {
		r.bw = bufio.NewWriterSize(r.w, 64<<10)
	}
	return r
}

// add records the attachment references of one resource line and returns
// the line to stage: the same line, or in inline mode the line with the
// documents' base64 in attachment.data. It is the hook in the download
// loops: one call per line.
func (r *attachmentRefs) add(line []byte) []byte {
	if r == nil || r.err != nil || !bytes.Contains(line, []byte(`"url"`)) {
		return line
	}
	for _, ref := range extractAttachments(line) {
		var b []byte
		if r.inline != nil {
			var rec AttachmentRecord
			line, rec, r.err = r.inline.inline(line, ref)
			if r.err != nil {
				return line
			}
			b, _ = json.Marshal(rec)
		} else {
			b, _ = json.Marshal(ref)
		}
		r.bw.Write(b)
		if r.err = r.bw.WriteByte('\n'); r.err != nil {
			return line
		}
	}
	return line
}

// close makes the sidecar visible; an error is retryable (staging I/O).
func (r *attachmentRefs) close() error {
	if r == nil {
		return nil
	}
	if r.err == nil {
		r.err = r.bw.Flush()
	}
	if r.err != nil {
		r.w.Abort()
		var be *bulk.Error
		if errors.As(r.err, &be) {
			return r.err // an inlined document kept failing: the file is downloaded again
		}
		return &bulk.Error{Op: "stage", URL: "attachment references", Kind: bulk.KindTransient, Err: r.err}
	}
	if err := r.w.Close(); err != nil {
		return &bulk.Error{Op: "stage", URL: "attachment references", Kind: bulk.KindTransient, Err: err}
	}
	return nil
}

func (r *attachmentRefs) abort() {
	if r != nil && r.w != nil {
		r.w.Abort()
	}
}

type fhirAttachment struct {
	ContentType string  `json:"contentType"`
	URL         string  `json:"url"`
	Data        *string `json:"data"`
	Size        *int64  `json:"size"`
	Hash        string  `json:"hash"`
}

// extractAttachments lists the url-only attachments of a resource line, in
// order: DocumentReference.content[].attachment, DiagnosticReport.
// presentedForm[], Media.content, Communication.payload[].contentAttachment.
// Index is the attachment's position among all of the resource's
// attachments (inline ones count too), so it is stable whatever is fetched.
// A resource whose id is not a FHIR id yields nothing: ids become paths.
func extractAttachments(line []byte) []attachmentRef {
	var r struct {
		ResourceType  string            `json:"resourceType"`
		ID            string            `json:"id"`
		Content       json.RawMessage   `json:"content"`
		PresentedForm []*fhirAttachment `json:"presentedForm"`
		Payload       []struct {
			ContentAttachment *fhirAttachment `json:"contentAttachment"`
		} `json:"payload"`
	}
	if json.Unmarshal(line, &r) != nil || !IsFHIRID(r.ID) {
		return nil
	}
	var all []*fhirAttachment
	switch r.ResourceType {
	case "DocumentReference":
		var cs []struct {
			Attachment *fhirAttachment `json:"attachment"`
		}
		if json.Unmarshal(r.Content, &cs) == nil {
			for _, c := range cs {
				all = append(all, c.Attachment)
			}
		}
	case "DiagnosticReport":
		all = r.PresentedForm
	case "Media":
		var one fhirAttachment
		if len(r.Content) > 0 && json.Unmarshal(r.Content, &one) == nil {
			all = append(all, &one)
		}
	case "Communication":
		for _, p := range r.Payload {
			if p.ContentAttachment != nil {
				all = append(all, p.ContentAttachment)
			}
		}
	}
	var out []attachmentRef
	for i, a := range all {
		if a == nil || a.URL == "" || a.Data != nil {
			continue
		}
		out = append(out, attachmentRef{Type: r.ResourceType, ID: r.ID, Index: i, URL: a.URL, ContentType: a.ContentType, Size: a.Size, Hash: a.Hash})
	}
	return out
}

// AttachmentRecord is one line of attachments/index.ndjson.
type AttachmentRecord struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Index        int    `json:"index"`
	Status       string `json:"status"`
	// Path is the stored copy in the run (status stored); for a deleted
	// resource, the prefix under which earlier runs stored its attachments.
	Path        string `json:"path,omitempty"`
	Size        int64  `json:"size,omitempty"`
	SHA256      string `json:"sha256,omitempty"`
	ContentType string `json:"contentType,omitempty"`
	// URL is the attachment's URL, resolved against the FHIR base, without
	// its query (and only its origin when it is not the server's).
	URL    string `json:"url,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Generation and Stored are for the commit (the staged object's plan
	// generation and storage checksum); not in the committed index.
	Generation int    `json:"generation,omitempty"`
	Stored     string `json:"stored,omitempty"`
	// Source is the plan index of the file the resource came from.
	Source int `json:"source"`
}

// AttachmentCounts sums attachment records by status, and the bytes stored.
type AttachmentCounts struct {
	ByStatus map[string]int64 `json:"byStatus,omitempty"`
	Bytes    int64            `json:"bytes"`
}

// Add counts o into c.
func (c *AttachmentCounts) Add(o AttachmentCounts) {
	c.ByStatus = AddCounts(c.ByStatus, o.ByStatus)
	c.Bytes += o.Bytes
}

// Failed counts references that were not stored for a reason a strict
// export fails on (not tombstones).
func (c AttachmentCounts) Failed() int64 {
	var n int64
	for k, v := range c.ByStatus {
		if k != AttachmentStored && k != AttachmentDeleted && k != AttachmentInlined && k != AttachmentSkipped {
			n += v
		}
	}
	return n
}

// FetchAttachmentsInput fetches the attachments of one chunk's files.
type FetchAttachmentsInput struct {
	ServerRef
	Target
	Chunk       int              `json:"chunk"`
	PlanVersion int              `json:"planVersion,omitempty"`
	Policy      AttachmentPolicy `json:"policy"`
	// Budget is what the run may still store (MaxTotal less what earlier
	// chunks stored); < 0: no cap.
	Budget      int64 `json:"budget"`
	Concurrency int   `json:"concurrency,omitempty"`
}

// FetchAttachmentsResult counts one chunk's attachments.
type FetchAttachmentsResult struct {
	Counts AttachmentCounts `json:"counts"`
}

func attachmentIndexObject(chunk int) string {
	return fmt.Sprintf("%sattachments/%06d.ndjson", sink.WorkPrefix, chunk)
}

// AttachmentIndexName is the committed index of a run's attachments.
const AttachmentIndexName = "attachments/index.ndjson"

// attachmentAttempts bounds the tries of one attachment within an activity
// attempt for a hash mismatch or a transient failure; past it a mismatch is
// recorded, a transient failure fails the activity (whose retry skips what
// is stored).
const attachmentAttempts = 3

// FetchAttachments streams every attachment referenced by one chunk's files
// into staging. Safe to retry, and resumable after a worker dies: a
// document already staged by an earlier attempt (staged objects appear only
// once complete and verified) is hashed again from staging, not fetched.
func (a *Activities) FetchAttachments(ctx context.Context, in FetchAttachmentsInput) (FetchAttachmentsResult, error) {
	ctx, rec, finish := a.begin(ctx, in.ServerRef, in.Target)
	defer finish()
	// Heartbeats on a clock, well inside the heartbeat timeout: a stalled
	// request is caught by the client's idle timeout, a dead worker by
	// the heartbeat timeout.
	every := cmp.Or(a.HeartbeatEvery, 5*time.Second)
	if hb := activity.GetInfo(ctx).HeartbeatTimeout; hb > 0 {
		every = min(every, hb/3)
	}
	stop := heartbeatAlways(ctx, every)
	defer stop()
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return FetchAttachmentsResult{}, err
	}
	rc, err := s.Open(ctx, in.Run, chunkObject(in.Chunk))
	if err != nil {
		return FetchAttachmentsResult{}, retryable("Sink", fmt.Errorf("read chunk record %d: %w", in.Chunk, err))
	}
	var files []FileResult
	err = json.NewDecoder(rc).Decode(&files)
	rc.Close()
	if err != nil {
		return FetchAttachmentsResult{}, permanent("Incomplete", fmt.Errorf("chunk record %d unreadable: %w", in.Chunk, err))
	}
	p, err := a.loadPlan(ctx, s, in.Target, in.PlanVersion)
	if err != nil {
		return FetchAttachmentsResult{}, err
	}
	c, err := a.client(in.ServerRef)
	if err != nil {
		return FetchAttachmentsResult{}, err
	}
	f := &fetcher{a: a, ctx: ctx, c: c, s: s, run: in.Run, policy: in.Policy, server: in.ServerRef, budget: in.Budget, every: every}
	var records []AttachmentRecord
	for _, fr := range files {
		switch {
		case fr.Kind == KindOutput && attachmentTypes[fr.Type] && fr.Index < len(p.Files):
			if in.Policy.Mode == AttachmentsInline {
				recs, err := readInlined(ctx, sink.AtGeneration(s, fr.Generation), in.Run, p.Files[fr.Index].Path, a, fr)
				if err != nil {
					return FetchAttachmentsResult{}, err
				}
				records = append(records, recs...)
				continue
			}
			refs, err := readRefs(ctx, sink.AtGeneration(s, fr.Generation), in.Run, p.Files[fr.Index].Path, a)
			if err != nil {
				return FetchAttachmentsResult{}, err
			}
			out := f.fetchAll(refs, fr, max(1, in.Concurrency))
			if err := ctx.Err(); err != nil {
				return FetchAttachmentsResult{}, err
			}
			if f.fatal != nil {
				return FetchAttachmentsResult{}, f.fatal
			}
			records = append(records, out...)
		case fr.Kind == KindDeleted:
			tombs, err := attachmentTombstones(ctx, sink.AtGeneration(s, fr.Generation), in.Run, fr)
			if err != nil {
				return FetchAttachmentsResult{}, err
			}
			records = append(records, tombs...)
		}
	}
	sort.SliceStable(records, func(i, j int) bool {
		x, y := records[i], records[j]
		return cmp.Or(cmp.Compare(x.ResourceType, y.ResourceType), cmp.Compare(x.ID, y.ID), cmp.Compare(x.Index, y.Index)) < 0
	})
	var res FetchAttachmentsResult
	w, err := s.Create(ctx, in.Run, attachmentIndexObject(in.Chunk))
	if err != nil {
		return res, retryable("Sink", err)
	}
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for _, r := range records {
		enc.Encode(r)
		res.Counts.ByStatus = AddCounts(res.Counts.ByStatus, map[string]int64{r.Status: 1})
		if r.Status == AttachmentStored {
			res.Counts.Bytes += r.Size
		}
	}
	if err := bw.Flush(); err != nil {
		w.Abort()
		return res, retryable("Sink", err)
	}
	if err := w.Close(); err != nil {
		return res, retryable("Sink", err)
	}
	rec.Emit("attachments_fetched", map[string]any{"chunk": in.Chunk, "byStatus": res.Counts.ByStatus, "bytes": res.Counts.Bytes})
	a.Logger.Info("attachments staged", "run", in.Run, "chunk", in.Chunk, "by_status", res.Counts.ByStatus, "bytes", res.Counts.Bytes)
	return res, nil
}

func readRefs(ctx context.Context, s sink.Sink, run, filePath string, a *Activities) ([]attachmentRef, error) {
	return readSidecar[attachmentRef](ctx, s, run, filePath, a, "attachment references")
}

// readSidecar reads the objects a download staged beside filePath (its
// attachment references, or its inline records). None staged is none; a
// line that does not decode is an error, never skipped: it would be an
// attachment silently missing from the index.
func readSidecar[T any](ctx context.Context, s sink.Sink, run, filePath string, a *Activities, what string) ([]T, error) {
	rc, err := s.Open(ctx, run, attachmentRefsDir+filePath)
	if errors.Is(err, sink.ErrNotFound) {
		return nil, nil // a file without attachments
	}
	if err != nil {
		return nil, retryable("Sink", fmt.Errorf("read the %s of %s: %w", what, filePath, err))
	}
	defer rc.Close()
	r := a.newReader(rc)
	var out []T
	for {
		line, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, retryable("Sink", fmt.Errorf("read the %s of %s: %w", what, filePath, err))
		}
		var v T
		if err := json.Unmarshal(line, &v); err != nil {
			return nil, permanent("Incomplete", fmt.Errorf("the staged %s of %s are damaged at line %d (download the file again: run the export again): %w", what, filePath, r.Line(), err))
		}
		out = append(out, v)
	}
}

// attachmentTombstones turns the tombstones of a deleted file for types
// with attachments into index lines whose path is the prefix under which
// earlier runs stored the deleted resource's attachments.
func attachmentTombstones(ctx context.Context, s sink.Sink, run string, fr FileResult) ([]AttachmentRecord, error) {
	var out []AttachmentRecord
	for _, p := range fr.Parts {
		if p.Kind != KindTombstone || !attachmentTypes[p.Type] {
			continue
		}
		rc, err := s.Open(ctx, run, p.Path)
		if err != nil {
			return nil, retryable("Sink", fmt.Errorf("read tombstones %s: %w", p.Path, err))
		}
		dec := json.NewDecoder(rc)
		for {
			var t tombstone
			if err := dec.Decode(&t); err != nil {
				break
			}
			if IsFHIRID(t.ID) {
				out = append(out, AttachmentRecord{ResourceType: t.ResourceType, ID: t.ID, Index: -1, Status: AttachmentDeleted,
					Path: fmt.Sprintf("attachments/%s/%s/", t.ResourceType, t.ID), Source: fr.Index})
			}
		}
		rc.Close()
	}
	return out, nil
}

// fetcher fetches the attachments of one activity.
type fetcher struct {
	a      *Activities
	ctx    context.Context
	c      *bulk.Client
	s      sink.Sink
	run    string
	policy AttachmentPolicy
	server ServerRef // its download budget's slots
	budget int64     // < 0: none
	every  time.Duration
	used   atomic.Int64
	mu     sync.Mutex
	fatal  error
}

func (f *fetcher) fetchAll(refs []attachmentRef, fr FileResult, conc int) []AttachmentRecord {
	out := make([]AttachmentRecord, len(refs))
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(conc, len(refs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(refs) || f.ctx.Err() != nil || f.failed() {
					return
				}
				r, err := f.fetchOne(refs[i], fr)
				if err != nil {
					f.fail(err)
					return
				}
				out[i] = r
			}
		}()
	}
	wg.Wait()
	return out
}

func (f *fetcher) failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fatal != nil
}

func (f *fetcher) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fatal == nil {
		f.fatal = err
	}
}

// attachmentPath names the stored copy: deterministic, so a retry finds it.
func attachmentPath(ref attachmentRef) string {
	return fmt.Sprintf("attachments/%s/%s/%d.%s", ref.Type, ref.ID, ref.Index, extensionOf(ref.ContentType))
}

var extensions = map[string]string{
	"text/plain": "txt", "text/html": "html", "text/rtf": "rtf", "application/rtf": "rtf", "text/xml": "xml", "application/xml": "xml",
	"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/tiff": "tiff", "application/json": "json",
	"application/fhir+json": "json", "application/dicom": "dcm", "text/csv": "csv", "application/msword": "doc",
	"application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx", "audio/mpeg": "mp3", "video/mp4": "mp4",
}

func extensionOf(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return "bin"
	}
	return cmp.Or(extensions[strings.ToLower(mt)], "bin")
}

// fetchOne returns the record of one reference; an error only for what
// a retry of the activity may fix (transient failures that outlasted the
// in-activity tries, staging I/O).
func (f *fetcher) fetchOne(ref attachmentRef, fr FileResult) (AttachmentRecord, error) {
	rec := AttachmentRecord{ResourceType: ref.Type, ID: ref.ID, Index: ref.Index, ContentType: ref.ContentType, Source: fr.Index, Generation: fr.Generation}
	u, err := f.c.ResolveAttachmentURL(ref.URL)
	if err != nil {
		rec.Status, rec.Detail = AttachmentInvalid, clipText(err.Error(), 200)
		return rec, nil
	}
	rec.URL = f.c.RedactAttachmentURL(u)
	if !f.c.AttachmentAllowed(u) {
		rec.Status, rec.Detail = AttachmentRefusedOrigin, "the attachment is on an origin that is neither the FHIR server's nor in its allowedOrigins: not fetched"
		return rec, nil
	}
	maxBytes := f.policy.maxBytes()
	if ref.Size != nil && *ref.Size > maxBytes {
		rec.Status, rec.Size, rec.Detail = AttachmentTooLarge, *ref.Size, fmt.Sprintf("attachment.size %d is over maxAttachmentBytes %d: not fetched", *ref.Size, maxBytes)
		return rec, nil
	}
	var wantSHA1 []byte
	if ref.Hash != "" {
		if wantSHA1, err = base64.StdEncoding.DecodeString(ref.Hash); err != nil || len(wantSHA1) != sha1.Size {
			wantSHA1 = nil // an unusable hash cannot be checked; the size still is
		}
	}
	name := attachmentPath(ref)
	gs := sink.AtGeneration(f.s, fr.Generation)
	// Resume: a staged copy exists only once complete and verified.
	if size, sum, ok := stagedDigest(f.ctx, gs, f.run, name); ok && f.reserve(size) {
		rec.Status, rec.Path, rec.Size, rec.SHA256 = AttachmentStored, name, size, sum
		return rec, nil
	}
	every := f.every
	var lastErr error
	var waited time.Duration
	for try := 1; try <= attachmentAttempts; {
		if f.budget >= 0 && f.used.Load() >= f.budget {
			rec.Status, rec.Detail = AttachmentOverBudget, "the run's maxAttachmentsBytes was used up: not fetched"
			return rec, nil
		}
		lease, err := f.a.downloadSlot(f.ctx, f.server, func() { activity.RecordHeartbeat(f.ctx) })
		if err != nil {
			return rec, err
		}
		st, err := f.store(u, ref, gs, name, maxBytes, wantSHA1)
		releaseSlot(lease, err)
		if wait, ok := rateLimitWait(f.ctx, err, waited, time.Now()); ok {
			// A 429 asks us to wait; it uses up no try.
			if err := sleepBeating(f.ctx, wait, every, checkpoint{}, func(checkpoint) { activity.RecordHeartbeat(f.ctx) }); err != nil {
				return rec, err
			}
			waited += wait
			continue
		}
		if err == nil {
			if st.status == AttachmentStored {
				rec.Path, rec.SHA256, rec.Stored = name, st.sha256, st.stored
			}
			rec.Status, rec.Size, rec.Detail = st.status, st.size, st.detail
			if st.status != AttachmentHashMismatch || try == attachmentAttempts {
				return rec, nil
			}
			try++
			continue
		}
		var be *bulk.Error
		switch {
		case errors.As(err, &be) && be.Kind == bulk.KindFileGone:
			rec.Status, rec.Detail = AttachmentMissing, fmt.Sprintf("the server answered %d", be.StatusCode)
			return rec, nil
		case errors.As(err, &be) && be.Kind == bulk.KindPermanent && be.StatusCode >= 400:
			rec.Status, rec.Detail = AttachmentMissing, clipText(be.Error(), 300)
			return rec, nil
		case !bulk.IsRetryable(err):
			rec.Status, rec.Detail = AttachmentMissing, clipText(err.Error(), 300)
			return rec, nil
		}
		lastErr = err
		try++
		if try <= attachmentAttempts {
			if err := sleepBeating(f.ctx, bulk.Backoff(try, time.Second, 10*time.Second), every, checkpoint{}, func(checkpoint) { activity.RecordHeartbeat(f.ctx) }); err != nil {
				return rec, err
			}
		}
	}
	// Transient failures that outlasted the tries: the activity's retry
	// (with backoff, and skipping what is stored) takes over.
	return rec, temporalErrorCtx(f.ctx, fmt.Errorf("attachment %d of %s/%s: %w", ref.Index, ref.Type, ref.ID, lastErr))
}

// reserve counts n stored bytes against the run's budget; false (nothing
// counted) if they do not fit.
func (f *fetcher) reserve(n int64) bool {
	for {
		u := f.used.Load()
		if f.budget >= 0 && u+n > f.budget {
			return false
		}
		if f.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

type stored struct {
	status, detail string
	size           int64
	sha256, stored string
}

// store streams one attachment into staging, never holding it: the staged
// object appears only when it is complete, within the caps, and matches
// the attachment's size and hash when they are given.
func (f *fetcher) store(pu *url.URL, ref attachmentRef, gs sink.Sink, name string, maxBytes int64, wantSHA1 []byte) (stored, error) {
	att, err := f.c.OpenAttachment(f.ctx, pu, ref.ContentType)
	if err != nil {
		return stored{}, err
	}
	defer att.Body.Close()
	w, err := gs.Create(f.ctx, f.run, name)
	if err != nil {
		return stored{}, &bulk.Error{Op: "stage", URL: name, Kind: bulk.KindTransient, Err: err}
	}
	defer w.Abort() // no-op once closed
	h256, h1 := sha256.New(), sha1.New()
	n, err := io.Copy(io.MultiWriter(w, h256, h1), io.LimitReader(att.Body, maxBytes+1))
	if err != nil {
		var be *bulk.Error
		if errors.As(err, &be) {
			return stored{}, err
		}
		if errors.Is(err, bulk.ErrNoBinaryData) {
			return stored{status: AttachmentMissing, detail: "the server returned a Binary resource without data"}, nil
		}
		return stored{}, &bulk.Error{Op: bulk.OpAttachment, URL: f.c.RedactAttachmentURL(pu), Kind: bulk.KindTransient, Err: err}
	}
	if n > maxBytes {
		return stored{status: AttachmentTooLarge, size: n, detail: fmt.Sprintf("over maxAttachmentBytes %d: stopped reading", maxBytes)}, nil
	}
	if ref.Size != nil && *ref.Size != n {
		return stored{status: AttachmentHashMismatch, size: n, detail: fmt.Sprintf("received %d bytes, attachment.size says %d", n, *ref.Size)}, nil
	}
	if wantSHA1 != nil && !bytes.Equal(h1.Sum(nil), wantSHA1) {
		return stored{status: AttachmentHashMismatch, size: n, detail: "the SHA-1 of the bytes received differs from attachment.hash"}, nil
	}
	if !f.reserve(n) {
		return stored{status: AttachmentOverBudget, size: n, detail: "the run's maxAttachmentsBytes would be exceeded: not kept"}, nil
	}
	if err := w.Close(); err != nil {
		f.used.Add(-n)
		return stored{}, &bulk.Error{Op: "stage", URL: name, Kind: bulk.KindTransient, Err: err}
	}
	return stored{status: AttachmentStored, size: n, sha256: hex.EncodeToString(h256.Sum(nil)), stored: sink.StoredOf(w)}, nil
}

// stagedDigest hashes a staged attachment an earlier attempt left.
func stagedDigest(ctx context.Context, s sink.Sink, run, name string) (int64, string, bool) {
	rc, err := s.Open(ctx, run, name)
	if err != nil {
		return 0, "", false
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return 0, "", false
	}
	return n, hex.EncodeToString(h.Sum(nil)), true
}

// AttachmentSummary is the attachments section of _manifest.json.
type AttachmentSummary struct {
	Index    string           `json:"index"` // attachments/index.ndjson
	Entries  int64            `json:"entries"`
	ByStatus map[string]int64 `json:"byStatus"`
	Files    int64            `json:"files"` // stored documents
	Bytes    int64            `json:"bytes"` // of stored documents
	// IndexBytes and IndexSHA256 describe the index object itself.
	IndexBytes  int64  `json:"indexBytes"`
	IndexSHA256 string `json:"indexSha256"`
}

// stageAttachmentIndex merges the chunks' attachment records into the
// run's index (deterministic: a retried commit writes the same bytes) and
// lists every stored document and the index for the commit.
func stageAttachmentIndex(ctx context.Context, s sink.Sink, run string, chunks int) ([]sink.Staged, *AttachmentSummary, error) {
	sum := &AttachmentSummary{Index: AttachmentIndexName, ByStatus: map[string]int64{}}
	w, err := s.Create(ctx, run, AttachmentIndexName)
	if err != nil {
		return nil, nil, retryable("Sink", err)
	}
	defer w.Abort()
	hw := sink.NewHashed(w)
	bw := bufio.NewWriter(hw)
	var staged []sink.Staged
	for i := range chunks {
		rc, err := s.Open(ctx, run, attachmentIndexObject(i))
		if err != nil {
			return nil, nil, retryable("Sink", fmt.Errorf("read the attachment records of chunk %d: %w", i, err))
		}
		dec := json.NewDecoder(rc)
		for {
			var r AttachmentRecord
			if err := dec.Decode(&r); err == io.EOF {
				break
			} else if err != nil {
				rc.Close()
				return nil, nil, permanent("Incomplete", fmt.Errorf("attachment records of chunk %d unreadable: %w", i, err))
			}
			if r.Status == AttachmentStored {
				staged = append(staged, sink.Staged{Name: r.Path, Generation: r.Generation, Bytes: r.Size, SHA256: r.SHA256, Stored: r.Stored})
				sum.Files++
				sum.Bytes += r.Size
			}
			sum.Entries++
			sum.ByStatus[r.Status]++
			r.Generation, r.Stored = 0, ""
			line, _ := json.Marshal(r)
			bw.Write(line)
			bw.WriteByte('\n')
		}
		rc.Close()
	}
	if err := bw.Flush(); err != nil {
		return nil, nil, retryable("Sink", err)
	}
	if err := hw.Close(); err != nil {
		return nil, nil, retryable("Sink", err)
	}
	sum.IndexBytes, sum.IndexSHA256 = hw.Size(), hw.SHA256()
	staged = append(staged, sink.Staged{Name: AttachmentIndexName, Bytes: hw.Size(), SHA256: sum.IndexSHA256, Stored: hw.Stored()})
	slices.SortFunc(staged, func(a, b sink.Staged) int { return strings.Compare(a.Name, b.Name) })
	return staged, sum, nil
}
