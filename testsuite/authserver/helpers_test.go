package authserver

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Key generation (RSA especially) is slow on a shared 2-core box: make each
// key once per test binary.
var (
	keysOnce              sync.Once
	rsaPriv, ecPriv       jose.JSONWebKey
	rsaPub, ecPub         jose.JSONWebKeySet
	otherRSA              jose.JSONWebKey // same kid as rsaPriv, different key
	keysErr               error
	testStart             = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rsaKid, ecKid, c2Kid  = "rsa-1", "ec-1", "c2-ec"
	c2Priv                jose.JSONWebKey
	c2Pub                 jose.JSONWebKeySet
	clientA, clientB      = "client-a", "client-b"
	assertionTypeJWT      = assertionTypeJWTBearer
	defaultScopeRequested = "system/*.rs"
)

func testKeys(t *testing.T) {
	t.Helper()
	keysOnce.Do(func() {
		if rsaPriv, rsaPub, keysErr = NewClientKey("RS384", rsaKid); keysErr != nil {
			return
		}
		if ecPriv, ecPub, keysErr = NewClientKey("ES384", ecKid); keysErr != nil {
			return
		}
		if otherRSA, _, keysErr = NewClientKey("RS384", rsaKid); keysErr != nil {
			return
		}
		c2Priv, c2Pub, keysErr = NewClientKey("ES384", c2Kid)
	})
	if keysErr != nil {
		t.Fatal(keysErr)
	}
}

// clock is a settable Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fixture is a running token endpoint at <srv>/token.
type fixture struct {
	a        *Server
	srv      *httptest.Server
	tokenURL string
	clk      *clock
}

// newFixture defaults to Mode smart and registers client-a (inline RS384 + ES384 keys) and client-b
// (inline ES384 key "c2-ec") unless cfg already has clients.
func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	testKeys(t)
	clk := &clock{t: testStart}
	if cfg.Now == nil {
		cfg.Now = clk.Now
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeSMART
	}
	if cfg.Mode == ModeSMART && cfg.Clients == nil {
		both := jose.JSONWebKeySet{Keys: append(append([]jose.JSONWebKey{}, rsaPub.Keys...), ecPub.Keys...)}
		cfg.Clients = []Client{{ID: clientA, JWKS: &both}, {ID: clientB, JWKS: &c2Pub}}
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/token", a.TokenHandler())
	mux.Handle("/fhir/", a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &fixture{a: a, srv: srv, tokenURL: srv.URL + "/token", clk: clk}
}

type tokenResult struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (r tokenResult) str(k string) string { s, _ := r.body[k].(string); return s }

func (f *fixture) post(t *testing.T, form url.Values, mutate func(*http.Request)) tokenResult {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if mutate != nil {
		mutate(req)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) tokenResult {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	res := tokenResult{status: resp.StatusCode, header: resp.Header, raw: sb.String()}
	_ = json.Unmarshal([]byte(res.raw), &res.body)
	return res
}

func jwtForm(assertion, scope string) url.Values {
	return url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {assertionTypeJWT},
		"client_assertion":      {assertion},
		"scope":                 {scope},
	}
}

// assertion signs a valid assertion for clientA at the fixture clock.
func (f *fixture) assertion(t *testing.T, key jose.JSONWebKey, client string) string {
	t.Helper()
	s, err := signAssertionAt(key, client, f.tokenURL, f.clk.Now(), 4*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// getToken runs a successful SMART token request and returns the token.
func (f *fixture) getToken(t *testing.T, scope string) string {
	t.Helper()
	res := f.post(t, jwtForm(f.assertion(t, rsaPriv, clientA), scope), nil)
	if res.status != http.StatusOK {
		t.Fatalf("token request: %d %s", res.status, res.raw)
	}
	return res.str("access_token")
}

func (f *fixture) fhirGet(t *testing.T, path, token string) tokenResult {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return do(t, req)
}
