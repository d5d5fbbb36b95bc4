package authserver

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func TestNewValidatesConfig(t *testing.T) {
	testKeys(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error
	}{
		{"unknown mode", Config{Mode: "oauth"}, "unknown Mode"},
		{"bearer without token", Config{Mode: ModeBearer}, "StaticToken"},
		{"smart without clients", Config{Mode: ModeSMART}, "at least one"},
		{"smart client without keys", Config{Mode: ModeSMART, Clients: []Client{{ID: "a"}}}, "exactly one of JWKS or JWKSURL"},
		{"smart client with both", Config{Mode: ModeSMART, Clients: []Client{{ID: "a", JWKS: &rsaPub, JWKSURL: "https://x/j"}}}, "exactly one"},
		{"smart client relative URL", Config{Mode: ModeSMART, Clients: []Client{{ID: "a", JWKSURL: "/jwks"}}}, "absolute"},
		{"smart inline key ok", Config{Mode: ModeSMART, Clients: []Client{{ID: "a", JWKS: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{rsaPub.Keys[0].Public()}}}}}, ""},
		{"duplicate client", Config{Mode: ModeSMART, Clients: []Client{{ID: "a", JWKS: &rsaPub}, {ID: "a", JWKS: &ecPub}}}, "duplicate"},
		{"empty client id", Config{Mode: ModeClientSecret, Clients: []Client{{Secret: "x"}}}, "empty ID"},
		{"secret mode without secret", Config{Mode: ModeClientSecret, Clients: []Client{{ID: "a"}}}, "needs Secret"},
		{"bad scope", Config{Mode: ModeBearer, StaticToken: "t", Scopes: []string{"patient/*.read"}}, "Scopes"},
		{"tiny lifetime", Config{Mode: ModeBearer, StaticToken: "t", TokenLifetime: time.Millisecond}, "TokenLifetime"},
		{"none with clients", Config{Clients: []Client{{ID: "a", Secret: "s"}}}, "auth off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	// A kid-less key must be rejected.
	k := rsaPub.Keys[0].Public()
	k.KeyID = ""
	if _, err := New(Config{Mode: ModeSMART, Clients: []Client{{ID: "a", JWKS: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{k}}}}}); err == nil || !strings.Contains(err.Error(), "kid") {
		t.Errorf("kid-less key: err = %v", err)
	}
}

func TestScopeGrants(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       Config
		requested string
		wantScope string // "" = want invalid_scope
	}{
		{"v2 wildcard", Config{}, "system/*.rs", "system/*.rs"},
		{"v1 wildcard", Config{}, "system/*.read", "system/*.read"},
		{"typed v2 and v1", Config{}, "system/Patient.rs system/Observation.read", "system/Patient.rs system/Observation.read"},
		{"duplicates collapse", Config{}, "system/*.rs system/*.rs", "system/*.rs"},
		{"narrower than asked", Config{Scopes: []string{"system/Patient.rs", "system/Observation.rs"}}, "system/*.rs", "system/Patient.rs system/Observation.rs"},
		{"type outside config", Config{Scopes: []string{"system/Patient.rs"}}, "system/Condition.rs", ""},
		{"v1 not configured", Config{Scopes: []string{"system/*.rs"}}, "system/*.read", ""},
		{"reject v2", Config{RejectV2Scopes: true}, "system/*.rs", ""},
		{"reject v2, mixed", Config{RejectV2Scopes: true}, "system/*.read system/Patient.rs", ""},
		{"reject v2, v1 fallback works", Config{RejectV2Scopes: true}, "system/*.read", "system/*.read"},
		{"patient scope", Config{}, "patient/*.read", ""},
		{"openid", Config{}, "openid system/*.rs", ""},
		{"fine-grained", Config{}, "system/Observation.rs?category=laboratory", ""},
		{"lower-case type", Config{}, "system/patient.rs", ""},
		{"blank", Config{}, "   ", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.cfg)
			res := f.post(t, jwtForm(f.assertion(t, ecPriv, clientA), tc.requested), nil)
			if tc.wantScope == "" {
				if res.status != 400 || res.str("error") != CodeInvalidScope {
					t.Fatalf("got %d %s, want 400 invalid_scope", res.status, res.raw)
				}
				return
			}
			if res.status != 200 || res.str("scope") != tc.wantScope {
				t.Fatalf("got %d %s, want scope %q", res.status, res.raw, tc.wantScope)
			}
		})
	}
}

