package bulk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

const oo = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"%s","diagnostics":"%s"}]}`

func ooBody(code, diag string) string {
	return strings.Replace(strings.Replace(oo, "%s", code, 1), "%s", diag, 1)
}

func mustRead(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestStatusClassification(t *testing.T) {
	manifest := mustRead(t, "stu2.json")
	tests := []struct {
		name     string
		code     int
		header   map[string]string
		body     string
		done     bool
		kind     ErrorKind
		contain  string
		retry    time.Duration
		progress string
	}{
		{name: "202 in progress", code: 202, header: map[string]string{"X-Progress": "50% done", "Retry-After": "5"}, retry: 5 * time.Second, progress: "50% done"},
		{name: "202 no headers", code: 202},
		{name: "202 with OperationOutcome body", code: 202, body: ooBody("informational", "working")},
		{name: "202 progress sanitised", code: 202, header: map[string]string{"X-Progress": strings.Repeat("é", 80) + "\ttail"}, progress: strings.Repeat("é", 48) + "..."},
		{name: "200 done", code: 200, body: manifest, done: true},
		{name: "separate-export-status 202", code: 200, header: map[string]string{"X-Export-Status": "202"}, body: ""},
		{name: "separate-export-status 200", code: 200, header: map[string]string{"X-Export-Status": "200"}, body: manifest, done: true},
		{name: "separate-export-status 500 transient", code: 200, header: map[string]string{"X-Export-Status": "500"}, body: ooBody("transient", "db busy"), kind: KindTransient, contain: "500 Internal Server Error: db busy"},
		{name: "separate-export-status 400", code: 200, header: map[string]string{"X-Export-Status": "400"}, body: ooBody("invalid", "bad"), kind: KindPermanent, contain: "400"},
		{name: "separate-export-status garbage", code: 200, header: map[string]string{"X-Export-Status": "soon"}, kind: KindPermanent, contain: "X-Export-Status"},
		{name: "429 with Retry-After", code: 429, header: map[string]string{"Retry-After": "30"}, kind: KindRateLimited, retry: 30 * time.Second},
		{name: "429 without Retry-After", code: 429, kind: KindRateLimited},
		{name: "503 with Retry-After", code: 503, header: map[string]string{"Retry-After": "10"}, kind: KindRateLimited, retry: 10 * time.Second},
		{name: "503 without Retry-After", code: 503, kind: KindTransient},
		{name: "500 transient OO", code: 500, body: ooBody("transient", "try later"), kind: KindTransient, contain: "try later (OperationOutcome error/transient)"},
		{name: "500 timeout OO", code: 500, body: ooBody("timeout", "slow"), kind: KindTransient},
		{name: "500 throttled OO", code: 500, body: ooBody("throttled", "x"), kind: KindTransient},
		{name: "500 job failed OO", code: 500, body: ooBody("processing", "export failed: disk full"), kind: KindPermanent, contain: "export failed: disk full"},
		{name: "500 plain text", code: 500, header: map[string]string{"Content-Type": "text/plain"}, body: "internal error\n\tat foo", kind: KindTransient, contain: "internal error at foo"},
		{name: "502 HTML", code: 502, header: map[string]string{"Content-Type": "text/html"}, body: "<html><body><h1>Bad Gateway</h1></body></html>", kind: KindTransient, contain: "HTML error page (Bad Gateway)"},
		{name: "504 HTML no title", code: 504, body: "<html></html>", kind: KindTransient, contain: "HTML error page (504 Gateway Timeout)"},
		{name: "404 job gone", code: 404, body: ooBody("not-found", "job deleted"), kind: KindJobGone, contain: "job deleted"},
		{name: "410 job gone", code: 410, kind: KindJobGone},
		{name: "401", code: 401, header: map[string]string{"WWW-Authenticate": `Bearer error="invalid_token"`}, body: "token expired", kind: KindUnauthorized},
		{name: "403 plain", code: 403, body: "forbidden", kind: KindPermanent, contain: "403 Forbidden: forbidden"},
		{name: "400 OO", code: 400, body: ooBody("invalid", "bad request"), kind: KindPermanent, contain: "bad request"},
		{name: "JSON non-OO error", code: 400, body: `{"error":"invalid_token","error_description":"expired"}`, kind: KindPermanent, contain: "error: invalid_token; error_description: expired"},
		{name: "200 truncated manifest", code: 200, body: manifest[:len(manifest)/2], kind: KindPermanent, contain: "bad JSON"},
		{name: "200 missing transactionTime", code: 200, body: `{"output":[]}`, kind: KindPermanent, contain: "transactionTime"},
		{name: "204 unexpected", code: 204, kind: KindPermanent, contain: "unexpected status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recorder(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.Header().Set("Expires", "Wed, 21 Oct 2026 07:28:00 GMT")
				w.WriteHeader(tt.code)
				io.WriteString(w, tt.body)
			})
			c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
			st, err := c.Status(context.Background(), srv.URL+"/status/1?token=SECRET")
			if tt.kind != 0 {
				var e *Error
				if !errors.As(err, &e) || e.Kind != tt.kind {
					t.Fatalf("got %v (kind %v), want kind %v", err, KindOf(err), tt.kind)
				}
				if !strings.Contains(err.Error(), tt.contain) {
					t.Errorf("%q does not contain %q", err, tt.contain)
				}
				if strings.Contains(err.Error(), "SECRET") || e.Op != "status" {
					t.Errorf("leaks query or wrong op: %q", err)
				}
				if e.RetryAfter != tt.retry {
					t.Errorf("RetryAfter %v, want %v", e.RetryAfter, tt.retry)
				}
				if len(e.Diagnostics) > maxDiagnostics {
					t.Errorf("diagnostics too long")
				}
				wantReqs := 1
				if tt.code == 200 && tt.header == nil {
					wantReqs = 2 // a malformed manifest is fetched once more
				}
				if len(*reqs) != wantReqs {
					t.Errorf("%d requests, want %d", len(*reqs), wantReqs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := (*reqs)[0].header.Get("Accept"); got != "application/json" {
				t.Errorf("Accept %q", got)
			}
			if st.Done != tt.done || st.RetryAfter != tt.retry || st.Progress != tt.progress {
				t.Errorf("got %+v", st)
			}
			if tt.done && (st.Manifest == nil || len(st.Manifest.Output) != 3) {
				t.Errorf("manifest %+v", st.Manifest)
			}
			if !st.Expires.Equal(time.Date(2026, 10, 21, 7, 28, 0, 0, time.UTC)) {
				t.Errorf("Expires %v", st.Expires)
			}
		})
	}
}

func TestStatusMalformedThenGood(t *testing.T) {
	manifest := mustRead(t, "stu2.json")
	n := 0
	srv, _ := recorder(t, func(w http.ResponseWriter, r *http.Request) {
		n++
		if n == 1 {
			io.WriteString(w, manifest[:20])
			return
		}
		io.WriteString(w, manifest)
	})
	c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	st, err := c.Status(context.Background(), srv.URL+"/status/1")
	if err != nil || !st.Done || n != 2 {
		t.Fatalf("st %+v err %v n %d", st, err, n)
	}
}

func TestStatusPartialManifest(t *testing.T) {
	page := mustRead(t, "stu3_page1.json")
	srv, _ := recorder(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(202)
		io.WriteString(w, page)
	})
	c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	st, err := c.Status(context.Background(), srv.URL+"/fhir/status/1")
	if err != nil || st.Done || st.Manifest == nil {
		t.Fatalf("st %+v err %v", st, err)
	}
	if st.Manifest.Output[0].URL != srv.URL+"/fhir/status/files/a.ndjson" || st.Manifest.Next != srv.URL+"/fhir/status/page/2" {
		t.Errorf("relative URLs resolved against the status URL: %+v", st.Manifest)
	}
}

func TestStatusRetryAfterClamp(t *testing.T) {
	for _, tt := range []struct {
		v    string
		want time.Duration
	}{
		{"0", 2 * time.Second},                                              // clamped up to MinRetryAfter
		{"1732600000", time.Hour},                                           // epoch sent as seconds: clamped down
		{"99999999999999999999999999", time.Hour},                           // overflow
		{"garbage", 0},                                                      // ignored: caller backs off
		{"Thu, 01 Jan 1970 00:00:00 GMT", 2 * time.Second},                  // past date
		{time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat), 0}, // checked approximately below
	} {
		srv, _ := recorder(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", tt.v)
			w.WriteHeader(202)
		})
		c := &Client{BaseURL: srv.URL, HTTP: srv.Client(), MinRetryAfter: 2 * time.Second, MaxRetryAfter: time.Hour}
		st, err := c.Status(context.Background(), srv.URL+"/s")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(tt.v, "GMT") && tt.want == 0 {
			if st.RetryAfter < 80*time.Second || st.RetryAfter > 91*time.Second {
				t.Errorf("%q: %v", tt.v, st.RetryAfter)
			}
			continue
		}
		if st.RetryAfter != tt.want {
			t.Errorf("%q: %v, want %v", tt.v, st.RetryAfter, tt.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 120 * time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"-5", 0, true},
		{"Wed, 01 Jan 2025 00:01:00 GMT", time.Minute, true},
		{"Wednesday, 01-Jan-25 00:00:30 GMT", 30 * time.Second, true},
		{"Tue, 31 Dec 2024 00:00:00 GMT", 0, true},
		{"", 0, false},
		{"soon", 0, false},
		{"1.5", 0, false},
		{"12abc", 0, false},
	} {
		got, ok := ParseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	if d, ok := ParseRetryAfter("999999999999999999999", now); !ok || d <= 0 {
		t.Errorf("overflow: %v %v", d, ok)
	}
}

func TestClampBackoff(t *testing.T) {
	if Clamp(0, time.Second, time.Minute) != time.Second || Clamp(time.Hour, time.Second, time.Minute) != time.Minute ||
		Clamp(5*time.Second, time.Second, time.Minute) != 5*time.Second {
		t.Error("Clamp")
	}
	for attempt, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second} {
		if got := BackoffCeiling(attempt, time.Second, 10*time.Second); got != want {
			t.Errorf("ceiling(%d) = %v, want %v", attempt, got, want)
		}
		for i := 0; i < 50; i++ {
			if b := Backoff(attempt, time.Second, 10*time.Second); b <= 0 || b > want {
				t.Fatalf("Backoff(%d) = %v, want (0, %v]", attempt, b, want)
			}
		}
	}
	if BackoffCeiling(1000, time.Second, time.Hour) != time.Hour || Backoff(3, 0, time.Second) != 0 {
		t.Error("edge cases")
	}
}

func TestKindOfAndRetryable(t *testing.T) {
	for _, tt := range []struct {
		err       error
		kind      ErrorKind
		retryable bool
	}{
		{nil, 0, false},
		{&Error{Kind: KindTransient}, KindTransient, true},
		{&Error{Kind: KindRateLimited}, KindRateLimited, true},
		{&Error{Kind: KindTruncated}, KindTruncated, true},
		{&Error{Kind: KindUnauthorized}, KindUnauthorized, true},
		{&Error{Kind: KindJobGone}, KindJobGone, false},
		{&Error{Kind: KindFileGone}, KindFileGone, false},
		{&Error{Kind: KindInvalidContent}, KindInvalidContent, false},
		{&Error{Kind: KindPermanent}, KindPermanent, false},
		{errors.Join(errors.New("x"), &Error{Kind: KindJobGone}), KindJobGone, false},
		{context.DeadlineExceeded, KindTransient, true},
		{context.Canceled, KindPermanent, false},
		{io.ErrUnexpectedEOF, KindTruncated, true},
		{errors.New("something"), KindPermanent, false},
	} {
		if got := KindOf(tt.err); got != tt.kind || IsRetryable(tt.err) != tt.retryable {
			t.Errorf("KindOf(%v) = %v retryable %v; want %v %v", tt.err, got, IsRetryable(tt.err), tt.kind, tt.retryable)
		}
	}
	// A refused connection is a net.Error: transient, and the query is gone.
	c := &Client{BaseURL: "http://127.0.0.1:1"}
	_, err := c.Status(context.Background(), "http://127.0.0.1:1/status?_token=SECRET")
	if KindOf(err) != KindTransient || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("%v kind %v", err, KindOf(err))
	}
	for k := KindTransient; k <= KindPermanent; k++ {
		if strings.HasPrefix(k.String(), "ErrorKind") {
			t.Errorf("no name for %d", k)
		}
	}
}

func TestSanitize(t *testing.T) {
	s := sanitize("Authorization: Bearer eyJabc.def.ghi failed\n\n\tnext", 100)
	if strings.Contains(s, "eyJ") || s != "Authorization: Bearer [redacted] failed next" {
		t.Errorf("%q", s)
	}
	if got := sanitize(strings.Repeat("ü", 600), 500); len(got) > 500 || !strings.HasSuffix(got, "...") {
		t.Errorf("len %d", len(got))
	}
}

func TestDelete(t *testing.T) {
	for _, tt := range []struct {
		code int
		kind ErrorKind
	}{{202, 0}, {200, 0}, {404, 0}, {410, 0}, {500, KindTransient}, {429, KindRateLimited}, {400, KindPermanent}, {401, KindUnauthorized}} {
		srv, reqs := recorder(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(tt.code) })
		c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
		err := c.Delete(context.Background(), srv.URL+"/status/1")
		if KindOf(err) != tt.kind {
			t.Errorf("%d: %v", tt.code, err)
		}
		r := (*reqs)[0]
		if r.method != "DELETE" || r.path != "/status/1" || r.header.Get("Accept") != "application/fhir+json" {
			t.Errorf("%+v", r)
		}
	}
}
