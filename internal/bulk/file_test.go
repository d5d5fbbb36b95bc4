package bulk

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

const ndjsonBody = `{"resourceType":"Patient","id":"1"}
{"resourceType":"Patient","id":"2"}
{"resourceType":"Patient","id":"3"}
`

func gz(s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	io.WriteString(w, s)
	w.Close()
	return b.Bytes()
}

func zl(s string) []byte {
	var b bytes.Buffer
	w := zlib.NewWriter(&b)
	io.WriteString(w, s)
	w.Close()
	return b.Bytes()
}

func rawDeflate(s string) []byte {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, 5)
	io.WriteString(w, s)
	w.Close()
	return b.Bytes()
}

// authHTTP adds an Authorization header the way an oauth2 transport does.
type authRT struct{ next http.RoundTripper }

func (a authRT) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer TOKEN")
	return a.next.RoundTrip(r)
}

func TestOpenFileEncodings(t *testing.T) {
	tests := []struct {
		name     string
		encoding string
		body     []byte
	}{
		{"identity", "", []byte(ndjsonBody)},
		{"gzip", "gzip", gz(ndjsonBody)},
		{"x-gzip", "x-gzip", gz(ndjsonBody)},
		{"deflate zlib", "deflate", zl(ndjsonBody)},
		{"deflate raw", "deflate", rawDeflate(ndjsonBody)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recorder(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.encoding != "" {
					w.Header().Set("Content-Encoding", tt.encoding)
				}
				w.Header().Set("Content-Type", "application/fhir+ndjson")
				w.Header().Set("Content-Length", strconv.Itoa(len(tt.body)))
				w.Write(tt.body)
			})
			c := &Client{BaseURL: srv.URL, HTTP: &http.Client{Transport: authRT{srv.Client().Transport}}}
			f, err := c.OpenFile(context.Background(), srv.URL+"/files/p.ndjson", true, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(f.Body)
			f.Body.Close()
			if err != nil || string(got) != ndjsonBody {
				t.Fatalf("body %q err %v", got, err)
			}
			if f.Encoding != tt.encoding || f.ContentLength != int64(len(tt.body)) || f.Offset != 0 {
				t.Errorf("%+v", f)
			}
			r := (*reqs)[0]
			if r.header.Get("Accept-Encoding") != "gzip" || r.header.Get("Authorization") != "Bearer TOKEN" || r.header.Get("Range") != "" {
				t.Errorf("headers %v", r.header)
			}
		})
	}
}

func TestOpenFileNoTokenUsesFileHTTP(t *testing.T) {
	srv, reqs := recorder(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, ndjsonBody) })
	authed := &http.Client{Transport: authRT{srv.Client().Transport}}
	for _, fileHTTP := range []*http.Client{nil, srv.Client()} {
		c := &Client{BaseURL: srv.URL, HTTP: authed, FileHTTP: fileHTTP}
		f, err := c.OpenFile(context.Background(), srv.URL+"/s3/p.ndjson?X-Amz-Signature=abc", false, 0)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, f.Body)
		f.Body.Close()
	}
	for _, r := range *reqs {
		if r.header.Get("Authorization") != "" {
			t.Errorf("Authorization sent with requiresAccessToken=false")
		}
		if r.query.Get("X-Amz-Signature") != "abc" {
			t.Errorf("capability query lost")
		}
	}
}

func TestOpenFileRange(t *testing.T) {
	data := []byte(ndjsonBody)
	for _, tt := range []struct {
		name       string
		honour     bool
		badStart   bool
		wantOffset int64
		wantBody   string
		kind       ErrorKind
	}{
		{name: "206 honoured", honour: true, wantOffset: 36, wantBody: ndjsonBody[36:]},
		{name: "200 fallback", honour: false, wantOffset: 0, wantBody: ndjsonBody},
		{name: "206 wrong start", honour: true, badStart: true, kind: KindTruncated},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recorder(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Accept-Ranges", "bytes")
				if tt.honour && strings.HasPrefix(r.Header.Get("Range"), "bytes=") {
					start, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(r.Header.Get("Range"), "bytes="), "-"))
					if tt.badStart {
						start = 0
					}
					w.Header().Set("Content-Range", "bytes "+strconv.Itoa(start)+"-"+strconv.Itoa(len(data)-1)+"/"+strconv.Itoa(len(data)))
					w.WriteHeader(206)
					w.Write(data[start:])
					return
				}
				w.Write(data)
			})
			c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
			f, err := c.OpenFile(context.Background(), srv.URL+"/f", true, 36)
			if tt.kind != 0 {
				if KindOf(err) != tt.kind {
					t.Fatalf("err %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(f.Body)
			f.Body.Close()
			if err != nil || string(got) != tt.wantBody || f.Offset != tt.wantOffset || !f.AcceptRanges {
				t.Errorf("body %q offset %d err %v", got, f.Offset, err)
			}
			r := (*reqs)[0]
			if r.header.Get("Range") != "bytes=36-" || r.header.Get("Accept-Encoding") != "identity" {
				t.Errorf("headers %v", r.header)
			}
		})
	}
}

// hijackServer writes a raw HTTP response then closes the connection, to
// simulate truncated bodies.
func truncatingHandler(header string, body []byte) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		hj, ok := w.(http.Hijacker)
		if !ok {
			panic("no hijacker")
		}
		conn, buf, _ := hj.Hijack()
		buf.WriteString("HTTP/1.1 200 OK\r\n" + header + "\r\n")
		buf.Write(body)
		buf.Flush()
		conn.Close()
	}
}

