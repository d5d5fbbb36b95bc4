package ndjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func readAll(t *testing.T, in string) (lines []string, nums []int64, missingNL bool) {
	t.Helper()
	r := NewReader(strings.NewReader(in))
	for {
		b, err := r.Next()
		if err == io.EOF {
			return lines, nums, r.MissingFinalNewline()
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		lines = append(lines, string(b))
		nums = append(nums, r.Line())
	}
}

func TestReaderLines(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		lines     []string
		nums      []int64
		missingNL bool
	}{
		{"empty", "", nil, nil, false},
		{"one", "{}\n", []string{"{}"}, []int64{1}, false},
		{"crlf", "{\"a\":1}\r\n{\"b\":2}\r\n", []string{`{"a":1}`, `{"b":2}`}, []int64{1, 2}, false},
		{"blank lines counted", "\n{}\n\n\r\n  \t\n[1]\n", []string{"{}", "[1]"}, []int64{2, 6}, false},
		{"missing final newline", "{}\n{\"x\":1}", []string{"{}", `{"x":1}`}, []int64{1, 2}, true},
		{"missing final newline crlf", "{}\r", []string{"{}"}, []int64{1}, true},
		{"only newlines", "\n\n\n", nil, nil, false},
		{"interior CR kept", "a\rb\n", []string{"a\rb"}, []int64{1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines, nums, miss := readAll(t, tt.in)
			if strings.Join(lines, "|") != strings.Join(tt.lines, "|") || len(lines) != len(tt.lines) {
				t.Errorf("lines = %q, want %q", lines, tt.lines)
			}
			if len(nums) != len(tt.nums) {
				t.Fatalf("nums = %v, want %v", nums, tt.nums)
			}
			for i := range nums {
				if nums[i] != tt.nums[i] {
					t.Errorf("nums = %v, want %v", nums, tt.nums)
				}
			}
			if miss != tt.missingNL {
				t.Errorf("MissingFinalNewline = %v, want %v", miss, tt.missingNL)
			}
		})
	}
}

