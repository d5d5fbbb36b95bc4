package bulk

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A resume sends If-Range with the validator of the attempt that staged
// the first bytes; whatever the server answers, the bytes returned belong
// to one version of the file.
func TestOpenFileFromIfRange(t *testing.T) {
	v1, v2 := ndjsonBody, strings.Replace(ndjsonBody, `"id":"1"`, `"id":"9"`, 1)
	for _, tt := range []struct {
		name       string
		etag       string // the server's current ETag
		body       string
		honourIf   bool   // the server implements If-Range
		validator  string // what the client saved
		wantOffset int64
		wantBody   string
		wantReqs   int
	}{
		{name: "same version: 206", etag: `"v1"`, body: v1, honourIf: true, validator: `"v1"`, wantOffset: 36, wantBody: v1[36:], wantReqs: 1},
		{name: "changed: server answers 200", etag: `"v2"`, body: v2, honourIf: true, validator: `"v1"`, wantOffset: 0, wantBody: v2, wantReqs: 1},
		{name: "changed: server ignores If-Range", etag: `"v2"`, body: v2, validator: `"v1"`, wantOffset: 0, wantBody: v2, wantReqs: 2},
		{name: "no validator saved: no Range", etag: `"v1"`, body: v1, honourIf: true, validator: "", wantOffset: 0, wantBody: v1, wantReqs: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recorder(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("ETag", tt.etag)
				w.Header().Set("Accept-Ranges", "bytes")
				rg := r.Header.Get("Range")
				if rg != "" && (!tt.honourIf || r.Header.Get("If-Range") == tt.etag) {
					start, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
					w.Header().Set("Content-Range", "bytes "+strconv.Itoa(start)+"-"+strconv.Itoa(len(tt.body)-1)+"/"+strconv.Itoa(len(tt.body)))
					w.WriteHeader(206)
					io.WriteString(w, tt.body[start:])
					return
				}
				io.WriteString(w, tt.body)
			})
			c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
			f, err := c.OpenFileFrom(context.Background(), srv.URL+"/f", true, 36, tt.validator)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(f.Body)
			f.Body.Close()
			if string(got) != tt.wantBody || f.Offset != tt.wantOffset || f.Validator != tt.etag {
				t.Errorf("body %q offset %d validator %q; want %q at %d, validator %q", got, f.Offset, f.Validator, tt.wantBody, tt.wantOffset, tt.etag)
			}
			if len(*reqs) != tt.wantReqs {
				t.Fatalf("%d requests, want %d", len(*reqs), tt.wantReqs)
			}
			first := (*reqs)[0].header
			if tt.validator != "" && (first.Get("If-Range") != tt.validator || first.Get("Range") != "bytes=36-") {
				t.Errorf("first request Range %q If-Range %q", first.Get("Range"), first.Get("If-Range"))
			}
			if last := (*reqs)[len(*reqs)-1].header; (tt.wantReqs == 2 || tt.validator == "") && last.Get("Range") != "" {
				t.Errorf("the whole-file request still sent Range %q", last.Get("Range"))
			}
		})
	}
}

func TestResponseValidator(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	date := now.Format(http.TimeFormat)
	for _, tt := range []struct {
		name string
		h    http.Header
		want string
	}{
		{"strong ETag", http.Header{"Etag": {`"abc"`}}, `"abc"`},
		{"weak ETag", http.Header{"Etag": {`W/"abc"`}, "Last-Modified": {now.Add(-time.Hour).Format(http.TimeFormat)}, "Date": {date}}, ""},
		{"unquoted ETag", http.Header{"Etag": {`abc`}}, ""},
		{"Last-Modified an hour before Date", http.Header{"Last-Modified": {now.Add(-time.Hour).Format(http.TimeFormat)}, "Date": {date}}, now.Add(-time.Hour).Format(http.TimeFormat)},
		{"Last-Modified in the same second as Date", http.Header{"Last-Modified": {date}, "Date": {date}}, ""},
		{"Last-Modified without Date", http.Header{"Last-Modified": {now.Add(-time.Hour).Format(http.TimeFormat)}}, ""},
		{"garbage Last-Modified", http.Header{"Last-Modified": {"yesterday"}, "Date": {date}}, ""},
		{"nothing", http.Header{}, ""},
	} {
		if got := responseValidator(tt.h); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}
