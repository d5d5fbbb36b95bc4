package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/bulkflow/bulkflow/internal/bulk"
)

func TestObserveNamesEventsLikeBulkDataClient(t *testing.T) {
	var live bytes.Buffer
	r := New(Event{ExportID: "wf", Server: "ehr", ClientID: "bulkflow"}, &live)
	ctx := With(context.Background(), r)
	for _, ex := range []bulk.Exchange{
		{Op: "kickoff", Status: 202}, {Op: "status", Status: 202}, {Op: "status", Status: 200}, {Op: "status", Status: 500},
		{Op: "status", Err: errors.New("reset")}, {Op: "manifest", Status: 200}, {Op: "download", Status: 200}, {Op: "delete", Status: 202},
	} {
		Observe(ctx, ex)
	}
	Observe(context.Background(), bulk.Exchange{Op: "kickoff"}) // no recorder: ignored
	r.Emit("download_complete", map[string]any{"resourceCount": 3})
	var got []string
	var out bytes.Buffer
	r.WriteTo(&out)
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.ExportID != "wf" || ev.Server != "ehr" || ev.ClientID != "bulkflow" || ev.Timestamp.IsZero() {
			t.Fatalf("identity fields missing: %+v", ev)
		}
		got = append(got, ev.EventID)
	}
	want := "kickoff status_progress status_complete status_error status_error manifest_page download_request export_delete download_complete"
	if strings.Join(got, " ") != want {
		t.Fatalf("events %v, want %s", got, want)
	}
	if live.String() != out.String() || r.Len() != 9 {
		t.Fatal("the live copy must hold the same events")
	}
}
