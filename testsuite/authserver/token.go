package authserver

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// OAuth 2.0 token error codes (RFC 6749 §5.2), as listed in checklist §2
// "Token errors". invalid_grant is never sent: client_credentials carries no
// grant that could be invalid, and SMART makes every assertion problem
// (including a replayed jti) invalid_client
// (client-confidential-asymmetric.md L248-250).
const (
	CodeInvalidRequest       = "invalid_request"
	CodeInvalidClient        = "invalid_client"
	CodeInvalidGrant         = "invalid_grant"
	CodeUnauthorizedClient   = "unauthorized_client"
	CodeUnsupportedGrantType = "unsupported_grant_type"
	CodeInvalidScope         = "invalid_scope"
)

// unexported aliases keep call sites short.
const (
	errInvalidRequest       = CodeInvalidRequest
	errInvalidClient        = CodeInvalidClient
	errUnauthorizedClient   = CodeUnauthorizedClient
	errUnsupportedGrantType = CodeUnsupportedGrantType
	errInvalidScope         = CodeInvalidScope
)

const (
	grantClientCredentials = "client_credentials"
	assertionTypeJWTBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	maxTokenBody           = 64 << 10
)

// knownGrants are grant types OAuth defines. A known one other than
// client_credentials is unauthorized_client for an authenticated client;
// anything else is unsupported_grant_type (RFC 6749 §5.2).
var knownGrants = map[string]bool{
	grantClientCredentials: true,
	"authorization_code":   true,
	"refresh_token":        true,
	"password":             true,
	"urn:ietf:params:oauth:grant-type:jwt-bearer":     true,
	"urn:ietf:params:oauth:grant-type:device_code":    true,
	"urn:ietf:params:oauth:grant-type:token-exchange": true,
}

// oauthError is an RFC 6749 §5.2 error response. reason, when set, is the
// client-authentication failure counted in Stats.AssertionsRejected.
type oauthError struct {
	code   string
	desc   string
	reason string
	basic  bool // client tried HTTP Basic: 401 must carry WWW-Authenticate: Basic
}

func newOAuthError(code, desc string) *oauthError { return &oauthError{code: code, desc: desc} }

func authFailure(reason, desc string) *oauthError {
	return &oauthError{code: errInvalidClient, desc: desc, reason: reason}
}

func (e *oauthError) status() int {
	// RFC 6749 §5.2: 400 unless invalid_client, which may be 401 (and must be
	// when the client used the Authorization header).
	if e.code == errInvalidClient {
		return http.StatusUnauthorized
	}
	return http.StatusBadRequest
}

