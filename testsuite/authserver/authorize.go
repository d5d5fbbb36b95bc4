package authserver

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"strings"
)

// AuthError is a resource-server rejection, ready to be written back.
type AuthError struct {
	Status      int
	Body        []byte
	ContentType string
	// WWWAuthenticate is the header value to send (RFC 6750 §3).
	WWWAuthenticate string
	// Reason is a short machine-readable cause (e.g. "expired"), for logs.
	Reason string
}

// Error makes *AuthError usable as an error.
func (e *AuthError) Error() string {
	return fmt.Sprintf("authserver: %d %s", e.Status, strings.TrimSpace(string(e.Body)))
}

// ServeHTTP writes the rejection, so an *AuthError can be returned as a handler.
func (e *AuthError) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	if e.WWWAuthenticate != "" {
		w.Header().Set("WWW-Authenticate", e.WWWAuthenticate)
	}
	w.Header().Set("Content-Type", e.ContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(e.Status)
	_, _ = w.Write(e.Body)
}

// Authorize-failure reasons, the keys of Stats.AuthorizeFailures.
const (
	AuthzMissing      = "missing"            // no Authorization header
	AuthzBadScheme    = "bad_scheme"         // not "Bearer <token>"
	AuthzUnknown      = "unknown_token"      // token never issued (or forgotten)
	AuthzExpired      = "expired"            // token past its lifetime or ExpireAllTokens
	AuthzInsufficient = "insufficient_scope" // token lacks a scope for a requested type
)

// Stats are counters for test assertions; maps are copies.
type Stats struct {
	TokenRequests int
	TokensIssued  int
	// TokenErrors counts token-endpoint errors by RFC 6749 code.
	TokenErrors map[string]int
	// AssertionsRejected counts client-authentication failures by Reason*
	// constant (JWT assertions in smart mode, secrets in client-secret mode).
	AssertionsRejected map[string]int
	JTIReplays         int
	JWKSFetches        int
	AuthorizeOK        int
	// AuthorizeFailures counts Authorize rejections by Authz* constant.
	AuthorizeFailures map[string]int
	ExpireAllCalls    int
}

// AuthorizeFailureTotal sums AuthorizeFailures.
func (s Stats) AuthorizeFailureTotal() int {
	n := 0
	for _, v := range s.AuthorizeFailures {
		n += v
	}
	return n
}

// Stats returns a snapshot of the counters.
func (a *Server) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.stats
	s.TokenErrors = maps.Clone(a.stats.TokenErrors)
	s.AssertionsRejected = maps.Clone(a.stats.AssertionsRejected)
	s.AuthorizeFailures = maps.Clone(a.stats.AuthorizeFailures)
	return s
}

// Authorize checks the bearer token of a FHIR request (kick-off, status, file,
// DELETE). nil means allowed; it is always nil in Mode none. Resource types
// named in _type (query string, or a Parameters body of a POST kick-off) must
// be covered by the granted scopes; use AuthorizeTypes when the caller knows
// the types (e.g. a file download).
//
// Rejections: 401 with a PLAIN TEXT body (clients must cope with non-JSON
// 401s, checklist §3 fault 6) and WWW-Authenticate: Bearer (RFC 6750 §3.1);
// 403 insufficient_scope when the token is valid but does not cover a type
// (the resource server "SHALL validate the access token" for expiry and scope,
// backend-services.md L256).
func (a *Server) Authorize(r *http.Request) *AuthError {
	if !a.Enabled() {
		return nil
	}
	return a.AuthorizeTypes(r, requestedTypes(r)...)
}

// AuthorizeTypes is Authorize with the required resource types given
// explicitly ("*" requires a wildcard scope). With no types any valid token
// passes.
func (a *Server) AuthorizeTypes(r *http.Request, types ...string) *AuthError {
	if !a.Enabled() {
		return nil
	}
	e := a.authorize(r, types)
	a.mu.Lock()
	if e == nil {
		a.stats.AuthorizeOK++
	} else {
		incr(&a.stats.AuthorizeFailures, e.Reason)
	}
	a.mu.Unlock()
	return e
}

