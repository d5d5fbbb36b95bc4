package authserver

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Reasons a client authentication is rejected, the keys of
// Stats.AssertionsRejected. All of them answer invalid_client (401).
const (
	ReasonMalformed        = "malformed"          // not a compact JWS JWT, or several signatures
	ReasonAlg              = "alg"                // alg other than RS384/ES384
	ReasonTyp              = "typ"                // typ header missing or not "JWT"
	ReasonKid              = "kid"                // kid missing, or not exactly one key with that kid and a kty fitting alg
	ReasonUnknownClient    = "unknown_client"     // iss (or client_id) is not registered
	ReasonIssSub           = "iss_sub"            // sub differs from iss
	ReasonClientIDMismatch = "client_id_mismatch" // form client_id differs from iss / Basic user
	ReasonAud              = "aud"                // aud is not this token endpoint
	ReasonExpMissing       = "exp_missing"        // no exp claim
	ReasonExpTooFar        = "exp_too_far"        // exp more than 5 minutes (+ skew) ahead
	ReasonExpired          = "expired"            // exp in the past (beyond skew)
	ReasonNotYetValid      = "not_yet_valid"      // nbf or iat in the future (beyond skew)
	ReasonJTIMissing       = "jti_missing"        // no jti claim
	ReasonJTIReplay        = "jti_replay"         // jti already seen for this iss
	ReasonSignature        = "signature"          // signature does not verify
	ReasonJKU              = "jku"                // jku header is not the registered JWKS URL
	ReasonJWKSFetch        = "jwks_fetch"         // registered JWKS URL could not be fetched/parsed
	ReasonAssertionType    = "assertion_type"     // client_assertion_type is not jwt-bearer
	ReasonNoClientAuth     = "no_client_auth"     // no client credentials at all
	ReasonAuthMethod       = "auth_method"        // credentials of the other mode (secret vs JWT)
	ReasonBadSecret        = "bad_secret"         // client-secret mode: wrong secret
)

const (
	// ClockSkew is tolerated on exp/nbf/iat, since client and server clocks
	// differ (checklist §3 fault 7).
	ClockSkew = 60 * time.Second
	// MaxAssertionLifetime: exp "SHALL be no more than five minutes in the
	// future" (client-confidential-asymmetric.md, claims table).
	MaxAssertionLifetime = 5 * time.Minute
	maxJWKSBody          = 1 << 20
)

// parseAlgs lets any JWS algorithm parse so a bad alg is reported as such
// (ReasonAlg) rather than as a malformed token; only RS384/ES384 are then
// verified.
var parseAlgs = []jose.SignatureAlgorithm{
	jose.EdDSA, jose.HS256, jose.HS384, jose.HS512,
	jose.RS256, jose.RS384, jose.RS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.PS256, jose.PS384, jose.PS512,
}