func writeOAuthError(w http.ResponseWriter, status int, e *oauthError) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	if e.basic && status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Basic realm="bulkflow-test"`)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": e.code, "error_description": e.desc})
}

// TokenHandler serves the token endpoint: POST,
// application/x-www-form-urlencoded (backend-services.md L110-154). In modes
// none and bearer there is no token endpoint and it answers
// unsupported_grant_type.
func (a *Server) TokenHandler() http.Handler { return http.HandlerFunc(a.serveToken) }

func (a *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.stats.TokenRequests++
	a.mu.Unlock()

	status, e := 0, (*oauthError)(nil)
	defer func() {
		if e == nil {
			return
		}
		a.mu.Lock()
		incr(&a.stats.TokenErrors, e.code)
		if e.reason != "" {
			incr(&a.stats.AssertionsRejected, e.reason)
		}
		a.mu.Unlock()
		if status == 0 {
			status = e.status()
		}
		writeOAuthError(w, status, e)
	}()

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		status, e = http.StatusMethodNotAllowed, newOAuthError(errInvalidRequest, "the token endpoint accepts POST only")
		return
	}
	if a.mode != ModeSMART && a.mode != ModeClientSecret {
		e = newOAuthError(errUnsupportedGrantType, fmt.Sprintf("auth mode %q has no token endpoint", a.mode))
		return
	}
	form, fe := readForm(w, r)
	if fe != nil {
		e = fe
		return
	}
	gt := form.Get("grant_type")
	switch {
	case gt == "":
		e = newOAuthError(errInvalidRequest, "grant_type is required")
		return
	case !knownGrants[gt]:
		e = newOAuthError(errUnsupportedGrantType, fmt.Sprintf("grant_type %q is not supported; use client_credentials", gt))
		return
	}
	// SMART backend services requires scope (backend-services.md L110-154).
	if !form.Has("scope") {
		e = newOAuthError(errInvalidRequest, "scope is required")
		return
	}

	var clientID string
	if a.mode == ModeSMART {
		clientID, e = a.authenticateJWT(r, form)
	} else {
		clientID, e = a.authenticateSecret(r, form)
	}
	if e != nil {
		return
	}
	if gt != grantClientCredentials {
		e = newOAuthError(errUnauthorizedClient, fmt.Sprintf("client %q may only use grant_type client_credentials", clientID))
		return
	}
	granted, se := a.grant(form.Get("scope"))
	if se != nil {
		e = se
		return
	}

	tok, err := randomString(32)
	if err != nil {
		status, e = http.StatusInternalServerError, newOAuthError("server_error", "cannot generate a token")
		return
	}
	now := a.now()
	a.mu.Lock()
	a.pruneTokensLocked(now)
	a.tokens[tok] = &issuedToken{clientID: clientID, scopes: granted, expires: now.Add(a.lifetime)}
	a.stats.TokensIssued++
	a.mu.Unlock()

	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": tok,
		"token_type":   "bearer",
		"expires_in":   int64(a.lifetime / time.Second),
		"scope":        joinScopes(granted),
	})
}

// pruneTokensLocked forgets tokens that expired over an hour ago; recently
// expired ones are kept so Authorize can say "token expired".
func (a *Server) pruneTokensLocked(now time.Time) {
	for k, t := range a.tokens {
		if now.Sub(t.expires) > time.Hour {
			delete(a.tokens, k)
		}
	}
}

// readForm parses the body only (RFC 6749 §3.2: parameters are sent in the
// entity-body; credentials in the query string are not accepted) and rejects
// repeated parameters ("MUST NOT be included more than once").
func readForm(w http.ResponseWriter, r *http.Request) (url.Values, *oauthError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, newOAuthError(errInvalidRequest, "Content-Type must be application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTokenBody))
	if err != nil {
		return nil, newOAuthError(errInvalidRequest, "cannot read request body: "+err.Error())
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, newOAuthError(errInvalidRequest, "malformed form body: "+err.Error())
	}
	for k, v := range form {
		if len(v) > 1 {
			return nil, newOAuthError(errInvalidRequest, fmt.Sprintf("parameter %q is repeated", k))
		}
	}
	return form, nil
}

// authenticateJWT is private_key_jwt client authentication
// (client-confidential-asymmetric.md L125-252). Every failure is
// invalid_client: "If an error is encountered during the authentication
// process, the server SHALL respond with an invalid_client error" (L248-250).
func (a *Server) authenticateJWT(r *http.Request, form url.Values) (string, *oauthError) {
	at, hasAT := form.Get("client_assertion_type"), form.Has("client_assertion_type")
	assertion, hasA := form.Get("client_assertion"), form.Has("client_assertion")
	if !hasAT && !hasA {
		if _, _, ok := r.BasicAuth(); ok || form.Has("client_secret") {
			e := authFailure(ReasonAuthMethod, "client secrets are not accepted here; authenticate with private_key_jwt (client_assertion)")
			e.basic = ok
			return "", e
		}
		return "", authFailure(ReasonNoClientAuth, "no client authentication: client_assertion_type and client_assertion are required")
	}
	if !hasAT || !hasA {
		return "", newOAuthError(errInvalidRequest, "client_assertion_type and client_assertion must be sent together")
	}
	if at != assertionTypeJWTBearer {
		return "", authFailure(ReasonAssertionType, fmt.Sprintf("client_assertion_type must be %s", assertionTypeJWTBearer))
	}
	return a.validateAssertion(r, assertion, form.Get("client_id"))
}

// authenticateSecret is client_secret_basic / client_secret_post
// (RFC 6749 §2.3.1).
func (a *Server) authenticateSecret(r *http.Request, form url.Values) (string, *oauthError) {
	bid, bsecret, basic := r.BasicAuth()
	post := form.Has("client_secret")
	switch {
	case basic && post:
		// "The client MUST NOT use more than one authentication method in each request."
		return "", newOAuthError(errInvalidRequest, "use either HTTP Basic or client_secret in the body, not both")
	case form.Has("client_assertion"):
		return "", authFailure(ReasonAuthMethod, "private_key_jwt is not accepted here; use client_secret_basic or client_secret_post")
	case !basic && !post:
		return "", authFailure(ReasonNoClientAuth, "no client authentication: use HTTP Basic or client_id + client_secret")
	}
	var id, secret string
	if basic {
		// Basic credentials are form-urlencoded first (RFC 6749 §2.3.1).
		id, secret = formUnescape(bid), formUnescape(bsecret)
		if fid := form.Get("client_id"); fid != "" && fid != id {
			e := authFailure(ReasonClientIDMismatch, "client_id in the body does not match the HTTP Basic user")
			e.basic = true
			return "", e
		}
	} else {
		id, secret = form.Get("client_id"), form.Get("client_secret")
		if id == "" {
			return "", newOAuthError(errInvalidRequest, "client_id is required with client_secret")
		}
	}
	c, ok := a.clients[id]
	if !ok {
		e := authFailure(ReasonUnknownClient, fmt.Sprintf("unknown client %q", id))
		e.basic = basic
		return "", e
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(c.Secret)) != 1 {
		e := authFailure(ReasonBadSecret, "client secret does not match")
		e.basic = basic
		return "", e
	}
	return id, nil
}

func formUnescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// acceptedAudiences are the URLs the client may have used as assertion aud: the
// one this request arrived at (before any StripPrefix), plus configured ones.
func (a *Server) acceptedAudiences(r *http.Request) map[string]bool {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	auds := map[string]bool{}
	paths := []string{r.URL.Path}
	if u, err := url.ParseRequestURI(r.RequestURI); err == nil && u.Path != r.URL.Path {
		paths = append(paths, u.Path)
	}
	for _, p := range paths {
		auds[normalizeURL(scheme+"://"+r.Host+p)] = true
	}
	a.mu.Lock()
	for k := range a.auds {
		auds[normalizeURL(k)] = true
	}
	a.mu.Unlock()
	return auds
}

// normalizeURL applies the RFC 3986 §6.2.3 equivalences that do not change
// what the URL names (case of scheme/host, default port, empty path = "/"),
// so "http://h:80" and "HTTP://h/" match as aud. Paths are otherwise compared
// exactly: a different path is a different endpoint.
func normalizeURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return s
	}
	u.Scheme = strings.ToLower(u.Scheme)
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	u.Host = host
	if u.Path == "" {
		u.Path = "/"
	}
	u.RawPath = ""
	return u.String()
}

func incr(m *map[string]int, k string) {
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[k]++
}

func joinSorted(m map[string]bool) string {
	parts := make([]string, 0, len(m))
	for k := range m {
		parts = append(parts, k)
	}
	// Deterministic descriptions make test failures readable.
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
