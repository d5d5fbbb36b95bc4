package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite/authserver"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// parseAssertion decodes a captured client assertion (signature checked
// against pub).
func parseAssertion(t *testing.T, s string, pub any) (jose.Header, jwt.Claims) {
	t.Helper()
	tok, err := jwt.ParseSigned(s, []jose.SignatureAlgorithm{jose.RS384, jose.ES384})
	if err != nil {
		t.Fatal(err)
	}
	var c jwt.Claims
	if err := tok.Claims(pub, &c); err != nil {
		t.Fatalf("assertion signature: %v", err)
	}
	return tok.Headers[0], c
}

// SMART client assertions in every supported key format are accepted, and
// carry the header and claims of client-confidential-asymmetric.md.
func TestSmartAssertionAccepted(t *testing.T) {
	testKeys(t)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey.Key.(*rsa.PrivateKey))})
	sec1DER, err := x509.MarshalECPrivateKey(ecKey.Key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1 := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1DER})
	for _, tc := range []struct {
		name    string
		cfg     func(t *testing.T) Config
		alg     string
		kid     string
		pub     any
		useJKU  bool
		byJWKSu bool
	}{
		{"RS384 PKCS#8", func(t *testing.T) Config { return smartConfigFor(t, rsaKey) }, "RS384", "rsa-1", rsaPub.Keys[0].Key, false, false},
		{"ES384 PKCS#8", func(t *testing.T) Config { return smartConfigFor(t, ecKey) }, "ES384", "ec-1", ecPub.Keys[0].Key, false, false},
		{"RS384 PKCS#1", func(t *testing.T) Config {
			return Config{Type: "smart", ClientID: clientID, PrivateKeyFile: writeFile(t, "k.pem", pkcs1), Kid: "rsa-1", Alg: "RS384"}
		}, "RS384", "rsa-1", rsaPub.Keys[0].Key, false, false},
		{"ES384 SEC1", func(t *testing.T) Config {
			return Config{Type: "smart", ClientID: clientID, PrivateKeyFile: writeFile(t, "k.pem", sec1), Kid: "ec-1"}
		}, "ES384", "ec-1", ecPub.Keys[0].Key, false, false},
		{"JWKS single key", func(t *testing.T) Config {
			return Config{Type: "smart", ClientID: clientID, JWKSFile: writeFile(t, "k.jwks", jwksJSON(t, ecKey))}
		}, "ES384", "ec-1", ecPub.Keys[0].Key, false, false},
		{"JWKS choose by kid", func(t *testing.T) Config {
			return Config{Type: "smart", ClientID: clientID, JWKSFile: writeFile(t, "k.jwks", jwksJSON(t, ecKey, rsaKey)), Kid: "rsa-1"}
		}, "RS384", "rsa-1", rsaPub.Keys[0].Key, false, false},
		{"jku with JWKS URL registration", func(t *testing.T) Config { return smartConfigFor(t, ecKey) }, "ES384", "ec-1", ecPub.Keys[0].Key, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asCfg := authserver.Config{}
			if tc.byJWKSu {
				asCfg.Clients = []authserver.Client{{ID: clientID, JWKSURL: "jwks"}}
			}
			e := newEnv(t, asCfg)
			cfg := tc.cfg(t)
			if tc.useJKU {
				cfg.JKU = e.srv.URL + "/jwks"
			}
			s := e.source(t, cfg)
			if code, _ := get(t, e.client(s), e.fhirBase+"/Patient"); code != http.StatusOK {
				t.Fatalf("GET = %d", code)
			}
			st := e.as.Stats()
			if st.TokensIssued != 1 || st.AuthorizeOK != 1 || len(st.AssertionsRejected) != 0 {
				t.Fatalf("authserver stats = %+v", st)
			}
			if tc.byJWKSu && st.JWKSFetches == 0 {
				t.Fatal("server did not fetch the JWKS URL")
			}
			forms := e.tokenForms()
			if len(forms) != 1 {
				t.Fatalf("%d token requests", len(forms))
			}
			f := forms[0]
			if f.Get("grant_type") != "client_credentials" || f.Get("client_assertion_type") != assertionType || f.Get("scope") != "system/*.rs" {
				t.Fatalf("token form = %v", f)
			}
			h, c := parseAssertion(t, f.Get("client_assertion"), tc.pub)
			if h.Algorithm != tc.alg || h.KeyID != tc.kid || h.ExtraHeaders["typ"] != "JWT" {
				t.Fatalf("header = %+v", h)
			}
			if jku, _ := h.ExtraHeaders["jku"].(string); (jku != "") != tc.useJKU {
				t.Fatalf("jku header = %q", jku)
			}
			if c.Issuer != clientID || c.Subject != clientID || len(c.Audience) != 1 || c.Audience[0] != e.tokenURL {
				t.Fatalf("claims = %+v", c)
			}
			life := c.Expiry.Time().Sub(c.IssuedAt.Time())
			if life <= 0 || life > 5*time.Minute {
				t.Fatalf("exp - iat = %v, want (0, 5m]", life)
			}
			if len(c.ID) != 32 {
				t.Fatalf("jti %q is not 128 bits of hex", c.ID)
			}
		})
	}
}