// TokenClient returns the client_id a request's bearer token was issued to,
// if the token is currently valid. The test server can use it to keep one
// client per export job (BD2 L30-38: servers MAY limit status/file requests
// "to the client that originated the export"). Mode bearer reports "bearer".
func (a *Server) TokenClient(r *http.Request) (clientID string, ok bool) {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimSpace(tok)
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	switch a.mode {
	case ModeBearer:
		return ModeBearer, subtle.ConstantTimeCompare([]byte(tok), []byte(a.static)) == 1
	case ModeSMART, ModeClientSecret:
		now := a.now()
		a.mu.Lock()
		defer a.mu.Unlock()
		if t, found := a.tokens[tok]; found && now.Before(t.expires) {
			return t.clientID, true
		}
	}
	return "", false
}

// Middleware wraps next with Authorize.
func (a *Server) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e := a.Authorize(r); e != nil {
			e.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func unauthorized(reason, msg string, withError bool) *AuthError {
	h := `Bearer realm="bulkflow-test"`
	if withError {
		h += `, error="invalid_token", error_description="` + msg + `"`
	}
	return &AuthError{
		Status:          http.StatusUnauthorized,
		Body:            []byte(msg + "\n"),
		ContentType:     "text/plain; charset=utf-8",
		WWWAuthenticate: h,
		Reason:          reason,
	}
}

func (a *Server) authorize(r *http.Request, types []string) *AuthError {
	hdr := r.Header.Get("Authorization")
	if hdr == "" {
		// RFC 6750 §3.1: a request without credentials SHOULD NOT get an
		// error code, just the challenge.
		return unauthorized(AuthzMissing, "missing bearer token", false)
	}
	scheme, tok, _ := strings.Cut(hdr, " ")
	tok = strings.TrimSpace(tok)
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return unauthorized(AuthzBadScheme, "authorization must be Bearer <token>", true)
	}

	if a.mode == ModeBearer {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(a.static)) != 1 {
			return unauthorized(AuthzUnknown, "invalid token", true)
		}
		return nil // the static token carries every scope
	}

	now := a.now()
	a.mu.Lock()
	t, ok := a.tokens[tok]
	var granted []scope
	expired := false
	if ok {
		granted = t.scopes
		expired = !now.Before(t.expires)
	}
	a.mu.Unlock()
	switch {
	case !ok:
		return unauthorized(AuthzUnknown, "invalid token", true)
	case expired:
		return unauthorized(AuthzExpired, "token expired", true)
	}

	var missing []string
	for _, typ := range types {
		covered := false
		for _, s := range granted {
			if s.covers(typ) {
				covered = true
				break
			}
		}
		if !covered {
			missing = append(missing, typ)
		}
	}
	if len(missing) > 0 {
		msg := "token scope does not cover " + strings.Join(missing, ",")
		return &AuthError{
			Status:          http.StatusForbidden,
			Body:            []byte(msg + "\n"),
			ContentType:     "text/plain; charset=utf-8",
			WWWAuthenticate: `Bearer realm="bulkflow-test", error="insufficient_scope", error_description="` + msg + `"`,
			Reason:          AuthzInsufficient,
		}
	}
	return nil
}

// requestedTypes collects _type values from the query and, for a POST
// kick-off, from a FHIR Parameters body (BD2 L114-197). The body is restored
// for the next handler.
func requestedTypes(r *http.Request) []string {
	var raw []string
	raw = append(raw, r.URL.Query()["_type"]...)
	if r.Method == http.MethodPost && r.Body != nil {
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if strings.Contains(mt, "json") {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), r.Body))
			if err == nil {
				var p struct {
					ResourceType string `json:"resourceType"`
					Parameter    []struct {
						Name        string `json:"name"`
						ValueString string `json:"valueString"`
					} `json:"parameter"`
				}
				if json.Unmarshal(body, &p) == nil && p.ResourceType == "Parameters" {
					for _, pp := range p.Parameter {
						if pp.Name == "_type" {
							raw = append(raw, pp.ValueString)
						}
					}
				}
			}
		}
	}
	var types []string
	for _, v := range raw {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				types = append(types, t)
			}
		}
	}
	return types
}
