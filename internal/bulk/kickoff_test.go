package bulk

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

type recorded struct {
	method string
	path   string // escaped path
	query  url.Values
	header http.Header
	body   []byte
}

// recorder is a tiny fake FHIR server: it records each request and answers
// with respond.
func recorder(t *testing.T, respond func(w http.ResponseWriter, r *http.Request)) (*httptest.Server, *[]recorded) {
	t.Helper()
	var reqs []recorded
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		reqs = append(reqs, recorded{r.Method, r.URL.EscapedPath(), r.URL.Query(), r.Header.Clone(), b})
		respond(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &reqs
}

func accepted(loc string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if loc != "" {
			// BASE: this test server's own origin.
			w.Header().Set("Content-Location", strings.Replace(loc, "BASE", "http://"+r.Host, 1))
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

func TestKickoffGET(t *testing.T) {
	tests := []struct {
		name  string
		req   KickoffRequest
		path  string
		query url.Values
	}{
		{"system minimal", KickoffRequest{Level: LevelSystem}, "/fhir/$export", url.Values{}},
		{"patient", KickoffRequest{Level: LevelPatient, Types: []string{"Patient", "Observation"}}, "/fhir/Patient/$export",
			url.Values{"_type": {"Patient,Observation"}}},
		{"group escaped", KickoffRequest{Level: LevelGroup, GroupID: "my group+1"}, "/fhir/Group/my%20group+1/$export", url.Values{}},
		{"every parameter", KickoffRequest{
			Level: LevelSystem, Types: []string{"Patient", "MedicationRequest"},
			Since: "2024-01-01T00:00:00Z", Until: "2024-06-01T00:00:00.5+02:00",
			Elements:              []string{"id", "Patient.name"},
			TypeFilters:           []string{"MedicationRequest?status=active", "MedicationRequest?category=inpatient&_lastUpdated=gt2024"},
			OutputFormat:          "application/fhir+ndjson",
			IncludeAssociatedData: []string{"LatestProvenanceResources", "_custom"},
			OrganizeOutputBy:      "Patient",
			AllowPartialManifests: true,
		}, "/fhir/$export", url.Values{
			"_type":                 {"Patient,MedicationRequest"},
			"_since":                {"2024-01-01T00:00:00Z"},
			"_until":                {"2024-06-01T00:00:00.5+02:00"},
			"_elements":             {"id,Patient.name"},
			"_typeFilter":           {"MedicationRequest?status=active", "MedicationRequest?category=inpatient&_lastUpdated=gt2024"},
			"_outputFormat":         {"application/fhir+ndjson"},
			"includeAssociatedData": {"LatestProvenanceResources,_custom"},
			"organizeOutputBy":      {"Patient"},
			"allowPartialManifests": {"true"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recorder(t, accepted("https://ehr.example.org/fhir/status/abc"))
			c := &Client{BaseURL: srv.URL + "/fhir/", HTTP: srv.Client(), UserAgent: "bulkflow-test", Origins: allow(t, srv.URL, "https://ehr.example.org")}
			loc, err := c.Kickoff(context.Background(), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if loc != "https://ehr.example.org/fhir/status/abc" {
				t.Errorf("status URL %q", loc)
			}
			r := (*reqs)[0]
			if r.method != "GET" || r.path != tt.path {
				t.Errorf("%s %s, want GET %s", r.method, r.path, tt.path)
			}
			if !reflect.DeepEqual(r.query, tt.query) {
				t.Errorf("query %v\nwant  %v", r.query, tt.query)
			}
			if got := r.header.Get("Accept"); got != "application/fhir+json" {
				t.Errorf("Accept %q", got)
			}
			if got := r.header.Get("Prefer"); got != "respond-async" {
				t.Errorf("Prefer %q", got)
			}
			if got := r.header.Get("User-Agent"); got != "bulkflow-test" {
				t.Errorf("User-Agent %q", got)
			}
		})
	}
}

type param struct {
	Name           string
	ValueString    *string
	ValueInstant   *string
	ValueCode      *string
	ValueBoolean   *bool
	ValueReference *struct{ Reference string }
}

func TestKickoffPOST(t *testing.T) {
	srv, reqs := recorder(t, accepted("/fhir/status/xyz"))
	c := &Client{BaseURL: srv.URL + "/fhir", HTTP: srv.Client()}
	req := KickoffRequest{
		Level: LevelGroup, GroupID: "g1", Types: []string{"Patient", "Condition"},
		Since: "2024-01-01T00:00:00Z", Until: "2024-02-01T00:00:00Z",
		Elements: []string{"id"}, TypeFilters: []string{"Condition?clinical-status=active"},
		Patients:              []string{"Patient/1", "Patient/2"},
		OutputFormat:          "ndjson",
		IncludeAssociatedData: []string{"LatestProvenanceResources"},
		OrganizeOutputBy:      "Patient", AllowPartialManifests: true, Lenient: true,
	}
	loc, err := c.Kickoff(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if loc != srv.URL+"/fhir/status/xyz" {
		t.Errorf("relative Content-Location resolved to %q", loc)
	}
	r := (*reqs)[0]
	if r.method != "POST" || r.path != "/fhir/Group/g1/$export" || len(r.query) != 0 {
		t.Fatalf("%s %s?%v", r.method, r.path, r.query)
	}
	for h, want := range map[string]string{
		"Content-Type": "application/fhir+json", "Accept": "application/fhir+json", "Prefer": "respond-async, handling=lenient",
	} {
		if got := r.header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	var body struct {
		ResourceType string
		Parameter    []param
	}
	if err := json.Unmarshal(r.body, &body); err != nil || body.ResourceType != "Parameters" {
		t.Fatalf("body %s: %v", r.body, err)
	}
	var got []string
	for _, p := range body.Parameter {
		switch {
		case p.ValueString != nil:
			got = append(got, p.Name+"=string:"+*p.ValueString)
		case p.ValueInstant != nil:
			got = append(got, p.Name+"=instant:"+*p.ValueInstant)
		case p.ValueCode != nil:
			got = append(got, p.Name+"=code:"+*p.ValueCode)
		case p.ValueBoolean != nil:
			got = append(got, p.Name+"=bool:"+map[bool]string{true: "true", false: "false"}[*p.ValueBoolean])
		case p.ValueReference != nil:
			got = append(got, p.Name+"=ref:"+p.ValueReference.Reference)
		default:
			got = append(got, p.Name+"=?")
		}
	}
	want := []string{
		"_outputFormat=string:ndjson", "_since=instant:2024-01-01T00:00:00Z", "_until=instant:2024-02-01T00:00:00Z",
		"_type=string:Patient", "_type=string:Condition", "_elements=string:id",
		"patient=ref:Patient/1", "patient=ref:Patient/2", "_typeFilter=string:Condition?clinical-status=active",
		"includeAssociatedData=code:LatestProvenanceResources", "organizeOutputBy=string:Patient", "allowPartialManifests=bool:true",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parameters\n got %q\nwant %q", got, want)
	}
}

func TestKickoffPatientsForcePOSTAndExplicitPOST(t *testing.T) {
	srv, reqs := recorder(t, accepted("https://h/status/1"))
	c := &Client{BaseURL: srv.URL, HTTP: srv.Client(), Origins: allow(t, srv.URL, "https://h")}
	if _, err := c.Kickoff(context.Background(), KickoffRequest{Level: LevelSystem, Method: "post"}); err != nil {
		t.Fatal(err)
	}
	if r := (*reqs)[0]; r.method != "POST" || r.path != "/$export" || string(r.body) != `{"resourceType":"Parameters"}` {
		t.Errorf("%s %s %s", r.method, r.path, r.body)
	}
}

func TestKickoffResponses(t *testing.T) {
	tests := []struct {
		name    string
		respond func(http.ResponseWriter, *http.Request)
		wantLoc string // "" = error expected
		kind    ErrorKind
		contain string
	}{
		{"absolute", accepted("BASE/other/status/1"), "BASE/other/status/1", 0, ""},
		// issue 16 §2: a status URL on another origin is refused, not polled.
		{"absolute foreign origin", accepted("https://other.example.org/status/1"), "", KindPermanent, "https://other.example.org:443, which is neither"},
		{"relative path", accepted("status/1"), "BASE/fhir/status/1", 0, ""},
		{"missing", accepted(""), "", KindPermanent, "without a Content-Location"},
		{"200 not async", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) }, "", KindPermanent, "expected 202"},
		{"429", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(429)
		}, "", KindRateLimited, "429 Too Many Requests"},
		{"400 OperationOutcome", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(400)
			io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported","diagnostics":"Unsupported _type \"Foo\""}]}`)
		}, "", KindPermanent, `400 Bad Request: Unsupported _type "Foo" (OperationOutcome error/not-supported)`},
		{"502 HTML", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(502)
			io.WriteString(w, "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1>nginx</body></html>")
		}, "", KindTransient, "HTML error page (502 Bad Gateway)"},
		{"405 GET not allowed", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(405) }, "", KindPermanent, "405 Method Not Allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := recorder(t, tt.respond)
			c := &Client{BaseURL: srv.URL + "/fhir", HTTP: srv.Client()}
			loc, err := c.Kickoff(context.Background(), KickoffRequest{Level: LevelSystem, Types: []string{"Patient"}})
			if tt.wantLoc != "" {
				if err != nil || loc != strings.Replace(tt.wantLoc, "BASE", srv.URL, 1) {
					t.Fatalf("loc %q err %v", loc, err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Kind != tt.kind || !strings.Contains(err.Error(), tt.contain) {
				t.Fatalf("got %v (kind %v), want kind %v containing %q", err, KindOf(err), tt.kind, tt.contain)
			}
			if e.Op != "kickoff" || strings.Contains(e.URL, "?") {
				t.Errorf("Op %q URL %q", e.Op, e.URL)
			}
			if tt.kind == KindRateLimited && e.RetryAfter.Seconds() != 120 {
				t.Errorf("RetryAfter %v", e.RetryAfter)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		req     KickoffRequest
		contain []string
	}{
		{"ok system", KickoffRequest{Level: LevelSystem}, nil},
		{"ok group patients", KickoffRequest{Level: LevelGroup, GroupID: "g", Patients: []string{"Patient/1", "https://h/fhir/Patient/2"}}, nil},
		{"no level", KickoffRequest{}, []string{"Level is required"}},
		{"bad level", KickoffRequest{Level: "everything"}, []string{`Level "everything" is unknown`}},
		{"group without id", KickoffRequest{Level: LevelGroup}, []string{"needs a GroupID"}},
		{"group id with slash", KickoffRequest{Level: LevelGroup, GroupID: "Group/1"}, []string{"bare Group id"}},
		{"group id on system", KickoffRequest{Level: LevelSystem, GroupID: "x"}, []string{"only used with Level"}},
		{"comma type", KickoffRequest{Level: LevelSystem, Types: []string{"Patient,Observation"}}, []string{"Types[0]", "no commas"}},
		{"bad since", KickoffRequest{Level: LevelSystem, Since: "2024-01-01"}, []string{`Since "2024-01-01" is not an RFC 3339 instant`}},
		{"until before since", KickoffRequest{Level: LevelSystem, Since: "2024-02-01T00:00:00Z", Until: "2024-01-01T00:00:00Z"}, []string{"must be before Until"}},
		{"bad typeFilter", KickoffRequest{Level: LevelSystem, TypeFilters: []string{"status=active"}}, []string{"TypeFilters[0]", "ResourceType?search-params"}},
		{"patients on system", KickoffRequest{Level: LevelSystem, Patients: []string{"Patient/1"}}, []string{"Level patient or group"}},
		{"patients with GET", KickoffRequest{Level: LevelPatient, Method: "GET", Patients: []string{"Patient/1"}}, []string{"need Method POST"}},
		{"bad patient ref", KickoffRequest{Level: LevelPatient, Patients: []string{"123"}}, []string{`Patients[0] "123"`}},
		{"bad method", KickoffRequest{Level: LevelSystem, Method: "PUT"}, []string{`Method "PUT"`}},
		{"bad organize", KickoffRequest{Level: LevelSystem, OrganizeOutputBy: "patient"}, []string{"OrganizeOutputBy"}},
		{"several at once", KickoffRequest{Level: LevelGroup, Elements: []string{""}, IncludeAssociatedData: []string{"a,b"}},
			[]string{"needs a GroupID", "Elements[0]", "IncludeAssociatedData[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			if tt.contain == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("want error")
			}
			for _, c := range tt.contain {
				if !strings.Contains(err.Error(), c) {
					t.Errorf("%q does not contain %q", err, c)
				}
			}
		})
	}
	// Kickoff refuses an invalid request without any network call.
	c := &Client{BaseURL: "http://127.0.0.1:1"}
	if _, err := c.Kickoff(context.Background(), KickoffRequest{}); KindOf(err) != KindPermanent {
		t.Errorf("kind %v", KindOf(err))
	}
}