func TestSmartConfiguration(t *testing.T) {
	testKeys(t)
	for _, tc := range []struct {
		name      string
		cfg       Config
		tokenURL  string
		wantToken string
		wantCaps  []string
		wantAuth  []string
	}{
		{"smart defaults", Config{Mode: ModeSMART, Clients: []Client{{ID: "a", JWKS: &rsaPub}}}, "https://h/auth/token", "https://h/auth/token",
			[]string{"client-confidential-asymmetric", "permission-v2", "permission-v1"}, []string{"private_key_jwt"}},
		{"relative token URL made absolute", Config{Mode: ModeSMART, Clients: []Client{{ID: "a", JWKS: &rsaPub}}}, "auth/token", "https://h/fhir/auth/token",
			[]string{"client-confidential-asymmetric", "permission-v2", "permission-v1"}, []string{"private_key_jwt"}},
		{"v2 only", Config{Mode: ModeSMART, Scopes: []string{"system/*.rs"}, Clients: []Client{{ID: "a", JWKS: &rsaPub}}}, "https://h/token", "https://h/token",
			[]string{"client-confidential-asymmetric", "permission-v2"}, []string{"private_key_jwt"}},
		{"client secret", Config{Mode: ModeClientSecret, Clients: []Client{{ID: "a", Secret: "s"}}}, "https://h/token", "https://h/token",
			[]string{"client-confidential-symmetric", "permission-v2", "permission-v1"}, []string{"client_secret_basic", "client_secret_post"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			m := a.SmartConfiguration("https://h/fhir", tc.tokenURL)
			if m["token_endpoint"] != tc.wantToken {
				t.Errorf("token_endpoint = %v, want %s", m["token_endpoint"], tc.wantToken)
			}
			if got := m["capabilities"].([]string); !slices.Equal(got, tc.wantCaps) {
				t.Errorf("capabilities = %v, want %v", got, tc.wantCaps)
			}
			if got := m["token_endpoint_auth_methods_supported"].([]string); !slices.Equal(got, tc.wantAuth) {
				t.Errorf("auth methods = %v, want %v", got, tc.wantAuth)
			}
			if got := m["grant_types_supported"].([]string); !slices.Equal(got, []string{"client_credentials"}) {
				t.Errorf("grant_types_supported = %v", got)
			}
			if got := m["code_challenge_methods_supported"].([]string); !slices.Equal(got, []string{"S256"}) {
				t.Errorf("code_challenge_methods_supported = %v", got)
			}
			if len(m["scopes_supported"].([]string)) == 0 {
				t.Error("scopes_supported empty")
			}
			algs, _ := m["token_endpoint_auth_signing_alg_values_supported"].([]string)
			if tc.cfg.Mode == ModeSMART && !slices.Equal(algs, []string{"RS384", "ES384"}) {
				t.Errorf("signing algs = %v", algs)
			}
		})
	}
}

