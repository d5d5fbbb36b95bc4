package activities

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// FuzzDownloadFile feeds the activity hostile NDJSON against a manifest
// count: whatever the body, staging holds at most count lines of at most
// the cap each, a file that fails leaves no complete-looking staged copy,
// and every failure is a typed application error.
func FuzzDownloadFile(f *testing.F) {
	f.Add(uint8(2), true, []byte(obs("1")+"\n"+obs("2")+"\n"))
	f.Add(uint8(1), true, []byte(obs("1")+"\n"+obs("2")+"\n"+obs("3")+"\n"))                                                         // more lines than the count
	f.Add(uint8(2), true, []byte(obs("1")+"\n"+obs("1")+"\n"))                                                                       // duplicate ids
	f.Add(uint8(3), true, []byte(obs("1")+"\n"+strings.Repeat("A", 10000)+"\n"))                                                     // a line over the cap
	f.Add(uint8(1), true, []byte(strings.Repeat(`{"resourceType":"Observation","note":"`+strings.Repeat("n", 3000)+`"}`+"\n", 400))) // 1.2 MB, past the staging writer's buffer, for a count of 1
	f.Add(uint8(0), false, []byte("\xef\xbb\xbf"+obs("1")+"\r\n\n"+obs("2")))                                                        // BOM, CRLF, no final newline
	f.Add(uint8(1), true, []byte(`{"resourceType":"Patient","id":"p"}`+"\n"))                                                        // wrong type
	f.Add(uint8(1), true, []byte(`{"resourceType":"Observation","id":"\u0000"}`+"\n"))
	f.Fuzz(func(t *testing.T, count uint8, hasCount bool, body []byte) {
		const maxLine = 4 << 10
		fx := newFixture(t)
		fx.acts.MaxLineBytes = maxLine
		fx.bodies["/f"] = string(body)
		fx.stage(plannedFile{Kind: KindOutput, Type: "Observation", URL: fx.srv.URL + "/f", Count: int64(count), HasCount: hasCount, Path: "Observation/Observation-0001.ndjson"})
		cs := countStaging(t, fx.acts)
		r, err := fx.download(0)
		if hasCount {
			// Every byte ever written to staging, not what is left of it.
			if staged, limit := cs.n.Load(), int64(count)*(maxLine+1); staged > limit {
				t.Fatalf("%d bytes staged for a file of %d resources capped at %d bytes each", staged, count, maxLine)
			}
		}
		if err != nil {
			var ae *temporal.ApplicationError
			if !errors.As(err, &ae) || ae.Type() == "" {
				t.Fatalf("untyped failure: %v", err)
			}
			if got := fx.staged("Observation/Observation-0001.ndjson"); got != "" {
				t.Fatalf("a failed download left a complete-looking staged file (%d bytes)", len(got))
			}
			return
		}
		if hasCount && r.Resources != int64(count) {
			t.Fatalf("committed %d resources for a count of %d", r.Resources, count)
		}
		if got := fx.staged(r.Path); int64(len(got)) != r.Bytes || strings.Count(got, "\n") != int(r.Resources) {
			t.Fatalf("result %+v does not describe the staged file (%d bytes)", r, len(got))
		}
	})
}

// countingSink counts the bytes written to data objects of the staging area.
type countingSink struct {
	sink.Sink
	n atomic.Int64
}

func (c *countingSink) Create(ctx context.Context, run, name string) (sink.Writer, error) {
	w, err := c.Sink.Create(ctx, run, name)
	if err != nil || strings.HasPrefix(name, sink.WorkPrefix) {
		return w, err
	}
	return &countingWriter{Writer: w, n: &c.n}, nil
}

type countingWriter struct {
	sink.Writer
	n *atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return w.Writer.Write(p)
}

// countStaging puts a counting sink in front of the activities' sink for
// the fixture's output root.
func countStaging(t *testing.T, a *Activities) *countingSink {
	s, err := a.sinkFor("")
	if err != nil {
		t.Fatal(err)
	}
	cs := &countingSink{Sink: s}
	a.mu.Lock()
	a.sinks[resolveOutput(a.OutputRoot, "")] = cs
	a.mu.Unlock()
	return cs
}

var safePath = regexp.MustCompile(`^(_errors/|_deleted/)?[A-Z][A-Za-z]{0,63}/[A-Z][A-Za-z]{0,63}-\d{4,}\.ndjson$|^(_errors|_deleted)/[A-Z][A-Za-z]{0,63}-\d{4,}\.ndjson$`)

// FuzzBuildPlan feeds the manifest path (the server's JSON and its Expires
// header) to the plan: a plan is made only from an instant transactionTime,
// never keeps an Expires already past, and names only safe paths.
func FuzzBuildPlan(f *testing.F) {
	seeds, _ := filepath.Glob("../internal/bulk/testdata/*.json")
	for _, s := range seeds {
		b, _ := os.ReadFile(s)
		f.Add(b, int64(0))
	}
	f.Add([]byte(`{"transactionTime":"2099-01-01T00:00:00Z","output":[{"type":"Patient","url":"https://h/p"}]}`), int64(-1))
	f.Add([]byte(`{"transactionTime":"not a time","output":[]}`), int64(3600))
	f.Add([]byte(`{"transactionTime":"2026-01-01T00:00:00Z","output":[{"type":"../../etc","url":"https://h/p"}]}`), int64(-86400*365*60))
	f.Add([]byte(`{"transactionTime":"2026-01-01T00:00:00Z","error":[{"url":"https://h/e","count":14095}],"deleted":[{"url":"https://h/d"}]}`), int64(0))
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, data []byte, expiresIn int64) {
		m, err := bulk.ParseManifest(data)
		if err != nil {
			return
		}
		var exp time.Time
		if expiresIn != 0 {
			exp = now.Add(time.Duration(expiresIn%(1<<40)) * time.Second)
		}
		p, err := buildPlan(m, exp, now)
		if err != nil {
			if len(err.Error()) > 2000 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if _, err := ParseInstant(p.TransactionTime); err != nil {
			t.Fatalf("a plan with transactionTime %q", p.TransactionTime)
		}
		if !p.Expires.IsZero() && !p.Expires.After(now) {
			t.Fatalf("a plan kept Expires %v, already past at %v", p.Expires, now)
		}
		if ahead := CheckWatermarkTime(p.TransactionTime, now) != nil; ahead != p.TransactionTimeAhead {
			t.Fatalf("transactionTime %s: ahead flag %v", p.TransactionTime, p.TransactionTimeAhead)
		}
		for _, fl := range p.Files {
			if !safePath.MatchString(fl.Path) {
				t.Fatalf("unsafe path %q", fl.Path)
			}
		}
	})
}
