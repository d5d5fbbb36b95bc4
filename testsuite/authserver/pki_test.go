package authserver

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"
)

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPKIMutualTLS(t *testing.T) {
	p, err := NewTestPKI("bulk.test")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 {
			t.Error("handler reached without a client certificate")
		}
		_, _ = w.Write([]byte(r.TLS.PeerCertificates[0].Subject.CommonName))
	}))
	srv.TLS = p.ServerTLSConfig(true)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	srv.StartTLS()
	defer srv.Close()

	get := func(withCert bool) (string, error) {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: p.ClientTLSConfig(withCert)}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(srv.URL) // https://127.0.0.1:port
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var b [64]byte
		n, _ := resp.Body.Read(b[:])
		return string(b[:n]), nil
	}
	if cn, err := get(true); err != nil || cn != "bulkflow-test-client" {
		t.Fatalf("with client cert: %q, %v", cn, err)
	}
	if _, err := get(false); err == nil {
		t.Fatal("without client cert: request succeeded, want a TLS failure")
	}

	// An unrelated client certificate is refused too.
	other, err := NewTestPKI()
	if err != nil {
		t.Fatal(err)
	}
	otherPair, err := tls.X509KeyPair(other.ClientCertPEM, other.ClientKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := p.ClientTLSConfig(false)
	cfg.Certificates = []tls.Certificate{otherPair}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	if resp, err := c.Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Fatal("foreign client cert accepted")
	}
	c.CloseIdleConnections()

	if cfg := p.ServerTLSConfig(false); cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Errorf("ServerTLSConfig(false) = min %x auth %v", cfg.MinVersion, cfg.ClientAuth)
	}
}

func TestPKIServerNamesAndFiles(t *testing.T) {
	p, err := NewTestPKI("bulk.test", "10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(p.ServerCertPEM, p.ServerKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "bulk.test", "10.1.2.3"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("server cert not valid for %s: %v", h, err)
		}
	}

	dir := t.TempDir()
	paths, err := p.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{FileCACert, FileServerCert, FileServerKey, FileClientCert, FileClientKey} {
		st, err := os.Stat(paths[k])
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if (k == FileServerKey || k == FileClientKey) && st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", k, st.Mode().Perm())
		}
	}
	if _, err := tls.LoadX509KeyPair(paths[FileClientCert], paths[FileClientKey]); err != nil {
		t.Errorf("written client pair does not load: %v", err)
	}
}
