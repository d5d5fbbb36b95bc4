package authserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// NewClientKey generates a client signing key for tests: alg "RS384" (RSA
// 2048) or "ES384" (ECDSA P-384), the two algorithms SMART clients SHALL
// support (client-confidential-asymmetric.md L56-110). private carries kid,
// alg and use "sig"; public is the JWK Set to register (inline as
// Client.JWKS, or served at Client.JWKSURL).
func NewClientKey(alg string, kid string) (private jose.JSONWebKey, public jose.JSONWebKeySet, err error) {
	if kid == "" {
		return jose.JSONWebKey{}, jose.JSONWebKeySet{}, errors.New("authserver: NewClientKey: kid is required (each JWK SHALL include kid)")
	}
	var key any
	switch alg {
	case string(jose.RS384):
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case string(jose.ES384):
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	default:
		return jose.JSONWebKey{}, jose.JSONWebKeySet{}, fmt.Errorf("authserver: NewClientKey: alg %q: want RS384 or ES384", alg)
	}
	if err != nil {
		return jose.JSONWebKey{}, jose.JSONWebKeySet{}, fmt.Errorf("authserver: NewClientKey: %w", err)
	}
	private = jose.JSONWebKey{Key: key, KeyID: kid, Algorithm: alg, Use: "sig"}
	return private, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{private.Public()}}, nil
}

// SignAssertion builds a valid SMART client assertion (header alg/kid/typ JWT;
// claims iss = sub = clientID, aud = tokenURL, exp = now + exp, a random jti,
// iat now) signed with key. It exists for tests of this package and of the
// test server; the product's client must build its own. The alg comes from
// key.Algorithm, or from the key type when that is empty.
func SignAssertion(key jose.JSONWebKey, clientID, tokenURL string, exp time.Duration) (string, error) {
	return signAssertionAt(key, clientID, tokenURL, time.Now(), exp)
}

func signAssertionAt(key jose.JSONWebKey, clientID, tokenURL string, now time.Time, exp time.Duration) (string, error) {
	jti, err := randomString(16)
	if err != nil {
		return "", err
	}
	claims := jwt.Claims{
		Issuer:   clientID,
		Subject:  clientID,
		Audience: jwt.Audience{tokenURL},
		Expiry:   jwt.NewNumericDate(now.Add(exp)),
		IssuedAt: jwt.NewNumericDate(now),
		ID:       jti,
	}
	return signJWT(key, "", nil, claims)
}

// signJWT signs claims with key; alg overrides the algorithm and extra adds
// header fields (typ defaults to "JWT").
func signJWT(key jose.JSONWebKey, alg jose.SignatureAlgorithm, extra map[jose.HeaderKey]any, claims any) (string, error) {
	if alg == "" {
		alg = jose.SignatureAlgorithm(key.Algorithm)
	}
	if alg == "" {
		switch key.Key.(type) {
		case *rsa.PrivateKey:
			alg = jose.RS384
		case *ecdsa.PrivateKey:
			alg = jose.ES384
		default:
			return "", fmt.Errorf("authserver: cannot infer alg for key type %T", key.Key)
		}
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	for k, v := range extra {
		opts.WithHeader(k, v)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		return "", fmt.Errorf("authserver: signer: %w", err)
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}