// validateAssertion checks a client_assertion (RFC 7523 §3 as required by
// client-confidential-asymmetric.md L224-252) and returns the client_id.
func (a *Server) validateAssertion(r *http.Request, assertion, formClientID string) (string, *oauthError) {
	tok, err := jwt.ParseSigned(assertion, parseAlgs)
	if err != nil {
		// go-jose refuses "none" and unknown algs at parse time; still report
		// them as an alg problem, which is what a client author needs to hear.
		if alg, ok := rawHeaderAlg(assertion); ok && alg != string(jose.RS384) && alg != string(jose.ES384) {
			return "", authFailure(ReasonAlg, fmt.Sprintf("alg %q is not accepted; use RS384 or ES384", alg))
		}
		return "", authFailure(ReasonMalformed, "client_assertion is not a signed JWT: "+err.Error())
	}
	if len(tok.Headers) != 1 {
		return "", authFailure(ReasonMalformed, "client_assertion must have exactly one signature")
	}
	h := tok.Headers[0]
	alg := jose.SignatureAlgorithm(h.Algorithm)
	if alg != jose.RS384 && alg != jose.ES384 {
		return "", authFailure(ReasonAlg, fmt.Sprintf("alg %q is not accepted; use RS384 or ES384", h.Algorithm))
	}
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); !strings.EqualFold(typ, "JWT") {
		return "", authFailure(ReasonTyp, `typ header must be "JWT"`)
	}
	if h.KeyID == "" {
		return "", authFailure(ReasonKid, "kid header is required")
	}

	// The key depends on who claims to have signed, so read iss unverified
	// first; nothing is trusted until the signature checks out.
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return "", authFailure(ReasonMalformed, "cannot decode claims: "+err.Error())
	}
	iss := unverified.Issuer
	client, ok := a.clients[iss]
	if !ok || iss == "" {
		return "", authFailure(ReasonUnknownClient, fmt.Sprintf("iss %q is not a registered client_id", iss))
	}
	if unverified.Subject != iss {
		return "", authFailure(ReasonIssSub, fmt.Sprintf("sub %q must equal iss %q (both are the client_id)", unverified.Subject, iss))
	}
	if formClientID != "" && formClientID != iss {
		return "", authFailure(ReasonClientIDMismatch, fmt.Sprintf("client_id %q does not match iss %q", formClientID, iss))
	}

	// Key resolution, client-confidential-asymmetric.md L224-252 steps 1-3.
	var keys *jose.JSONWebKeySet
	if raw, present := h.ExtraHeaders["jku"]; present {
		jku, _ := raw.(string)
		if client.JWKSURL == "" || jku != client.JWKSURL {
			return "", authFailure(ReasonJKU, fmt.Sprintf("jku %q does not match the JWKS URL registered for %q", jku, iss))
		}
	}
	if client.JWKSURL != "" {
		keys, err = a.fetchJWKS(client.JWKSURL)
		if err != nil {
			return "", authFailure(ReasonJWKSFetch, fmt.Sprintf("cannot fetch JWKS for %q: %v", iss, err))
		}
	} else {
		keys = client.JWKS
	}
	var candidates []jose.JSONWebKey
	for _, k := range keys.Keys {
		if k.KeyID == h.KeyID && ktyFits(k, alg) {
			candidates = append(candidates, k)
		}
	}
	if len(candidates) != 1 {
		return "", authFailure(ReasonKid, fmt.Sprintf("%d keys match kid %q with a kty fitting %s; exactly one is required", len(candidates), h.KeyID, alg))
	}

	var claims jwt.Claims
	if err := tok.Claims(candidates[0].Public(), &claims); err != nil {
		return "", authFailure(ReasonSignature, "signature verification failed: "+err.Error())
	}

	auds := a.acceptedAudiences(r)
	audOK := false
	for _, v := range claims.Audience {
		if auds[normalizeURL(v)] {
			audOK = true
			break
		}
	}
	if !audOK {
		return "", authFailure(ReasonAud, fmt.Sprintf("aud %q is not this token endpoint (accepted: %s)", []string(claims.Audience), joinSorted(auds)))
	}
	now := a.now()
	if claims.Expiry == nil {
		return "", authFailure(ReasonExpMissing, "exp claim is required")
	}
	exp := claims.Expiry.Time()
	if now.Add(-ClockSkew).After(exp) {
		return "", authFailure(ReasonExpired, fmt.Sprintf("assertion expired at %s", exp.UTC().Format(time.RFC3339)))
	}
	if exp.After(now.Add(MaxAssertionLifetime + ClockSkew)) {
		return "", authFailure(ReasonExpTooFar, fmt.Sprintf("exp %s is more than 5 minutes in the future", exp.UTC().Format(time.RFC3339)))
	}
	if (claims.NotBefore != nil && claims.NotBefore.Time().After(now.Add(ClockSkew))) ||
		(claims.IssuedAt != nil && claims.IssuedAt.Time().After(now.Add(ClockSkew))) {
		return "", authFailure(ReasonNotYetValid, "nbf/iat is in the future")
	}
	if claims.ID == "" {
		return "", authFailure(ReasonJTIMissing, "jti claim is required")
	}

	// "check that the jti value has not been previously encountered for the
	// given iss" (L224-252). A replay is an authentication failure, hence
	// invalid_client (L248-250) rather than invalid_grant. Recorded only after the signature verified, so
	// forged assertions cannot burn a client's jti values. An entry can be
	// forgotten once its assertion would fail as expired anyway.
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := a.jtis[iss]
	if seen == nil {
		seen = map[string]time.Time{}
		a.jtis[iss] = seen
	}
	for j, until := range seen {
		if now.After(until) {
			delete(seen, j)
		}
	}
	if _, dup := seen[claims.ID]; dup {
		a.stats.JTIReplays++
		return "", authFailure(ReasonJTIReplay, fmt.Sprintf("jti %q was already used by %q", claims.ID, iss))
	}
	seen[claims.ID] = exp.Add(ClockSkew)
	return iss, nil
}

