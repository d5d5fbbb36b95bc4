package bulk

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bulkflow/bulkflow/internal/ndjson"
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

// FuzzFileBody feeds the download path (OpenFile, Content-Encoding,
// the NDJSON reader) hostile bodies: data is served raw, or gzip-compressed
// repeat times over (a small body inflating to megabytes: a decompression
// bomb). Whatever arrives, no line longer than the cap is returned, errors
// are *Error or the reader's line cap, and the memory allocated stays
// bounded by the cap, not by the decoded size.
func FuzzFileBody(f *testing.F) {
	f.Add(uint8(0), uint16(1), []byte("{\"resourceType\":\"Patient\",\"id\":\"1\"}\n"))
	f.Add(uint8(1), uint16(2000), []byte(strings.Repeat("A", 4096))) // one endless line, gzip bomb
	f.Add(uint8(1), uint16(500), []byte("{\"a\":1}\n"))              // many small lines
	f.Add(uint8(2), uint16(1), []byte("\x1f\x8b\x08\x00garbage"))    // a broken gzip header as deflate
	f.Add(uint8(0), uint16(1), []byte("\xef\xbb\xbf{}\r\n\r\n{}"))   // BOM, CRLF, no final newline
	f.Add(uint8(3), uint16(1), []byte("x"))                          // an unknown encoding
	f.Fuzz(func(t *testing.T, enc uint8, repeat uint16, data []byte) {
		const maxLine = 64 << 10
		var body []byte
		encoding := ""
		switch enc % 4 {
		case 0:
			body = data
		case 1:
			encoding = "gzip"
			body = gzipRepeat(data, int(repeat%4096)+1)
		case 2:
			encoding, body = "deflate", data
		case 3:
			encoding, body = "br", data
		}
		c := &Client{BaseURL: "https://h", HTTP: &http.Client{Transport: &fuzzFileRT{body: body, encoding: encoding}}}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f, err := c.OpenFile(context.Background(), "https://h/f?sig=SECRET", true, 0)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || strings.Contains(err.Error(), "SECRET") {
				t.Fatalf("open: %v", err)
			}
			return
		}
		defer f.Body.Close()
		r := ndjson.NewReader(f.Body)
		r.SetMaxLineBytes(maxLine)
		for {
			line, err := r.Next()
			if err != nil {
				var e *Error
				if err != io.EOF && !errors.Is(err, ndjson.ErrLineTooLong) && !errors.As(err, &e) {
					t.Fatalf("read: %T %v", err, err)
				}
				if strings.Contains(fmt.Sprint(err), "SECRET") {
					t.Fatalf("the URL's query leaked: %v", err)
				}
				break
			}
			if len(line) > maxLine {
				t.Fatalf("a %d-byte line passed the %d cap", len(line), maxLine)
			}
		}
		runtime.ReadMemStats(&after)
		// Reader (256 KiB) + line buffer (about 1.25x the cap, doubling)
		// + decoder state + the compressed body itself: never the decoded size.
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(4<<20+3*maxLine+2*len(body)); got > limit {
			t.Fatalf("allocated %d bytes reading a %d-byte body (limit %d)", got, len(body), limit)
		}
	})
}

func gzipRepeat(data []byte, n int) []byte {
	var b strings.Builder
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	for i := 0; i < n; i++ {
		zw.Write(data)
	}
	zw.Close()
	return []byte(b.String())
}

type fuzzFileRT struct {
	body     []byte
	encoding string
}

func (rt *fuzzFileRT) RoundTrip(r *http.Request) (*http.Response, error) {
	h := http.Header{"Content-Type": {"application/fhir+ndjson"}}
	if rt.encoding != "" {
		h.Set("Content-Encoding", rt.encoding)
	}
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: h, Request: r,
		ContentLength: int64(len(rt.body)), Body: io.NopCloser(strings.NewReader(string(rt.body)))}, nil
}
