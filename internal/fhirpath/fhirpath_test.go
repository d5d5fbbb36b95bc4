package fhirpath

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const patientJSON = `{
  "resourceType": "Patient", "id": "p1", "active": true, "birthDate": "1970-06",
  "_birthDate": {"id": "bd", "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-06-12T07:30:00Z"}]},
  "deceasedBoolean": false,
  "meta": {"profile": ["http://example.org/p"]},
  "extension": [
    {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
     "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}},
                   {"url": "text", "valueString": "White"}]},
    {"url": "http://example.org/birthsex", "valueCode": "F"}
  ],
  "name": [
    {"use": "official", "family": "Smith", "given": ["Ann", "Marie"],
     "_given": [null, {"extension": [{"url": "http://example.org/rank", "valueInteger": 2}]}]},
    {"use": "nickname", "given": ["Annie"]},
    {"use": "maiden", "family": "Jones", "period": {"start": "1970-06-01", "end": "1995"}}
  ],
  "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@example.org"}],
  "managingOrganization": {"reference": "Organization/o1"},
  "generalPractitioner": [{"reference": "https://fhir.example.org/r4/Practitioner/pr1/_history/3"}, {"reference": "#c1"}],
  "multipleBirthInteger": 2,
  "valueQuantity": {"value": 1.50, "unit": "mg"}
}`

