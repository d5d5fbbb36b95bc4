package testsuite

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestExportMatchesExpected downloads every file of real exports over HTTP
// and compares the (type, id) sets and counts with Expected.
func TestExportMatchesExpected(t *testing.T) {
	s := startServer(t, Options{Patients: 60, ResourcesPerFile: 150, LargeAttachments: -1})
	base := s.BaseURL()
	groups := s.GroupIDs()
	t0 := s.Now()
	s.Mutate(time.Hour, 25, 12)
	t1 := s.Now()
	s.Mutate(time.Hour, 10, 5)

	cases := []struct {
		name  string
		req   func() *http.Request
		q     Query
		check func(t *testing.T, m manifest)
	}{
		{"system", func() *http.Request { return req(t, "GET", base+"/$export", nil, kickHeaders...) },
			Query{Level: "system"}, nil},
		{"patient", func() *http.Request { return req(t, "GET", base+"/Patient/$export", nil, kickHeaders...) },
			Query{Level: "patient"}, nil},
		{"group", func() *http.Request {
			return req(t, "GET", base+"/Group/"+groups[1]+"/$export", nil, kickHeaders...)
		}, Query{Level: "group", GroupID: groups[1]}, nil},
		{"type repeats and commas", func() *http.Request {
			return req(t, "GET", base+"/$export?_type=Patient,Observation&_type=Group", nil, kickHeaders...)
		}, Query{Level: "system", Types: []string{"Patient", "Observation", "Group"}}, nil},
		{"since after Mutate", func() *http.Request {
			return req(t, "GET", base+"/$export?_since="+url.QueryEscape(t0.Format(time.RFC3339Nano)), nil, kickHeaders...)
		}, Query{Level: "system", Since: t0}, nil},
		{"since second mutation, patient level", func() *http.Request {
			return req(t, "GET", base+"/Patient/$export?_since="+url.QueryEscape(t1.Format(time.RFC3339Nano)), nil, kickHeaders...)
		}, Query{Level: "patient", Since: t1}, nil},
		{"until", func() *http.Request {
			return req(t, "GET", base+"/$export?_type=Observation&_until=2022-06-01T00:00:00Z", nil, kickHeaders...)
		}, Query{Level: "system", Types: []string{"Observation"}, Until: time.Date(2022, 6, 1, 0, 0, 0, 0, time.UTC)}, nil},
		{"POST patient", func() *http.Request {
			return req(t, "POST", base+"/Patient/$export", parametersBody("patient", "Patient/pat-3", "patient", "Patient/pat-7", "_type", "Patient,Encounter"),
				append(kickHeaders, "Content-Type: application/fhir+json")...)
		}, Query{Level: "patient", Patients: []string{"Patient/pat-3", "Patient/pat-7"}, Types: []string{"Patient", "Encounter"}}, nil},
		{"POST group since", func() *http.Request {
			return req(t, "POST", base+"/Group/"+groups[0]+"/$export", parametersBody("_since", t0.Format(time.RFC3339Nano)),
				append(kickHeaders, "Content-Type: application/fhir+json")...)
		}, Query{Level: "group", GroupID: groups[0], Since: t0}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, err := s.Expected(c.q)
			if err != nil {
				t.Fatal(err)
			}
			m := poll(t, kickoff(t, c.req()))
			if m.TransactionTime != s.Now().Format("2006-01-02T15:04:05.000Z") {
				t.Errorf("transactionTime %s, data clock %s", m.TransactionTime, s.Now())
			}
			for _, k := range []string{"transactionTime", "request", "requiresAccessToken", "output", "error"} {
				if _, ok := m.raw[k]; !ok {
					t.Errorf("manifest lacks %q", k)
				}
			}
			got := downloadAll(t, m)
			sameSets(t, "output", got, want.IDs)
			for typ, n := range want.Counts {
				total := 0
				for _, o := range m.Output {
					if o.Type == typ {
						total += o.Count
						if o.Count > 150 {
							t.Errorf("%s file with %d > ResourcesPerFile lines", typ, o.Count)
						}
					}
				}
				if total != n {
					t.Errorf("%s: manifest counts sum %d, Expected %d", typ, total, n)
				}
			}
			if c.q.Since.IsZero() {
				if _, ok := m.raw["deleted"]; ok {
					t.Error("deleted[] without _since")
				}
				return
			}
			if _, ok := m.raw["deleted"]; !ok {
				t.Error("no deleted[] with _since")
			}
			gotDel := deletedIDs(t, m)
			sameSets(t, "deleted", gotDel, want.Deleted)
			for typ, ids := range gotDel {
				for id := range ids {
					if _, ok := got[typ][id]; ok {
						t.Errorf("deleted %s/%s also in output (BD2 L490)", typ, id)
					}
				}
			}
			if len(want.IDs) == 0 || len(want.Deleted) == 0 {
				t.Errorf("since export should have changes and deletions: %d types, %d deleted types", len(want.IDs), len(want.Deleted))
			}
		})
	}
	// sanity: Patient level covers 60 patients, system exports all 12 types
	e, _ := s.Expected(Query{Level: "system"})
	if e.Counts["Patient"] != 60 || len(e.Counts) != 12 {
		t.Errorf("system Expected counts %v", e.Counts)
	}
}

