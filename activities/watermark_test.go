package activities

import (
	"context"
	"testing"

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