// The advertised token URL is an accepted aud even when the request arrives
// at another host name (e.g. localhost vs 127.0.0.1 behind a proxy).
func TestAdvertisedTokenURLIsAcceptedAud(t *testing.T) {
	f := newFixture(t, Config{})
	s, err := signAssertionAt(rsaPriv, clientA, "https://public.example/auth/token", f.clk.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if res := f.post(t, jwtForm(s, "system/*.rs"), nil); res.status != 401 {
		t.Fatalf("before advertising: %d %s", res.status, res.raw)
	}
	f.a.SmartConfiguration("https://public.example/fhir", "https://public.example/auth/token")
	s, _ = signAssertionAt(rsaPriv, clientA, "https://public.example/auth/token", f.clk.Now(), time.Minute)
	if res := f.post(t, jwtForm(s, "system/*.rs"), nil); res.status != 200 {
		t.Fatalf("after advertising: %d %s", res.status, res.raw)
	}
}

func TestNormalizeURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":         "http://127.0.0.1:8080/",
		"HTTP://LocalHost:80/token":     "http://localhost/token",
		"https://h:443/auth/token":      "https://h/auth/token",
		"https://[::1]:8443/t":          "https://[::1]:8443/t",
		"https://h/auth/token/":         "https://h/auth/token/",
		"not a url":                     "not a url",
		"https://h/auth/token?x=1#frag": "https://h/auth/token?x=1#frag",
	} {
		if got := normalizeURL(in); got != want {
			t.Errorf("normalizeURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestJWKSByURL(t *testing.T) {
	testKeys(t)
	var fetches atomic.Int32
	var cacheControl atomic.Value
	cacheControl.Store("")
	status := atomic.Int32{}
	status.Store(200)
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if r.Header.Get("Accept") != "application/json" {
			t.Errorf("JWKS fetch Accept = %q", r.Header.Get("Accept"))
		}
		if cc := cacheControl.Load().(string); cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(int(status.Load()))
		_, _ = w.Write(mustJSON(t, ecPub))
	}))
	defer jwks.Close()
	jwksURL := jwks.URL + "/.well-known/jwks.json"
	f := newFixture(t, Config{Mode: ModeSMART, Clients: []Client{{ID: clientA, JWKSURL: jwksURL}}})

	try := func(header map[jose.HeaderKey]any) tokenResult {
		t.Helper()
		c := claimsFor(clientA, f.tokenURL, f.clk.Now())
		jti, _ := randomString(8)
		c["jti"] = jti
		s, err := signJWT(ecPriv, "", header, c)
		if err != nil {
			t.Fatal(err)
		}
		return f.post(t, jwtForm(s, "system/*.rs"), nil)
	}

	// No Cache-Control: fetched on every use.
	for i := 0; i < 2; i++ {
		if res := try(nil); res.status != 200 {
			t.Fatalf("no cache-control #%d: %d %s", i, res.status, res.raw)
		}
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("fetches without Cache-Control = %d, want 2", n)
	}

	// max-age=60: reused within 60 s, refetched after.
	cacheControl.Store("public, max-age=60")
	fetches.Store(0)
	for i := 0; i < 3; i++ {
		if res := try(nil); res.status != 200 {
			t.Fatalf("max-age #%d: %d %s", i, res.status, res.raw)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("fetches within max-age = %d, want 1", n)
	}
	f.clk.Advance(61 * time.Second)
	if res := try(nil); res.status != 200 {
		t.Fatalf("after max-age: %d %s", res.status, res.raw)
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("fetches after max-age = %d, want 2", n)
	}

	// no-store wins over max-age.
	cacheControl.Store("max-age=600, no-store")
	f.clk.Advance(61 * time.Second)
	fetches.Store(0)
	try(nil)
	try(nil)
	if n := fetches.Load(); n != 2 {
		t.Errorf("fetches with no-store = %d, want 2", n)
	}

	// jku equal to the registered URL is fine; any other is not.
	if res := try(map[jose.HeaderKey]any{"jku": jwksURL}); res.status != 200 {
		t.Errorf("matching jku: %d %s", res.status, res.raw)
	}
	if res := try(map[jose.HeaderKey]any{"jku": jwks.URL + "/other.json"}); res.status != 401 || res.str("error") != CodeInvalidClient {
		t.Errorf("jku mismatch: %d %s", res.status, res.raw)
	}

	// An unreachable/failing JWKS URL is an authentication failure.
	status.Store(500)
	if res := try(nil); res.status != 401 || res.str("error") != CodeInvalidClient {
		t.Errorf("JWKS 500: %d %s", res.status, res.raw)
	}
	s := f.a.Stats()
	if s.AssertionsRejected[ReasonJKU] != 1 || s.AssertionsRejected[ReasonJWKSFetch] != 1 || s.JWKSFetches == 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestCacheTTL(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want time.Duration
	}{
		{nil, 0},
		{[]string{"max-age=120"}, 120 * time.Second},
		{[]string{"public", "max-age=\"30\""}, 30 * time.Second},
		{[]string{"no-cache, max-age=120"}, 0},
		{[]string{"max-age=abc"}, 0},
		{[]string{"max-age=-5"}, 0},
	} {
		if got := cacheTTL(tc.in); got != tc.want {
			t.Errorf("cacheTTL(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestClientSecret(t *testing.T) {
	secretID := "svc:1" // ':' must be form-encoded inside HTTP Basic
	f := newFixture(t, Config{Mode: ModeClientSecret, Clients: []Client{{ID: secretID, Secret: "p@ss word"}}})
	base := func() url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "scope": {"system/*.read"}}
	}
	basic := func(id, secret string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret)) }
	}
	for _, tc := range []struct {
		name       string
		form       func(url.Values)
		mutate     func(*http.Request)
		wantStatus int
		wantCode   string
		wantBasic  bool // WWW-Authenticate: Basic
	}{
		{"basic", nil, basic(secretID, "p@ss word"), 200, "", false},
		{"post", func(v url.Values) { v.Set("client_id", secretID); v.Set("client_secret", "p@ss word") }, nil, 200, "", false},
		{"basic wrong secret", nil, basic(secretID, "nope"), 401, CodeInvalidClient, true},
		{"post wrong secret", func(v url.Values) { v.Set("client_id", secretID); v.Set("client_secret", "nope") }, nil, 401, CodeInvalidClient, false},
		{"basic unknown client", nil, basic("who", "p@ss word"), 401, CodeInvalidClient, true},
		{"no credentials", nil, nil, 401, CodeInvalidClient, false},
		{"both methods", func(v url.Values) { v.Set("client_id", secretID); v.Set("client_secret", "p@ss word") }, basic(secretID, "p@ss word"), 400, CodeInvalidRequest, false},
		{"post without client_id", func(v url.Values) { v.Set("client_secret", "p@ss word") }, nil, 400, CodeInvalidRequest, false},
		{"assertion in secret mode", func(v url.Values) {
			v.Set("client_assertion_type", assertionTypeJWT)
			v.Set("client_assertion", "x.y.z")
		}, nil, 401, CodeInvalidClient, false},
		{"bad grant type", func(v url.Values) { v.Set("grant_type", "password") }, basic(secretID, "p@ss word"), 400, CodeUnauthorizedClient, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			form := base()
			if tc.form != nil {
				tc.form(form)
			}
			res := f.post(t, form, tc.mutate)
			if res.status != tc.wantStatus || res.str("error") != tc.wantCode {
				t.Fatalf("got %d %s, want %d %q", res.status, res.raw, tc.wantStatus, tc.wantCode)
			}
			if got := strings.HasPrefix(res.header.Get("WWW-Authenticate"), "Basic "); got != tc.wantBasic {
				t.Errorf("WWW-Authenticate = %q", res.header.Get("WWW-Authenticate"))
			}
			if tc.wantStatus == 200 {
				if res.str("scope") != "system/*.read" || res.str("access_token") == "" {
					t.Errorf("response %s", res.raw)
				}
				if r := f.fhirGet(t, "/fhir/x", res.str("access_token")); r.status != 200 {
					t.Errorf("token not accepted: %d %s", r.status, r.raw)
				}
			}
		})
	}
}