func mustNode(t testing.TB, js string) *Node {
	t.Helper()
	n, err := ParseJSON([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// render prints a collection compactly: strings quoted, numbers as written.
func render(items []Item) string {
	parts := make([]string, len(items))
	for i, it := range items {
		switch it.N.Kind {
		case String:
			parts[i] = "'" + it.N.Str + "'"
		case Number:
			parts[i] = it.N.Str
		case Bool:
			parts[i] = "false"
			if it.N.Bool {
				parts[i] = "true"
			}
		case Object:
			parts[i] = "{" + it.Type() + "}"
		default:
			parts[i] = it.N.Kind.String()
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

var evalTests = []struct{ expr, want string }{
	// navigation
	{"id", "['p1']"},
	{"name.given", "['Ann', 'Marie', 'Annie']"},
	{"Patient.name.family", "['Smith', 'Jones']"},
	{"name[1].given", "['Annie']"},
	{"name[5].given", "[]"},
	{"nothing.here", "[]"},
	{"`name`.family.first()", "['Smith']"},
	// choice elements by type suffix
	{"deceased", "[false]"},
	{"deceased.ofType(boolean)", "[false]"},
	{"deceased.ofType(string)", "[]"},
	{"multipleBirth.ofType(integer)", "[2]"},
	{"value.ofType(Quantity).unit", "['mg']"},
	{"value is Quantity", "[true]"},
	{"(value as Quantity).value", "[1.50]"},
	{"extension.value.ofType(code)", "['F']"},
	{"extension.value.ofType(string)", "['F']"}, // code specialises string
	// existence and filtering
	{"name.exists()", "[true]"},
	{"identifier.exists()", "[false]"},
	{"identifier.empty()", "[true]"},
	{"name.exists(use = 'maiden')", "[true]"},
	{"name.where(use = 'official').given", "['Ann', 'Marie']"},
	{"name.where(family.exists()).count()", "[2]"},
	{"name.select(given.first())", "['Ann', 'Annie']"},
	{"name.all(use.exists())", "[true]"},
	{"telecom.where($index = 1).system", "['email']"},
	{"name.given.first()", "['Ann']"},
	{"name.given.last()", "['Annie']"},
	{"name.given.tail()", "['Marie', 'Annie']"},
	{"name.given.skip(1).take(1)", "['Marie']"},
	{"name.given.count()", "[3]"},
	{"(1 | 2 | 2).count()", "[2]"},
	{"(1).combine(1).count()", "[2]"},
	{"name.use.distinct().count()", "[3]"},
	// extensions, nested
	{"extension('http://example.org/birthsex').value.ofType(code)", "['F']"},
	{"extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race').extension('ombCategory').value.ofType(Coding).code", "['2106-3']"},
	{"extension('http://nowhere').exists()", "[false]"},
	// extensions of primitives, from their _name siblings
	{"birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime').value.ofType(dateTime)", "['1970-06-12T07:30:00Z']"},
	{"birthDate.id", "['bd']"},
	{"birthDate.extension.url.count()", "[1]"},
	{"name.given.where(extension('http://example.org/rank').exists())", "['Marie']"},
	{"name.given.first().extension.exists()", "[false]"},
	{"id.extension.exists()", "[false]"},
	// strings
	{"name.given.join(', ')", "['Ann, Marie, Annie']"},
	{"name.given.join()", "['AnnMarieAnnie']"},
	{"identifier.value.join(',')", "['']"},
	{"'abc' + 'def'", "['abcdef']"},
	{"'a' & {} & 'b'", "['ab']"},
	{"id.upper()", "['P1']"},
	{"'Hello'.lower().length()", "[5]"},
	{"'hello'.substring(1, 3)", "['ell']"},
	{"'hello'.substring(1, 9223372036854775807)", "['ello']"},
	{"'hello'.startsWith('he') and 'hello'.endsWith('lo')", "[true]"},
	{"'hello'.contains('ll')", "[true]"},
	{"'hello'.indexOf('l')", "[2]"},
	{"'a,b,c'.split(',').count()", "[3]"},
	{"'  x '.trim()", "['x']"},
	{"'abc'.replace('b', 'X')", "['aXc']"},
	{"'2024-01-15'.matches('^[0-9]{4}-')", "[true]"},
	{"'a1b22'.replaceMatches('[0-9]+', '#')", "['a#b#']"},
	{"'abc'.toChars().count()", "[3]"},
	// arithmetic and comparison
	{"1 + 2 * 3", "[7]"},
	{"(1 + 2) * 3", "[9]"},
	{"7 div 2", "[3]"},
	{"7 mod 2", "[1]"},
	{"3 / 2", "[1.5]"},
	{"1 / 3", "[0.33333333]"},
	{"1.5 + 1.25", "[2.75]"},
	{"0.1 + 0.2 = 0.3", "[true]"},
	{"2 * 1.5", "[3]"},
	{"-5 + 2", "[-3]"},
	{"1 / 0", "[]"},
	{"valueQuantity.value * 2", "[3]"},
	{"1 = 1.0", "[true]"},
	{"1 != 2", "[true]"},
	{"2 > 1 and 1 < 2 and 2 >= 2 and 2 <= 2", "[true]"},
	{"'a' < 'b'", "[true]"},
	{"{} = 1", "[]"},
	{"name.given = name.given", "[true]"},
	{"'ABC' ~ 'abc'", "[true]"},
	{"'ABC' !~ 'abd'", "[true]"},
	{"'Ann' in name.given", "[true]"},
	{"name.given contains 'Zed'", "[false]"},
	{"(-1.5).abs()", "[1.5]"},
	{"1.5.ceiling()", "[2]"},
	{"(-1.5).floor()", "[-2]"},
	{"3.14159.round(2)", "[3.14]"},
	// dates and times
	{"birthDate = @1970-06", "[true]"},
	{"birthDate < @1971-01-01", "[true]"},
	{"@2020-01-01 = @2020-01-01T10:00:00Z", "[]"}, // different precision: unknown
	{"@2020-01-01 < @2021", "[true]"},
	{"@2020-01-01T10:00:00+02:00 = @2020-01-01T08:00:00Z", "[true]"},
	{"@T10:00 < @T11:00", "[true]"},
	{"birthDate.lowBoundary()", "['1970-06-01']"},
	{"birthDate.highBoundary()", "['1970-06-30']"},
	{"@2024-02.highBoundary()", "['2024-02-29']"},
	{"@2010-10-10T.lowBoundary()", "['2010-10-10T00:00:00.000+14:00']"},
	{"@2010-10-10T.highBoundary()", "['2010-10-10T23:59:59.999-12:00']"},
	{"@2010-10-10T10:30Z.highBoundary()", "['2010-10-10T10:30:59.999Z']"},
	{"@T12:34.lowBoundary()", "['12:34:00.000']"},
	{"@T12:34:00.5.highBoundary()", "['12:34:00.599']"},
	{"name.where(use = 'maiden').period.lowBoundary()", "['1970-06-01T00:00:00.000+14:00']"},
	{"name.where(use = 'maiden').period.highBoundary()", "['1995-12-31T23:59:59.999-12:00']"},
	// decimal boundaries
	{"1.0.lowBoundary()", "[0.95]"},
	{"1.0.highBoundary()", "[1.05]"},
	{"1.587.lowBoundary()", "[1.5865]"},
	{"1.587.highBoundary(2)", "[1.59]"},
	{"1.587.lowBoundary(6)", "[1.586500]"},
	{"(-1.587).lowBoundary()", "[-1.5875]"},
	{"1.lowBoundary()", "[0.5]"},
	// three-valued logic
	{"true and {}", "[]"},
	{"false and {}", "[false]"},
	{"true or {}", "[true]"},
	{"{} or false", "[]"},
	{"true xor false", "[true]"},
	{"false implies {}", "[true]"},
	{"{} implies true", "[true]"},
	{"{}.not()", "[]"},
	{"(1 = 2).not()", "[true]"},
	{"iif(active, 'yes', 'no')", "['yes']"},
	{"iif(false, 'yes')", "[]"},
	// keys
	{"getResourceKey()", "['Patient/p1']"},
	{"managingOrganization.getReferenceKey()", "['Organization/o1']"},
	{"managingOrganization.getReferenceKey(Organization)", "['Organization/o1']"},
	{"managingOrganization.getReferenceKey('Organization')", "['Organization/o1']"},
	{"managingOrganization.getReferenceKey(Patient)", "[]"},
	{"generalPractitioner.getReferenceKey()", "['Practitioner/pr1']"},
	// conversion
	{"'42'.toInteger() + 1", "[43]"},
	{"'4.5'.toDecimal()", "[4.5]"},
	{"'x'.toInteger()", "[]"},
	{"'yes'.toBoolean()", "[true]"},
	{"1.toString()", "['1']"},
	{"'x'.convertsToInteger()", "[false]"},
	// environment
	{"%resource.id", "['p1']"},
	{"%rootResource.id", "['p1']"},
	{"%rowIndex", "[0]"},
	{"name.repeat(period).start", "['1970-06-01']"},
	{"children().count() > 5", "[true]"},
	{"descendants().where($this = 'Annie').count()", "[1]"},
	{"meta.profile.hasValue()", "[true]"},
	{"true // a comment", "[true]"},
	{"/* block */ 1", "[1]"},
}

func TestEvaluate(t *testing.T) {
	p := mustNode(t, patientJSON)
	for _, tc := range evalTests {
		got, err := Evaluate(p, tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if r := render(got); r != tc.want {
			t.Errorf("%s = %s, want %s", tc.expr, r, tc.want)
		}
	}
}

// One Context serves many evaluations (a view's columns) and carves results
// from a shared slab: no evaluation may disturb an earlier one's result.
func TestContextReuse(t *testing.T) {
	p := mustNode(t, patientJSON)
	ctx := &Context{Resource: p}
	results := make([][]Item, len(evalTests))
	for i, tc := range evalTests {
		got, err := MustParse(tc.expr).EvaluateNode(ctx, p)
		if err != nil {
			t.Fatalf("%s: %v", tc.expr, err)
		}
		results[i] = got
	}
	for i, tc := range evalTests {
		if r := render(results[i]); r != tc.want {
			t.Errorf("%s = %s after later evaluations, want %s", tc.expr, r, tc.want)
		}
	}
}

func TestConstants(t *testing.T) {
	p := mustNode(t, patientJSON)
	ctx := &Context{Resource: p, RowIndex: 3, Constants: map[string][]Item{
		"use": {stringItem("official", "code")},
		"idx": {{N: &Node{Kind: Number, Str: "1"}, T: "integer"}},
		"bd":  {stringItem("1970-06", "date")},
	}}
	for expr, want := range map[string]string{
		"name.where(use = %use).family": "['Smith']",
		"name[%idx].given":              "['Annie']",
		"birthDate = %bd":               "[true]",
		"%rowIndex + 1":                 "[4]",
	} {
		e := MustParse(expr)
		got, err := e.EvaluateNode(ctx, p)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if r := render(got); r != want {
			t.Errorf("%s = %s, want %s", expr, r, want)
		}
	}
	if _, err := MustParse("%nope").EvaluateNode(ctx, p); err == nil {
		t.Error("undefined constant evaluated without error")
	}
	if got := MustParse("name.where(use = %use) | %bd").Constants(); len(got) != 2 {
		t.Errorf("Constants() = %v, want use and bd", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, src := range []string{
		"", "  ", "@@", "name.", "name[", "name[0", "(1", "1 +", "name.nosuch()", "where()",
		"first(1)", "'unterminated", "`x", "%", "$foo", "1 'mg'", "{1}", "a b", "ofType()",
		"/* open", "name..given", "@2020-13-01", "@T25:00", "1 +* 2",
		strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100),
		strings.Repeat("-", 200) + "1",
		strings.Repeat("a.", MaxExprLen) + "a",
	} {
		if _, err := Parse(src); err == nil {
			t.Errorf("Parse(%.40q) succeeded, want an error", src)
		}
	}
}

func TestEvalErrors(t *testing.T) {
	p := mustNode(t, patientJSON)
	for _, src := range []string{
		"name.given + 1",              // string + number
		"name.given < 'x'",            // more than one item
		"'a' < 1",                     // incomparable
		"name.given.single()",         // several items
		"name.where(given)",           // criteria of several items
		"name.given.substring('x')",   // several strings
		"9223372036854775807 + 1",     // overflow
		"'x'.matches('(')",            // bad regex
		"telecom.value.join(',') + 1", // string + number
		"(1 | 2).not()",               // not() of several
	} {
		if _, err := Evaluate(p, src); err == nil {
			t.Errorf("Evaluate(%q) succeeded, want an error", src)
		}
	}
}

// Hostile input: unbounded repeat, huge fan-out and deep nesting end in an
// error, not a hang, a crash or unbounded memory.
func TestLimits(t *testing.T) {
	p := mustNode(t, patientJSON)
	for _, src := range []string{
		"repeat($this & 'x')", // a new value every round, forever
		"'x'.repeat($this + 'a')",
		"(1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10).select(1|2|3|4|5|6|7|8|9|10))))))",
	} {
		_, err := Evaluate(p, src)
		if !errors.Is(err, ErrBudget) {
			t.Errorf("Evaluate(%.50q) = %v, want ErrBudget", src, err)
		}
	}
	// A number no decimal has: refused, not computed as a billion-digit power of ten.
	huge := mustNode(t, `{"v":1e999999,"w":1.5,"x":1e999999}`) // math/big itself refuses only from about 1e1000000
	for _, src := range []string{"v > w", "v.lowBoundary()", "v = x + 0", "v * 2"} {
		start := time.Now()
		if _, err := Evaluate(huge, src); err == nil {
			t.Errorf("Evaluate(%q) on a huge exponent succeeded", src)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Evaluate(%q) on a huge exponent took %v", src, d)
		}
	}
	deep := strings.Repeat(`{"a":`, MaxDepth+5) + "1" + strings.Repeat("}", MaxDepth+5)
	if _, err := ParseJSON([]byte(deep)); !errors.Is(err, ErrTooDeep) {
		t.Errorf("deep JSON: %v, want ErrTooDeep", err)
	}
	ok := strings.Repeat(`{"a":`, MaxDepth-1) + "1" + strings.Repeat("}", MaxDepth-1)
	n := mustNode(t, ok)
	got, err := Evaluate(n, "descendants().count()")
	if err != nil || render(got) != "[199]" {
		t.Errorf("descendants of a deep document = %s, %v", render(got), err)
	}
}

func TestParseJSON(t *testing.T) {
	n := mustNode(t, `{"s":"a\"b\\c\u00e9\ud83d\ude00","n":-1.50e+2,"t":true,"z":null,"arr":[1,[2],{}]}`)
	if got := n.Get("s").Str; got != "a\"b\\cé😀" {
		t.Errorf("escapes: %q", got)
	}
	if got := n.Get("n").Str; got != "-1.50e+2" {
		t.Errorf("number text: %q", got)
	}
	if n.Get("z").Kind != Null || !n.Get("t").Bool || len(n.Get("arr").Kids) != 3 {
		t.Errorf("kinds wrong: %+v", n)
	}
	if got := strings.Join(n.Keys, ","); got != "s,n,t,z,arr" {
		t.Errorf("key order %s", got)
	}
	for _, bad := range []string{``, `{`, `{"a"}`, `{"a":}`, `[1,]`, `01`, `1.`, `-`, `"\x"`, "\"a\x01\"", `tru`, `{} {}`, `{"a":1,}`, `[1 2]`, `"abc`} {
		if _, err := ParseJSON([]byte(bad)); err == nil {
			t.Errorf("ParseJSON(%q) succeeded", bad)
		}
	}
	if d := mustNode(t, `{"id":"a","id":"b"}`); d.Get("id").Str != "b" {
		t.Errorf("duplicate key: %q, want the last as encoding/json", d.Get("id").Str)
	}
	v, err := FromAny(map[string]any{"b": 1.5, "a": []any{true, nil, "x"}})
	if err != nil || strings.Join(v.Keys, ",") != "a,b" || v.Get("b").Str != "1.5" {
		t.Errorf("FromAny = %+v, %v", v, err)
	}
}

func TestReferenceKey(t *testing.T) {
	for ref, want := range map[string]string{
		"Patient/123":                                   "Patient/123",
		"Patient/123/_history/2":                        "Patient/123",
		"https://x.org/fhir/Patient/a-b.c":              "Patient/a-b.c",
		"#contained":                                    "",
		"urn:uuid:53fefa32-fcbb-4ff8-8a92-55ee120877b7": "",
		"Patient":                            "",
		"Patient/":                           "",
		"patient/1":                          "",
		"Patient?identifier=x":               "",
		"Patient/" + strings.Repeat("x", 65): "",
	} {
		_, got, _ := ReferenceKey(ref)
		if got != want {
			t.Errorf("ReferenceKey(%q) = %q, want %q", ref, got, want)
		}
	}
}

// A Decoder carves each document from the arenas of the one before: every
// document, larger or smaller than the last, reads as ParseJSON reads it.
func TestDecoderReuse(t *testing.T) {
	big := `{"a":[` + strings.Repeat(`{"k":"v","n":[1,2,{"x":null}]},`, 3000) + `0]}`
	// Many small containers, then one container larger than any arena
	// chunk so far: it must get a chunk of its own.
	small := `[` + strings.Repeat(`{"k":1},`, 3000) + `0]`
	wide := `[[` + strings.Repeat(`0,`, 5000) + `0]]`
	docs := []string{patientJSON, big, `{"x":1}`, patientJSON, `[]`, big, `"s"`, patientJSON, small, wide, small}
	var d Decoder
	for i, doc := range docs {
		want := plain(mustNode(t, doc))
		n, err := d.Decode([]byte(doc))
		if err != nil {
			t.Fatalf("doc %d: %v", i, err)
		}
		if got := plain(n); !reflect.DeepEqual(got, want) {
			t.Fatalf("doc %d decodes differently after reuse", i)
		}
	}
	if _, err := d.Decode([]byte(`{"a":[1,`)); err == nil {
		t.Fatal("bad JSON accepted")
	}
	if n, err := d.Decode([]byte(patientJSON)); err != nil || !reflect.DeepEqual(plain(n), plain(mustNode(t, patientJSON))) {
		t.Fatalf("after an error: %v", err)
	}
}

// A reused Context (Reset per resource) gives each resource the results a
// fresh one would.
func TestContextResetPerResource(t *testing.T) {
	p := mustNode(t, patientJSON)
	ctx := new(Context)
	for round := range 3 {
		ctx.Reset(p, nil)
		results := make([][]Item, len(evalTests))
		for i, tc := range evalTests {
			got, err := MustParse(tc.expr).EvaluateNode(ctx, p)
			if err != nil {
				t.Fatalf("%s: %v", tc.expr, err)
			}
			results[i] = got
		}
		for i, tc := range evalTests {
			if r := render(results[i]); r != tc.want {
				t.Errorf("round %d: %s = %s after later evaluations, want %s", round, tc.expr, r, tc.want)
			}
		}
	}
}

func TestDecodeProjected(t *testing.T) {
	elements := func(rt string) ([]string, bool) {
		if rt == "Patient" {
			return []string{"name", "birthDate"}, false
		}
		return nil, false
	}
	var d Decoder
	for _, tc := range []struct{ doc, want string }{
		{`{"resourceType":"Patient","id":"1","name":[{"family":"F"}],"telecom":[{"value":"x"}],"birthDate":"1970","extension":[]}`,
			`{"birthDate":"1970","id":"1","name":[{"family":"F"}],"resourceType":"Patient"}`},
		{`{"resourceType":"Observation","id":"2","name":"n","code":{}}`, `{"id":"2","resourceType":"Observation"}`},
		// resourceType not first: decoded whole
		{`{"id":"3","resourceType":"Patient","telecom":[]}`, `{"id":"3","resourceType":"Patient","telecom":[]}`},
		// a second resourceType: decoded whole, the last wins
		{`{"resourceType":"Observation","code":{},"resourceType":"Patient","telecom":[]}`, `{"code":{},"resourceType":"Patient","telecom":[]}`},
	} {
		n, err := d.DecodeProjected([]byte(tc.doc), elements)
		if err != nil {
			t.Fatalf("%s: %v", tc.doc, err)
		}
		got, _ := json.Marshal(plain(n))
		if string(got) != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.doc, got, tc.want)
		}
	}
	// Skipped values are still checked, with ParseJSON's errors.
	for _, bad := range []string{
		`{"resourceType":"Patient","telecom":[1,]}`, `{"resourceType":"Patient","telecom":"\x"}`,
		`{"resourceType":"Patient","telecom":{"a" 1}}`, `{"resourceType":"Patient","telecom":"a` + "\x01" + `"}`,
		`{"resourceType":"Patient","telecom":tru}`, `{"resourceType":"Patient","telecom":01}`,
		`{"resourceType":"Patient","telecom":` + strings.Repeat("[", MaxDepth+5) + strings.Repeat("]", MaxDepth+5) + `}`,
		`{"resourceType":"Patient","telecom":"\u12"}`, `{"resourceType":"Patient","telecom":[}`,
	} {
		_, perr := d.DecodeProjected([]byte(bad), elements)
		_, ferr := ParseJSON([]byte(bad))
		if perr == nil || ferr == nil || perr.Error() != ferr.Error() {
			t.Errorf("%q: projected error %v, ParseJSON error %v", bad, perr, ferr)
		}
	}
}
