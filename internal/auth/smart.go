package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"
)

// SMART Backend Services (client-confidential-asymmetric), checklist §2.

// assertionLifetime: exp "SHALL be no more than five minutes in the future"
// (client-confidential-asymmetric.md). A minute less leaves room for our
// clock running ahead of the server's (checklist §3 #7); the assertion is
// used at once, so a short life costs nothing.
const assertionLifetime = 4 * time.Minute

// Scope syntax (checklist §2 "Scopes"): v2 for SMART 2 servers, v1 / Bulk
// STU1 for older ones.
var (
	scopesV2 = []string{"system/*.rs"}
	scopesV1 = []string{"system/*.read"}
)

// signingKey is the client's private key with its registered kid and alg.
type signingKey struct {
	key any // *rsa.PrivateKey or *ecdsa.PrivateKey
	kid string
	alg jose.SignatureAlgorithm
}

// loadSigningKey reads privateKeyFile or jwksFile. Errors never quote the
// file's contents: parse errors are replaced by a description of what was
// expected.
func (c Config) loadSigningKey() (*signingKey, error) {
	if (c.PrivateKeyFile == "") == (c.JWKSFile == "") {
		return nil, errors.New(`auth type "smart" needs exactly one of privateKeyFile (a PEM private key, with kid) or jwksFile (a JWK Set with the private key)`)
	}
	if c.Alg != "" && c.Alg != string(jose.RS384) && c.Alg != string(jose.ES384) {
		return nil, fmt.Errorf(`alg %q is not supported: SMART clients use "RS384" or "ES384"`, c.Alg)
	}
	var (
		key    any
		kid    = c.Kid
		keyAlg string
	)
	if c.PrivateKeyFile != "" {
		if c.Kid == "" {
			return nil, errors.New(`privateKeyFile needs kid: the key id registered with the server (the "kid" of the public key in the client's JWK Set)`)
		}
		var err error
		if key, err = readPEMKey(c.PrivateKeyFile); err != nil {
			return nil, err
		}
	} else {
		jwk, err := readJWKSKey(c.JWKSFile, c.Kid)
		if err != nil {
			return nil, err
		}
		key, kid, keyAlg = jwk.Key, jwk.KeyID, jwk.Algorithm
	}
	alg := c.Alg
	if keyAlg != "" {
		if alg != "" && alg != keyAlg {
			return nil, fmt.Errorf("alg %q does not match the key's own alg %q in %s", alg, keyAlg, c.JWKSFile)
		}
		alg = keyAlg
	}
	alg, err := checkKeyAlg(key, alg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.PrivateKeyFile+c.JWKSFile, err)
	}
	return &signingKey{key: key, kid: kid, alg: jose.SignatureAlgorithm(alg)}, nil
}

func readPEMKey(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("privateKeyFile: %w", err)
	}
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "ENCRYPTED PRIVATE KEY" || blk.Headers["Proc-Type"] != "" {
			return nil, fmt.Errorf("privateKeyFile %s: encrypted keys are not supported; store it unencrypted with file mode 0600", path)
		}
		var (
			key any
			err error
		)
		switch blk.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(blk.Bytes)
		default:
			continue // certificates, EC PARAMETERS
		}
		if err != nil {
			// The parser's message may describe the key's bytes; keep it out.
			return nil, fmt.Errorf("privateKeyFile %s: the %q PEM block is not a valid private key", path, blk.Type)
		}
		return key, nil
	}
	return nil, fmt.Errorf(`privateKeyFile %s holds no PEM private key (want "PRIVATE KEY" (PKCS#8), "RSA PRIVATE KEY" (PKCS#1) or "EC PRIVATE KEY")`, path)
}

