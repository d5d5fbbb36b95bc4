// Package auth turns a FHIR server's configured credentials into an
// http.Client. Tokens live only in this process's memory: they are never
// returned to callers that could put them into Temporal history or logs.
//
// Types: "none", "bearer" (static token), "client-secret" (OAuth 2.0 client
// credentials with a shared secret) and "smart" (SMART Backend Services,
// client-confidential-asymmetric: a JWT client assertion signed with RS384 or
// ES384; bulk-data-checklist §2). See docs/auth.md for the config block.
//
// Nothing in this package logs or puts into an error an access token, a
// client assertion, a client secret or key material.
package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// Config describes how to authenticate to one FHIR server. Secrets are named
// indirectly (an environment variable or a file), never written inline, so a
// config file can be reviewed and committed.
type Config struct {
	// Type is "none" (default), "bearer", "client-secret" or "smart".
	Type string `json:"type,omitempty"`
	// TokenURL is the OAuth 2.0 token endpoint. Required for client-secret.
	// For smart it is optional: when set it overrides the token_endpoint
	// of [base]/.well-known/smart-configuration; when unset, discovery must
	// find one.
	TokenURL string `json:"tokenURL,omitempty"`
	ClientID string `json:"clientID,omitempty"`
	// ClientSecretEnv / ClientSecretFile hold the client secret (client-secret).
	ClientSecretEnv  string `json:"clientSecretEnv,omitempty"`
	ClientSecretFile string `json:"clientSecretFile,omitempty"`
	// AuthStyle is "basic" (client_secret_basic, default) or "post" (client_secret_post).
	AuthStyle string `json:"authStyle,omitempty"`
	// Scopes to request. For smart, when empty they are chosen from the
	// server's advertised capabilities (system/*.rs or system/*.read).
	Scopes []string `json:"scopes,omitempty"`
	// TokenEnv / TokenFile hold a static bearer token (bearer).
	TokenEnv  string `json:"tokenEnv,omitempty"`
	TokenFile string `json:"tokenFile,omitempty"`

	// PrivateKeyFile is a PEM private key (PKCS#8, PKCS#1 RSA or SEC 1 EC
	// P-384) used to sign client assertions (smart). Needs Kid.
	PrivateKeyFile string `json:"privateKeyFile,omitempty"`
	// JWKSFile is a JWK Set holding private keys (smart), an alternative to
	// PrivateKeyFile. Kid picks the key; without it the set must hold
	// exactly one private key, whose own kid is used.
	JWKSFile string `json:"jwksFile,omitempty"`
	// Kid is the key id registered with the server: the assertion's "kid"
	// header, which "SHALL be unique within the client's JWK Set".
	Kid string `json:"kid,omitempty"`
	// Alg is "RS384" or "ES384"; default from the key type.
	Alg string `json:"alg,omitempty"`
	// JKU, if set, is sent as the assertion's "jku" header; it "SHALL match
	// the JWKS URL value that the client supplied … at client registration".
	JKU string `json:"jku,omitempty"`

	// Now is the clock for assertion times and token expiry; nil means
	// time.Now. It exists for tests.
	Now func() time.Time `json:"-"`
}

// Validate reports configuration mistakes with how to fix them. It reads no
// secret, except that for "smart" it loads the private key so a bad key file
// fails at startup; its messages name the file and the problem, never the
// key's contents.
func (c Config) Validate() error {
	_, err := c.validate()
	return err
}