func TestOpenFileTruncated(t *testing.T) {
	full := gz(ndjsonBody)
	for _, tt := range []struct {
		name   string
		header string
		body   []byte
	}{
		{"content-length longer than sent", "Content-Length: 1000\r\n", []byte(ndjsonBody)},
		{"gzip cut mid-stream", "Content-Encoding: gzip\r\n", full[:len(full)/2]},
		{"gzip with content-length cut", "Content-Encoding: gzip\r\nContent-Length: " + strconv.Itoa(len(full)) + "\r\n", full[:len(full)-5]},
		{"chunked cut", "Transfer-Encoding: chunked\r\n", []byte("10\r\n0123456789abcdef\r\n10\r\n0123")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := recorder(t, truncatingHandler(tt.header, tt.body))
			c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
			f, err := c.OpenFile(context.Background(), srv.URL+"/f?sig=SECRET", true, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.ReadAll(f.Body)
			f.Body.Close()
			var e *Error
			if !errors.As(err, &e) || e.Kind != KindTruncated || e.Op != "download" || strings.Contains(err.Error(), "SECRET") {
				t.Fatalf("err %v (kind %v)", err, KindOf(err))
			}
			if !IsRetryable(err) {
				t.Error("truncation should be retryable (re-download)")
			}
		})
	}
}

// shortRT returns a response whose body is shorter than its ContentLength,
// which net/http's own transport would catch but a custom one may not.
type shortRT struct{}

func (shortRT) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Header: http.Header{}, ContentLength: 100,
		Body: io.NopCloser(strings.NewReader(ndjsonBody[:50])), Request: r}, nil
}

func TestOpenFileShortBodyCustomTransport(t *testing.T) {
	c := &Client{BaseURL: "https://h", HTTP: &http.Client{Transport: shortRT{}}}
	f, err := c.OpenFile(context.Background(), "https://h/f", true, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(f.Body)
	if KindOf(err) != KindTruncated {
		t.Fatalf("err %v", err)
	}
}

func TestOpenFileErrors(t *testing.T) {
	for _, tt := range []struct {
		code    int
		body    string
		kind    ErrorKind
		contain string
	}{
		{403, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", KindFileGone, "403 Forbidden"},
		{404, "", KindFileGone, "404"},
		{410, "", KindFileGone, "410"},
		{401, "", KindUnauthorized, "401"},
		{429, "", KindRateLimited, "429"},
		{500, "oops", KindTransient, "oops"},
		{502, "<html><title>502 Bad Gateway</title></html>", KindTransient, "HTML error page (502 Bad Gateway)"},
		{416, "", KindTruncated, "416"},
		{400, "", KindPermanent, "400"},
	} {
		srv, _ := recorder(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tt.code)
			io.WriteString(w, tt.body)
		})
		c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
		_, err := c.OpenFile(context.Background(), srv.URL+"/f?X-Amz-Signature=SECRET", true, 0)
		if KindOf(err) != tt.kind || !strings.Contains(err.Error(), tt.contain) || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%d: %v (kind %v)", tt.code, err, KindOf(err))
		}
	}
	// Unknown encoding.
	srv, _ := recorder(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "br")
		io.WriteString(w, "xx")
	})
	c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	if _, err := c.OpenFile(context.Background(), srv.URL+"/f", true, 0); KindOf(err) != KindPermanent || !strings.Contains(err.Error(), `"br"`) {
		t.Errorf("br: %v", err)
	}
}

func TestHelpersForCallers(t *testing.T) {
	e := InvalidContent("https://h/f.ndjson?sig=SECRET", 7, errors.New("invalid JSON"))
	if e.Kind != KindInvalidContent || IsRetryable(e) || e.Error() != "download https://h/f.ndjson: line 7: invalid JSON" {
		t.Errorf("%q", e)
	}
	e = Truncated("https://h/f.ndjson?sig=SECRET", "count 10 in manifest, 9 lines read")
	if e.Kind != KindTruncated || !IsRetryable(e) || strings.Contains(e.Error(), "SECRET") {
		t.Errorf("%q", e)
	}
}

func TestOpenFileRedirects(t *testing.T) {
	store, storeReqs := recorder(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			w.WriteHeader(400) // like S3: only one auth mechanism allowed
			return
		}
		io.WriteString(w, ndjsonBody)
	})
	var ehrURL string
	ehr, ehrReqs := recorder(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/files/a":
			http.Redirect(w, r, ehrURL+"/files/b", http.StatusFound) // same origin
		case "/files/b":
			if r.Header.Get("Authorization") != "Bearer TOKEN" {
				w.WriteHeader(401)
				return
			}
			http.Redirect(w, r, store.URL+"/bucket/a.ndjson?X-Amz-Signature=sig", http.StatusTemporaryRedirect)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		}
	})
	ehrURL = ehr.URL
	c := &Client{BaseURL: ehr.URL, HTTP: &http.Client{Transport: authRT{ehr.Client().Transport}}}
	f, err := c.OpenFile(context.Background(), ehr.URL+"/files/a", true, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f.Body)
	f.Body.Close()
	if err != nil || string(got) != ndjsonBody {
		t.Fatalf("%q %v", got, err)
	}
	if len(*ehrReqs) != 2 || (*ehrReqs)[1].header.Get("Authorization") != "Bearer TOKEN" {
		t.Errorf("same-origin hop lost the token: %+v", *ehrReqs)
	}
	if len(*storeReqs) != 1 || (*storeReqs)[0].header.Get("Accept-Encoding") != "gzip" {
		t.Errorf("store requests %+v", *storeReqs)
	}
	if _, err := c.OpenFile(context.Background(), ehr.URL+"/loop", true, 0); err == nil || !strings.Contains(err.Error(), "redirects") {
		t.Errorf("loop: %v", err)
	}
}