func TestReaderHugeLine(t *testing.T) {
	huge := `{"resourceType":"Binary","id":"big","data":"` + strings.Repeat("QUJD", 5<<20) + `"}` // 20 MiB+
	in := `{"resourceType":"Patient","id":"p1"}` + "\n" + huge + "\r\n" + `{"resourceType":"Patient","id":"p2"}` + "\n" + huge
	// OneByteReader-like slow sources must work too; use a half reader.
	r := NewReader(iotest.HalfReader(strings.NewReader(in)))
	want := []string{"p1", "big", "p2", "big"}
	for i, id := range want {
		b, err := r.Next()
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		m, err := Validator{}.Check(b)
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if m.ID != id || r.Line() != int64(i+1) {
			t.Errorf("line %d: id %q line %d", i+1, m.ID, r.Line())
		}
		if id == "big" && len(b) != len(huge) {
			t.Errorf("huge line length %d, want %d", len(b), len(huge))
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
	if !r.MissingFinalNewline() {
		t.Error("want MissingFinalNewline")
	}
}

func TestReaderMaxLine(t *testing.T) {
	r := NewReader(strings.NewReader(strings.Repeat("x", 1<<20) + "\n"))
	r.SetMaxLineBytes(300 << 10)
	if _, err := r.Next(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("want ErrLineTooLong, got %v", err)
	}
}

func TestReaderReadErrorMidLine(t *testing.T) {
	boom := errors.New("connection reset")
	src := io.MultiReader(strings.NewReader("{}\n{\"partial\":"), iotest.ErrReader(boom))
	r := NewReader(src)
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	b, err := r.Next()
	if !errors.Is(err, boom) || b != nil {
		t.Fatalf("want the read error and no partial line, got %q, %v", b, err)
	}
	if _, err2 := r.Next(); !errors.Is(err2, boom) {
		t.Fatalf("error should be sticky, got %v", err2)
	}
}

func TestInspect(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Meta
	}{
		{"basic", `{"resourceType":"Patient","id":"123","meta":{"versionId":"3","lastUpdated":"2024-01-02T03:04:05Z"}}`,
			Meta{ResourceType: "Patient", ID: "123", VersionID: "3", LastUpdated: "2024-01-02T03:04:05Z"}},
		{"order and whitespace", " { \"meta\" : { \"lastUpdated\" : \"t\" } , \"id\" : \"x\" , \"resourceType\" : \"Observation\" } ",
			Meta{ResourceType: "Observation", ID: "x", LastUpdated: "t"}},
		{"nested resourceType ignored", `{"contained":[{"resourceType":"Medication","id":"m"}],"entry":[{"resource":{"resourceType":"Patient","id":"q"}}],"resourceType":"Bundle","id":"b"}`,
			Meta{ResourceType: "Bundle", ID: "b"}},
		{"nested meta ignored", `{"resourceType":"Bundle","entry":[{"resource":{"meta":{"versionId":"9"}}}]}`,
			Meta{ResourceType: "Bundle"}},
		{"escaped strings", `{"resourceType":"Pat\u0069ent","id":"a\"b\\c","text":{"div":"<div>\"}\"</div>"},"x":"\ud83d\ude00"}`,
			Meta{ResourceType: "Patient", ID: `a"b\c`}},
		{"escaped key", `{"resource\u0054ype":"Patient"}`, Meta{ResourceType: "Patient"}},
		{"string containing fake key", `{"note":"\"resourceType\":\"Evil\"","resourceType":"Observation"}`, Meta{ResourceType: "Observation"}},
		{"subject", `{"resourceType":"Observation","subject":{"reference":"Patient/1","display":"x"}}`, Meta{ResourceType: "Observation", Subject: "Patient/1"}},
		{"patient", `{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/2"}}`, Meta{ResourceType: "AllergyIntolerance", Subject: "Patient/2"}},
		{"numbers and literals", `{"resourceType":"X","a":-0.5e+10,"b":[true,false,null,0,12.25E-3],"c":{}}`, Meta{ResourceType: "X"}},
		{"id not string ignored", `{"resourceType":"X","id":5}`, Meta{ResourceType: "X"}},
		{"empty object", `{}`, Meta{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Inspect([]byte(tt.in))
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if !json.Valid([]byte(tt.in)) {
				t.Error("test input is not valid JSON")
			}
		})
	}
}

func TestInspectErrors(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		syntax  bool
		offset  int
		contain string
	}{
		{"truncated", `{"resourceType":"Patient","id":"12`, true, 34, "ends inside a string"},
		{"missing colon", `{"resourceType" "Patient"}`, true, 16, `expected ':'`},
		{"trailing garbage", `{"a":1} x`, true, 8, "after the end"},
		{"two objects", `{"a":1}{"b":2}`, true, 7, "after the end"},
		{"bad literal", `{"a":tru}`, true, 8, "invalid literal"},
		{"bad number", `{"a":01}`, true, 6, "expected ',' or '}'"},
		{"bad escape", `{"a":"\x"}`, true, 7, `invalid escape`},
		{"control char", "{\"a\":\"x\ty\"}", true, 7, "control character"},
		{"trailing comma", `{"a":1,}`, true, 7, "object key"},
		{"array line", `[{"resourceType":"Patient"}]`, false, 0, "not an object"},
		{"string line", `"Patient"`, false, 0, "not an object"},
		{"number line", `42`, false, 0, "not an object"},
		{"non-string resourceType", `{"resourceType":{"x":1}}`, false, 16, "not a string"},
		{"duplicate resourceType", `{"resourceType":"Patient","resourceType":"Observation"}`, false, 26, "duplicate"},
		{"empty", ``, true, 0, "empty"},
		{"not json", `hello, patient John Smith born 1970`, true, 0, "expected a value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Inspect([]byte(tt.in))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("want *Error, got %v", err)
			}
			if e.Syntax != tt.syntax || e.Offset != tt.offset || !strings.Contains(e.Error(), tt.contain) {
				t.Errorf("got %q (syntax=%v offset=%d), want syntax=%v offset=%d containing %q", e.Error(), e.Syntax, e.Offset, tt.syntax, tt.offset, tt.contain)
			}
			if strings.Contains(e.Error(), "John") {
				t.Errorf("error quotes content: %q", e.Error())
			}
		})
	}
}

