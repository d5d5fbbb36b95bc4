package bulk

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"golang.org/x/oauth2"

	"github.com/bulkflow/bulkflow/internal/auth"
)

// A Binary resource returned as FHIR JSON is decoded while it streams,
// whatever the member order, with \/ escapes, read one byte at a time.
func TestBinaryDataDecodes(t *testing.T) {
	raw := bytes.Repeat([]byte("note\x00\xff/?"), 5000)
	b64 := base64.StdEncoding.EncodeToString(raw)
	for _, tc := range []struct {
		name, doc string
		want      []byte
		err       error
	}{
		{"data last", `{"resourceType":"Binary","id":"x","contentType":"text/plain","data":"` + b64 + `"}`, raw, nil},
		{"data first, spaced", `{ "data" : "` + b64 + `", "resourceType":"Binary"}`, raw, nil},
		{"escaped slash", `{"resourceType":"Binary","data":"` + strings.ReplaceAll(b64, "/", `\/`) + `"}`, raw, nil},
		{"nested data is not it", `{"meta":{"data":"AAAA"},"resourceType":"Binary","data":"` + b64 + `"}`, raw, nil},
		{"a value that says data", `{"id":"data","data":"` + b64 + `"}`, raw, nil},
		{"no data", `{"resourceType":"Binary","contentType":"text/plain"}`, nil, ErrNoBinaryData},
		{"cut", `{"resourceType":"Binary","data":"` + b64[:100], nil, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &binaryData{rc: io.NopCloser(nil), br: newBR(iotest.OneByteReader(strings.NewReader(tc.doc)))}
			got, err := io.ReadAll(r)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, err %v; want %d bytes", len(got), err, len(tc.want))
			}
		})
	}
}

// Relative URLs resolve against the FHIR base; the token goes only to the
// base's origin; a foreign origin is refused before any request; Accept
// is the attachment's contentType; a 404 is KindFileGone.
func TestOpenAttachment(t *testing.T) {
	var foreignHits int
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { foreignHits++ }))
	defer foreign.Close()
	var gotAccept, gotAuth, gotPath string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAccept, gotAuth, gotPath = r.Header.Get("Accept"), r.Header.Get("Authorization"), r.URL.Path
		if strings.HasSuffix(r.URL.Path, "/gone") {
			http.NotFound(w, r)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/json") {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.Write([]byte(`{"resourceType":"Binary","data":"aGVsbG8="}`))
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("hello"))
	}))
	defer srv.Close()
	o, _ := auth.NewOrigins(srv.URL+"/fhir", "", nil)
	c := &Client{BaseURL: srv.URL + "/fhir", Origins: o, HTTP: &http.Client{Transport: &auth.Transport{Source: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "tok", TokenType: "Bearer"}), Origins: o}}}
	ctx := context.Background()
	for _, tc := range []struct{ url, path, body string }{{"Binary/1", "/fhir/Binary/1", "hello"}, {srv.URL + "/fhir/Binary/json", "/fhir/Binary/json", "hello"}} {
		u, err := c.ResolveAttachmentURL(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		a, err := c.OpenAttachment(ctx, u, "text/plain")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(a.Body)
		a.Body.Close()
		if string(b) != tc.body || gotPath != tc.path || gotAuth != "Bearer tok" || !strings.HasPrefix(gotAccept, "text/plain") {
			t.Errorf("%s: body %q path %q auth %q accept %q", tc.url, b, gotPath, gotAuth, gotAccept)
		}
	}
	u, _ := c.ResolveAttachmentURL("Binary/gone")
	if _, err := c.OpenAttachment(ctx, u, "text/plain"); KindOf(err) != KindFileGone {
		t.Errorf("404: %v (kind %v), want file-gone", err, KindOf(err))
	}
	u, _ = c.ResolveAttachmentURL(foreign.URL + "/doc?sig=secret")
	if c.AttachmentAllowed(u) {
		t.Fatal("a foreign origin is allowed")
	}
	_, err := c.OpenAttachment(ctx, u, "text/plain")
	if !errors.Is(err, ErrForeignOrigin) || foreignHits != 0 || strings.Contains(err.Error(), "secret") {
		t.Errorf("foreign origin: %v, %d requests", err, foreignHits)
	}
}
