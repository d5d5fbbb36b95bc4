package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/bulkflow/bulkflow/internal/sink"
)

// WatermarkKey identifies a stream of incremental exports: the same server,
// level, group, types and filters. Runs that differ in any of these keep
// separate watermarks, so a narrow run never advances a broad one.
type WatermarkKey struct {
	Server      string   `json:"server,omitempty"`
	BaseURL     string   `json:"baseURL,omitempty"`
	Level       string   `json:"level"`
	Group       string   `json:"group,omitempty"`
	Types       []string `json:"types,omitempty"` // sorted; empty = all (or per-type mode)
	TypeFilters []string `json:"typeFilters,omitempty"`
	Elements    []string `json:"elements,omitempty"`
	Patients    string   `json:"patients,omitempty"` // a hash: patient ids are not written in clear
	PerType     bool     `json:"perType,omitempty"`
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// Name is the state object's name: readable, and unique by a hash of the
// whole key. Pure, so workflows compute it too.
func (k WatermarkKey) Name() string {
	b, _ := json.Marshal(k)
	sum := sha256.Sum256(b)
	who := k.Server
	if who == "" {
		who = strings.TrimPrefix(strings.TrimPrefix(k.BaseURL, "https://"), "http://")
	}
	label := unsafeName.ReplaceAllString(fmt.Sprintf("%s_%s_%s", who, k.Level, k.Group), "-")
	label = strings.Trim(label, "-_.")
	if len(label) > 80 {
		label = label[:80]
	}
	return fmt.Sprintf("watermark-%s-%s.json", label, hex.EncodeToString(sum[:6]))
}

// NewWatermarkKey builds the key of a request; types and filters are sorted
// so their order does not matter.
func NewWatermarkKey(server, baseURL, level, group string, types, typeFilters, elements, patients []string, perType bool) WatermarkKey {
	sorted := func(v []string) []string {
		if len(v) == 0 {
			return nil
		}
		out := append([]string(nil), v...)
		sort.Strings(out)
		return out
	}
	k := WatermarkKey{Server: server, Level: level, Group: group, TypeFilters: sorted(typeFilters), Elements: sorted(elements), PerType: perType}
	if server == "" {
		k.BaseURL = strings.TrimRight(baseURL, "/")
	}
	if k.Level == "" {
		k.Level = "system"
	}
	if !perType {
		k.Types = sorted(types)
	}
	if len(patients) > 0 {
		b, _ := json.Marshal(sorted(patients))
		sum := sha256.Sum256(b)
		k.Patients = hex.EncodeToString(sum[:8])
	}
	return k
}

// Watermark is the state object: the transactionTime of the last run that
// fully committed for its key. Only Commit writes it, after _manifest.json.
type Watermark struct {
	Format          string            `json:"format"` // "bulkflow-watermark/1"
	Key             WatermarkKey      `json:"key"`
	TransactionTime string            `json:"transactionTime,omitempty"`
	Types           map[string]string `json:"types,omitempty"` // per-type mode: type -> transactionTime
	Run             string            `json:"run"`
	Manifest        string            `json:"manifest"`
	CommittedAt     time.Time         `json:"committedAt"`
}

// Since is the _since for an incremental run of types, "" when the
// watermark cannot vouch for all of them (then the run is a full export).
func (w *Watermark) Since(types []string) string {
	if w == nil {
		return ""
	}
	if !w.Key.PerType {
		return w.TransactionTime
	}
	// Per type: the oldest of the requested types, so none skips anything.
	since := ""
	for _, t := range types {
		tt, ok := w.Types[t]
		if !ok {
			return ""
		}
		if since == "" || before(tt, since) {
			since = tt
		}
	}
	return since
}

func before(a, b string) bool {
	ta, errA := time.Parse(time.RFC3339Nano, a)
	tb, errB := time.Parse(time.RFC3339Nano, b)
	if errA != nil || errB != nil {
		return a < b
	}
	return ta.Before(tb)
}

// ReadWatermarkInput names a watermark in an output location.
type ReadWatermarkInput struct {
	Output string       `json:"output,omitempty"`
	Key    WatermarkKey `json:"key"`
}

// ReadWatermark returns the committed watermark for a key, nil if none. A
// watermark whose instants are broken or in the future is refused with the
// way to repair it: used as _since it would skip changes on every run.
func (a *Activities) ReadWatermark(ctx context.Context, in ReadWatermarkInput) (*Watermark, error) {
	s, err := a.sinkFor(in.Output)
	if err != nil {
		return nil, err
	}
	name := in.Key.Name()
	w, err := readWatermark(ctx, s, name)
	if err != nil || w == nil {
		return w, err
	}
	if err := w.Validate(time.Now()); err != nil {
		return nil, permanent("InvalidWatermark", fmt.Errorf("watermark %s in %s: %v; repair it with `starter watermark set --out %s --name %s --transaction-time <instant>` (see docs/operations.md, Repairing a watermark), or delete it to make the next run a full export",
			name, s.Location(sink.StateDir), err, outputArg(in.Output), name))
	}
	return w, nil
}

func outputArg(o string) string {
	if o == "" {
		return "<output>"
	}
	return o
}

// Validate checks that every instant of w could be a _since: a FHIR
// instant, not ahead of now by more than ClockSkew.
func (w *Watermark) Validate(now time.Time) error {
	if w.TransactionTime != "" {
		if err := CheckWatermarkTime(w.TransactionTime, now); err != nil {
			return fmt.Errorf("transactionTime %w", err)
		}
	}
	types := make([]string, 0, len(w.Types))
	for t := range w.Types {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		if err := CheckWatermarkTime(w.Types[t], now); err != nil {
			return fmt.Errorf("%s's transactionTime %w", t, err)
		}
	}
	return nil
}

// LoadWatermark reads state object name of the output location (a
// directory, file:// or gs:// URL): nil if there is none. For the CLI.
func LoadWatermark(ctx context.Context, output, name string) (*Watermark, error) {
	s, err := sink.Open(output)
	if err != nil {
		return nil, err
	}
	return readWatermark(ctx, s, name)
}

// SetWatermark writes state object name with transactionTime (for type,
// in per-type mode; all its types when type is ""), keeping the key of the
// existing object; key is needed when there is none yet. The instant must
// be a FHIR instant and not in the future: it is the next run's _since.
// It may move the watermark back (to re-export a period) or forward (to
// skip one), which is why only an operator does it.
func SetWatermark(ctx context.Context, output, name string, key *WatermarkKey, transactionTime, typ string, now time.Time) (*Watermark, error) {
	t, err := ParseInstant(transactionTime)
	if err != nil {
		return nil, err
	}
	if t.After(now) {
		return nil, fmt.Errorf("%s is in the future (now is %s): a watermark ahead of the server's clock makes incremental runs skip changes", transactionTime, now.UTC().Format(time.RFC3339))
	}
	s, err := sink.Open(output)
	if err != nil {
		return nil, err
	}
	cur, err := readWatermark(ctx, s, name)
	if err != nil && cur == nil && key == nil {
		return nil, fmt.Errorf("%v; give the key flags (--server/--fhir-url, --level, --types, ...) to write a fresh one", err)
	}
	w := &Watermark{Format: "bulkflow-watermark/1", Run: "(set by starter watermark set)", CommittedAt: now.UTC()}
	switch {
	case cur != nil:
		w.Key, w.Types, w.TransactionTime = cur.Key, cur.Types, cur.TransactionTime
	case key != nil:
		w.Key = *key
	default:
		return nil, fmt.Errorf("there is no watermark %s yet; give the key flags (--server/--fhir-url, --level, --types, ...) to create it", name)
	}
	if w.Key.PerType {
		if w.Types == nil {
			w.Types = map[string]string{}
		}
		targets := w.Key.Types
		if typ != "" {
			targets = []string{typ}
		} else if len(w.Types) > 0 {
			targets = nil
			for t := range w.Types {
				targets = append(targets, t)
			}
		}
		if len(targets) == 0 {
			return nil, errors.New("a per-type watermark needs --type (the resource type to set)")
		}
		for _, t := range targets {
			w.Types[t] = transactionTime
		}
	} else {
		if typ != "" {
			return nil, errors.New("--type applies to per-type watermarks only")
		}
		w.TransactionTime = transactionTime
	}
	b, _ := json.MarshalIndent(w, "", "  ")
	if err := s.WriteState(ctx, name, b); err != nil {
		return nil, err
	}
	return w, nil
}

func readWatermark(ctx context.Context, s sink.Sink, name string) (*Watermark, error) {
	b, err := s.ReadState(ctx, name)
	if errors.Is(err, sink.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, retryable("Sink", err)
	}
	w := new(Watermark)
	if err := json.Unmarshal(b, w); err != nil {
		return nil, permanent("InvalidWatermark", fmt.Errorf("watermark %s is unreadable (%v); fix or delete it, then run again (deleting it makes the next run a full export)", name, err))
	}
	return w, nil
}

// WatermarkUpdate asks Commit to advance a watermark after the manifest.
type WatermarkUpdate struct {
	Key WatermarkKey `json:"key"`
	// Since is the run's _since ("" for a full export): a run whose since is
	// after the current watermark would leave a gap, so it never advances it.
	Since string   `json:"since,omitempty"`
	Types []string `json:"types,omitempty"`
}

// advanceWatermark writes the watermark for a committed run, never moving
// it backwards and never across a gap.
func advanceWatermark(ctx context.Context, s sink.Sink, u *WatermarkUpdate, transactionTime, run, manifest string) (bool, error) {
	if err := CheckWatermarkTime(transactionTime, time.Now()); err != nil {
		return false, nil // never a _since that skips changes (Commit says why)
	}
	name := u.Key.Name()
	cur, err := readWatermark(ctx, s, name)
	if err != nil {
		return false, err
	}
	if cur != nil && cur.Validate(time.Now()) != nil {
		// A broken or future watermark would never be passed: this run
		// committed in full, so its transactionTime repairs it.
		cur = nil
	}
	next := &Watermark{Format: "bulkflow-watermark/1", Key: u.Key, Run: run, Manifest: manifest, CommittedAt: time.Now().UTC()}
	if u.Key.PerType {
		next.Types = map[string]string{}
		if cur != nil {
			for t, tt := range cur.Types {
				next.Types[t] = tt
			}
		}
		advanced := false
		for _, t := range u.Types {
			old, ok := next.Types[t]
			if ok && u.Since != "" && before(old, u.Since) {
				continue // this type would skip (old, since]
			}
			if !ok || before(old, transactionTime) {
				next.Types[t] = transactionTime
				advanced = true
			}
		}
		if !advanced {
			return false, nil
		}
	} else {
		if cur != nil && u.Since != "" && before(cur.TransactionTime, u.Since) {
			return false, nil
		}
		if cur != nil && !before(cur.TransactionTime, transactionTime) {
			return false, nil // an older run committing late never moves it back
		}
		next.TransactionTime = transactionTime
	}
	b, _ := json.MarshalIndent(next, "", "  ")
	if err := s.WriteState(ctx, name, b); err != nil {
		return false, retryable("Sink", err)
	}
	return true, nil
}
