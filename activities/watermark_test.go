package activities

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/internal/sink"
)

func TestAdvanceWatermark(t *testing.T) {
	key := NewWatermarkKey("ehr", "", "", "", []string{"Observation", "Patient"}, nil, nil, nil, false)
	perType := NewWatermarkKey("ehr", "", "", "", []string{"Patient"}, nil, nil, nil, true)
	type step struct {
		key      WatermarkKey
		since    string
		tt       string
		types    []string
		advanced bool
		want     string // Since(types) afterwards
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"first full run sets it", []step{{key, "", "2026-01-01T00:00:00Z", nil, true, "2026-01-01T00:00:00Z"}}},
		{"moves forward, never back", []step{
			{key, "", "2026-01-02T00:00:00Z", nil, true, "2026-01-02T00:00:00Z"},
			{key, "", "2026-01-01T00:00:00Z", nil, false, "2026-01-02T00:00:00Z"},
			{key, "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", nil, true, "2026-01-03T00:00:00Z"},
		}},
		{"a run starting after the watermark leaves a gap: no advance", []step{
			{key, "", "2026-01-01T00:00:00Z", nil, true, "2026-01-01T00:00:00Z"},
			{key, "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", nil, false, "2026-01-01T00:00:00Z"},
		}},
		{"instants compare as times, not text", []step{
			{key, "", "2026-01-01T10:00:00+02:00", nil, true, "2026-01-01T10:00:00+02:00"},
			{key, "", "2026-01-01T09:00:00Z", nil, true, "2026-01-01T09:00:00Z"},
		}},
		{"per type: types advance separately, since is the oldest", []step{
			{perType, "", "2026-01-01T00:00:00Z", []string{"Patient"}, true, ""},
			{perType, "", "2026-01-02T00:00:00Z", []string{"Observation"}, true, "2026-01-01T00:00:00Z"},
			{perType, "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z", []string{"Patient"}, true, "2026-01-02T00:00:00Z"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := sink.NewLocal(t.TempDir())
			ctx := context.Background()
			for i, st := range tc.steps {
				ok, err := advanceWatermark(ctx, s, &WatermarkUpdate{Key: st.key, Since: st.since, Types: st.types}, st.tt, "run", "m")
				if err != nil {
					t.Fatal(err)
				}
				if ok != st.advanced {
					t.Fatalf("step %d: advanced = %v, want %v", i, ok, st.advanced)
				}
				wm, err := readWatermark(ctx, s, st.key.Name())
				if err != nil {
					t.Fatal(err)
				}
				if got := wm.Since([]string{"Patient", "Observation"}); got != st.want {
					t.Fatalf("step %d: Since = %q, want %q", i, got, st.want)
				}
			}
		})
	}
}

func TestWatermarkKeyNames(t *testing.T) {
	a := NewWatermarkKey("ehr", "", "system", "", []string{"Patient", "Observation"}, nil, nil, nil, false)
	b := NewWatermarkKey("ehr", "", "", "", []string{"Observation", "Patient"}, nil, nil, nil, false)
	if a.Name() != b.Name() {
		t.Fatal("type order or the default level changed the key")
	}
	for _, other := range []WatermarkKey{
		NewWatermarkKey("ehr", "", "", "", []string{"Patient"}, nil, nil, nil, false),
		NewWatermarkKey("ehr", "", "group", "g1", []string{"Patient", "Observation"}, nil, nil, nil, false),
		NewWatermarkKey("ehr", "", "", "", []string{"Patient", "Observation"}, []string{"Observation?category=laboratory"}, nil, nil, false),
		NewWatermarkKey("ehr", "", "", "", []string{"Patient", "Observation"}, nil, nil, []string{"Patient/1"}, false),
		NewWatermarkKey("other", "", "", "", []string{"Patient", "Observation"}, nil, nil, nil, false),
	} {
		if other.Name() == a.Name() {
			t.Errorf("%+v shares a watermark with %+v", other, a)
		}
	}
	if k := NewWatermarkKey("", "https://ehr.example/fhir", "", "", nil, nil, nil, []string{"Patient/123"}, false); k.Patients == "" || k.Patients == "Patient/123" {
		t.Errorf("patients must be hashed, got %q", k.Patients)
	}
	if err := sink.CheckRun(a.Name()); err != nil {
		t.Errorf("name %q is not a safe object name: %v", a.Name(), err)
	}
}