// Each assertion has its own jti; the server would reject a replay.
func TestFreshJTIAndReplayRejected(t *testing.T) {
	e := newEnv(t, authserver.Config{})
	s := e.source(t, smartConfigFor(t, ecKey))
	for range 2 {
		if _, err := s.Token(); err != nil {
			t.Fatal(err)
		}
		s.Invalidate()
	}
	st := e.as.Stats()
	if st.TokensIssued != 2 || st.JTIReplays != 0 {
		t.Fatalf("stats = %+v", st)
	}
	forms := e.tokenForms()
	_, c1 := parseAssertion(t, forms[0].Get("client_assertion"), ecPub.Keys[0].Key)
	_, c2 := parseAssertion(t, forms[1].Get("client_assertion"), ecPub.Keys[0].Key)
	if c1.ID == c2.ID {
		t.Fatalf("jti reused: %s", c1.ID)
	}
	// Replaying the first request by hand must fail: the check is real.
	resp, err := http.PostForm(e.tokenURL, forms[0])
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || e.as.Stats().JTIReplays != 1 {
		t.Fatalf("replay: HTTP %d, stats %+v", resp.StatusCode, e.as.Stats())
	}
}

func TestDiscovery(t *testing.T) {
	for _, tc := range []struct {
		name      string
		wellKnown func(e *env) http.HandlerFunc
		tokenURL  func(e *env) string // configured
		wantErr   string
		temporary bool
	}{
		{name: "absolute token_endpoint"},
		{name: "root-relative token_endpoint", wellKnown: func(e *env) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				e.serveSmartConfig(w, map[string]any{"token_endpoint": "/auth/token"})
			}
		}},
		{name: "path-relative token_endpoint", wellKnown: func(e *env) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				e.serveSmartConfig(w, map[string]any{"token_endpoint": "../auth/token"})
			}
		}},
		{name: "404 falls back to tokenURL", wellKnown: status(404), tokenURL: configured},
		{name: "404 without tokenURL", wellKnown: status(404), wantErr: "set tokenURL"},
		{name: "non-JSON falls back", wellKnown: func(*env) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>login</html>")) }
		}, tokenURL: configured},
		{name: "missing token_endpoint falls back", wellKnown: func(e *env) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				e.serveSmartConfig(w, map[string]any{"token_endpoint": nil})
			}
		}, tokenURL: configured},
		{name: "configured tokenURL wins", wellKnown: func(e *env) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				e.serveSmartConfig(w, map[string]any{"token_endpoint": e.srv.URL + "/elsewhere"})
			}
		}, tokenURL: configured},
		{name: "503 without tokenURL is temporary", wellKnown: status(503), wantErr: "HTTP 503", temporary: true},
		{name: "503 with tokenURL proceeds", wellKnown: status(503), tokenURL: configured},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, authserver.Config{})
			if tc.wellKnown != nil {
				e.setWellKnown(tc.wellKnown(e))
			}
			cfg := smartConfigFor(t, ecKey)
			if tc.tokenURL != nil {
				cfg.TokenURL = tc.tokenURL(e)
			}
			_, err := e.source(t, cfg).Token()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || errors.Is(err, ErrTemporary) != tc.temporary {
					t.Fatalf("err = %v, want %q (temporary %v)", err, tc.wantErr, tc.temporary)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st := e.as.Stats(); st.TokensIssued != 1 {
				t.Fatalf("stats = %+v", st)
			}
		})
	}
}