// validate is Validate, also returning the smart signing key.
func (c Config) validate() (*signingKey, error) {
	switch c.Type {
	case "", "none":
	case "bearer":
		if (c.TokenEnv == "") == (c.TokenFile == "") {
			return nil, errors.New(`auth type "bearer" needs exactly one of tokenEnv (an environment variable name) or tokenFile (a file path)`)
		}
	case "client-secret":
		if c.TokenURL == "" || c.ClientID == "" {
			return nil, errors.New(`auth type "client-secret" needs tokenURL and clientID`)
		}
		if err := checkURL("tokenURL", c.TokenURL); err != nil {
			return nil, err
		}
		if (c.ClientSecretEnv == "") == (c.ClientSecretFile == "") {
			return nil, errors.New(`auth type "client-secret" needs exactly one of clientSecretEnv or clientSecretFile`)
		}
		if c.AuthStyle != "" && c.AuthStyle != "basic" && c.AuthStyle != "post" {
			return nil, fmt.Errorf(`authStyle %q: use "basic" or "post"`, c.AuthStyle)
		}
	case "smart":
		if c.ClientID == "" {
			return nil, errors.New(`auth type "smart" needs clientID (the client_id registered with the server)`)
		}
		if c.TokenURL != "" {
			if err := checkURL("tokenURL", c.TokenURL); err != nil {
				return nil, err
			}
		}
		if c.JKU != "" {
			if err := checkURL("jku", c.JKU); err != nil {
				return nil, err
			}
		}
		if c.ClientSecretEnv != "" || c.ClientSecretFile != "" {
			return nil, errors.New(`auth type "smart" signs a client assertion and takes no client secret: remove clientSecretEnv/clientSecretFile (or use type "client-secret")`)
		}
		return c.loadSigningKey()
	default:
		return nil, fmt.Errorf(`auth type %q is not supported: use "none", "bearer", "client-secret" or "smart"`, c.Type)
	}
	return nil, nil
}

func checkURL(field, s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%s %q must be an absolute http(s) URL", field, s)
	}
	return nil
}

func secret(env, file string) (string, error) {
	if env != "" {
		v := strings.TrimSpace(os.Getenv(env))
		if v == "" {
			return "", fmt.Errorf("environment variable %s is empty or unset", env)
		}
		return v, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("secret file %s is empty", file)
	}
	return v, nil
}

// TokenSource returns the token source for c, or nil for "none". fhirBase is
// the server's FHIR base URL, where smart discovers its token endpoint.
//
// Build one source per server per process and share it: for client-secret
// and smart it is a *Source, which caches the token, refreshes it at about
// 80% of its lifetime and can be invalidated after a 401. Its token requests
// use base (the server's TLS settings) and ctx's values, not ctx's
// cancellation, since the source outlives the call. No network request is made
// here: discovery and the first token request happen on first use, so a
// server that is down surfaces as a retryable error of the request that
// needed the token.
func (c Config) TokenSource(ctx context.Context, base *http.Client, fhirBase string) (oauth2.TokenSource, error) {
	key, err := c.validate()
	if err != nil {
		return nil, err
	}
	if base == nil {
		base = http.DefaultClient
	}
	now := c.Now
	if now == nil {
		now = time.Now
	}
	ctx = context.WithoutCancel(ctx)
	switch c.Type {
	case "bearer":
		tok, err := secret(c.TokenEnv, c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("bearer token: %w", err)
		}
		// Nothing to refresh: a static token gets no retry on 401.
		return oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok, TokenType: "Bearer"}), nil
	case "client-secret":
		sec, err := secret(c.ClientSecretEnv, c.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("client secret: %w", err)
		}
		f := &secretFetcher{ep: endpoint{client: base}, cfg: c, secret: sec}
		return newSource(ctx, f, now), nil
	case "smart":
		if fhirBase == "" && c.TokenURL == "" {
			return nil, errors.New(`auth type "smart" needs the FHIR base URL (for discovery) or tokenURL`)
		}
		f := &smartFetcher{ep: endpoint{client: base}, cfg: c, key: key, fhirBase: strings.TrimRight(fhirBase, "/"), now: now}
		return newSource(ctx, f, now), nil
	}
	return nil, nil
}

// Client wraps base so that requests carry the bearer token from ts.
// A nil ts returns base unchanged.
func Client(base *http.Client, ts oauth2.TokenSource) *http.Client {
	return ClientFor(base, ts, nil)
}

// ClientFor is Client with the origin rule: the token goes only to origins
// o allows (nil: to the request's own origin, never across a redirect).
func ClientFor(base *http.Client, ts oauth2.TokenSource, o *Origins) *http.Client {
	if ts == nil {
		return base
	}
	c := *base
	c.Transport = &Transport{Source: ts, Base: base.Transport, Origins: o}
	return &c
}