// readJWKSKey picks the private key with kid from a JWK Set, or the only
// private key when kid is empty.
func readJWKSKey(path, kid string) (*jose.JSONWebKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwksFile: %w", err)
	}
	var set jose.JSONWebKeySet
	if json.Unmarshal(b, &set) != nil {
		// json/jose errors can quote input: name only the file.
		return nil, fmt.Errorf(`jwksFile %s is not a valid JWK Set ({"keys":[...]})`, path)
	}
	var private []jose.JSONWebKey
	var kids []string
	for _, k := range set.Keys {
		if k.IsPublic() || !k.Valid() {
			continue
		}
		private = append(private, k)
		kids = append(kids, fmt.Sprintf("%q", k.KeyID))
	}
	if len(private) == 0 {
		return nil, fmt.Errorf("jwksFile %s holds no private key (a JWK with \"d\"); the public JWK Set is what the server registers, the client needs the private one", path)
	}
	if kid != "" {
		private = slices.DeleteFunc(private, func(k jose.JSONWebKey) bool { return k.KeyID != kid })
		switch len(private) {
		case 0:
			return nil, fmt.Errorf("jwksFile %s has no private key with kid %q (private keys' kids: %s)", path, kid, strings.Join(kids, ", "))
		case 1:
		default:
			return nil, fmt.Errorf("jwksFile %s has %d private keys with kid %q; kid SHALL be unique within the client's JWK Set", path, len(private), kid)
		}
	} else if len(private) > 1 {
		return nil, fmt.Errorf("jwksFile %s holds %d private keys (kids: %s): set kid to choose one", path, len(private), strings.Join(kids, ", "))
	}
	k := private[0]
	if k.KeyID == "" {
		return nil, fmt.Errorf("jwksFile %s: the private key has no kid; each JWK SHALL include kid, the one registered with the server", path)
	}
	return &k, nil
}

// checkKeyAlg checks that key suits alg ("" = choose from the key type).
// SMART clients "SHALL support both RS384 and ES384".
func checkKeyAlg(key any, alg string) (string, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if alg == "" {
			alg = string(jose.RS384)
		}
		if alg != string(jose.RS384) {
			return "", fmt.Errorf("alg %s does not match the key: an RSA key signs RS384", alg)
		}
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("RSA key has %d bits; use at least 2048", k.N.BitLen())
		}
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P384() {
			return "", fmt.Errorf("EC key is on curve %s; ES384 needs P-384", k.Curve.Params().Name)
		}
		if alg == "" {
			alg = string(jose.ES384)
		}
		if alg != string(jose.ES384) {
			return "", fmt.Errorf("alg %s does not match the key: an EC P-384 key signs ES384", alg)
		}
	default:
		return "", fmt.Errorf("unsupported key type %T; use RSA (RS384) or EC P-384 (ES384)", key)
	}
	if alg != string(jose.RS384) && alg != string(jose.ES384) {
		return "", fmt.Errorf("alg %q is not supported: use RS384 or ES384", alg)
	}
	return alg, nil
}

// newJTI is a 128-bit random nonce: the server SHALL reject a jti
// "previously encountered for the given iss", so every assertion gets a
// fresh one (checklist §3 #7).
func newJTI() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// assertion builds the client assertion JWT (client-confidential-asymmetric.md
// L125-218): header alg, kid, typ "JWT" (+ jku); claims iss = sub = client
// id, aud = token endpoint URL, exp ≤ now + 5 min, iat, jti.
func (k *signingKey) assertion(clientID, aud, jku string, now time.Time) (string, error) {
	jti, err := newJTI()
	if err != nil {
		return "", fmt.Errorf("client assertion: random jti: %w", err)
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if jku != "" {
		opts = opts.WithHeader("jku", jku)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: jose.JSONWebKey{Key: k.key, KeyID: k.kid, Algorithm: string(k.alg)}}, opts)
	if err != nil {
		return "", fmt.Errorf("client assertion: signer for %s: %w", k.alg, err)
	}
	claims := jwt.Claims{
		Issuer:   clientID,
		Subject:  clientID,
		Audience: jwt.Audience{aud},
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(assertionLifetime)),
		ID:       jti,
	}
	s, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("client assertion: sign: %w", err)
	}
	return s, nil
}

// smartConfig is what discovery learnt. ok is false when the document was
// missing or unusable; reason then says why, for the error message.
type smartConfig struct {
	ok       bool
	tokenURL string
	caps     map[string]bool
	reason   string
}