// TestSinceSemantics: after Mutate, _since=previous transactionTime returns
// exactly the updated resources at their new version.
func TestSinceSemantics(t *testing.T) {
	s := startServer(t, Options{Patients: 30, LargeAttachments: -1})
	t0 := s.Now()
	if e, _ := s.Expected(Query{Level: "system", Since: t0}); len(e.IDs) != 0 {
		t.Fatalf("nothing changed after t0 yet: %v", e.Counts)
	}
	// an export started before Mutate keeps serving its own versions
	before := kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=Observation", nil, kickHeaders...))
	mBefore := poll(t, before)
	eBefore, _ := s.Expected(Query{Level: "system", Types: []string{"Observation"}})
	s.Mutate(90*time.Minute, 20, 6)
	if !s.Now().Equal(t0.Add(90 * time.Minute)) {
		t.Fatalf("Now %s", s.Now())
	}
	e, _ := s.Expected(Query{Level: "system", Since: t0})
	n, nd := 0, 0
	for _, c := range e.Counts {
		n += c
	}
	for _, d := range e.Deleted {
		nd += len(d)
	}
	if n == 0 || n > 20 || nd != 6 {
		t.Fatalf("since export: %d updated (want 1..20), %d deleted (want 6)", n, nd)
	}
	m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_since="+url.QueryEscape(t0.Format(time.RFC3339Nano)), nil, kickHeaders...)))
	for _, o := range m.Output {
		for _, l := range fetchLines(t, o.URL) {
			var h struct {
				Meta struct{ VersionID, LastUpdated string }
			}
			json.Unmarshal(l, &h)
			if h.Meta.VersionID == "1" || h.Meta.LastUpdated != m.TransactionTime {
				t.Errorf("changed resource has meta %+v, transactionTime %s", h.Meta, m.TransactionTime)
			}
		}
	}
	// the pre-Mutate export still yields its original versions and count
	sameSets(t, "pre-mutation export", downloadAll(t, mBefore), eBefore.IDs)
	for _, l := range fetchLines(t, mBefore.Output[0].URL) {
		if !bytes.Contains(l, []byte(`"versionId":"1"`)) {
			t.Fatalf("pre-mutation export serves a later version: %.200s", l)
		}
	}
}

func TestDeterminism(t *testing.T) {
	hashes := func(seed int64) map[string][32]byte {
		s := startServer(t, Options{Seed: seed, Patients: 40, ResourcesPerFile: 300, LargeAttachments: 1})
		m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export", nil, kickHeaders...)))
		out := map[string][32]byte{}
		for _, o := range m.Output {
			_, body := do(t, req(t, "GET", o.URL, nil))
			name := o.URL[strings.LastIndexByte(o.URL, '/')+1:]
			out[name] = sha256.Sum256(body)
		}
		return out
	}
	a, b, c := hashes(7), hashes(7), hashes(8)
	if len(a) < 12 || len(a) != len(b) {
		t.Fatalf("file sets differ: %d vs %d", len(a), len(b))
	}
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s differs between runs with the same seed", k)
		}
	}
	same := 0
	for k, v := range a {
		if c[k] == v {
			same++
		}
	}
	if same > 0 {
		t.Errorf("%d files identical across different seeds", same)
	}
}

func TestLargeAttachmentLines(t *testing.T) {
	s := startServer(t, Options{Patients: 20}) // default: 3 large attachments
	m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=DocumentReference", nil, kickHeaders...)))
	big := 0
	for _, o := range m.Output {
		for _, l := range fetchLines(t, o.URL) {
			if len(l) > 4<<20 {
				big++
				var d struct {
					Content []struct{ Attachment struct{ Data []byte } }
				}
				if err := json.Unmarshal(l, &d); err != nil || len(d.Content[0].Attachment.Data) < 3<<20 {
					t.Fatalf("large attachment not valid base64 data: %v", err)
				}
			}
		}
	}
	if big != 3 {
		t.Errorf("%d lines > 4 MB, want 3", big)
	}
}

