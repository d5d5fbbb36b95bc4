package ndjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// fastCases are lines the fast path must judge as the slow one does: every
// TestInspect and TestInspectErrors input plus grammar corners.
var fastCases = []string{
	// valid
	`{"resourceType":"Patient","id":"123","meta":{"versionId":"3","lastUpdated":"2024-01-02T03:04:05Z"}}`,
	" { \"meta\" : { \"lastUpdated\" : \"t\" } , \"id\" : \"x\" , \"resourceType\" : \"Observation\" } ",
	`{"contained":[{"resourceType":"Medication","id":"m"}],"entry":[{"resource":{"resourceType":"Patient","id":"q"}}],"resourceType":"Bundle","id":"b"}`,
	`{"resourceType":"Bundle","entry":[{"resource":{"meta":{"versionId":"9"}}}]}`,
	`{"resourceType":"Pat\u0069ent","id":"a\"b\\c","text":{"div":"<div>\"}\"</div>"},"x":"\ud83d\ude00"}`,
	`{"resource\u0054ype":"Patient"}`,
	`{"note":"\"resourceType\":\"Evil\"","resourceType":"Observation"}`,
	`{"resourceType":"Observation","subject":{"reference":"Patient/1","display":"x"}}`,
	`{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/2"}}`,
	`{"resourceType":"X","subject":{"reference":""},"patient":{"reference":"Patient/3"}}`,
	`{"resourceType":"X","patient":{"reference":"Patient/3"},"subject":{"reference":"Patient/4"}}`,
	`{"resourceType":"X","subject":{"reference":5},"patient":{"reference":"P/5"}}`,
	`{"resourceType":"X","subject":[{"reference":"P/6"}],"meta":[{"versionId":"1"}]}`,
	`{"resourceType":"X","meta":{"versionId":1,"lastUpdated":null,"tag":{"lastUpdated":"nested"}}}`,
	`{"resourceType":"X","meta":{"versionId":"1"},"meta":{"lastUpdated":"2"}}`,
	`{"resourceType":"X","id":"1","id":"2"}`,
	`{"resourceType":"X","a":-0.5e+10,"b":[true,false,null,0,12.25E-3],"c":{}}`,
	`{"resourceType":"X","id":5}`,
	`{"resourceType":"X","id":{"id":"inner"}}`,
	`{}`, `{ }`, "\t{\r\n}\t", `{"a":[]}`, `{"a":[ ]}`, `{"a":{ }}`, `{"a":[[],{},[{}]]}`,
	`{"a":"` + strings.Repeat("x", 100) + `\n` + strings.Repeat("y", 13) + `"}`,
	`{"a":"\u00e9\/\b\f\n\r\t"}`, "{\"a\":\"\xff\xfe\"}", `{"a":-0}`, `{"a":0.0e0}`, `{"a":1E+2}`,
	`{"a":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}`, // depth 64: the fast path's limit
	`{"a":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, // depth 65: the slow path's
	// invalid or not a resource object
	`{"resourceType":"Patient","id":"12`, `{"resourceType" "Patient"}`, `{"a":1} x`, `{"a":1}{"b":2}`,
	`{"a":tru}`, `{"a":01}`, `{"a":"\x"}`, "{\"a\":\"x\ty\"}", `{"a":1,}`, `[{"resourceType":"Patient"}]`,
	`"Patient"`, `42`, `{"resourceType":{"x":1}}`, `{"resourceType":"Patient","resourceType":"Observation"}`,
	``, ` `, `hello, patient John Smith born 1970`, `{`, `}`, `{"a":}`, `{"a":1}}`, `{"a":[1,]}`, `{"a":[,1]}`,
	`{"a":1e}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":+1}`, `{"a":1.5e+}`, `{"a":00}`, `{"a":-01}`,
	`{"a":nul}`, `{"a":nulll}`, `{"a":True}`, `{"a":"\u12"}`, `{"a":"\u12g4"}`, `{"a":"\`, `{"a":"x\"}`,
	`{"a" :1 ,"b"}`, `{"a":1 "b":2}`, `{a:1}`, `{'a':1}`, `{"a":[1}`, `{"a":{]}`, `{"a":{"b":1]}`,
	`{"resourceType":"X"]`, `{"resourceType":"X",}`, `{"resourceType":}`, `{"resourceType":null}`,
	`{"resourceType":"A","x":{"resourceType":"B"},"resourceType":"C"}`, `{"a":"` + "\x00" + `"}`,
	`{"a":"` + strings.Repeat("z", 30) + "\x1f" + strings.Repeat("z", 30) + `"}`, "{\"a\":1}\x00",
	`{"a":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
}

// checkFast fails unless fastInspect agrees with the slow scanner on data:
// accepted by the fast path means valid JSON and the very Meta the slow
// path extracts.
func checkFast(t *testing.T, data []byte) {
	t.Helper()
	fm, ok := fastInspect(data)
	if !ok {
		return // the slow path decides: Inspect is inspectSlow here
	}
	if !json.Valid(data) {
		t.Fatalf("fast path accepted invalid JSON %q", data)
	}
	sm, err := inspectSlow(data)
	if err != nil {
		t.Fatalf("fast path accepted %q, the slow path says %v", data, err)
	}
	if fm != sm {
		t.Fatalf("%q: fast path %+v, slow path %+v", data, fm, sm)
	}
}

func TestFastInspectAgreesWithSlow(t *testing.T) {
	for _, c := range fastCases {
		checkFast(t, []byte(c))
		// Every prefix of a line is what a cut body delivers.
		for i := range len(c) {
			checkFast(t, []byte(c[:i]))
		}
	}
}

// The fast path must take real lines, or the speed-up is gone while every
// test stays green.
func TestFastInspectTakesTypicalLines(t *testing.T) {
	for _, line := range [][]byte{sampleResource(), bigLine(),
		[]byte(`{"resourceType":"Patient","id":"p","meta":{"lastUpdated":"2024"},"name":[{"family":"O\u2019Brien"}]}`)} {
		m, ok := fastInspect(line)
		if !ok {
			t.Fatalf("fast path declined a typical line %.60q", line)
		}
		if m.ResourceType == "" || m.ID == "" {
			t.Fatalf("fast path lost the meta of %.60q: %+v", line, m)
		}
	}
	m, _ := fastInspect(sampleResource())
	want := Meta{ResourceType: "Observation", ID: "obs-000123", LastUpdated: "2024-03-01T12:34:56.789Z", VersionID: "2", Subject: "Patient/pat-98765"}
	if m != want {
		t.Fatalf("got %+v, want %+v", m, want)
	}
}

// FuzzFastInspect is the differential check: on any input the fast path
// either declines or gives exactly the slow path's answer, never accepts
// what encoding/json rejects, and takes every plain valid line.
func FuzzFastInspect(f *testing.F) {
	for _, c := range fastCases {
		f.Add([]byte(c))
	}
	f.Add(sampleResource())
	f.Fuzz(func(t *testing.T, data []byte) {
		checkFast(t, data)
		_, ok := fastInspect(data)
		if _, err := inspectSlow(data); err == nil && !ok && bytes.IndexByte(data, '\\') < 0 &&
			bytes.Count(data, []byte("{"))+bytes.Count(data, []byte("[")) < fastMaxDepth {
			t.Fatalf("fast path declined a plain valid line %q", data)
		}
	})
}

// TestCheckIDAgreesWithCheck: CheckID accepts and rejects what Check
// does, with the same error, and returns Check's id.
func TestCheckIDAgreesWithCheck(t *testing.T) {
	lines := append([]string{
		`{"resourceType":"Patient","id":"p1"}`, `{"resourceType":"Observation","id":"o"}`,
		`{"id":"x"}`, `{"resourceType":"Patient"}`, `{"resourceType":"Pat\u0069ent","id":"e\u0073c"}`,
		`{"resourceType":"Patient","id":5}`, `{"resourceType":"Patient","id":""}`,
	}, fastCases...)
	for _, want := range []string{"", "Patient", "Observation", "X"} {
		v := Validator{WantType: want}
		for _, l := range lines {
			m, err1 := v.Check([]byte(l))
			id, err2 := v.CheckID([]byte(l))
			if fmt.Sprint(err1) != fmt.Sprint(err2) {
				t.Fatalf("%q (want %q): Check %v, CheckID %v", l, want, err1, err2)
			}
			if err1 == nil && m.ID != string(id) {
				t.Fatalf("%q: Check id %q, CheckID %q", l, m.ID, id)
			}
		}
	}
	if n := testing.AllocsPerRun(100, func() { Validator{WantType: "Observation"}.CheckID(sampleResource()) }); n > 1 {
		t.Fatalf("CheckID allocates %v times per valid line", n) // 1: sampleResource's own copy
	}
}
