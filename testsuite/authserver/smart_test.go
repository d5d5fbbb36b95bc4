package authserver

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func TestSMARTValidAssertionsGetTokens(t *testing.T) {
	f := newFixture(t, Config{})
	for _, tc := range []struct {
		name   string
		key    func() jose.JSONWebKey
		client string
	}{
		{"RS384", func() jose.JSONWebKey { return rsaPriv }, clientA},
		{"ES384", func() jose.JSONWebKey { return ecPriv }, clientA},
		{"ES384 second client", func() jose.JSONWebKey { return c2Priv }, clientB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := f.post(t, jwtForm(f.assertion(t, tc.key(), tc.client), "system/*.rs"), nil)
			if res.status != http.StatusOK {
				t.Fatalf("status %d, body %s", res.status, res.raw)
			}
			if res.str("access_token") == "" {
				t.Errorf("no access_token in %s", res.raw)
			}
			if res.str("token_type") != "bearer" {
				t.Errorf("token_type = %q, want bearer", res.str("token_type"))
			}
			if got, _ := res.body["expires_in"].(float64); got != 300 {
				t.Errorf("expires_in = %v, want 300", res.body["expires_in"])
			}
			if res.str("scope") != "system/*.rs" {
				t.Errorf("scope = %q", res.str("scope"))
			}
			if cc := res.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", cc)
			}
			if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q", ct)
			}
		})
	}
	if s := f.a.Stats(); s.TokensIssued != 3 || len(s.AssertionsRejected) != 0 {
		t.Errorf("stats = %+v", s)
	}
}

// claimsFor returns valid assertion claims for client at now.
func claimsFor(client, aud string, now time.Time) map[string]any {
	return map[string]any{
		"iss": client,
		"sub": client,
		"aud": aud,
		"exp": now.Add(4 * time.Minute).Unix(),
		"iat": now.Unix(),
		"jti": "jti-" + now.Format(time.RFC3339Nano) + "-" + client,
	}
}