// discover reads [base]/.well-known/smart-configuration (conformance.md
// L126-195). 404, other 4xx, non-JSON or a missing token_endpoint give
// ok=false so the caller falls back to tokenURL (checklist §3 #1); only
// 5xx, 429 and network errors are errors (ErrTemporary).
func (ep endpoint) discover(ctx context.Context, fhirBase string) (smartConfig, error) {
	wk := fhirBase + "/.well-known/smart-configuration"
	ctx, cancel := context.WithTimeout(ctx, tokenRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, wk, nil)
	if err != nil {
		return smartConfig{reason: "an invalid URL"}, nil
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ep.client.Do(req)
	if err != nil {
		return smartConfig{}, temporary(fmt.Errorf("smart-configuration: %w", err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	switch {
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return smartConfig{}, temporary(fmt.Errorf("%s: HTTP %d", wk, resp.StatusCode))
	case err != nil:
		return smartConfig{}, temporary(fmt.Errorf("%s: read: %w", wk, err))
	case resp.StatusCode != http.StatusOK:
		return smartConfig{reason: fmt.Sprintf("HTTP %d", resp.StatusCode)}, nil
	}
	// "JSON regardless of Accept": the Content-Type is not checked.
	var doc struct {
		TokenEndpoint string   `json:"token_endpoint"`
		Capabilities  []string `json:"capabilities"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return smartConfig{reason: "a body that is not a JSON object"}, nil
	}
	sc := smartConfig{caps: map[string]bool{}}
	for _, c := range doc.Capabilities {
		sc.caps[c] = true
	}
	if doc.TokenEndpoint == "" {
		sc.reason = "no token_endpoint"
		return sc, nil
	}
	// "All endpoint URLs … SHALL be absolute", but clients "SHOULD evaluate"
	// relative ones against the FHIR base (checklist §2 "Discovery").
	base, err := url.Parse(fhirBase + "/")
	ref, err2 := url.Parse(doc.TokenEndpoint)
	if err != nil || err2 != nil {
		sc.reason = "an unparseable token_endpoint"
		return sc, nil
	}
	u := base.ResolveReference(ref)
	if u.Scheme != "http" && u.Scheme != "https" {
		sc.reason = "a token_endpoint that is not an http(s) URL"
		return sc, nil
	}
	sc.ok, sc.tokenURL = true, u.String()
	return sc, nil
}

// smartFetcher gets tokens with a signed client assertion.
type smartFetcher struct {
	ep       endpoint
	cfg      Config
	key      *signingKey
	fhirBase string
	now      func() time.Time

	disc        *smartConfig // cached once discovery gave a definite answer
	useV1       bool         // the server rejected v2 scopes: keep to v1
	lastGranted string
}

func (f *smartFetcher) fetch(ctx context.Context) (*oauth2.Token, time.Duration, error) {
	sc, err := f.discovery(ctx)
	if err != nil {
		return nil, 0, err
	}
	// A configured tokenURL wins: the operator may know better than a
	// server advertising an internal host name; discovery then only
	// supplies capabilities for the scope choice.
	tokenURL := f.cfg.TokenURL
	if tokenURL == "" {
		if !sc.ok {
			return nil, 0, fmt.Errorf("no token endpoint for %s: %s/.well-known/smart-configuration gave %s; set tokenURL in the server's auth block", f.fhirBase, f.fhirBase, sc.reason)
		}
		tokenURL = sc.tokenURL
	}
	scopes := f.scopes(sc)
	tok, life, err := f.request(ctx, tokenURL, scopes)
	var te *TokenError
	if err != nil && !errors.Is(err, ErrTemporary) && errors.As(err, &te) && te.Code == "invalid_scope" && sc.caps["permission-v1"] && !f.useV1 {
		// Checklist §3 #3: a server listing permission-v1 may reject .rs;
		// retry once with the v1 equivalents, and keep to them.
		if v1, ok := toV1(scopes); ok {
			slog.Warn("auth: server rejected v2 scopes; retrying with v1 scopes", "fhirBase", f.fhirBase, "rejected", strings.Join(scopes, " "), "retry", strings.Join(v1, " "))
			tok, life, err = f.request(ctx, tokenURL, v1)
			if err == nil {
				f.useV1 = true
			}
			scopes = v1
		}
	}
	if err != nil {
		return nil, 0, err
	}
	f.checkGranted(scopes, tok)
	return tok, life, nil
}

// discovery returns the cached smart-configuration, fetching it if needed.
// A temporary failure is not cached; with a configured tokenURL it is not
// even fatal (scopes then default to v2).
func (f *smartFetcher) discovery(ctx context.Context) (smartConfig, error) {
	if f.disc != nil {
		return *f.disc, nil
	}
	if f.fhirBase == "" {
		f.disc = &smartConfig{reason: "nothing (no FHIR base URL)"}
		return *f.disc, nil
	}
	sc, err := f.ep.discover(ctx, f.fhirBase)
	if err != nil {
		if f.cfg.TokenURL != "" {
			slog.Warn("auth: smart-configuration unavailable; using the configured tokenURL", "fhirBase", f.fhirBase, "err", err)
			return smartConfig{}, nil
		}
		return smartConfig{}, err
	}
	if !sc.ok && f.cfg.TokenURL != "" {
		slog.Debug("auth: no usable smart-configuration; using the configured tokenURL", "fhirBase", f.fhirBase, "got", sc.reason)
	}
	f.disc = &sc
	return sc, nil
}

// scopes: configured ones, else from capabilities: v2 when permission-v2 is
// listed or neither syntax is, v1 when only permission-v1 is.
func (f *smartFetcher) scopes(sc smartConfig) []string {
	s := f.cfg.Scopes
	if len(s) == 0 {
		s = scopesV2
		if sc.caps["permission-v1"] && !sc.caps["permission-v2"] {
			s = scopesV1
		}
	}
	if f.useV1 {
		if v1, ok := toV1(s); ok {
			return v1
		}
	}
	return s
}

// toV1 maps v2 read/search scopes to v1 (scopes-and-launch-context.md
// L80-84: "v1 .read ⇒ v2 .rs"). ok is false when nothing changed or a scope
// has no v1 equivalent (write permissions, ?param= restrictions).
func toV1(scopes []string) ([]string, bool) {
	out := make([]string, 0, len(scopes))
	changed := false
	for _, s := range scopes {
		i := strings.LastIndexByte(s, '.')
		if i < 0 || !strings.Contains(s[:i], "/") || strings.Contains(s, "?") {
			return nil, false
		}
		perm := s[i+1:]
		switch {
		case perm == "read":
			out = append(out, s)
		case perm != "" && strings.Trim(perm, "rs") == "":
			out = append(out, s[:i]+".read")
			changed = true
		default:
			return nil, false
		}
	}
	return out, changed
}

func (f *smartFetcher) request(ctx context.Context, tokenURL string, scopes []string) (*oauth2.Token, time.Duration, error) {
	a, err := f.key.assertion(f.cfg.ClientID, tokenURL, f.cfg.JKU, f.now())
	if err != nil {
		return nil, 0, err
	}
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"scope":                 {strings.Join(scopes, " ")},
		"client_assertion_type": {assertionType},
		"client_assertion":      {a},
	}
	return f.ep.tokenRequest(ctx, tokenURL, form, nil, a)
}

// checkGranted warns when the granted scope lacks a requested one: the
// granted scope "can be different from the scopes requested", and a
// narrower grant will fail the export later (checklist §3 #3). Logged once
// per distinct grant.
func (f *smartFetcher) checkGranted(requested []string, tok *oauth2.Token) {
	granted, _ := tok.Extra("scope").(string)
	if granted == "" || granted == f.lastGranted {
		return
	}
	f.lastGranted = granted
	have := strings.Fields(granted)
	var missing []string
	for _, s := range requested {
		if !slices.Contains(have, s) {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		slog.Warn("auth: server granted fewer scopes than requested", "fhirBase", f.fhirBase, "requested", strings.Join(requested, " "), "granted", granted)
	}
}
