package activities

import (
	"testing"

	"github.com/bulkflow/bulkflow/internal/fhirpath"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/views"
)

// metaSeeds are lines where the views decoder and ndjson.Inspect could
// part: duplicated and misplaced keys, escapes, non-ASCII and invalid
// UTF-8, wrong types, nesting, grammar edge cases.
var metaSeeds = []string{
	`{"resourceType":"Observation","id":"a","meta":{"lastUpdated":"2024-01-01T00:00:00Z","versionId":"3"},"subject":{"reference":"Patient/p"}}`,
	`{"id":"a","resourceType":"Observation","status":"final"}`,
	`{"resourceType":"Observation","id":"a","id":"b"}`,
	`{"resourceType":"Observation","id":7}`,
	`{"resourceType":"Observation","id":"a","id":7}`,
	`{"resourceType":"Observation","resourceType":"Observation","id":"a"}`,
	`{"resourceType":"Patient","id":"a"}`,
	`{"resourceType":"","id":"a"}`,
	`{"resourceType":7,"id":"a"}`,
	`{"id":"a"}`,
	`{"resourceType":"Observation","\u0069d":"\u0041b"}`,
	`{"resourceType":"Observation","id":"\ud800"}`,
	`{"resourceType":"Observation","id":"é"}`,
	"{\"resourceType\":\"Observation\",\"id\":\"\xff\"}",
	`{"resourceType":"Observation","id":"a\u0000"}`,
	`{"resourceType":"Observation","meta":{"lastUpdated":"x"},"meta":{"versionId":"2"}}`,
	`{"resourceType":"Observation","meta":"x","subject":"Patient/p"}`,
	`{"resourceType":"Observation","patient":{"reference":"Patient/q"}}`,
	`{"resourceType":"Observation","subject":{"reference":"Patient/p"},"patient":{"reference":"Patient/q"}}`,
	`{"resourceType":"Observation","subject":{"reference":"Patient/p"},"subject":{"display":"x"}}`,
	`{"resourceType":"Observation","subject":{"reference":"a","reference":"b"}}`,
	`{"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"c"}]}`,
	`{"resourceType":"Observation","id":"a","valueQuantity":{"value":1.50e+3}}`,
	`{"resourceType":"Observation","id":"a","valueQuantity":{"value":01}}`,
	`{"resourceType":"Observation","id":"a","status":"fin` + "\t" + `al"}`,
	`{"resourceType":"Observation","id":"a"} x`,
	` {"resourceType":"Observation","id":"a"} `,
	`["Observation"]`,
	`"Observation"`,
	`{"resourceType":"Observation","status":"\x"}`,
	`{"resourceType":"Observation","status":"\u12G4"}`,
	`{"resourceType":"Observation","code":{"coding":[{"code":"x"}]},"component":[]}`,
}

// FuzzMetaOf: whenever the single-decode path vouches for a line
// (viewFile.writeChecked), ndjson.Validator.Check accepts the same line
// with the same Meta, so no line skips a check it used to get.
func FuzzMetaOf(f *testing.F) {
	for _, s := range metaSeeds {
		f.Add([]byte(s))
	}
	v, err := CompileView("obs", []byte(bpView))
	if err != nil {
		f.Fatal(err)
	}
	r := views.NewRunner(v).WithElements(metaElements...)
	val := ndjson.Validator{WantType: "Observation"}
	f.Fuzz(func(t *testing.T, line []byte) {
		var got ndjson.Meta
		vouched := false
		r.ProcessChecked(line, func(root *fhirpath.Node) error {
			var ok bool
			if got, ok = metaOf(root, "Observation"); ok {
				got, vouched = cloneMeta(got), true
			}
			return errUnchecked
		}, func(*views.View, []views.Row) error { return nil })
		want, err := val.Check(line)
		if !vouched {
			return
		}
		if err != nil {
			t.Fatalf("vouched for %q, which the validator refuses: %v", line, err)
		}
		if got != want {
			t.Fatalf("%q: meta %+v, the validator's %+v", line, got, want)
		}
	})
}

// TestMetaOfVouches: the lines of a typical resource do take the single
// decode (else the speed-up is gone without a test noticing), and the ones
// metaOf must leave to the validator are left.
func TestMetaOfVouches(t *testing.T) {
	v, err := CompileView("obs", []byte(bpView))
	if err != nil {
		t.Fatal(err)
	}
	r := views.NewRunner(v).WithElements(metaElements...)
	for _, tc := range []struct {
		line  string
		vouch bool
	}{
		{metaSeeds[0], true},
		{metaSeeds[1], true},
		{`{"resourceType":"Observation","resourceType":"Observation","id":"a"}`, false},
		{`{"resourceType":"Patient","id":"a"}`, false},
		{`{"resourceType":"Observation","id":"é"}`, false},
		{`["Observation"]`, false},
	} {
		vouched := false
		r.ProcessChecked([]byte(tc.line), func(root *fhirpath.Node) error {
			_, vouched = metaOf(root, "Observation")
			return errUnchecked
		}, func(*views.View, []views.Row) error { return nil })
		if vouched != tc.vouch {
			t.Errorf("%s: vouched %v, want %v", tc.line, vouched, tc.vouch)
		}
	}
}