func TestSMARTAssertionRejections(t *testing.T) {
	testKeys(t)
	type build struct {
		key    jose.JSONWebKey
		alg    jose.SignatureAlgorithm
		header map[jose.HeaderKey]any
		claims func(c map[string]any, f *fixture)
	}
	for _, tc := range []struct {
		name       string
		b          func() build
		raw        string // used instead of b when set
		form       func(url.Values)
		wantStatus int
		wantCode   string
		wantReason string
	}{
		{name: "RS256 rejected", b: func() build {
			k := rsaPriv
			k.Algorithm = ""
			return build{key: k, alg: jose.RS256}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonAlg},
		{name: "HS256 rejected", b: func() build {
			return build{key: jose.JSONWebKey{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: rsaKid}, alg: jose.HS256}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonAlg},
		{name: "unknown kid", b: func() build {
			k := rsaPriv
			k.KeyID = "nope"
			return build{key: k}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonKid},
		{name: "kid of an EC key used with RS384", b: func() build {
			k := rsaPriv
			k.KeyID = ecKid
			return build{key: k}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonKid},
		{name: "typ JOSE", b: func() build {
			return build{key: rsaPriv, header: map[jose.HeaderKey]any{jose.HeaderType: "JOSE"}}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonTyp},
		{name: "unknown client (iss and sub)", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, _ *fixture) { c["iss"], c["sub"] = "stranger", "stranger" }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonUnknownClient},
		{name: "sub differs from iss", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, _ *fixture) { c["sub"] = clientB }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonIssSub},
		{name: "iss of another client signed with my key", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, _ *fixture) { c["iss"], c["sub"] = clientB, clientB }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonKid},
		{name: "form client_id differs from iss", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Set("client_id", clientB) },
			wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonClientIDMismatch},
		{name: "wrong aud", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, f *fixture) { c["aud"] = f.srv.URL + "/other" }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonAud},
		{name: "exp 7 minutes ahead", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, f *fixture) { c["exp"] = f.clk.Now().Add(7 * time.Minute).Unix() }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonExpTooFar},
		{name: "expired", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, f *fixture) { c["exp"] = f.clk.Now().Add(-2 * time.Minute).Unix() }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonExpired},
		{name: "no exp", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, _ *fixture) { delete(c, "exp") }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonExpMissing},
		{name: "no jti", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, _ *fixture) { delete(c, "jti") }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonJTIMissing},
		{name: "iat in the future", b: func() build {
			return build{key: rsaPriv, claims: func(c map[string]any, f *fixture) { c["iat"] = f.clk.Now().Add(3 * time.Minute).Unix() }}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonNotYetValid},
		{name: "bad signature (other key, same kid)", b: func() build { return build{key: otherRSA} },
			wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonSignature},
		{name: "jku with inline registration", b: func() build {
			return build{key: rsaPriv, header: map[jose.HeaderKey]any{"jku": "https://evil.example/jwks.json"}}
		}, wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonJKU},
		{name: "alg none", raw: noneJWT(), wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonAlg},
		{name: "not a JWT", raw: "not-a-jwt", wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonMalformed},
		{name: "wrong client_assertion_type", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Set("client_assertion_type", "urn:example:saml") },
			wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonAssertionType},
		{name: "no client authentication", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Del("client_assertion_type"); v.Del("client_assertion") },
			wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonNoClientAuth},
		{name: "client secret in smart mode", b: func() build { return build{key: rsaPriv} },
			form: func(v url.Values) {
				v.Del("client_assertion_type")
				v.Del("client_assertion")
				v.Set("client_id", clientA)
				v.Set("client_secret", "s")
			},
			wantStatus: 401, wantCode: CodeInvalidClient, wantReason: ReasonAuthMethod},
		{name: "assertion without its type", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Del("client_assertion_type") },
			wantStatus: 400, wantCode: CodeInvalidRequest},
		{name: "unknown grant type", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Set("grant_type", "magic") },
			wantStatus: 400, wantCode: CodeUnsupportedGrantType},
		{name: "authorization_code grant", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Set("grant_type", "authorization_code") },
			wantStatus: 400, wantCode: CodeUnauthorizedClient},
		{name: "missing grant type", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Del("grant_type") },
			wantStatus: 400, wantCode: CodeInvalidRequest},
		{name: "missing scope", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Del("scope") },
			wantStatus: 400, wantCode: CodeInvalidRequest},
		{name: "unknown scope", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Set("scope", "user/*.read") },
			wantStatus: 400, wantCode: CodeInvalidScope},
		{name: "write scope", b: func() build { return build{key: rsaPriv} },
			form:       func(v url.Values) { v.Set("scope", "system/*.cruds") },
			wantStatus: 400, wantCode: CodeInvalidScope},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Config{})
			assertion := tc.raw
			if assertion == "" {
				b := tc.b()
				c := claimsFor(clientA, f.tokenURL, f.clk.Now())
				if b.claims != nil {
					b.claims(c, f)
				}
				var err error
				if assertion, err = signJWT(b.key, b.alg, b.header, c); err != nil {
					t.Fatal(err)
				}
			}
			form := jwtForm(assertion, defaultScopeRequested)
			if tc.form != nil {
				tc.form(form)
			}
			res := f.post(t, form, nil)
			if res.status != tc.wantStatus || res.str("error") != tc.wantCode {
				t.Fatalf("got %d %s, want %d %s", res.status, res.raw, tc.wantStatus, tc.wantCode)
			}
			if res.str("error_description") == "" {
				t.Errorf("no error_description: %s", res.raw)
			}
			if cc := res.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q", cc)
			}
			s := f.a.Stats()
			if s.TokensIssued != 0 || s.TokenErrors[tc.wantCode] != 1 {
				t.Errorf("stats = %+v", s)
			}
			if tc.wantReason != "" && s.AssertionsRejected[tc.wantReason] != 1 {
				t.Errorf("AssertionsRejected = %v, want %s=1", s.AssertionsRejected, tc.wantReason)
			}
		})
	}
}

func TestSMARTClockSkewBoundaries(t *testing.T) {
	for _, tc := range []struct {
		name string
		exp  time.Duration
		ok   bool
	}{
		{"exp 5m ahead", 5 * time.Minute, true},
		{"exp 5m50s ahead (within skew)", 5*time.Minute + 50*time.Second, true},
		{"exp 6m10s ahead", 6*time.Minute + 10*time.Second, false},
		{"expired 30s ago (within skew)", -30 * time.Second, true},
		{"expired 90s ago", -90 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Config{})
			s, err := signAssertionAt(ecPriv, clientA, f.tokenURL, f.clk.Now(), tc.exp)
			if err != nil {
				t.Fatal(err)
			}
			res := f.post(t, jwtForm(s, "system/*.rs"), nil)
			if (res.status == http.StatusOK) != tc.ok {
				t.Fatalf("got %d %s, want ok=%v", res.status, res.raw, tc.ok)
			}
		})
	}
}