func TestKickoffValidation(t *testing.T) {
	s := startServer(t, Options{Patients: 10, LargeAttachments: -1})
	b := s.BaseURL()
	post := func(path string, pairs ...string) *http.Request {
		return req(t, "POST", b+path, parametersBody(pairs...), append(kickHeaders, "Content-Type: application/fhir+json")...)
	}
	lenient := []string{"Accept: application/fhir+json", "Prefer: respond-async, handling=lenient"}
	cases := []struct {
		name   string
		r      *http.Request
		status int
		code   string // OperationOutcome issue code for errors
	}{
		{"no Accept", req(t, "GET", b+"/$export", nil, "Prefer: respond-async"), 400, "invalid"},
		{"no Prefer", req(t, "GET", b+"/$export", nil, "Accept: application/fhir+json"), 400, "invalid"},
		{"unknown param", req(t, "GET", b+"/$export?_foo=1", nil, kickHeaders...), 400, "not-supported"},
		{"unknown param lenient", req(t, "GET", b+"/$export?_foo=1", nil, lenient...), 202, ""},
		{"outputFormat full", req(t, "GET", b+"/$export?_outputFormat=application/fhir%2Bndjson", nil, kickHeaders...), 202, ""},
		{"outputFormat application/ndjson", req(t, "GET", b+"/$export?_outputFormat=application/ndjson", nil, kickHeaders...), 202, ""},
		{"outputFormat ndjson", req(t, "GET", b+"/$export?_outputFormat=ndjson", nil, kickHeaders...), 202, ""},
		{"outputFormat csv", req(t, "GET", b+"/$export?_outputFormat=text/csv", nil, kickHeaders...), 400, "not-supported"},
		{"bad since", req(t, "GET", b+"/$export?_since=yesterday", nil, kickHeaders...), 400, "invalid"},
		{"bad type", req(t, "GET", b+"/$export?_type=Spaceship", nil, kickHeaders...), 400, "invalid"},
		{"patient on GET", req(t, "GET", b+"/Patient/$export?patient=Patient/pat-1", nil, kickHeaders...), 400, "not-supported"},
		{"POST unknown patient", post("/Patient/$export", "patient", "Patient/pat-999"), 400, "invalid"},
		{"POST patient ok", post("/Patient/$export", "patient", "Patient/pat-1"), 202, ""},
		{"POST not Parameters", req(t, "POST", b+"/$export", strings.NewReader(`{"resourceType":"Patient"}`), append(kickHeaders, "Content-Type: application/fhir+json")...), 400, "invalid"},
		{"unknown group", req(t, "GET", b+"/Group/grp-99/$export", nil, kickHeaders...), 404, "not-found"},
		{"typeFilter supported", req(t, "GET", b+"/$export?_typeFilter="+url.QueryEscape("Observation?category=laboratory"), nil, kickHeaders...), 202, ""},
		{"typeFilter unsupported", req(t, "GET", b+"/$export?_typeFilter="+url.QueryEscape("Observation?value-quantity=gt5"), nil, kickHeaders...), 400, "not-supported"},
		{"typeFilter unsupported lenient", req(t, "GET", b+"/$export?_typeFilter="+url.QueryEscape("Observation?value-quantity=gt5"), nil, lenient...), 202, ""},
		{"includeAssociatedData tolerated", req(t, "GET", b+"/$export?includeAssociatedData=LatestProvenanceResources", nil, kickHeaders...), 202, ""},
		{"PUT", req(t, "PUT", b+"/$export", nil, kickHeaders...), 405, "not-supported"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, c.r)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if c.code != "" {
				if got := isOO(t, body); got != c.code {
					t.Errorf("issue code %q, want %q", got, c.code)
				}
			}
		})
	}
	// lenient: the ignored parameter is reported in error[] (BD2 L507)
	m := poll(t, kickoff(t, req(t, "GET", b+"/$export?_type=Patient&_foo=1", nil, lenient...)))
	if len(m.Error) != 1 || m.Error[0].Type != "OperationOutcome" || m.Error[0].Count != 1 {
		t.Fatalf("lenient error[]: %+v", m.Error)
	}
	if l := fetchLines(t, m.Error[0].URL); !bytes.Contains(l[0], []byte(`"severity":"information"`)) || !bytes.Contains(l[0], []byte("_foo")) {
		t.Errorf("lenient note: %s", l[0])
	}
}

