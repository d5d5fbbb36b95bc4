package bulk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func FuzzParseManifest(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.json")
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{}`, `{"transactionTime":"t"}`, `{"transactionTime":"t","output":null,"error":null}`,
		`{"transactionTime":"t","output":[{"url":"https://h/a","count":1e400}]}`,
		`{"transactionTime":"t","link":[{"relation":"NEXT","url":"https://h/p?x=1"}]}`,
		`{"transactionTime":1}`, `{"transactionTime":"t","requiresAccessToken":"yes"}`,
		`{"resourceType":"OperationOutcome"}`, "\xef\xbb\xbf{\"transactionTime\":\"t\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			if m != nil {
				t.Fatal("manifest and error")
			}
			if len(err.Error()) > 1000 {
				t.Fatalf("error message too long: %d", len(err.Error()))
			}
			return
		}
		if m.TransactionTime == "" {
			t.Fatal("accepted without transactionTime")
		}
		for _, list := range [][]FileItem{m.Output, m.Error, m.Deleted} {
			seen := map[string]bool{}
			for _, it := range list {
				u, err := url.Parse(it.URL)
				if err != nil || !u.IsAbs() || u.Host == "" {
					t.Fatalf("accepted a non-absolute URL %q", it.URL)
				}
				if seen[it.URL] {
					t.Fatalf("duplicate %q", it.URL)
				}
				seen[it.URL] = true
				if it.Count < 0 || (!it.HasCount && it.Count != 0) {
					t.Fatalf("bad count %+v", it)
				}
			}
		}
	})
}

// fuzzRT answers every request with the fuzzed response.
type fuzzRT struct {
	code                                 int
	retryAfter, progress, xExport, ctype string
	expires                              string
	body                                 []byte
}

func (rt *fuzzRT) RoundTrip(r *http.Request) (*http.Response, error) {
	h := http.Header{}
	set := func(k, v string) {
		if v != "" {
			h[k] = []string{v}
		}
	}
	set("Retry-After", rt.retryAfter)
	set("X-Progress", rt.progress)
	set("X-Export-Status", rt.xExport)
	set("Content-Type", rt.ctype)
	set("Expires", rt.expires)
	return &http.Response{StatusCode: rt.code, Status: strconv.Itoa(rt.code), Header: h, Request: r,
		ContentLength: -1, Body: io.NopCloser(strings.NewReader(string(rt.body)))}, nil
}

func FuzzStatus(f *testing.F) {
	manifest, err := os.ReadFile("testdata/stu2.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(202, "5", "10%", "", "", "", []byte(nil))
	f.Add(200, "", "", "", "application/json", "Wed, 21 Oct 2026 07:28:00 GMT", manifest)
	f.Add(200, "", "", "202", "", "", []byte(nil))
	f.Add(200, "", "", "500", "", "", []byte(ooBody("transient", "x")))
	f.Add(200, "", "", "abc", "", "", []byte(nil))
	f.Add(429, "Wed, 21 Oct 2015 07:28:00 GMT", "", "", "", "", []byte(nil))
	f.Add(503, "99999999999999999999", "", "", "", "", []byte("busy"))
	f.Add(500, "", "", "", "application/fhir+json", "", []byte(ooBody("processing", "failed")))
	f.Add(502, "", "", "", "text/html", "", []byte("<html><title>502 Bad Gateway</title>"))
	f.Add(404, "", "", "", "", "", []byte(ooBody("not-found", "gone")))
	f.Add(401, "", "", "", "", "", []byte("Bearer abc.def expired"))
	f.Add(202, "-1", "\x00\xff\xfe", "", "", "", manifest[:40])
	f.Add(200, "", "", "", "", "", manifest[:len(manifest)-3])
	f.Fuzz(func(t *testing.T, code int, retryAfter, progress, xExport, ctype, expires string, body []byte) {
		if code < 0 {
			code = -code
		}
		code = 100 + code%500
		rt := &fuzzRT{code, retryAfter, progress, xExport, ctype, expires, body}
		c := &Client{BaseURL: "https://ehr.example.org/fhir", HTTP: &http.Client{Transport: rt, Timeout: 5 * time.Second},
			MinRetryAfter: time.Second, MaxRetryAfter: time.Minute}
		st, err := c.Status(context.Background(), "https://ehr.example.org/fhir/status/1?token=SECRET")
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("not an *Error: %v", err)
			}
			if e.Kind < KindTransient || e.Kind > KindPermanent {
				t.Fatalf("kind %d", e.Kind)
			}
			if strings.Contains(e.URL, "?") || strings.Contains(e.URL, "SECRET") {
				t.Fatalf("URL leaks query: %q", e.URL)
			}
			if len(e.Diagnostics) > maxDiagnostics || !utf8.ValidString(e.Diagnostics) {
				t.Fatalf("diagnostics %d bytes", len(e.Diagnostics))
			}
			if e.RetryAfter != 0 && (e.RetryAfter < time.Second || e.RetryAfter > time.Minute) {
				t.Fatalf("RetryAfter %v not clamped", e.RetryAfter)
			}
			if st != nil {
				t.Fatal("status and error")
			}
			return
		}
		if len(st.Progress) > 100 || !utf8.ValidString(st.Progress) {
			t.Fatalf("progress %q", st.Progress)
		}
		if st.RetryAfter != 0 && (st.RetryAfter < time.Second || st.RetryAfter > time.Minute) {
			t.Fatalf("RetryAfter %v not clamped", st.RetryAfter)
		}
		if st.Done && st.Manifest == nil {
			t.Fatal("done without manifest")
		}
	})
}
