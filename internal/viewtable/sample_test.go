package viewtable

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// bpView unnests blood pressure components (forEach) beside the panel's own
// value[x] columns, as the observation view does.
const bpView = `{
  "resourceType": "ViewDefinition", "name": "observation_components", "resource": "Observation", "status": "active",
  "select": [
    {"column": [
      {"name": "id", "path": "getResourceKey()", "type": "string"},
      {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
      {"name": "code", "path": "code.coding.first().code", "type": "code"},
      {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
      {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
      {"name": "value_code", "path": "value.ofType(CodeableConcept).coding.first().code", "type": "code"},
      {"name": "value_string", "path": "value.ofType(string)", "type": "string"}
    ]},
    {"forEachOrNull": "component", "column": [
      {"name": "component_code", "path": "code.coding.first().code", "type": "code"},
      {"name": "component_value", "path": "value.ofType(Quantity).value", "type": "decimal"}
    ]}
  ]
}`

var observations = []string{
	`{"resourceType":"Observation","id":"bp1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},
	  "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2024-05-06T07:08:09.123-05:00",
	  "component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120.0,"unit":"mm[Hg]"}},
	               {"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":80,"unit":"mm[Hg]"}}]}`,
	`{"resourceType":"Observation","id":"g1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2345-7"}]},
	  "subject":{"reference":"https://ehr.example.org/fhir/Patient/p2/_history/1"},"effectiveDateTime":"2024-05",
	  "valueQuantity":{"value":98.60,"unit":"mg/dL"}}`,
	`{"resourceType":"Observation","id":"h1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"5196-1"}]},
	  "subject":{"reference":"Patient/p1"},"valueCodeableConcept":{"coding":[{"system":"http://snomed.info/sct","code":"260385009"}]}}`,
	`{"resourceType":"Observation","id":"u1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"5767-9"}]},
	  "subject":{"reference":"#p"},"valueString":"Clear"}`,
}

// TestWriteSample writes sample tables for a by-hand check with DuckDB
// (docs/views.md) when VIEWTABLE_SAMPLE_DIR is set.
func TestWriteSample(t *testing.T) {
	dir := os.Getenv("VIEWTABLE_SAMPLE_DIR")
	if dir == "" {
		t.Skip("set VIEWTABLE_SAMPLE_DIR to write sample Parquet files")
	}
	for _, s := range []struct {
		def   string
		lines []string
	}{{patientView, patients}, {bpView, observations}} {
		v := compile(t, s.def)
		data := write(t, v, Options{}, rowsOf(t, v, s.lines...))
		if err := os.WriteFile(filepath.Join(dir, v.Name+".parquet"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestObservationView: forEachOrNull over components gives one row per
// component and one null-component row per other observation; decimals keep
// their text ("120.0", "98.60").
func TestObservationView(t *testing.T) {
	v := compile(t, bpView)
	_, got := readBack(t, write(t, v, Options{}, rowsOf(t, v, observations...)))
	want := []string{
		"Observation/bp1|Patient/p1|85354-9|2024-05-06T07:08:09.123-05:00|2024-05-06T12:08:09.123Z|null|null|null|8480-6|120.0",
		"Observation/bp1|Patient/p1|85354-9|2024-05-06T07:08:09.123-05:00|2024-05-06T12:08:09.123Z|null|null|null|8462-4|80",
		"Observation/g1|Patient/p2|2345-7|2024-05|2024-05-01T00:00:00Z|98.60|null|null|null|null",
		"Observation/h1|Patient/p1|5196-1|null|null|null|260385009|null|null|null",
		"Observation/u1|null|5767-9|null|null|null|null|Clear|null|null",
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if g := strings.Join(got[i], "|"); g != want[i] {
			t.Errorf("row %d\n got %s\nwant %s", i, g, want[i])
		}
	}
}