func TestInspectDepth(t *testing.T) {
	ok := `{"a":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `}`
	if _, err := Inspect([]byte(ok)); err != nil || !json.Valid([]byte(ok)) {
		t.Fatalf("depth %d: %v (json.Valid %v)", maxDepth, err, json.Valid([]byte(ok)))
	}
	bad := `{"a":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`
	if _, err := Inspect([]byte(bad)); err == nil || json.Valid([]byte(bad)) {
		t.Fatalf("depth %d accepted: %v", maxDepth+1, err)
	}
	// Deeply nested garbage must not blow the stack.
	if _, err := Inspect(bytes.Repeat([]byte("["), 1<<20)); err == nil {
		t.Fatal("want error")
	}
}

func TestValidatorScan(t *testing.T) {
	in := `{"resourceType":"Patient","id":"1"}` + "\n\n" +
		`{"resourceType":"Patient","id":"2"}` + "\n" +
		`{"resourceType":"Patient","id":"3",` + "\n" // invalid at line 4
	n, err := Validator{WantType: "Patient"}.Scan(NewReader(strings.NewReader(in)), nil)
	var e *Error
	if n != 2 || !errors.As(err, &e) || e.Line != 4 || !e.Syntax || !strings.Contains(err.Error(), "line 4:") {
		t.Fatalf("n=%d err=%v", n, err)
	}

	in = `{"resourceType":"Patient","id":"1"}` + "\n" + `{"resourceType":"Observation","id":"2"}` + "\n"
	_, err = Validator{WantType: "Patient"}.Scan(NewReader(strings.NewReader(in)), nil)
	if !errors.As(err, &e) || e.Line != 2 || e.Syntax || !strings.Contains(err.Error(), `resourceType "Observation" in a file of "Patient"`) {
		t.Fatalf("err=%v", err)
	}

	var ids []string
	in = `{"resourceType":"Bundle","id":"d1","type":"transaction"}` + "\n" + `{"resourceType":"Bundle","id":"d2"}`
	r := NewReader(strings.NewReader(in))
	n, err = Validator{WantType: "Bundle"}.Scan(r, func(_ []byte, m Meta) error { ids = append(ids, m.ID); return nil })
	if err != nil || n != 2 || strings.Join(ids, ",") != "d1,d2" || !r.MissingFinalNewline() {
		t.Fatalf("n=%d err=%v ids=%v missing=%v", n, err, ids, r.MissingFinalNewline())
	}
}

func TestCheck(t *testing.T) {
	if _, err := (Validator{}).Check([]byte(`{"id":"x"}`)); err == nil || !strings.Contains(err.Error(), "no top-level resourceType") {
		t.Errorf("missing resourceType: %v", err)
	}
	if _, err := (Validator{WantType: "OperationOutcome"}).Check([]byte(`{"resourceType":"OperationOutcome"}`)); err != nil {
		t.Error(err)
	}
	long := `{"resourceType":"` + strings.Repeat("A", 500) + `"}`
	_, err := (Validator{WantType: "Patient"}).Check([]byte(long))
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("error too long or missing: %v", err)
	}
}

// FuzzInspect compares Inspect with encoding/json: same accept/reject
// decision, same extracted fields.
func FuzzInspect(f *testing.F) {
	for _, s := range []string{
		`{"resourceType":"Patient","id":"1","meta":{"lastUpdated":"2024"}}`,
		`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient"}}]}`,
		`{"a":"\u00e9\n","b":[1,-2.5e3,true,null]}`,
		`{"resource\u0054ype":"X","subject":{"reference":"Patient/1"}}`,
		`[1,2]`, `"x"`, `{`, `{"a":}`, `{"a":1}}`, `  {}  `, "{\"a\":\"\xff\"}", `{"id":"\ud800"}`,
		`{"resourceType":"A","resourceType":"B"}`, `{"resourceType":5}`, `{"a":1e}`, `{"a":-}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Inspect(data)
		valid := json.Valid(data)
		isObj := len(bytes.TrimLeft(data, " \t\r\n")) > 0 && bytes.TrimLeft(data, " \t\r\n")[0] == '{'
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("error is not *Error: %v", err)
		}
		if !valid && err == nil {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		if valid && err != nil && e.Syntax {
			t.Fatalf("rejected valid JSON %q: %v", data, err)
		}
		if valid && isObj && err == nil {
			// A map, not a struct: struct field matching is case-insensitive.
			var want map[string]any
			if json.Unmarshal(data, &want) == nil && isUTF8(data) {
				rt, _ := want["resourceType"].(string)
				if rt != m.ResourceType {
					t.Fatalf("resourceType %q, json says %q", m.ResourceType, rt)
				}
				if id, ok := want["id"].(string); ok && id != m.ID {
					t.Fatalf("id %q, json says %q", m.ID, id)
				}
			}
		}
		if valid && !isObj && err == nil {
			t.Fatalf("accepted a non-object %q", data)
		}
		if err != nil && len(err.Error()) > 200 {
			t.Fatalf("error too long: %d", len(err.Error()))
		}
	})
}

func isUTF8(b []byte) bool {
	return !bytes.ContainsRune(b, '\uFFFD') && strings.ToValidUTF8(string(b), "\uFFFD") == string(b) && !bytes.Contains(b, []byte(`\ud`)) && !bytes.Contains(b, []byte(`\uD`))
}

func TestReaderBOM(t *testing.T) {
	lines, _, _ := readAll(t, "\xEF\xBB\xBF{\"resourceType\":\"Patient\"}\n\xEF\xBB\xBF{}\n")
	if len(lines) != 2 || lines[0] != `{"resourceType":"Patient"}` || lines[1] != "\xEF\xBB\xBF{}" {
		t.Fatalf("%q", lines)
	}
}
