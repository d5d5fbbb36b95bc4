package views

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/bulkflow/bulkflow/internal/fhirpath"
)

func node(t testing.TB, js string) *fhirpath.Node {
	t.Helper()
	n, err := fhirpath.ParseJSON([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCompileRefusesInvalidViews(t *testing.T) {
	col := `"column":[{"name":"id","path":"id"}]`
	tests := []struct{ name, view, want string }{
		{"not JSON", `{`, "not valid JSON"},
		{"not an object", `[]`, "must be a JSON object"},
		{"wrong resourceType", `{"resourceType":"Patient","resource":"Patient","select":[{` + col + `}]}`, "must be ViewDefinition"},
		{"no resource", `{"select":[{` + col + `}]}`, "resource: required (1..1)"},
		{"resource not a type", `{"resource":"patient","select":[{` + col + `}]}`, "not a FHIR resource type"},
		{"no select", `{"resource":"Patient"}`, "select: required (1..*)"},
		{"empty select", `{"resource":"Patient","select":[]}`, "select: required (1..*)"},
		{"view name", `{"name":"1st","resource":"Patient","select":[{` + col + `}]}`, "sql-name: Name is limited to letters, numbers, or underscores"},
		{"column name", `{"resource":"Patient","select":[{"column":[{"name":"_id","path":"id"}]}]}`, "select[0].column[0].name: sql-name"},
		{"column without path", `{"resource":"Patient","select":[{"column":[{"name":"id"}]}]}`, "column[0].path: required (1..1)"},
		{"column without name", `{"resource":"Patient","select":[{"column":[{"path":"id"}]}]}`, "column[0].name: required (1..1)"},
		{"forEach and forEachOrNull", `{"resource":"Patient","select":[{"forEach":"name","forEachOrNull":"name",` + col + `}]}`, "sql-expressions: Can only have at most one of `forEach`"},
		{"forEach not a string", `{"resource":"Patient","select":[{"forEach":1,` + col + `}]}`, "forEach: must be a string"},
		{"bad FHIRPath", `{"resource":"Patient","select":[{"column":[{"name":"id","path":"id.("}]}]}`, "column[0].path: fhirpath"},
		{"unknown function", `{"resource":"Patient","select":[{"column":[{"name":"id","path":"id.frobnicate()"}]}]}`, "unknown function frobnicate()"},
		{"duplicate column", `{"resource":"Patient","select":[{"column":[{"name":"id","path":"id"}]},{"column":[{"name":"id","path":"id"}]}]}`, "Column Already Defined"},
		{"union names", `{"resource":"Patient","select":[{"unionAll":[{"column":[{"name":"a","path":"id"}]},{"column":[{"name":"b","path":"id"}]}]}]}`, "Union Branches Inconsistent"},
		{"union order", `{"resource":"Patient","select":[{"unionAll":[{"column":[{"name":"a","path":"id"},{"name":"b","path":"id"}]},{"column":[{"name":"b","path":"id"},{"name":"a","path":"id"}]}]}]}`, "Union Branches Inconsistent"},
		{"union types", `{"resource":"Patient","select":[{"unionAll":[{"column":[{"name":"a","path":"id","type":"string"}]},{"column":[{"name":"a","path":"id","type":"integer"}]}]}]}`, "Union Branches Inconsistent"},
		{"typo in select", `{"resource":"Patient","select":[{"forEch":"name",` + col + `}]}`, `unknown element "forEch"`},
		{"collection not boolean", `{"resource":"Patient","select":[{"column":[{"name":"id","path":"id","collection":"yes"}]}]}`, "collection: must be a boolean"},
		{"undefined constant", `{"resource":"Patient","select":[{"column":[{"name":"id","path":"%nope"}]}]}`, "%nope is not defined"},
		{"constant without value", `{"resource":"Patient","constant":[{"name":"c"}],"select":[{` + col + `}]}`, "value[x] is required"},
		{"constant with two values", `{"resource":"Patient","constant":[{"name":"c","valueString":"a","valueCode":"b"}],"select":[{` + col + `}]}`, "more than one value[x]"},
		{"constant of wrong JSON type", `{"resource":"Patient","constant":[{"name":"c","valueInteger":"1"}],"select":[{` + col + `}]}`, "must be a JSON number"},
		{"constant of unknown type", `{"resource":"Patient","constant":[{"name":"c","valueCoding":{}}],"select":[{` + col + `}]}`, `unknown element "valueCoding"`},
		{"constant shadowing %resource", `{"resource":"Patient","constant":[{"name":"resource","valueString":"x"}],"select":[{` + col + `}]}`, "FHIRPath environment variable"},
		{"integer64 constant not an integer", `{"resource":"Patient","constant":[{"name":"c","valueInteger64":"x1"}],"select":[{` + col + `}]}`, "64-bit integer"},
		{"where without path", `{"resource":"Patient","select":[{` + col + `}],"where":[{}]}`, "where[0].path: required"},
		{"repeat empty", `{"resource":"Patient","select":[{"repeat":[],` + col + `}]}`, "repeat: must be a non-empty array"},
	}
	for _, tc := range tests {
		_, err := Compile([]byte(tc.view))
		if err == nil {
			t.Errorf("%s: compiled, want an error containing %q", tc.name, tc.want)
			continue
		}
		if !IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q, want one containing %q", tc.name, err, tc.want)
		}
	}
}

const patientView = `{
  "resourceType": "ViewDefinition", "name": "patient_demographics", "resource": "Patient", "status": "active",
  "constant": [{"name": "official", "valueCode": "official"}],
  "select": [
    {"column": [
      {"name": "id", "path": "getResourceKey()", "type": "string"},
      {"name": "active", "path": "active", "type": "boolean"},
      {"name": "birth_date", "path": "birthDate", "type": "date", "tag": [{"name": "ansi/type", "value": "DATE"}]},
      {"name": "births", "path": "multipleBirth.ofType(integer)", "type": "integer"},
      {"name": "weight", "path": "extension('http://example.org/weight').value.ofType(decimal)", "type": "decimal"},
      {"name": "family", "path": "name.where(use = %official).family", "type": "string"},
      {"name": "given", "path": "name.given", "type": "string", "collection": true},
      {"name": "org", "path": "managingOrganization.getReferenceKey(Organization)", "type": "string"},
      {"name": "first_coding", "path": "maritalStatus.coding.first()", "type": "Coding"}
    ]},
    {"forEachOrNull": "telecom", "column": [
      {"name": "telecom_index", "path": "%rowIndex", "type": "integer"},
      {"name": "telecom_system", "path": "system", "type": "code"}
    ]}
  ]
}`

func TestRowsTypes(t *testing.T) {
	v, err := Compile([]byte(patientView))
	if err != nil {
		t.Fatal(err)
	}
	res := node(t, `{"resourceType":"Patient","id":"p1","active":true,"birthDate":"1970-06",
		"multipleBirthInteger":2,"extension":[{"url":"http://example.org/weight","valueDecimal":70.50}],
		"name":[{"use":"official","family":"Smith","given":["Ann","Marie"]},{"given":["Annie"]}],
		"managingOrganization":{"reference":"Organization/o1"},
		"maritalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"M"}]},
		"telecom":[{"system":"phone"},{"system":"email"}]}`)
	rows, err := v.Rows(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2 (one per telecom)", len(rows))
	}
	want := map[string]any{
		"id": "Patient/p1", "active": true, "birth_date": "1970-06", "births": int64(2),
		"weight": Decimal("70.50"), "family": "Smith", "given": []any{"Ann", "Marie", "Annie"},
		"org":           "Organization/o1",
		"first_coding":  map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"},
		"telecom_index": int64(1), "telecom_system": "email",
	}
	if got := v.Map(rows[1]); !reflect.DeepEqual(got, want) {
		t.Errorf("row\n got %#v\nwant %#v", got, want)
	}
	if js, _ := json.Marshal(v.Map(rows[1])); !strings.Contains(string(js), `"weight":70.50`) {
		t.Errorf("decimal not exact in JSON: %s", js)
	}
	if got := v.Columns[2].Tags; len(got) != 1 || got[0] != (Tag{"ansi/type", "DATE"}) {
		t.Errorf("tags %v", got)
	}
	var names []string
	for _, c := range v.Columns {
		names = append(names, c.Name)
	}
	if got := strings.Join(names, ","); got != "id,active,birth_date,births,weight,family,given,org,first_coding,telecom_index,telecom_system" {
		t.Errorf("columns %s", got)
	}

	// No telecom: forEachOrNull keeps the patient with nulls; no name: an empty list.
	rows, err = v.Rows(node(t, `{"resourceType":"Patient","id":"p2"}`))
	if err != nil || len(rows) != 1 {
		t.Fatalf("rows %v, %v", rows, err)
	}
	m := v.Map(rows[0])
	if m["telecom_system"] != nil || m["telecom_index"] != int64(0) || !reflect.DeepEqual(m["given"], []any{}) || m["active"] != nil {
		t.Errorf("null row %#v", m)
	}
	// Another resource type: no rows, no error.
	if rows, err := v.Rows(node(t, `{"resourceType":"Observation","id":"o1"}`)); err != nil || rows != nil {
		t.Errorf("Observation through a Patient view: %v, %v", rows, err)
	}
}

func TestRowsErrorsNameColumnNotValue(t *testing.T) {
	v, err := Compile([]byte(`{"name":"v","resource":"Patient","select":[{"column":[
		{"name":"n","path":"name.family","type":"string"},
		{"name":"b","path":"birthDate","type":"integer"}]}],
		"where":[{"path":"iif(gender.exists(), gender, true)"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ res, want string }{
		{`{"resourceType":"Patient","name":[{"family":"SECRETNAME1"},{"family":"SECRETNAME2"}]}`, `column "n": Multiple values found but not expected for column`},
		{`{"resourceType":"Patient","name":[{"family":"SECRETNAME1"}],"birthDate":"SECRET-1970"}`, `column "b": a string value in a column of type integer`},
		{`{"resourceType":"Patient","gender":"SECRETGENDER"}`, `where[0]: the path "iif(gender.exists(), gender, true)" must evaluate to a boolean`},
	} {
		_, err := v.Rows(node(t, tc.res))
		if !errors.Is(err, ErrRow) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want ErrRow containing %q", err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error carries a value of the resource: %v", err)
		}
	}
}

func TestRepeatBounded(t *testing.T) {
	res := node(t, `{"resourceType":"QuestionnaireResponse","id":"q","item":[{"linkId":"1","item":[{"linkId":"1.1"}]}]}`)
	// Climbing back to the resource finds nothing new: it ends.
	v, err := Compile([]byte(`{"resource":"QuestionnaireResponse","select":[{"repeat":["%resource","item"],"column":[{"name":"l","path":"linkId"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := v.Rows(res)
	if err != nil || len(rows) != 2 {
		t.Errorf("repeat with %%resource: %d rows, %v; want 2 rows", len(rows), err)
	}
	// A computed value is new every round: the depth bound stops it.
	v, err = Compile([]byte(`{"resource":"QuestionnaireResponse","select":[{"repeat":["'x' & 'y'"],"column":[{"name":"l","path":"$this"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Rows(res); !errors.Is(err, ErrRow) || !strings.Contains(err.Error(), "deeper than") {
		t.Errorf("endless repeat: %v, want the depth bound", err)
	}
}

func TestRowsBounded(t *testing.T) {
	v, err := Compile([]byte(`{"resource":"Patient","select":[{"forEach":"name","column":[{"name":"a","path":"family"}]},{"forEach":"telecom","column":[{"name":"b","path":"value"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString(`{"resourceType":"Patient","name":[`)
	for i := 0; i < 400; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"family":"f"}`)
	}
	b.WriteString(`],"telecom":[`)
	for i := 0; i < 400; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"value":"v"}`)
	}
	b.WriteString(`]}`)
	// 400 x 400 = 160,000 rows from one resource: refused.
	if _, err := v.Rows(node(t, b.String())); !errors.Is(err, ErrRow) || !strings.Contains(err.Error(), "rows from one resource") {
		t.Errorf("cross product of 160,000 rows: %v, want the row bound", err)
	}
}

func TestRunnerDecodesOnceForAllViews(t *testing.T) {
	pv, err := Compile([]byte(`{"name":"p","resource":"Patient","select":[{"column":[{"name":"id","path":"id"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	pv2, err := Compile([]byte(`{"name":"p2","resource":"Patient","select":[{"forEach":"name","column":[{"name":"f","path":"family"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	ov, err := Compile([]byte(`{"name":"o","resource":"Observation","select":[{"column":[{"name":"id","path":"id"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	r := NewRunner(pv, pv2, ov)
	if !r.Wants("Patient") || r.Wants("Condition") {
		t.Error("Wants is wrong")
	}
	got := map[string]int{}
	emit := func(v *View, rows []Row) error { got[v.Name] += len(rows); return nil }
	for _, line := range []string{
		`{"resourceType":"Patient","id":"a","name":[{"family":"x"},{"family":"y"}]}`,
		`{"resourceType":"Observation","id":"b"}`,
		`{"resourceType":"Condition","id":"c"}`,
	} {
		if err := r.Process([]byte(line), emit); err != nil {
			t.Fatal(err)
		}
	}
	if want := map[string]int{"p": 1, "p2": 2, "o": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("rows per view %v, want %v", got, want)
	}
	if err := r.Process([]byte(`{"id":"x"}`), emit); !errors.Is(err, ErrRow) {
		t.Errorf("resource without resourceType: %v", err)
	}
	if err := r.Process([]byte(`{"resourceType":`), emit); err == nil {
		t.Error("bad JSON accepted")
	}
}

// FuzzRows: any view over any resource compiles or is refused, and flattens
// or errs, never panics.
func FuzzRows(f *testing.F) {
	f.Add(patientView, `{"resourceType":"Patient","id":"p1","name":[{"use":"official","family":"F","given":["a"]}],"telecom":[{"system":"phone"}]}`)
	f.Add(`{"resource":"Patient","select":[{"repeat":["item","answer.item"],"unionAll":[{"column":[{"name":"a","path":"linkId"}]},{"forEachOrNull":"x","column":[{"name":"a","path":"%rowIndex"}]}]}]}`,
		`{"resourceType":"Patient","item":[{"linkId":"1","answer":[{"item":[{"linkId":"2"}]}]}]}`)
	f.Fuzz(func(t *testing.T, view, res string) {
		v, err := Compile([]byte(view))
		if err != nil {
			return
		}
		n, err := fhirpath.ParseJSON([]byte(res))
		if err != nil {
			return
		}
		rows, err := v.Rows(n)
		if err != nil {
			return
		}
		for _, r := range rows {
			if len(r) != len(v.Columns) {
				t.Fatalf("row of %d values for %d columns", len(r), len(v.Columns))
			}
		}
		// The Runner decodes only what the view can reach: same rows.
		var got []Row
		if err := NewRunner(v).Process([]byte(res), func(_ *View, r []Row) error { got = r; return nil }); err == nil && len(rows) > 0 && !reflect.DeepEqual(got, rows) {
			t.Fatalf("Runner rows %v, whole-resource rows %v", got, rows)
		}
	})
}

func TestColumnKinds(t *testing.T) {
	v, err := Compile([]byte(patientView))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range v.Columns {
		k := c.Kind().String()
		if c.Collection {
			k = "list<" + k + ">"
		}
		got = append(got, c.Name+":"+k)
	}
	want := "id:string active:boolean birth_date:date births:int64 weight:decimal family:string given:list<string> org:string first_coding:json telecom_index:int64 telecom_system:string"
	if strings.Join(got, " ") != want {
		t.Errorf("kinds\n got %s\nwant %s", strings.Join(got, " "), want)
	}
}

// A compiled View serves many workers at once.
func TestViewConcurrentUse(t *testing.T) {
	v, err := Compile([]byte(benchObservationView))
	if err != nil {
		t.Fatal(err)
	}
	want, err := v.Rows(node(t, benchObservation))
	if err != nil || len(want) != 2 {
		t.Fatalf("rows %v, %v", want, err)
	}
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			for range 200 {
				n, err := fhirpath.ParseJSON([]byte(benchObservation))
				if err != nil {
					errs <- err
					return
				}
				got, err := v.Rows(n)
				if err == nil && !reflect.DeepEqual(got, want) {
					err = errors.New("rows differ between goroutines")
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// The Runner decodes each line into memory it reuses for the next: the rows
// it hands out must own their values, whatever the caller does with the
// line buffer and however many lines follow.
func TestRunnerRowsOutliveTheLine(t *testing.T) {
	v, err := Compile([]byte(benchPatientView))
	if err != nil {
		t.Fatal(err)
	}
	// Text in every form a row holds it: JSON of a complex type, lists,
	// keys (a reference key is a piece of the reference's text).
	jv, err := Compile([]byte(`{"name":"j","resource":"Patient","select":[{"column":[{"name":"ms","path":"maritalStatus"},
		{"name":"given","path":"name.given","collection":true},{"name":"org","path":"managingOrganization.getReferenceKey()"},
		{"name":"gp","path":"generalPractitioner.reference","type":"string"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want, err := v.Rows(node(t, benchPatient))
	if err != nil || len(want) != 1 {
		t.Fatalf("rows %v, %v", want, err)
	}
	jwant, err := jv.Rows(node(t, benchPatient))
	if err != nil || len(jwant) != 1 {
		t.Fatalf("rows %v, %v", jwant, err)
	}
	r := NewRunner(v, jv)
	var kept, jkept []Row
	buf := []byte(benchPatient)
	if err := r.Process(buf, func(w *View, rows []Row) error {
		if w == jv {
			jkept = rows
		} else {
			kept = rows
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		buf[i] = ' ' // the caller's reader reuses its buffer
	}
	other := strings.NewReplacer("Rodriguez", "Xxxxxxxxx", "female", "male__", "1968", "2001", "Maria", "Yyyyy", "Married", "Xxxxxxx", "1d2e3f", "zzzzzz").Replace(benchPatient)
	for range 50 {
		if err := r.Process([]byte(other), func(*View, []Row) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(kept, want) || !reflect.DeepEqual(jkept, jwant) {
		t.Errorf("rows changed after later lines:\n got %v %v\nwant %v %v", kept, jkept, want, jwant)
	}
}

// The Runner decodes only the top-level elements a type's views can reach:
// whatever a view's paths do, its rows are those of the whole resource.
func TestRunnerProjectionKeepsWhatViewsSee(t *testing.T) {
	line := `{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"},"telecom":[{"system":"phone","value":"555"}],` +
		`"name":[{"family":"F","given":["a","b"]}],"birthDate":"1970","_birthDate":{"extension":[{"url":"u","valueString":"x"}]},` +
		`"deceasedBoolean":false,"address":[{"city":"C"}]}`
	for _, path := range []string{
		"first()", "where(telecom.exists())", "$this", "%resource", "%rootResource.telecom.value", "Patient.telecom.value",
		"children().count()", "descendants().count()", "name.where(%resource.telecom.exists()).family",
		"telecom.value", "birthDate.extension('u').value", "deceased", "name.given.join(' ')",
		"iif(telecom.exists(), address.city, name.family)", "address.select(%context.id)", "repeat(address)",
		"ofType(Patient).address.city", "name.exists($this.family = 'F')", "(telecom | address).count()",
		"trace('x').meta.versionId", "getResourceKey()",
	} {
		v, err := Compile([]byte(`{"name":"v","resource":"Patient","select":[{"column":[{"name":"c","path":` + strconv.Quote(path) + `,"collection":true}]}]}`))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		want, err := v.Rows(node(t, line))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var got []Row
		if err := NewRunner(v).Process([]byte(line), func(_ *View, rows []Row) error { got = rows; return nil }); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: Runner gives %v, the whole resource %v", path, got, want)
		}
	}
}

// One Runner serves several workers at once: each Process has its own
// decoder and evaluation scratch.
func TestRunnerConcurrentUse(t *testing.T) {
	pv, err := Compile([]byte(benchPatientView))
	if err != nil {
		t.Fatal(err)
	}
	ov, err := Compile([]byte(benchObservationView))
	if err != nil {
		t.Fatal(err)
	}
	r := NewRunner(pv, ov)
	lines := []string{benchPatient, benchObservation}
	want := map[string][]Row{}
	for _, l := range lines {
		if err := r.Process([]byte(l), func(v *View, rows []Row) error { want[v.Name] = rows; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			for i := range 200 {
				l := lines[(i+g)%2]
				err := r.Process([]byte(l), func(v *View, rows []Row) error {
					if !reflect.DeepEqual(rows, want[v.Name]) {
						return errors.New("rows differ between goroutines")
					}
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
