package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/workflows"
)

func TestRootCauseShowsTheInnermostMessage(t *testing.T) {
	inner := temporal.NewNonRetryableApplicationError("Observation/Observation-0001.ndjson line 7: not JSON", "InvalidContent", nil)
	outer := temporal.NewApplicationErrorWithCause("download: "+inner.Error(), "wrapError", inner)
	if got := rootCause(fmt.Errorf("workflow: %w", outer)); got != "Observation/Observation-0001.ndjson line 7: not JSON" {
		t.Fatalf("rootCause = %q", got)
	}
	if got := rootCause(errors.New("plain")); got != "plain" {
		t.Fatalf("rootCause = %q", got)
	}
}

// §5: the progress line fits the width (no wrapped duplicates), carries
// thousands separators and binary units, elapsed time, rate and ETA, and
// moves with the bytes of downloads in flight.
func TestProgressLine(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 7, 0, 0, 0, time.UTC)
	l := &live{started: t0.Add(-90 * time.Second), inFlight: 512 << 20}
	p := workflows.Progress{Phase: workflows.PhaseDownloading, FilesDone: 1200, FilesTotal: 5000, Resources: 12345678, ExpectedResources: 50000000, Bytes: 3 << 30}
	first := renderProgress(p, l, t0, 200)
	for _, want := range []string{"downloading", "1,200/5,000 files", "12,345,678 res", "3.5 GiB", "1m30s"} {
		if !strings.Contains(first, want) {
			t.Errorf("line lacks %q: %s", want, first)
		}
	}
	// 10 s later: 100 MiB more in flight, a million more resources.
	l.inFlight += 100 << 20
	p.Resources += 1000000
	second := renderProgress(p, l, t0.Add(10*time.Second), 200)
	if !strings.Contains(second, "10.0 MiB/s") || !strings.Contains(second, "ETA ") || second == first {
		t.Errorf("no rate or ETA after 10 s of progress: %s", second)
	}
	for _, width := range []int{80, 40} {
		line := renderProgress(p, l, t0.Add(10*time.Second), width)
		if n := utf8.RuneCountInString(line); n >= width {
			t.Errorf("width %d: line has %d columns: %s", width, n, line)
		}
	}
	if renderProgress(p, l, t0, 0) == "" {
		t.Error("unknown width")
	}
}

// While a step is retried, the line says which, the attempt, when the next
// try is and the last error.
func TestProgressLineShowsRetry(t *testing.T) {
	now := time.Date(2026, 12, 1, 7, 0, 0, 0, time.UTC)
	p := workflows.Progress{Phase: workflows.PhaseKickoff, Retrying: &workflows.RetryInfo{
		Step: "kick-off", Attempt: 3, LastError: "dial tcp 127.0.0.1:9: connect:\nconnection refused", NextRetry: now.Add(42 * time.Second)}}
	line := renderProgress(p, &live{}, now, 200)
	if want := "retrying kick-off: attempt 3, next in 42s: dial tcp 127.0.0.1:9: connect: connection refused"; !strings.Contains(line, want) {
		t.Errorf("line %q lacks %q", line, want)
	}
}

// A cancelled export counts the files actually downloaded; an incremental
// run's summary says where the watermark stands, not to pass --since.
func TestFinishTexts(t *testing.T) {
	var out, errb bytes.Buffer
	code := finish(&out, &errb, "x", workflows.ExportResult{}, temporal.NewCanceledError(), false, workflows.Progress{FilesDone: 7})
	if code != exitCancelled || !strings.Contains(out.String(), "cancelled after 7 files") {
		t.Errorf("cancelled: exit %d %q", code, out.String())
	}
	out.Reset()
	finish(&out, &errb, "x", workflows.ExportResult{Status: "committed", TransactionTime: "2026-12-01T00:00:00Z", Watermark: "_state/w.json", SinceFrom: "watermark"}, nil, false, workflows.Progress{})
	if s := out.String(); strings.Contains(s, "--since") || !strings.Contains(s, "watermark _state/w.json now stands there") {
		t.Errorf("incremental summary:\n%s", s)
	}
	out.Reset()
	finish(&out, &errb, "x", workflows.ExportResult{Status: "committed", TransactionTime: "2026-12-01T00:00:00Z"}, nil, false, workflows.Progress{})
	if s := out.String(); !strings.Contains(s, "--since") {
		t.Errorf("full export summary:\n%s", s)
	}
}

// After the demo its dev server stops: no link to it, but how to keep it.
func TestDemoUILine(t *testing.T) {
	link := "http://localhost:8233/namespaces/default/workflows/x"
	if s := demoUILine(link, false, true); strings.Contains(s, "http://") || !strings.Contains(s, "starter demo --keep") {
		t.Errorf("stopping server: %q", s)
	}
	if s := demoUILine(link, true, true); !strings.Contains(s, link) {
		t.Errorf("--keep: %q", s)
	}
	if s := demoUILine(link, false, false); !strings.Contains(s, link) {
		t.Errorf("reused server: %q", s)
	}
}