// A watermark that could not be a _since (garbage, or in the future) is
// refused with the way to repair it; a full run that commits replaces it.
func TestBrokenWatermarkRefusedAndRepaired(t *testing.T) {
	key := NewWatermarkKey("ehr", "", "", "", nil, nil, nil, nil, false)
	for _, bad := range []string{"garbage", "2099-01-01T00:00:00Z"} {
		t.Run(bad, func(t *testing.T) {
			out := t.TempDir()
			a := New(nil, out, nil)
			s, _ := a.sinkFor("")
			ctx := context.Background()
			s.WriteState(ctx, key.Name(), []byte(`{"format":"bulkflow-watermark/1","key":{"server":"ehr","level":"system"},"transactionTime":"`+bad+`"}`))
			_, err := a.ReadWatermark(ctx, ReadWatermarkInput{Key: key})
			if err == nil || !strings.Contains(err.Error(), "starter watermark set") || !isNonRetryable(err) {
				t.Fatalf("err %v: want a non-retryable refusal naming the repair", err)
			}
			ok, err := advanceWatermark(ctx, s, &WatermarkUpdate{Key: key}, "2026-01-01T00:00:00Z", "run", "m")
			if err != nil || !ok {
				t.Fatalf("a committed full run did not repair it: %v %v", ok, err)
			}
			if wm, err := a.ReadWatermark(ctx, ReadWatermarkInput{Key: key}); err != nil || wm.TransactionTime != "2026-01-01T00:00:00Z" {
				t.Fatalf("after repair: %+v %v", wm, err)
			}
		})
	}
}

func TestSetWatermark(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	key := NewWatermarkKey("ehr", "", "", "", []string{"Patient"}, nil, nil, nil, false)
	out := t.TempDir()
	if _, err := SetWatermark(ctx, out, key.Name(), nil, "2026-01-01T00:00:00Z", "", now); err == nil {
		t.Error("created a watermark without its key")
	}
	for _, bad := range []string{"2026-06-02T00:00:00Z", "2026-01-01", "soon"} {
		if _, err := SetWatermark(ctx, out, key.Name(), &key, bad, "", now); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if _, err := SetWatermark(ctx, out, key.Name(), &key, "2026-05-01T00:00:00Z", "", now); err != nil {
		t.Fatal(err)
	}
	// Without the key flags the existing key is kept.
	w, err := SetWatermark(ctx, out, key.Name(), nil, "2026-04-01T00:00:00Z", "", now)
	if err != nil || w.Key.Server != "ehr" || len(w.Key.Types) != 1 {
		t.Fatalf("%+v %v", w, err)
	}
	got, err := LoadWatermark(ctx, out, key.Name())
	if err != nil || got.TransactionTime != "2026-04-01T00:00:00Z" || got.Since(nil) != "2026-04-01T00:00:00Z" {
		t.Fatalf("%+v %v", got, err)
	}
	// Per type: one type at a time.
	pk := NewWatermarkKey("ehr", "", "", "", []string{"Patient", "Condition"}, nil, nil, nil, true)
	if _, err := SetWatermark(ctx, out, pk.Name(), &pk, "2026-03-01T00:00:00Z", "Patient", now); err != nil {
		t.Fatal(err)
	}
	if pw, _ := LoadWatermark(ctx, out, pk.Name()); pw.Types["Patient"] != "2026-03-01T00:00:00Z" || pw.Types["Condition"] != "" {
		t.Fatalf("per type %+v", pw.Types)
	}
}

func isNonRetryable(err error) bool {
	var ae *temporal.ApplicationError
	return errors.As(err, &ae) && ae.NonRetryable()
}

// advanceWatermark itself never writes an instant that could not be a _since.
func TestAdvanceWatermarkRefusesBadInstants(t *testing.T) {
	key := NewWatermarkKey("ehr", "", "", "", nil, nil, nil, nil, false)
	s, _ := sink.NewLocal(t.TempDir())
	ctx := context.Background()
	for _, tt := range []string{"garbage", "2999-01-01T00:00:00Z", ""} {
		if ok, err := advanceWatermark(ctx, s, &WatermarkUpdate{Key: key}, tt, "run", "m"); ok || err != nil {
			t.Errorf("%q: advanced %v, err %v", tt, ok, err)
		}
	}
	if wm, _ := readWatermark(ctx, s, key.Name()); wm != nil {
		t.Errorf("written: %+v", wm)
	}
}
