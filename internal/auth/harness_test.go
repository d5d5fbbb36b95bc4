package auth

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite/authserver"
	"github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"
)

// RSA key generation is slow on a shared 2-core machine: one key per type
// per test binary.
var (
	keysOnce      sync.Once
	keysErr       error
	rsaKey, ecKey jose.JSONWebKey
	rsaPub, ecPub jose.JSONWebKeySet
)

const clientID = "bulkflow-test"

func testKeys(t *testing.T) {
	t.Helper()
	keysOnce.Do(func() {
		if rsaKey, rsaPub, keysErr = authserver.NewClientKey("RS384", "rsa-1"); keysErr != nil {
			return
		}
		ecKey, ecPub, keysErr = authserver.NewClientKey("ES384", "ec-1")
	})
	if keysErr != nil {
		t.Fatal(keysErr)
	}
}

// bothPub is the client's public JWK Set as registered with the server.
func bothPub() *jose.JSONWebKeySet {
	return &jose.JSONWebKeySet{Keys: append(append([]jose.JSONWebKey{}, rsaPub.Keys...), ecPub.Keys...)}
}

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pkcs8PEM(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func jwksJSON(t *testing.T, keys ...jose.JSONWebKey) []byte {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// smartConfigFor is a smart Config signing with key (PKCS#8 PEM + kid).
func smartConfigFor(t *testing.T, key jose.JSONWebKey) Config {
	return Config{Type: "smart", ClientID: clientID, PrivateKeyFile: writeFile(t, "key.pem", pkcs8PEM(t, key.Key)), Kid: key.KeyID}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a FHIR server guarded by authserver: /fhir (resources, behind the
// middleware; POST bodies are echoed), /fhir/.well-known/smart-configuration,
// /auth/token and /jwks.
type env struct {
	as       *authserver.Server
	srv      *httptest.Server
	fhirBase string
	tokenURL string

	mu        sync.Mutex
	forms     []url.Values // token requests as received
	wellKnown http.HandlerFunc
	fhirHits  int
}

func newEnv(t *testing.T, cfg authserver.Config) *env {
	t.Helper()
	testKeys(t)
	if cfg.Mode == "" {
		cfg.Mode = authserver.ModeSMART
	}
	if cfg.Mode == authserver.ModeSMART && cfg.Clients == nil {
		cfg.Clients = []authserver.Client{{ID: clientID, JWKS: bothPub()}}
	}
	e := &env{}
	mux := http.NewServeMux()
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	e.fhirBase = e.srv.URL + "/fhir"
	e.tokenURL = e.srv.URL + "/auth/token"
	for i := range cfg.Clients {
		if cfg.Clients[i].JWKSURL == "jwks" {
			cfg.Clients[i].JWKSURL = e.srv.URL + "/jwks"
		}
	}
	as, err := authserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.as = as
	mux.HandleFunc("/fhir/.well-known/smart-configuration", func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		h := e.wellKnown
		e.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		e.serveSmartConfig(w, nil)
	})
	token := as.TokenHandler()
	mux.HandleFunc("/auth/token", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f, _ := url.ParseQuery(string(b))
		e.mu.Lock()
		e.forms = append(e.forms, f)
		e.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(b))
		token.ServeHTTP(w, r)
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(bothPub())
	})
	mux.Handle("/fhir/", as.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.fhirHits++
		e.mu.Unlock()
		io.Copy(w, r.Body)
	})))
	return e
}

// serveSmartConfig writes the authserver's document with overrides applied.
func (e *env) serveSmartConfig(w http.ResponseWriter, override map[string]any) {
	doc := e.as.SmartConfiguration(e.fhirBase, e.tokenURL)
	for k, v := range override {
		if v == nil {
			delete(doc, k)
		} else {
			doc[k] = v
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(doc)
}

func (e *env) setWellKnown(h http.HandlerFunc) {
	e.mu.Lock()
	e.wellKnown = h
	e.mu.Unlock()
}

func (e *env) tokenForms() []url.Values {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]url.Values(nil), e.forms...)
}

func (e *env) hits() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fhirHits
}

// source builds the token source for cfg against e.
func (e *env) source(t *testing.T, cfg Config) *Source {
	t.Helper()
	ts, err := cfg.TokenSource(context.Background(), e.srv.Client(), e.fhirBase)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := ts.(*Source)
	if !ok {
		t.Fatalf("TokenSource = %T, want *Source", ts)
	}
	return s
}

func (e *env) client(ts oauth2.TokenSource) *http.Client {
	return Client(&http.Client{}, ts)
}

// get GETs path under the FHIR base and returns status and body.
func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