// rawHeaderAlg decodes the alg of a compact JWS header without trusting it.
func rawHeaderAlg(compact string) (string, bool) {
	head, _, ok := strings.Cut(compact, ".")
	if !ok {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return "", false
	}
	var h struct {
		Alg *string `json:"alg"`
	}
	if json.Unmarshal(b, &h) != nil || h.Alg == nil {
		return "", false
	}
	return *h.Alg, true
}

// ktyFits: "the kty is consistent with the signature algorithm" (RSA for RS*,
// EC for ES*). A key that declares a different alg or a non-signing use is not
// a candidate either (RFC 7517 §4.2, §4.4).
func ktyFits(k jose.JSONWebKey, alg jose.SignatureAlgorithm) bool {
	if k.Algorithm != "" && k.Algorithm != string(alg) {
		return false
	}
	if k.Use != "" && k.Use != "sig" {
		return false
	}
	switch k.Key.(type) {
	case *rsa.PublicKey, *rsa.PrivateKey:
		return alg == jose.RS384
	case *ecdsa.PublicKey, *ecdsa.PrivateKey:
		return alg == jose.ES384
	}
	return false
}

type cachedJWKS struct {
	keys  *jose.JSONWebKeySet
	until time.Time
}

// fetchJWKS GETs a registered JWKS URL with Accept: application/json and
// caches it no longer than its Cache-Control allows: "SHALL NOT cache a JWKS
// for longer than the client's cache-control header indicates"
// (client-confidential-asymmetric.md L224-252). No max-age means no caching.
func (a *Server) fetchJWKS(u string) (*jose.JSONWebKeySet, error) {
	now := a.now()
	a.mu.Lock()
	c, ok := a.jwksCache[u]
	a.mu.Unlock()
	if ok && now.Before(c.until) {
		return c.keys, nil
	}

	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := a.httpc.Do(req)
	a.mu.Lock()
	a.stats.JWKSFetches++
	a.mu.Unlock()
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err == nil && !strings.Contains(mt, "json") {
		return nil, fmt.Errorf("GET %s: Content-Type %q is not JSON", u, mt)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBody+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if len(body) > maxJWKSBody {
		return nil, fmt.Errorf("GET %s: JWKS larger than %d bytes", u, maxJWKSBody)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("GET %s: not a JWK Set: %w", u, err)
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("GET %s: JWK Set has no keys", u)
	}
	if err := checkJWKS(&set); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if ttl := cacheTTL(resp.Header.Values("Cache-Control")); ttl > 0 {
		a.mu.Lock()
		a.jwksCache[u] = cachedJWKS{keys: &set, until: now.Add(ttl)}
		a.mu.Unlock()
	} else {
		a.mu.Lock()
		delete(a.jwksCache, u)
		a.mu.Unlock()
	}
	return &set, nil
}

// cacheTTL reads max-age from Cache-Control; no-store / no-cache / absent
// mean 0 (do not cache).
func cacheTTL(values []string) time.Duration {
	var ttl time.Duration
	for _, v := range values {
		for _, d := range strings.Split(v, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store", "no-cache":
				return 0
			case "max-age":
				n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(val), `"`))
				if err != nil || n <= 0 {
					return 0
				}
				ttl = time.Duration(n) * time.Second
			}
		}
	}
	return ttl
}
