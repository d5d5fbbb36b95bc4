package bulk

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Servers that will not get better are named at once (issue 12 §3): unknown
// host, plain HTTP on an https URL and an untrusted or wrong certificate
// are permanent; a refused connection is transient but ConnRefused, so the
// activity gives it only a few quick attempts.
func TestUnreachableServers(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsSrv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(tlsSrv.Listener.Addr().String())

	tests := []struct {
		name    string
		base    string
		hc      *http.Client
		kind    ErrorKind
		refused bool
		contain string
	}{
		{"connection refused", "http://" + closed + "/fhir", nil, KindTransient, true, "connection refused by " + closed + ": is the FHIR server URL right"},
		{"https to an http server", "https://" + plain.Listener.Addr().String() + "/fhir", nil, KindPermanent, false, "answered plain HTTP on an https:// URL"},
		{"untrusted certificate", tlsSrv.URL + "/fhir", &http.Client{}, KindPermanent, false, "authority this worker does not trust: set tls.caFile"},
		{"hostname mismatch", "https://localhost:" + port + "/fhir", tlsSrv.Client(), KindPermanent, false, "certificate is not valid for localhost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Client{BaseURL: tt.base, HTTP: tt.hc}
			_, err := c.Kickoff(context.Background(), KickoffRequest{Level: LevelSystem})
			if KindOf(err) != tt.kind || ConnRefused(err) != tt.refused || !strings.Contains(err.Error(), tt.contain) {
				t.Fatalf("got %v (kind %v, refused %v), want kind %v refused %v containing %q", err, KindOf(err), ConnRefused(err), tt.kind, tt.refused, tt.contain)
			}
		})
	}

	// DNS: a name the resolver says does not exist (built, since this
	// machine may have no resolver).
	dnsErr := &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "ehr.example.invalid", IsNotFound: true}}
	if e := transportError(opKickoff, "https://ehr.example.invalid/fhir", dnsErr); e.Kind != KindPermanent || !strings.Contains(e.Error(), "unknown host ehr.example.invalid") {
		t.Errorf("DNS not found: %v (kind %v)", e, e.Kind)
	}
	// A resolver that timed out may answer next time.
	dnsTimeout := &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "i/o timeout", Name: "ehr.example.org", IsTimeout: true}}
	if KindOf(dnsTimeout) != KindTransient {
		t.Errorf("DNS timeout: kind %v", KindOf(dnsTimeout))
	}
	if KindOf(x509.UnknownAuthorityError{}) != KindPermanent {
		t.Error("x509 unknown authority must be permanent")
	}
}

// Redirects that can never succeed are permanent at once: another scheme,
// or a loop (issue 16 §4).
func TestRedirectBudgets(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch {
		case strings.HasPrefix(r.URL.Path, "/file/ftp"):
			http.Redirect(w, r, "ftp://files.example.org/x.ndjson", http.StatusFound)
		case strings.HasPrefix(r.URL.Path, "/file/local"):
			http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
		case strings.HasPrefix(r.URL.Path, "/file/loop"), strings.HasPrefix(r.URL.Path, "/fhir/status/loop"):
			http.Redirect(w, r, r.URL.Path, http.StatusFound)
		case r.URL.Path == "/fhir/$export":
			http.Redirect(w, r, "file:///etc/passwd", http.StatusTemporaryRedirect)
		}
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL + "/fhir", HTTP: srv.Client(), FileHTTP: srv.Client()}
	ctx := context.Background()
	check := func(what string, err error, contain string, maxHits int32) {
		t.Helper()
		if KindOf(err) != KindPermanent || !errors.Is(err, ErrBadRedirect) || !strings.Contains(err.Error(), contain) {
			t.Errorf("%s: %v (kind %v), want permanent containing %q", what, err, KindOf(err), contain)
		}
		if n := hits.Swap(0); n > maxHits {
			t.Errorf("%s: %d requests, want at most %d", what, n, maxHits)
		}
	}
	for _, token := range []bool{true, false} {
		_, err := c.OpenFile(ctx, srv.URL+"/file/ftp", token, 0)
		check("file to ftp", err, `redirected to a "ftp" URL`, 1)
		_, err = c.OpenFile(ctx, srv.URL+"/file/local", token, 0)
		check("file to file://", err, `redirected to a "file" URL`, 1)
		_, err = c.OpenFile(ctx, srv.URL+"/file/loop", token, 0)
		check("file loop", err, "more than 10 redirects", 11)
	}
	_, err := c.Status(ctx, srv.URL+"/fhir/status/loop")
	check("status loop", err, "more than 10 redirects", 11)
	_, err = c.Kickoff(ctx, KickoffRequest{Level: LevelSystem})
	check("kick-off to file://", err, `redirected to a "file" URL`, 1)
}

