package activities

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/bulkflow/bulkflow/internal/audit"
	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// begin starts an activity's audit trail: ctx carries the recorder, so the
// protocol client's exchanges land in it (audit.Observe). finish writes the
// events as one fragment _audit/<run>/<time>-<activity>-<id>-a<attempt>.ndjson
// in the output location, whatever the outcome: a failed run's trail
// matters as much as a committed one's.
func (a *Activities) begin(ctx context.Context, ref ServerRef, t Target) (context.Context, *audit.Recorder, func()) {
	var info activity.Info
	if activity.IsActivity(ctx) { // direct calls (tests, tools) have no activity info
		info = activity.GetInfo(ctx)
	}
	exportID, _, _ := strings.Cut(info.WorkflowExecution.ID, "/chunk-") // a chunk's events belong to its export
	rec := audit.New(audit.Event{
		ExportID: exportID, RunID: info.WorkflowExecution.RunID, Run: t.Run,
		Activity: info.ActivityType.Name, Attempt: info.Attempt,
		Server: serverName(ref), ClientID: a.Servers.ClientID(ref.Server, ref.BaseURL),
	}, a.AuditLive)
	finish := func() {
		if rec.Len() == 0 || t.Run == "" {
			return
		}
		s, err := a.sinkFor(t.Output)
		if err != nil {
			return
		}
		name := fmt.Sprintf("_audit/%s/%s-%s-%s-a%d.ndjson", t.Run, time.Now().UTC().Format("20060102T150405.000000000Z"),
			strings.ToLower(info.ActivityType.Name), sanitizeID(info.ActivityID), info.Attempt)
		// Not the activity's context: a cancelled attempt still leaves its trail.
		wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := writeAux(wctx, s, name, rec); err != nil {
			a.Logger.Warn("could not write the audit log", "run", t.Run, "error", err)
		}
	}
	return audit.With(ctx, rec), rec, finish
}

func writeAux(ctx context.Context, s sink.Sink, name string, rec *audit.Recorder) error {
	w, err := s.CreateAux(ctx, name)
	if err != nil {
		return err
	}
	if _, err := rec.WriteTo(w); err != nil {
		w.Abort()
		return err
	}
	return w.Close()
}

func sanitizeID(id string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, id)
}

// observeOutcome feeds metrics from an activity's protocol error.
func (a *Activities) observeOutcome(ref ServerRef, endpoint string, err error) {
	if err == nil {
		return
	}
	if bulk.KindOf(err) == bulk.KindRateLimited {
		a.Metrics.Throttled(serverName(ref), endpoint)
	}
}

// validationReason names a download's validation failure for metrics, ""
// for other failures.
func validationReason(err error) string {
	var ve *validationError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return ""
}