func TestSMARTReplayedJTI(t *testing.T) {
	f := newFixture(t, Config{})
	a := f.assertion(t, rsaPriv, clientA)
	if res := f.post(t, jwtForm(a, "system/*.rs"), nil); res.status != http.StatusOK {
		t.Fatalf("first use: %d %s", res.status, res.raw)
	}
	res := f.post(t, jwtForm(a, "system/*.rs"), nil)
	if res.status != http.StatusUnauthorized || res.str("error") != CodeInvalidClient {
		t.Fatalf("replay: %d %s, want 401 invalid_client", res.status, res.raw)
	}
	s := f.a.Stats()
	if s.JTIReplays != 1 || s.AssertionsRejected[ReasonJTIReplay] != 1 || s.TokensIssued != 1 {
		t.Errorf("stats = %+v", s)
	}
	// The same jti from another client is not a replay ("for the given iss").
	c := claimsFor(clientB, f.tokenURL, f.clk.Now())
	c["jti"] = "shared"
	other, err := signJWT(c2Priv, "", nil, c)
	if err != nil {
		t.Fatal(err)
	}
	c = claimsFor(clientA, f.tokenURL, f.clk.Now())
	c["jti"] = "shared"
	mine, err := signJWT(ecPriv, "", nil, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{other, mine} {
		if res := f.post(t, jwtForm(s, "system/*.rs"), nil); res.status != http.StatusOK {
			t.Errorf("same jti, different iss: %d %s", res.status, res.raw)
		}
	}
}

func TestTokenEndpointRequestShape(t *testing.T) {
	f := newFixture(t, Config{})
	res := do(t, mustReq(t, http.MethodGet, f.tokenURL, "", ""))
	if res.status != http.StatusMethodNotAllowed || res.header.Get("Allow") != "POST" || res.str("error") != CodeInvalidRequest {
		t.Errorf("GET: %d %v %s", res.status, res.header, res.raw)
	}
	form := jwtForm(f.assertion(t, rsaPriv, clientA), "system/*.rs")
	res = do(t, mustReq(t, http.MethodPost, f.tokenURL, "application/json", form.Encode()))
	if res.status != 400 || res.str("error") != CodeInvalidRequest {
		t.Errorf("JSON body: %d %s", res.status, res.raw)
	}
	res = do(t, mustReq(t, http.MethodPost, f.tokenURL, "application/x-www-form-urlencoded", form.Encode()+"&scope=system/*.read"))
	if res.status != 400 || res.str("error") != CodeInvalidRequest {
		t.Errorf("repeated scope: %d %s", res.status, res.raw)
	}
}

// noneJWT is an unsigned ("alg":"none") assertion, which go-jose cannot build.
func noneJWT() string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","typ":"JWT","kid":"rsa-1"}`)) + "." +
		enc([]byte(`{"iss":"client-a","sub":"client-a","jti":"x","exp":9999999999}`)) + "."
}

func mustReq(t *testing.T, method, u, ct, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	return req
}

// SignAssertion (wall clock) against a server on the wall clock: the path the
// client-side tests use.
func TestSignAssertionRealClock(t *testing.T) {
	testKeys(t)
	a, err := New(Config{Mode: ModeSMART, Clients: []Client{{ID: "wall", JWKS: &ecPub}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.TokenHandler())
	defer srv.Close()
	s, err := SignAssertion(ecPriv, "wall", srv.URL, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	res := do(t, mustReq(t, "POST", srv.URL, "application/x-www-form-urlencoded", jwtForm(s, "system/*.rs").Encode()))
	if res.status != 200 {
		t.Fatalf("%d %s", res.status, res.raw)
	}
}

func TestNewClientKeyRejectsBadInput(t *testing.T) {
	for _, tc := range []struct{ alg, kid string }{{"RS256", "k"}, {"HS256", "k"}, {"ES384", ""}} {
		if _, _, err := NewClientKey(tc.alg, tc.kid); err == nil {
			t.Errorf("NewClientKey(%q, %q) succeeded", tc.alg, tc.kid)
		}
	}
	if _, pub, err := NewClientKey("ES384", "k"); err != nil || len(pub.Keys) != 1 || !pub.Keys[0].IsPublic() || pub.Keys[0].KeyID != "k" {
		t.Errorf("ES384 key: %v %+v", err, pub)
	}
}
