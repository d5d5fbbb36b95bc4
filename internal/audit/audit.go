// Package audit records what bulkflow did on a FHIR server's behalf: every
// HTTP exchange (kick-off, status, manifest page, file, DELETE) and every
// download and commit outcome, as NDJSON events. Event names follow the
// bulk-data-client log.ndjson convention where they overlap (kickoff,
// status_progress, status_complete, status_error, download_request,
// download_complete, download_error, export_complete), so existing tooling
// reads them. Events hold URLs without query strings, counts, sizes and
// outcomes: never resource content, tokens, or patient ids.
package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/bulkflow/bulkflow/internal/bulk"
)

// Event is one line of the audit log.
type Event struct {
	Timestamp   time.Time      `json:"timestamp"`
	EventID     string         `json:"eventId"`
	ExportID    string         `json:"exportId"` // the workflow ID
	RunID       string         `json:"runId,omitempty"`
	Run         string         `json:"run,omitempty"` // the output folder
	Activity    string         `json:"activity,omitempty"`
	Attempt     int32          `json:"attempt,omitempty"`
	Server      string         `json:"server"`
	ClientID    string         `json:"clientId,omitempty"`
	EventDetail map[string]any `json:"eventDetail"`
}

// Recorder collects one activity attempt's events. Safe for concurrent use.
type Recorder struct {
	base Event
	out  io.Writer // optional live copy (stdout), one JSON line per event
	mu   sync.Mutex
	buf  bytes.Buffer
	n    int
}

// New returns a Recorder whose events carry base's identity fields.
func New(base Event, live io.Writer) *Recorder { return &Recorder{base: base, out: live} }

// Emit records an event.
func (r *Recorder) Emit(eventID string, detail map[string]any) {
	if r == nil {
		return
	}
	ev := r.base
	ev.Timestamp = time.Now().UTC()
	ev.EventID = eventID
	ev.EventDetail = detail
	line, err := json.Marshal(ev)
	if err != nil {
		return
	}
	line = append(line, '\n')
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf.Write(line)
	r.n++
	if r.out != nil {
		r.out.Write(line)
	}
}

// Len is the number of events recorded.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// WriteTo writes the recorded events as NDJSON.
func (r *Recorder) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, err := w.Write(r.buf.Bytes())
	return int64(n), err
}

type ctxKey struct{}

// With returns ctx carrying r, so protocol exchanges made under ctx are
// recorded by Observe.
func With(ctx context.Context, r *Recorder) context.Context {
	return context.WithValue(ctx, ctxKey{}, r)
}

// From returns the Recorder carried by ctx, or nil.
func From(ctx context.Context) *Recorder {
	r, _ := ctx.Value(ctxKey{}).(*Recorder)
	return r
}

// Observe is a bulk.Client observer: it records the exchange in the
// Recorder carried by ctx.
func Observe(ctx context.Context, ex bulk.Exchange) {
	r := From(ctx)
	if r == nil {
		return
	}
	detail := map[string]any{"method": ex.Method, "url": ex.URL, "status": ex.Status, "durationMs": ex.Duration.Milliseconds()}
	if ex.Err != nil {
		detail["error"] = ex.Err.Error()
	}
	r.Emit(eventFor(ex), detail)
}

func eventFor(ex bulk.Exchange) string {
	switch ex.Op {
	case "kickoff":
		return "kickoff"
	case "status":
		switch {
		case ex.Err == nil && ex.Status == 202:
			return "status_progress"
		case ex.Err == nil && ex.Status == 200:
			return "status_complete"
		}
		return "status_error"
	case "manifest":
		return "manifest_page"
	case "download":
		return "download_request"
	case "delete":
		return "export_delete"
	}
	return fmt.Sprintf("http_%s", ex.Op)
}

// Server is the server name events carry.
func (r *Recorder) Server() string { return r.base.Server }
