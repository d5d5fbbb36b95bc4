package testsuite

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func startServer(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type manifest struct {
	TransactionTime     string         `json:"transactionTime"`
	Request             string         `json:"request"`
	RequiresAccessToken bool           `json:"requiresAccessToken"`
	Output              []manifestItem `json:"output"`
	Deleted             []manifestItem `json:"deleted"`
	Error               []manifestItem `json:"error"`
	Link                []manifestLink `json:"link"`
	raw                 map[string]json.RawMessage
}

// req builds a request with optional headers given as "Key: value" pairs.
func req(t testing.TB, method, u string, body io.Reader, headers ...string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		r.Header.Add(k, v)
	}
	return r
}

var kickHeaders = []string{"Accept: application/fhir+json", "Prefer: respond-async"}

// do sends r with a client that does not follow redirects or add gzip.
func do(t testing.TB, r *http.Request) (*http.Response, []byte) {
	t.Helper()
	c := &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{DisableCompression: true},
		Timeout:       30 * time.Second,
	}
	resp, err := c.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", r.Method, r.URL, err)
	}
	return resp, b
}

// parametersBody builds a FHIR Parameters kick-off body.
func parametersBody(pairs ...string) io.Reader {
	var ps []map[string]any
	for i := 0; i+1 < len(pairs); i += 2 {
		p := map[string]any{"name": pairs[i]}
		switch pairs[i] {
		case "patient":
			p["valueReference"] = map[string]string{"reference": pairs[i+1]}
		case "_since", "_until":
			p["valueInstant"] = pairs[i+1]
		default:
			p["valueString"] = pairs[i+1]
		}
		ps = append(ps, p)
	}
	b, _ := json.Marshal(map[string]any{"resourceType": "Parameters", "parameter": ps})
	return bytes.NewReader(b)
}

// kickoff starts an export and returns its status URL.
func kickoff(t testing.TB, r *http.Request) string {
	t.Helper()
	resp, body := do(t, r)
	if resp.StatusCode != 202 {
		t.Fatalf("kickoff %s: %d %s", r.URL, resp.StatusCode, body)
	}
	loc := resp.Header.Get("Content-Location")
	if u, err := url.Parse(loc); err != nil || !u.IsAbs() {
		t.Fatalf("Content-Location %q is not absolute", loc)
	}
	return loc
}

// poll polls the status URL until 200 and returns the parsed manifest.
func poll(t testing.TB, statusURL string, headers ...string) manifest {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, body := do(t, req(t, "GET", statusURL, nil, append([]string{"Accept: application/json"}, headers...)...))
		switch resp.StatusCode {
		case 202:
			time.Sleep(20 * time.Millisecond)
			continue
		case 200:
			var m manifest
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatalf("manifest: %v\n%s", err, body)
			}
			json.Unmarshal(body, &m.raw)
			return m
		default:
			t.Fatalf("status %s: %d %s", statusURL, resp.StatusCode, body)
		}
	}
	t.Fatal("export did not complete")
	return manifest{}
}

type resourceHead struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Meta         struct {
		LastUpdated string `json:"lastUpdated"`
		Tag         []struct{ Code string }
	} `json:"meta"`
}

// fetchLines downloads a file and splits it into lines, checking the final newline.
func fetchLines(t testing.TB, u string, headers ...string) [][]byte {
	t.Helper()
	resp, body := do(t, req(t, "GET", u, nil, headers...))
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/fhir+ndjson" {
		t.Fatalf("Content-Type %q", ct)
	}
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	if len(body) == 0 {
		return nil
	}
	if body[len(body)-1] != '\n' {
		t.Fatalf("%s: no final newline", u)
	}
	return bytes.Split(body[:len(body)-1], []byte("\n"))
}

// downloadAll fetches every output file, checks count == lines and returns
// type -> ids (failing on duplicates or a wrong type in a file).
func downloadAll(t testing.TB, m manifest, headers ...string) map[string]map[string]struct{} {
	t.Helper()
	got := map[string]map[string]struct{}{}
	for _, o := range m.Output {
		lines := fetchLines(t, o.URL, headers...)
		if len(lines) != o.Count {
			t.Fatalf("%s: %d lines, manifest count %d", o.URL, len(lines), o.Count)
		}
		for _, l := range lines {
			var h resourceHead
			if err := json.Unmarshal(l, &h); err != nil {
				t.Fatalf("%s: invalid JSON line: %v", o.URL, err)
			}
			if h.ResourceType != o.Type {
				t.Fatalf("%s: %s in a %s file", o.URL, h.ResourceType, o.Type)
			}
			if got[h.ResourceType] == nil {
				got[h.ResourceType] = map[string]struct{}{}
			}
			if _, dup := got[h.ResourceType][h.ID]; dup {
				t.Fatalf("duplicate %s/%s", h.ResourceType, h.ID)
			}
			got[h.ResourceType][h.ID] = struct{}{}
		}
	}
	return got
}

// deletedIDs downloads deleted[] files and returns type -> ids.
func deletedIDs(t testing.TB, m manifest) map[string]map[string]struct{} {
	t.Helper()
	got := map[string]map[string]struct{}{}
	for _, d := range m.Deleted {
		if d.Type != "Bundle" {
			t.Fatalf("deleted item type %q", d.Type)
		}
		lines := fetchLines(t, d.URL)
		if len(lines) != d.Count {
			t.Fatalf("deleted %s: %d lines, count %d", d.URL, len(lines), d.Count)
		}
		for _, l := range lines {
			var b struct {
				ResourceType, Type string
				Entry              []struct {
					Request struct{ Method, URL string }
				}
			}
			if err := json.Unmarshal(l, &b); err != nil || b.ResourceType != "Bundle" || b.Type != "transaction" {
				t.Fatalf("deleted line is not a transaction Bundle: %s", l)
			}
			for _, e := range b.Entry {
				typ, id, _ := strings.Cut(e.Request.URL, "/")
				if e.Request.Method != "DELETE" {
					t.Fatalf("deleted entry method %q", e.Request.Method)
				}
				if got[typ] == nil {
					got[typ] = map[string]struct{}{}
				}
				got[typ][id] = struct{}{}
			}
		}
	}
	return got
}

// isOO asserts body is a FHIR OperationOutcome and returns its first issue code.
func isOO(t testing.TB, body []byte) string {
	t.Helper()
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code, Diagnostics string }
	}
	if err := json.Unmarshal(body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("not an OperationOutcome: %s", body)
	}
	return oo.Issue[0].Code
}

func sameSets(t testing.TB, what string, got, want map[string]map[string]struct{}) {
	t.Helper()
	for typ, ids := range want {
		if len(got[typ]) != len(ids) {
			t.Errorf("%s %s: got %d ids, want %d", what, typ, len(got[typ]), len(ids))
			continue
		}
		for id := range ids {
			if _, ok := got[typ][id]; !ok {
				t.Errorf("%s %s: missing %s", what, typ, id)
				break
			}
		}
	}
	for typ, ids := range got {
		if _, ok := want[typ]; !ok && len(ids) > 0 {
			t.Errorf("%s: unexpected type %s (%d ids)", what, typ, len(ids))
		}
	}
}