func TestTypeFilterAndElements(t *testing.T) {
	s := startServer(t, Options{Patients: 30, LargeAttachments: -1})
	b := s.BaseURL()
	all, _ := s.Expected(Query{Level: "system", Types: []string{"Observation"}})
	tf := url.QueryEscape("Observation?category=laboratory&status=final,amended") + "&_typeFilter=" + url.QueryEscape("Observation?code=http://loinc.org|8867-4")
	m := poll(t, kickoff(t, req(t, "GET", b+"/$export?_type=Observation&_typeFilter="+tf, nil, kickHeaders...)))
	n := 0
	for _, o := range m.Output {
		for _, l := range fetchLines(t, o.URL) {
			n++
			lab := bytes.Contains(l, []byte(`"code":"laboratory"`)) && (bytes.Contains(l, []byte(`"status":"final"`)) || bytes.Contains(l, []byte(`"status":"amended"`)))
			hr := bytes.Contains(l, []byte(`"code":"8867-4"`))
			if !lab && !hr {
				t.Fatalf("line matches no _typeFilter query: %s", l)
			}
		}
	}
	if n == 0 || n >= all.Counts["Observation"] {
		t.Errorf("_typeFilter kept %d of %d observations", n, all.Counts["Observation"])
	}

	m = poll(t, kickoff(t, req(t, "GET", b+"/$export?_type=Observation,Patient&_elements=Observation.subject,id", nil, kickHeaders...)))
	for _, o := range m.Output {
		lines := fetchLines(t, o.URL)
		var r map[string]any
		json.Unmarshal(lines[0], &r)
		if _, ok := r["valueQuantity"]; ok {
			t.Errorf("%s: unlisted element kept", o.Type)
		}
		tag := r["meta"].(map[string]any)["tag"]
		if tag == nil || !strings.Contains(fmt.Sprint(tag), "SUBSETTED") {
			t.Errorf("%s: no SUBSETTED tag", o.Type)
		}
		if o.Type == "Observation" {
			for _, k := range []string{"status", "code", "subject"} { // mandatory + listed
				if _, ok := r[k]; !ok {
					t.Errorf("Observation lacks %q under _elements", k)
				}
			}
		}
	}
}

func TestStatusLifecycle(t *testing.T) {
	s := startServer(t, Options{Patients: 10, LargeAttachments: -1, ExportDuration: 300 * time.Millisecond, RetryAfter: 2 * time.Second})
	loc := kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=Patient", nil, kickHeaders...))
	resp, _ := do(t, req(t, "GET", loc, nil))
	if resp.StatusCode != 202 || resp.Header.Get("X-Progress") == "" || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("in progress: %d X-Progress=%q Retry-After=%q", resp.StatusCode, resp.Header.Get("X-Progress"), resp.Header.Get("Retry-After"))
	}
	time.Sleep(350 * time.Millisecond)
	resp, body := do(t, req(t, "GET", loc, nil))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("complete: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if exp, err := http.ParseTime(resp.Header.Get("Expires")); err != nil || time.Until(exp) < 50*time.Minute {
		t.Errorf("Expires %q", resp.Header.Get("Expires"))
	}
	var m manifest
	json.Unmarshal(body, &m)
	if m.RequiresAccessToken || len(m.Output) != 1 || m.Output[0].Count != 10 || m.Error == nil || m.Request != s.BaseURL()+"/$export?_type=Patient" {
		t.Errorf("manifest %s", body)
	}
	// a second poll returns the same manifest
	if _, body2 := do(t, req(t, "GET", loc, nil)); !bytes.Equal(body, body2) {
		t.Error("manifest changed between polls")
	}
	// DELETE (BD2 L287-303): 202, then status and files 404 with an OperationOutcome
	if resp, _ := do(t, req(t, "DELETE", loc, nil)); resp.StatusCode != 202 {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	for _, u := range []string{loc, m.Output[0].URL} {
		resp, body := do(t, req(t, "GET", u, nil))
		if resp.StatusCode != 404 || isOO(t, body) != "not-found" {
			t.Errorf("after DELETE %s: %d", u, resp.StatusCode)
		}
	}
	if resp, _ := do(t, req(t, "DELETE", loc, nil)); resp.StatusCode != 404 {
		t.Errorf("second DELETE: %d", resp.StatusCode)
	}
}

