// Package authserver is the authorization side of the bulkflow TEST FHIR Bulk
// Data server: a SMART Backend Services token endpoint (private_key_jwt), a
// client-secret variant, a static-bearer variant, and resource-server token
// checks, plus fault hooks and a small in-memory PKI for mTLS tests.
//
// It is written from ../shared/spec/bulk-data-checklist.md section 2
// (SMART 2.2.0) and section 3 "Authentication". It deliberately shares no code
// with the product's client under internal/, so the two cannot agree on a
// mistake.
package authserver

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Modes accepted in Config.Mode.
const (
	ModeNone         = "none"
	ModeSMART        = "smart"
	ModeClientSecret = "client-secret"
	ModeBearer       = "bearer"
)

// DefaultTokenLifetime is the SMART recommended expires_in
// (backend-services.md L192-229: "recommended value is 300").
const DefaultTokenLifetime = 300 * time.Second

// DefaultScopes are granted/supported when Config.Scopes is empty: v2 and v1
// system-wide read (checklist §2 "Scopes").
var DefaultScopes = []string{"system/*.rs", "system/*.read"}

// Config configures a Server. The zero value means "auth off".
type Config struct {
	Mode          string        // "" or "none" (auth off), "smart", "client-secret", "bearer"
	TokenLifetime time.Duration // default 300s; 60s makes expiry mid-run routine
	Clients       []Client      // registered clients (smart / client-secret)
	StaticToken   string        // Mode "bearer": the one accepted token
	// Scopes the server grants/supports; default v2 "system/*.rs" and v1
	// "system/*.read". Listing only narrower scopes (e.g. "system/Patient.rs")
	// makes the server grant less than a wildcard request asked for.
	Scopes []string
	// RejectV2Scopes answers invalid_scope to v2 (.rs) scopes, to exercise the
	// client's v1 fallback (checklist §3 fault 3). permission-v2 stays
	// advertised on purpose: that is the fault.
	RejectV2Scopes bool
	Now            func() time.Time // nil = time.Now

	// TokenURL, if set, is accepted as the assertion "aud" in addition to the
	// URL the request arrived at and any tokenURL given to SmartConfiguration.
	TokenURL string
	// HTTPClient fetches JWKS URLs; nil = a client with a 10 s timeout.
	HTTPClient *http.Client
}

// Client is one registered client.
type Client struct {
	ID      string
	JWKS    *jose.JSONWebKeySet // inline registration (github.com/go-jose/go-jose/v4)
	JWKSURL string              // registration by URL (fetched on demand, honouring Cache-Control: no caching beyond it)
	Secret  string              // client-secret mode: HTTP Basic and client_secret_post both accepted
}

// Server holds issued tokens, seen jti values and counters. It is safe for
// concurrent use.
type Server struct {
	mode     string
	lifetime time.Duration
	clients  map[string]Client
	static   string
	scopes   []scope // parsed Config.Scopes
	rejectV2 bool
	now      func() time.Time
	httpc    *http.Client

	mu        sync.Mutex
	tokens    map[string]*issuedToken
	jtis      map[string]map[string]time.Time // iss -> jti -> forget after
	jwksCache map[string]cachedJWKS           // JWKS URL -> keys
	auds      map[string]bool                 // configured/advertised token URLs
	stats     Stats
}

