package bulk

import (
	"context"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestParseManifestVariants(t *testing.T) {
	tests := []struct {
		file     string
		tt       string
		token    bool
		output   []FileItem
		errs     []FileItem
		deleted  []FileItem
		next     string
		orgBy    string
		errorMsg string
	}{
		{file: "stu2.json", tt: "2024-03-01T12:00:00.000Z", token: true,
			output: []FileItem{
				{"Patient", "https://files.example.org/job1/Patient.ndjson", 120, true, 0, false},
				{"Observation", "https://files.example.org/job1/Observation-1.ndjson", 0, false, 0, false},
				{"Observation", "https://files.example.org/job1/Observation-2.ndjson", 1000, true, 0, false},
			},
			errs:    []FileItem{{"OperationOutcome", "https://files.example.org/job1/err.ndjson", 0, false, 0, false}},
			deleted: []FileItem{{"Bundle", "https://files.example.org/job1/del.ndjson", 2, true, 0, false}}},
		{file: "stu3_page2.json", tt: "2024-03-01T12:00:00+01:00", token: false, orgBy: "Patient",
			output: []FileItem{
				{"", "https://files.example.org/job2/b.ndjson?X-Amz-Signature=secret", 0, false, 0, false},
				{"", "https://files.example.org/job2/c.ndjson", 0, false, 0, false},
			},
			errs:    []FileItem{{"OperationOutcome", "https://files.example.org/job2/err.ndjson", 0, false, 0, false}},
			deleted: []FileItem{{"Bundle", "https://files.example.org/job2/del.ndjson", 0, false, 0, false}}},
		{file: "bd4.json", tt: "2025-01-01T00:00:00Z", token: true,
			output:  []FileItem{{"Patient", "https://ehr.example.org/files/p.ndjson", 3, true, 4096, true}},
			errs:    []FileItem{{"OperationOutcome", "https://ehr.example.org/files/o.ndjson", 0, false, 0, false}},
			deleted: []FileItem{}},
		{file: "unknown_keys.json", tt: "2024-01-01T00:00:00Z", token: true,
			output: []FileItem{{"Patient", "https://h/p.ndjson", 0, false, 0, false}}, errs: []FileItem{}, deleted: []FileItem{}},
		{file: "empty_output.json", tt: "2024-01-01T00:00:00Z", token: true,
			output: []FileItem{}, errs: []FileItem{}, deleted: []FileItem{}},
		{file: "stu3_page1.json", errorMsg: `output[0].url: relative URL "files/a.ndjson"`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			m, err := ParseManifest([]byte(mustRead(t, tt.file)))
			if tt.errorMsg != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errorMsg) {
					t.Fatalf("err %v, want %q", err, tt.errorMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.TransactionTime != tt.tt || m.RequiresAccessToken != tt.token || m.OutputOrganizedBy != tt.orgBy || m.Next != tt.next {
				t.Errorf("got %+v", m)
			}
			if !reflect.DeepEqual(m.Output, tt.output) || !reflect.DeepEqual(m.Error, tt.errs) || !reflect.DeepEqual(m.Deleted, tt.deleted) {
				t.Errorf("items\noutput  %+v\nerror   %+v\ndeleted %+v", m.Output, m.Error, m.Deleted)
			}
		})
	}
}

func TestParseManifestErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{``, "empty body"},
		{`[]`, "not a JSON object"},
		{`<html>`, "not a JSON object"},
		{`{"transactionTime":"2024-01-01T00:00:00Z","output":[{"url":"https://h/a"}`, "bad JSON at byte"},
		{`{"request":"x","output":[]}`, "transactionTime is missing"},
		{`{"transactionTime":"","output":[]}`, "transactionTime is missing"},
		{`{"transactionTime":"t","output":{}}`, `field "output" has a JSON object`},
		{`{"transactionTime":"t","output":[{"type":"Patient"}]}`, "output[0].url: missing URL"},
		{`{"transactionTime":"t","output":[{"url":"ftp://h/x"}]}`, "not an http(s) URL"},
		{`{"transactionTime":"t","output":[{"url":"https://h/x","count":-1}]}`, "count -1 is not a non-negative integer"},
		{`{"transactionTime":"t","output":[{"url":"https://h/x","count":1.5}]}`, "count 1.5"},
		{`{"transactionTime":"t","output":[],"link":[{"relation":"next","url":"/p2"}]}`, "link[0] (next): relative URL"},
		{`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"job failed"}]}`, "OperationOutcome instead of a manifest: job failed"},
	} {
		_, err := ParseManifest([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err %v, want %q", tt.in, err, tt.want)
		}
	}
	// Both "error" and "outcome": merged, deduplicated.
	m, err := ParseManifest([]byte(`{"transactionTime":"t","output":[],"error":[{"url":"https://h/e1"}],"outcome":[{"url":"https://h/e1"},{"url":"https://h/e2"}],"requiresAccessToken":false}`))
	if err != nil || len(m.Error) != 2 || m.RequiresAccessToken {
		t.Fatalf("%+v %v", m, err)
	}
	// requiresAccessToken absent: assume the token is needed.
	m, err = ParseManifest([]byte(`{"transactionTime":"t","output":[]}`))
	if err != nil || !m.RequiresAccessToken {
		t.Fatalf("%+v %v", m, err)
	}
}