// A request that receives no bytes for IdleTimeout fails with a transient
// ErrStalled naming the URL and the phase; a status body that trickles
// forever is cut at MaxBodyTime (issue 16 §4).
func TestIdleAndBodyTimeBudgets(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		release := r.Context().Done() // the client gave up
		switch r.URL.Path {
		case "/fhir/$export", "/fhir/status/hang-headers":
			<-release
		case "/fhir/status/hang-body", "/file/hang":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(200)
			io.WriteString(w, `{"transactionTime":`)
			w.(http.Flusher).Flush()
			<-release
		case "/fhir/status/trickle":
			w.WriteHeader(200)
			for {
				if _, err := io.WriteString(w, " "); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-release:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL + "/fhir", HTTP: srv.Client(), IdleTimeout: 200 * time.Millisecond, MaxBodyTime: 600 * time.Millisecond}
	ctx := context.Background()
	check := func(what string, err error, contain ...string) {
		t.Helper()
		if KindOf(err) != KindTransient || !errors.Is(err, ErrStalled) {
			t.Errorf("%s: %v (kind %v), want transient ErrStalled", what, err, KindOf(err))
			return
		}
		for _, s := range contain {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not contain %q", what, err, s)
			}
		}
	}
	start := time.Now()
	_, err := c.Kickoff(ctx, KickoffRequest{Level: LevelSystem})
	check("kick-off", err, "kickoff "+srv.URL+"/fhir/$export", "no bytes for 200ms while waiting for the kick-off response", "may have started an export")
	_, err = c.Status(ctx, srv.URL+"/fhir/status/hang-headers")
	check("status headers", err, "status "+srv.URL+"/fhir/status/hang-headers", "waiting for the response headers")
	_, err = c.Status(ctx, srv.URL+"/fhir/status/hang-body")
	check("status body", err, "reading the response body")
	_, err = c.Status(ctx, srv.URL+"/fhir/status/trickle")
	check("status trickle", err, "longer than 600ms")
	f, err := c.OpenFile(ctx, srv.URL+"/file/hang?sig=secret", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(f.Body)
	f.Body.Close()
	check("file body", err, "reading the file body", "(capability URL ")
	if strings.Contains(err.Error(), "/file/hang") || strings.Contains(err.Error(), "secret") {
		t.Errorf("file error names the capability URL: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// The page limit names the count.
func TestManifestPageLimit(t *testing.T) {
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		io.WriteString(w, `{"transactionTime":"2026-01-01T00:00:00Z","request":"x","requiresAccessToken":true,"output":[],"error":[],"link":[{"relation":"next","url":"/fhir/page/`+r.URL.Path[len("/fhir/page/"):]+`x"}]}`)
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL + "/fhir", HTTP: srv.Client(), MaxManifestPages: 5}
	_, err := c.FetchAll(context.Background(), &Manifest{TransactionTime: "t", Next: srv.URL + "/fhir/page/x"})
	if KindOf(err) != KindPermanent || !strings.Contains(err.Error(), "goes on past 5 pages") || n != 5 {
		t.Errorf("%v after %d pages", err, n)
	}
}