type issuedToken struct {
	clientID string
	scopes   []scope
	expires  time.Time
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	a := &Server{
		mode:      cfg.Mode,
		lifetime:  cfg.TokenLifetime,
		clients:   map[string]Client{},
		static:    cfg.StaticToken,
		rejectV2:  cfg.RejectV2Scopes,
		now:       cfg.Now,
		httpc:     cfg.HTTPClient,
		tokens:    map[string]*issuedToken{},
		jtis:      map[string]map[string]time.Time{},
		jwksCache: map[string]cachedJWKS{},
		auds:      map[string]bool{},
	}
	if a.mode == "" {
		a.mode = ModeNone
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.httpc == nil {
		a.httpc = &http.Client{Timeout: 10 * time.Second}
	}
	switch {
	case a.lifetime == 0:
		a.lifetime = DefaultTokenLifetime
	case a.lifetime < time.Second:
		return nil, fmt.Errorf("authserver: TokenLifetime %v is below 1s (expires_in is whole seconds)", cfg.TokenLifetime)
	}
	if cfg.TokenURL != "" {
		if err := checkAbsURL(cfg.TokenURL); err != nil {
			return nil, fmt.Errorf("authserver: TokenURL: %w", err)
		}
		a.auds[cfg.TokenURL] = true
	}

	scopeStrs := cfg.Scopes
	if len(scopeStrs) == 0 {
		scopeStrs = DefaultScopes
	}
	for _, s := range scopeStrs {
		sc, err := parseScope(s)
		if err != nil {
			return nil, fmt.Errorf("authserver: Scopes: %w", err)
		}
		a.scopes = append(a.scopes, sc)
	}

	switch a.mode {
	case ModeNone:
		if len(cfg.Clients) > 0 || cfg.StaticToken != "" {
			return nil, errors.New("authserver: Mode none (auth off) takes no Clients or StaticToken")
		}
	case ModeBearer:
		if cfg.StaticToken == "" {
			return nil, errors.New("authserver: Mode bearer needs StaticToken")
		}
		if len(cfg.Clients) > 0 {
			return nil, errors.New("authserver: Mode bearer takes no Clients (there is no token endpoint)")
		}
	case ModeSMART, ModeClientSecret:
		if cfg.StaticToken != "" {
			return nil, fmt.Errorf("authserver: StaticToken is only for Mode bearer, not %q", a.mode)
		}
		if len(cfg.Clients) == 0 {
			return nil, fmt.Errorf("authserver: Mode %s needs at least one registered client", a.mode)
		}
		for i, c := range cfg.Clients {
			if err := a.checkClient(c); err != nil {
				return nil, fmt.Errorf("authserver: Clients[%d] (%q): %w", i, c.ID, err)
			}
			if _, dup := a.clients[c.ID]; dup {
				return nil, fmt.Errorf("authserver: Clients[%d]: duplicate client ID %q", i, c.ID)
			}
			a.clients[c.ID] = c
		}
	default:
		return nil, fmt.Errorf("authserver: unknown Mode %q (want \"\", none, smart, client-secret or bearer)", cfg.Mode)
	}
	return a, nil
}

func (a *Server) checkClient(c Client) error {
	if c.ID == "" {
		return errors.New("empty ID")
	}
	switch a.mode {
	case ModeSMART:
		if c.Secret != "" {
			return errors.New("Secret is for Mode client-secret; smart clients register a JWKS")
		}
		// One source keeps key resolution unambiguous
		// (client-confidential-asymmetric.md L224-252, steps 1-3).
		if (c.JWKS == nil) == (c.JWKSURL == "") {
			return errors.New("set exactly one of JWKS or JWKSURL")
		}
		if c.JWKSURL != "" {
			if err := checkAbsURL(c.JWKSURL); err != nil {
				return fmt.Errorf("JWKSURL: %w", err)
			}
		}
		if c.JWKS != nil {
			if len(c.JWKS.Keys) == 0 {
				return errors.New("JWKS has no keys")
			}
			if err := checkJWKS(c.JWKS); err != nil {
				return fmt.Errorf("JWKS: %w", err)
			}
		}
	case ModeClientSecret:
		if c.Secret == "" {
			return errors.New("Mode client-secret needs Secret")
		}
		if c.JWKS != nil || c.JWKSURL != "" {
			return errors.New("JWKS/JWKSURL are for Mode smart")
		}
	}
	return nil
}

// checkJWKS applies the registration rules (client-confidential-asymmetric.md
// L56-110): every key has a kid, and kids are unique.
func checkJWKS(set *jose.JSONWebKeySet) error {
	seen := map[string]bool{}
	for i, k := range set.Keys {
		if k.KeyID == "" {
			return fmt.Errorf("key %d has no kid", i)
		}
		if seen[k.KeyID] {
			return fmt.Errorf("kid %q is not unique", k.KeyID)
		}
		seen[k.KeyID] = true
		if !k.Valid() {
			return fmt.Errorf("key %q is not a valid key", k.KeyID)
		}
	}
	return nil
}

func checkAbsURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	return nil
}

// Enabled reports whether requests need a token at all (Mode other than none).
func (a *Server) Enabled() bool { return a.mode != ModeNone }

// Mode returns the normalised mode ("none" for "").
func (a *Server) Mode() string { return a.mode }

// ExpireAllTokens makes every token issued so far invalid now, so the next
// resource request gets 401 "token expired" (checklist §3 fault 5 and 22). In
// Mode bearer the static token cannot expire; use a fault that rejects it.
func (a *Server) ExpireAllTokens() {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range a.tokens {
		if t.expires.After(now) {
			t.expires = now
		}
	}
	a.stats.ExpireAllCalls++
}

// randomString returns n random bytes, base64url encoded.
func randomString(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// SmartConfiguration returns the body of [base]/.well-known/smart-configuration
// (conformance.md L126-195; client-confidential-asymmetric.md L41). tokenURL
// must be absolute ("All endpoint URLs … SHALL be absolute"); a relative one is
// resolved against fhirBase. The resolved URL is also accepted as assertion aud.
//
// It returns nil when there is no SMART authorization to advertise (Mode none
// or bearer): serve 404 then, which clients must tolerate (checklist §3
// fault 1).
func (a *Server) SmartConfiguration(fhirBase, tokenURL string) map[string]any {
	if a.mode != ModeSMART && a.mode != ModeClientSecret {
		return nil
	}
	tok := tokenURL
	if base, err := url.Parse(fhirBase); err == nil {
		if !strings.HasSuffix(base.Path, "/") {
			base.Path += "/"
		}
		if ref, err := url.Parse(tokenURL); err == nil {
			tok = base.ResolveReference(ref).String()
		}
	}
	a.mu.Lock()
	a.auds[tok] = true
	a.mu.Unlock()

	var v1, v2 bool
	scopes := make([]string, 0, len(a.scopes))
	for _, s := range a.scopes {
		scopes = append(scopes, s.String())
		if s.v2 {
			v2 = true
		} else {
			v1 = true
		}
	}
	caps := []string{}
	var methods []string
	cfg := map[string]any{
		"token_endpoint":                   tok,
		"grant_types_supported":            []string{"client_credentials"},
		"scopes_supported":                 scopes,
		"code_challenge_methods_supported": []string{"S256"},
	}
	if a.mode == ModeSMART {
		caps = append(caps, "client-confidential-asymmetric")
		methods = []string{"private_key_jwt"}
		cfg["token_endpoint_auth_signing_alg_values_supported"] = []string{"RS384", "ES384"}
	} else {
		caps = append(caps, "client-confidential-symmetric")
		methods = []string{"client_secret_basic", "client_secret_post"}
	}
	if v2 {
		caps = append(caps, "permission-v2")
	}
	if v1 {
		caps = append(caps, "permission-v1")
	}
	cfg["capabilities"] = caps
	cfg["token_endpoint_auth_methods_supported"] = methods
	return cfg
}