func status(code int) func(*env) http.HandlerFunc {
	return func(*env) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", code) }
	}
}

func configured(e *env) string { return e.tokenURL }

func TestScopeChoice(t *testing.T) {
	for _, tc := range []struct {
		name      string
		as        authserver.Config
		noDisc    bool     // .well-known 404
		scopes    []string // configured
		want      []string // scope of each token request, in order
		wantErr   string
		invalidSc int // invalid_scope answers expected
	}{
		{name: "v2 when permission-v2 listed", want: []string{"system/*.rs"}},
		{name: "v1 when only permission-v1 listed", as: authserver.Config{Scopes: []string{"system/*.read"}}, want: []string{"system/*.read"}},
		{name: "v2 when nothing listed", noDisc: true, want: []string{"system/*.rs"}},
		{name: "configured scopes", scopes: []string{"system/Patient.rs", "system/Observation.rs"}, want: []string{"system/Patient.rs system/Observation.rs"}},
		{name: "v2 rejected, v1 listed: one retry with v1", as: authserver.Config{RejectV2Scopes: true}, want: []string{"system/*.rs", "system/*.read"}, invalidSc: 1},
		{name: "configured v2 rejected: mapped to v1", as: authserver.Config{RejectV2Scopes: true}, scopes: []string{"system/Patient.rs"}, want: []string{"system/Patient.rs", "system/Patient.read"}, invalidSc: 1},
		{name: "v2 rejected, no permission-v1: error", as: authserver.Config{RejectV2Scopes: true, Scopes: []string{"system/*.rs"}}, want: []string{"system/*.rs"}, wantErr: "invalid_scope", invalidSc: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.as)
			if tc.noDisc {
				e.setWellKnown(status(404)(e))
			}
			cfg := smartConfigFor(t, ecKey)
			cfg.Scopes = tc.scopes
			if tc.noDisc {
				cfg.TokenURL = e.tokenURL
			}
			s := e.source(t, cfg)
			_, err := s.Token()
			if tc.wantErr != "" {
				var te *TokenError
				if err == nil || !errors.As(err, &te) || te.Code != tc.wantErr || errors.Is(err, ErrTemporary) {
					t.Fatalf("err = %v, want a permanent %s", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range e.tokenForms() {
				got = append(got, f.Get("scope"))
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("requested scopes = %q, want %q", got, tc.want)
			}
			if n := e.as.Stats().TokenErrors["invalid_scope"]; n != tc.invalidSc {
				t.Fatalf("invalid_scope answers = %d, want %d", n, tc.invalidSc)
			}
			if tc.wantErr == "" {
				// The next token goes straight to the scopes that worked.
				s.Invalidate()
				if _, err := s.Token(); err != nil {
					t.Fatal(err)
				}
				forms := e.tokenForms()
				if last := forms[len(forms)-1].Get("scope"); last != tc.want[len(tc.want)-1] {
					t.Fatalf("refresh requested %q, want %q", last, tc.want[len(tc.want)-1])
				}
				if n := e.as.Stats().TokenErrors["invalid_scope"]; n != tc.invalidSc {
					t.Fatalf("refresh hit invalid_scope again (%d)", n)
				}
			}
		})
	}
}

// fakeTokenServer answers every token request with status and body (the
// string "$ASSERTION" is replaced by the request's assertion).
func fakeTokenServer(t *testing.T, status int, contentType, body string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/token" {
			http.NotFound(w, r)
			return
		}
		r.ParseForm()
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		w.Write([]byte(strings.ReplaceAll(body, "$ASSERTION", r.PostForm.Get("client_assertion"))))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func fakeSource(t *testing.T, srv *httptest.Server, now func() time.Time) *Source {
	t.Helper()
	testKeys(t)
	cfg := smartConfigFor(t, ecKey)
	cfg.TokenURL = srv.URL + "/token"
	cfg.Now = now
	ts, err := cfg.TokenSource(context.Background(), srv.Client(), srv.URL+"/fhir")
	if err != nil {
		t.Fatal(err)
	}
	return ts.(*Source)
}

func TestTokenResponseVariants(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		life       time.Duration
		wantErr    string
	}{
		{"Bearer", `{"access_token":"a","token_type":"Bearer","expires_in":300}`, 300 * time.Second, ""},
		{"bearer", `{"access_token":"a","token_type":"bearer","expires_in":120}`, 120 * time.Second, ""},
		{"expires_in missing", `{"access_token":"a","token_type":"bearer"}`, 300 * time.Second, ""},
		{"expires_in string", `{"access_token":"a","token_type":"bearer","expires_in":"300"}`, 300 * time.Second, ""},
		{"expires_in tiny", `{"access_token":"a","token_type":"bearer","expires_in":1}`, 10 * time.Second, ""},
		{"expires_in huge", `{"access_token":"a","token_type":"bearer","expires_in":1000000000}`, time.Hour, ""},
		{"expires_in garbage", `{"access_token":"a","token_type":"bearer","expires_in":"soon"}`, 300 * time.Second, ""},
		{"expires_in zero", `{"access_token":"a","token_type":"bearer","expires_in":0}`, 300 * time.Second, ""},
		{"token_type mac", `{"access_token":"a","token_type":"mac","expires_in":300}`, 0, `token_type "mac"`},
		{"token_type missing", `{"access_token":"a","expires_in":300}`, 0, "token_type"},
		{"no access_token", `{"token_type":"bearer"}`, 0, "no access_token"},
		{"not JSON", `<html/>`, 0, "not a JSON token response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			s := fakeSource(t, fakeTokenServer(t, 200, "application/json", tc.body), clk.Now)
			tok, err := s.Token()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || errors.Is(err, ErrTemporary) {
					t.Fatalf("err = %v, want permanent %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tok.Expiry.Sub(clk.Now()); got != tc.life {
				t.Fatalf("lifetime = %v, want %v", got, tc.life)
			}
			if tok.Type() != "Bearer" {
				t.Fatalf("type = %q", tok.Type())
			}
			// Cached until 80% of the lifetime, then fetched again.
			clk.Add(tc.life*4/5 - time.Second)
			s.Token()
			clk.Add(time.Second)
			s.Token()
			if n := s.Stats().Fetches; n != 2 {
				t.Fatalf("fetches = %d, want 2 (refresh at 80%% of %v)", n, tc.life)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	for _, tc := range []struct {
		name        string
		status      int
		ctype, body string
		code        string
		temporary   bool
		want        string
	}{
		{"invalid_client", 401, "application/json", `{"error":"invalid_client","error_description":"bad signature for $ASSERTION"}`, "invalid_client", false, "bad signature for [redacted]"},
		{"invalid_request 400", 400, "application/json", `{"error":"invalid_request","error_description":"scope is required","error_uri":"https://as/doc"}`, "invalid_request", false, "scope is required (see https://as/doc)"},
		{"plain 403", 403, "text/plain", "forbidden", "", false, "HTTP 403 (not an OAuth 2.0 error response)"},
		{"503", 503, "text/html", "<h1>down</h1>", "", true, "HTTP 503"},
		{"429", 429, "application/json", `{"error":"slow_down"}`, "slow_down", true, "HTTP 429"},
		{"500 OAuth body", 500, "application/json", `{"error":"server_error"}`, "server_error", true, "server_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakeTokenServer(t, tc.status, tc.ctype, tc.body)
			s := fakeSource(t, srv, nil)
			_, err := s.Token()
			var te *TokenError
			if err == nil || !errors.As(err, &te) {
				t.Fatalf("err = %v, want a *TokenError", err)
			}
			if te.Code != tc.code || te.StatusCode != tc.status || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q (%+v), want code %q containing %q", err, te, tc.code, tc.want)
			}
			if errors.Is(err, ErrTemporary) != tc.temporary {
				t.Fatalf("temporary = %v, want %v", !tc.temporary, tc.temporary)
			}
			var ne net.Error
			if errors.As(err, &ne) != tc.temporary {
				t.Fatalf("net.Error = %v, want %v (internal/bulk classifies by it)", !tc.temporary, tc.temporary)
			}
			if strings.Contains(err.Error(), "eyJ") {
				t.Fatalf("error quotes a JWT: %v", err)
			}
			// Through the Transport the cause survives http.Client's wrapping.
			_, err = Client(&http.Client{}, s).Get(srv.URL + "/fhir/Patient")
			if !errors.As(err, &te) || errors.Is(err, ErrTemporary) != tc.temporary {
				t.Fatalf("via Transport: %v", err)
			}
		})
	}
	t.Run("network", func(t *testing.T) {
		srv := fakeTokenServer(t, 200, "application/json", "{}")
		s := fakeSource(t, srv, nil)
		srv.Close()
		if _, err := s.Token(); !errors.Is(err, ErrTemporary) {
			t.Fatalf("err = %v, want ErrTemporary", err)
		}
	})
}

// With 60 s tokens and a fake clock, requests every 10 s for 5 minutes
// refresh at 80% (48 s): one fetch per 50 s step, none rejected.
func TestTokenRefreshOverTime(t *testing.T) {
	clk := newClock()
	e := newEnv(t, authserver.Config{TokenLifetime: 60 * time.Second, Now: clk.Now})
	cfg := smartConfigFor(t, rsaKey)
	cfg.Now = clk.Now
	s := e.source(t, cfg)
	c := e.client(s)
	for i := 0; i <= 30; i++ {
		if code, body := get(t, c, e.fhirBase+"/Patient"); code != http.StatusOK {
			t.Fatalf("t=%ds: HTTP %d %s", i*10, code, body)
		}
		clk.Add(10 * time.Second)
	}
	st := e.as.Stats()
	if st.AuthorizeFailureTotal() != 0 || st.AuthorizeOK != 31 {
		t.Fatalf("authserver stats = %+v", st)
	}
	// Fetches at t = 0, 50, 100, 150, 200, 250, 300.
	if st.TokensIssued != 7 || s.Stats().Fetches != 7 || st.JTIReplays != 0 {
		t.Fatalf("tokens issued %d, fetches %+v, want 7", st.TokensIssued, s.Stats())
	}
}

// A scope narrower than requested is only warned about; the token works.
func TestNarrowerGrantStillWorks(t *testing.T) {
	e := newEnv(t, authserver.Config{Scopes: []string{"system/Patient.rs"}})
	s := e.source(t, smartConfigFor(t, ecKey))
	tok, err := s.Token()
	if err != nil {
		t.Fatal(err)
	}
	if g, _ := tok.Extra("scope").(string); g != "system/Patient.rs" {
		t.Fatalf("granted = %q", g)
	}
}
