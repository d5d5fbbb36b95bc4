package servers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/internal/bulk"
)

// seen is what one test server saw of the credentials.
type seen struct {
	mu    sync.Mutex
	reqs  []string // path + " token=" + yes/no + " cert=" + yes/no
	creds int      // requests that carried the token or a client certificate
}

func (s *seen) record(r *http.Request) {
	tok := r.Header.Get("Authorization") != ""
	cert := r.TLS != nil && len(r.TLS.PeerCertificates) > 0
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, fmt.Sprintf("%s token=%v cert=%v", r.URL.Path, tok, cert))
	if tok || cert {
		s.creds++
	}
}

func (s *seen) snapshot() ([]string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.reqs...), s.creds
}

// tlsServer starts an https server that asks for (but does not require) a
// client certificate, so the test sees whether one was presented.
func tlsServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// clientCert writes a self-signed client certificate and key.
func clientCert(t *testing.T, dir string) (string, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	cf, kf := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	os.WriteFile(cf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return cf, kf
}

// TestCredentialsFollowTheOriginRule runs the protocol client as the worker
// builds it (bearer token + mTLS client certificate) against a FHIR server
// that points at another origin in every way issue 16 §2 lists. The foreign
// origin never sees the token or the certificate; an origin the servers
// file allows does.
func TestCredentialsFollowTheOriginRule(t *testing.T) {
	var home, foreign, cdn seen
	var homeURL, foreignURL, cdnURL string
	manifest := func(files string, omitToken bool, next string) string {
		rat := `"requiresAccessToken":true,`
		if omitToken {
			rat = ""
		}
		link := ""
		if next != "" {
			link = `,"link":[{"relation":"next","url":"` + next + `"}]`
		}
		return `{"transactionTime":"2026-01-01T00:00:00Z","request":"x",` + rat + `"output":[` + files + `],"error":[]` + link + `}`
	}
	ndjson := func(w http.ResponseWriter) { io.WriteString(w, `{"resourceType":"Patient","id":"1"}`+"\n") }
	foreignSrv := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		foreign.record(r)
		switch r.URL.Path {
		case "/fhir/$export": // a kick-off redirected here names itself as the status URL
			w.Header().Set("Content-Location", foreignURL+"/status/1")
			w.WriteHeader(202)
		case "/status/1":
			io.WriteString(w, manifest(`{"type":"Patient","url":"`+foreignURL+`/file/1"}`, false, ""))
		default:
			ndjson(w)
		}
	})
	cdnSrv := tlsServer(t, func(w http.ResponseWriter, r *http.Request) { cdn.record(r); ndjson(w) })
	homeSrv := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		home.record(r)
		switch r.URL.Path {
		case "/redirect/fhir/$export":
			http.Redirect(w, r, foreignURL+"/fhir/$export", http.StatusTemporaryRedirect)
		case "/foreign-status/fhir/$export":
			w.Header().Set("Content-Location", foreignURL+"/status/1")
			w.WriteHeader(202)
		case "/status/next":
			io.WriteString(w, manifest(`{"type":"Patient","url":"`+homeURL+`/file/1"}`, false, foreignURL+"/status/1"))
		case "/file/redirect":
			http.Redirect(w, r, foreignURL+"/file/2?sig=x", http.StatusFound)
		default:
			ndjson(w)
		}
	})
	homeURL, foreignURL, cdnURL = homeSrv.URL, foreignSrv.URL, cdnSrv.URL
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: homeSrv.Certificate().Raw}), 0o600)
	cf, kf := clientCert(t, dir)
	t.Setenv("ORIGIN_TEST_TOKEN", "sekrit")
	cfg := fmt.Sprintf(`{"servers":[
		{"name":"home","baseURL":%q,"auth":{"type":"bearer","tokenEnv":"ORIGIN_TEST_TOKEN"},"tls":{"caFile":%q,"certFile":%q,"keyFile":%q},"allowedOrigins":[%q]},
		{"name":"redirect","baseURL":%q,"auth":{"type":"bearer","tokenEnv":"ORIGIN_TEST_TOKEN"},"tls":{"caFile":%q,"certFile":%q,"keyFile":%q}},
		{"name":"fstatus","baseURL":%q,"auth":{"type":"bearer","tokenEnv":"ORIGIN_TEST_TOKEN"},"tls":{"caFile":%q,"certFile":%q,"keyFile":%q}}]}`,
		homeURL+"/fhir", ca, cf, kf, cdnURL, homeURL+"/redirect/fhir", ca, cf, kf, homeURL+"/foreign-status/fhir", ca, cf, kf)
	p := filepath.Join(dir, "servers.json")
	os.WriteFile(p, []byte(cfg), 0o600)
	reg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	client := func(name string) *bulk.Client {
		c, err := reg.Client(name, "")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := context.Background()
	kr := bulk.KickoffRequest{Level: bulk.LevelSystem}
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, bulk.ErrForeignOrigin) || bulk.KindOf(err) != bulk.KindPermanent || !strings.Contains(err.Error(), "allowedOrigins") {
			t.Errorf("%s: %v, want a permanent refusal naming allowedOrigins", what, err)
		}
	}

	// 1. A kick-off redirected to another origin: not followed.
	_, err = client("redirect").Kickoff(ctx, kr)
	refused("kick-off redirect", err)
	// 2. A kick-off whose Content-Location is on another origin.
	_, err = client("fstatus").Kickoff(ctx, kr)
	refused("foreign Content-Location", err)
	// ... and a status URL or DELETE for it (from an older run's history).
	_, err = client("home").Status(ctx, foreignURL+"/status/1")
	refused("foreign status URL", err)
	refused("foreign DELETE", client("home").Delete(ctx, foreignURL+"/status/1"))
	// 3. A manifest link next on another origin.
	st, err := client("home").Status(ctx, homeURL+"/status/next")
	if err != nil || !st.Done {
		t.Fatalf("status: %v", err)
	}
	_, err = client("home").FetchAll(ctx, st.Manifest)
	refused("foreign link next", err)
	if reqs, _ := foreign.snapshot(); len(reqs) != 0 {
		t.Fatalf("the foreign origin was contacted: %v", reqs)
	}

	// 4. Files: requiresAccessToken omitted or true on a foreign origin and
	// a redirect to one go without credentials; an allowed origin (the
	// servers file's allowedOrigins) gets them.
	for _, f := range []struct {
		url   string
		token bool
	}{
		{foreignURL + "/file/omitted", true}, // manifest omitted requiresAccessToken: read as true
		{homeURL + "/file/redirect", true},
		{cdnURL + "/file/cdn", true},
		{homeURL + "/file/home", true},
		{homeURL + "/file/capability", false},
		{foreignURL + "/file/capability", false},
	} {
		file, err := client("home").OpenFile(ctx, f.url, f.token, 0)
		if err != nil {
			t.Fatalf("%s: %v", f.url, err)
		}
		io.Copy(io.Discard, file.Body)
		file.Body.Close()
	}
	freqs, fcreds := foreign.snapshot()
	if len(freqs) != 3 || fcreds != 0 {
		t.Errorf("foreign origin saw %v: want 3 requests, none with the token or a client certificate", freqs)
	}
	if reqs, _ := cdn.snapshot(); len(reqs) != 1 || reqs[0] != "/file/cdn token=true cert=true" {
		t.Errorf("allowed origin saw %v, want the token and the certificate", reqs)
	}
	hreqs, _ := home.snapshot()
	for _, r := range hreqs {
		want := "token=true cert=true"
		if strings.HasPrefix(r, "/file/capability") {
			// BD3 L701: no token for requiresAccessToken false; the
			// certificate still goes to an allowed origin (a server may
			// demand mTLS for every request).
			want = "token=false cert=true"
		}
		if !strings.HasSuffix(r, want) {
			t.Errorf("home: %s, want %s", r, want)
		}
	}
}