func TestFetchAll(t *testing.T) {
	page1 := mustRead(t, "stu3_page1.json")
	page2 := mustRead(t, "stu3_page2.json")
	var srvURL string
	srv, reqs := recorder(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fhir/status/1":
			io.WriteString(w, page1)
		case "/fhir/status/page/2":
			io.WriteString(w, page2)
		case "/fhir/status/page/loop":
			// 2b -> loop -> 2b: a cycle.
			io.WriteString(w, strings.Replace(page2, `"deleted"`, `"link":[{"relation":"next","url":"`+srvURL+`/fhir/status/page/2b"}],"deleted"`, 1))
		case "/fhir/status/page/2b":
			io.WriteString(w, strings.Replace(page2, `"deleted"`, `"link":[{"relation":"next","url":"`+srvURL+`/fhir/status/page/loop"}],"deleted"`, 1))
		default:
			w.WriteHeader(404)
		}
	})
	srvURL = srv.URL
	c := &Client{BaseURL: srv.URL + "/fhir", HTTP: srv.Client()}
	st, err := c.Status(context.Background(), srv.URL+"/fhir/status/1")
	if err != nil || !st.Done {
		t.Fatalf("%+v %v", st, err)
	}
	all, err := c.FetchAll(context.Background(), st.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, it := range all.Output {
		urls = append(urls, strings.TrimPrefix(it.URL, srv.URL))
	}
	want := []string{"/fhir/status/files/a.ndjson", "https://files.example.org/job2/b.ndjson?X-Amz-Signature=secret", "https://files.example.org/job2/c.ndjson"}
	if !reflect.DeepEqual(urls, want) {
		t.Errorf("output %q\nwant %q", urls, want)
	}
	if len(all.Error) != 1 || len(all.Deleted) != 1 || all.Next != "" || all.TransactionTime != "2024-03-01T12:00:00+01:00" {
		t.Errorf("%+v", all)
	}
	// status, page 2.
	if len(*reqs) != 2 {
		t.Errorf("%d requests", len(*reqs))
	}

	// A cycle (status -> loop -> status -> page 2 ...) is a permanent
	// error naming the count, not a silent stop (issue 16 §4).
	loop := *st.Manifest
	loop.Next = srv.URL + "/fhir/status/page/2b"
	if _, err := c.FetchAll(context.Background(), &loop); KindOf(err) != KindPermanent || !strings.Contains(err.Error(), "loops back to a page already read after 3 pages") {
		t.Errorf("cycle: %v", err)
	}

	// A failing next page: its error kind surfaces.
	bad := *st.Manifest
	bad.Next = srv.URL + "/fhir/status/missing"
	if _, err := c.FetchAll(context.Background(), &bad); KindOf(err) != KindJobGone || !strings.Contains(err.Error(), "manifest ") {
		t.Errorf("err %v", err)
	}
}