func TestPartialManifests(t *testing.T) {
	s := startServer(t, Options{Patients: 20, LargeAttachments: -1, ManifestPageSize: 3})
	want, _ := s.Expected(Query{Level: "system"})
	m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export?allowPartialManifests=true", nil, kickHeaders...)))
	all := m
	pages := 1
	for len(m.Link) > 0 {
		if m.Link[0].Relation != "next" || len(m.Output) != 3 {
			t.Fatalf("page %d: %+v", pages, m)
		}
		m = poll(t, m.Link[0].URL)
		all.Output = append(all.Output, m.Output...)
		pages++
	}
	if pages != 4 { // 12 types, 3 per page
		t.Errorf("%d pages", pages)
	}
	sameSets(t, "paged output", downloadAll(t, all), want.IDs)
}

func TestFileEncodingsAndExpiry(t *testing.T) {
	s := startServer(t, Options{Patients: 15, LargeAttachments: -1, RangeRequests: true, FileTTL: 400 * time.Millisecond})
	m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=Observation", nil, kickHeaders...)))
	u := m.Output[0].URL
	resp, plain := do(t, req(t, "GET", u, nil))
	if resp.Header.Get("Accept-Ranges") != "bytes" || resp.Header.Get("Content-Encoding") != "" {
		t.Fatalf("plain headers %v", resp.Header)
	}
	// gzip when asked (BD3 L705)
	resp, gz := do(t, req(t, "GET", u, nil, "Accept-Encoding: gzip"))
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatal("no gzip")
	}
	zr, _ := gzip.NewReader(bytes.NewReader(gz))
	if unz, _ := io.ReadAll(zr); !bytes.Equal(unz, plain) {
		t.Error("gzip body differs")
	}
	// Range
	for _, rg := range []struct {
		h    string
		a, b int
	}{{"bytes=100-199", 100, 200}, {"bytes=1000-", 1000, len(plain)}, {"bytes=-50", len(plain) - 50, len(plain)}} {
		resp, part := do(t, req(t, "GET", u, nil, "Range: "+rg.h))
		if resp.StatusCode != 206 || !bytes.Equal(part, plain[rg.a:rg.b]) ||
			resp.Header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", rg.a, rg.b-1, len(plain)) {
			t.Errorf("%s: %d %q", rg.h, resp.StatusCode, resp.Header.Get("Content-Range"))
		}
	}
	if resp, _ := do(t, req(t, "GET", u, nil, fmt.Sprintf("Range: bytes=%d-", len(plain)+10))); resp.StatusCode != 416 {
		t.Errorf("unsatisfiable range: %d", resp.StatusCode)
	}
	st := s.Stats()
	if st.RangeRequests != 3 || st.FilesServed != 2 {
		t.Errorf("stats: range %d files %d", st.RangeRequests, st.FilesServed)
	}
	time.Sleep(450 * time.Millisecond)
	if resp, body := do(t, req(t, "GET", u, nil)); resp.StatusCode != 410 || isOO(t, body) != "not-found" {
		t.Errorf("expired file: %d", resp.StatusCode)
	}
}

func TestMetadataAndStats(t *testing.T) {
	s := startServer(t, Options{Patients: 5, LargeAttachments: -1})
	resp, body := do(t, req(t, "GET", s.BaseURL()+"/metadata", nil))
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("bulkdata/OperationDefinition/group-export")) || !bytes.Contains(body, []byte(`"CapabilityStatement"`)) {
		t.Errorf("metadata: %d %s", resp.StatusCode, body)
	}
	// no SMART auth configured: well-known is a 404 OperationOutcome
	if resp, body := do(t, req(t, "GET", s.BaseURL()+"/.well-known/smart-configuration", nil)); resp.StatusCode != 404 || isOO(t, body) != "not-found" {
		t.Errorf("well-known without auth: %d", resp.StatusCode)
	}
	m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=Patient", nil, kickHeaders...)))
	downloadAll(t, m)
	do(t, req(t, "GET", s.BaseURL()+"/nothing", nil))
	resp, body = do(t, req(t, "GET", strings.TrimSuffix(s.BaseURL(), "/fhir")+"/_admin/stats", nil))
	var st Stats
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("stats: %v %s", err, body)
	}
	if st.Kickoffs != 1 || st.Requests["kickoff"] != 1 || st.Requests["metadata"] != 1 || st.Requests["wellknown"] != 1 ||
		st.StatusCodes["file"][200] != 1 || st.FilesServed != 1 || st.FileBytesServed == 0 || st.Requests["status"] < 1 ||
		st.StatusCodes["other"][404] != 1 || st.ConcurrentDownloadsHighWater != 1 {
		t.Errorf("stats %+v", st)
	}
	s.ResetStats()
	if st := s.Stats(); st.Kickoffs != 0 || len(st.Requests) != 0 {
		t.Errorf("after reset %+v", st)
	}
}
