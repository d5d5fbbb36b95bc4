package bulk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Every exchange reaches Observe, with its op and status, and never a
// query string (capability tokens live there).
func TestObserveSeesEveryExchange(t *testing.T) {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "$export"):
			w.Header().Set("Content-Location", srv.URL+"/status/1")
			w.WriteHeader(202)
		case r.URL.Path == "/status/1" && r.Method == "DELETE":
			w.WriteHeader(202)
		case r.URL.Path == "/status/1":
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"transactionTime":"2026-01-01T00:00:00Z","request":"x","requiresAccessToken":false,"output":[],"error":[]}`))
		case r.URL.Path == "/file":
			w.Write([]byte("{}\n"))
		}
	}))
	defer srv.Close()
	var mu sync.Mutex
	var got []Exchange
	c := &Client{BaseURL: srv.URL, Observe: func(_ context.Context, ex Exchange) {
		mu.Lock()
		got = append(got, ex)
		mu.Unlock()
	}}
	ctx := context.Background()
	st, err := c.Kickoff(ctx, KickoffRequest{Level: LevelSystem})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(ctx, st); err != nil {
		t.Fatal(err)
	}
	f, err := c.OpenFile(ctx, srv.URL+"/file?sig=s3cret", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Body.Close()
	if err := c.Delete(ctx, st); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		op     string
		status int
	}{{"kickoff", 202}, {"status", 200}, {"download", 200}, {"delete", 202}}
	if len(got) != len(want) {
		t.Fatalf("exchanges %+v", got)
	}
	for i, w := range want {
		if got[i].Op != w.op || got[i].Status != w.status {
			t.Errorf("exchange %d = %s %d, want %s %d", i, got[i].Op, got[i].Status, w.op, w.status)
		}
		if strings.Contains(got[i].URL, "s3cret") {
			t.Errorf("query string reached Observe: %s", got[i].URL)
		}
	}
}

type permanentErr struct{}

func (permanentErr) Error() string   { return "invalid_client" }
func (permanentErr) Permanent() bool { return true }

// A rejected login surfaces through http.Client as a *url.Error (a
// net.Error); it must still be permanent, and a TLS refusal too.
func TestKindOfLooksInsideTransportErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want ErrorKind
	}{
		{"token rejected", &url.Error{Op: "Get", URL: "u", Err: permanentErr{}}, KindPermanent},
		{"tls alert", &url.Error{Op: "Get", URL: "u", Err: tls.AlertError(116)}, KindPermanent},
		{"unknown CA", &url.Error{Op: "Get", URL: "u", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}, KindPermanent},
		{"client certificate required", &url.Error{Op: "Get", URL: "u", Err: &net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}}, KindPermanent},
		{"reset", &url.Error{Op: "Get", URL: "u", Err: syscall.ECONNRESET}, KindTransient},
	} {
		if got := KindOf(transportError("kickoff", "u", tc.err)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
