// Package auth turns a FHIR server's configured credentials into an
// http.Client. Tokens live only in this process's memory: they are never
// returned to callers that could put them into Temporal history or logs.
package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Config describes how to authenticate to one FHIR server. Secrets are named
// indirectly (an environment variable or a file), never written inline, so a
// config file can be reviewed and committed.
type Config struct {
	// Type is "none" (default), "bearer" or "client-secret".
	Type string `json:"type,omitempty"`
	// TokenURL is the OAuth 2.0 token endpoint (client-secret).
	TokenURL string `json:"tokenURL,omitempty"`
	ClientID string `json:"clientID,omitempty"`
	// ClientSecretEnv / ClientSecretFile hold the client secret (client-secret).
	ClientSecretEnv  string `json:"clientSecretEnv,omitempty"`
	ClientSecretFile string `json:"clientSecretFile,omitempty"`
	// AuthStyle is "basic" (client_secret_basic, default) or "post" (client_secret_post).
	AuthStyle string   `json:"authStyle,omitempty"`
	Scopes    []string `json:"scopes,omitempty"`
	// TokenEnv / TokenFile hold a static bearer token (bearer).
	TokenEnv  string `json:"tokenEnv,omitempty"`
	TokenFile string `json:"tokenFile,omitempty"`
}

// Validate reports configuration mistakes with how to fix them, without
// reading any secret.
func (c Config) Validate() error {
	switch c.Type {
	case "", "none":
	case "bearer":
		if (c.TokenEnv == "") == (c.TokenFile == "") {
			return errors.New(`auth type "bearer" needs exactly one of tokenEnv (an environment variable name) or tokenFile (a file path)`)
		}
	case "client-secret":
		if c.TokenURL == "" || c.ClientID == "" {
			return errors.New(`auth type "client-secret" needs tokenURL and clientID`)
		}
		if (c.ClientSecretEnv == "") == (c.ClientSecretFile == "") {
			return errors.New(`auth type "client-secret" needs exactly one of clientSecretEnv or clientSecretFile`)
		}
		if c.AuthStyle != "" && c.AuthStyle != "basic" && c.AuthStyle != "post" {
			return fmt.Errorf(`authStyle %q: use "basic" or "post"`, c.AuthStyle)
		}
	default:
		return fmt.Errorf(`auth type %q is not supported: use "none", "bearer" or "client-secret"`, c.Type)
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

// TokenSource returns the token source for c, or nil for "none". One source
// per server per process: oauth2.ReuseTokenSource refreshes before expiry and
// every activity shares the cached token.
func (c Config) TokenSource(ctx context.Context, base *http.Client) (oauth2.TokenSource, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	switch c.Type {
	case "bearer":
		tok, err := secret(c.TokenEnv, c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("bearer token: %w", err)
		}
		return oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok, TokenType: "Bearer"}), nil
	case "client-secret":
		sec, err := secret(c.ClientSecretEnv, c.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("client secret: %w", err)
		}
		cc := clientcredentials.Config{ClientID: c.ClientID, ClientSecret: sec, TokenURL: c.TokenURL, Scopes: c.Scopes, AuthStyle: oauth2.AuthStyleInHeader}
		if c.AuthStyle == "post" {
			cc.AuthStyle = oauth2.AuthStyleInParams
		}
		// The token endpoint is reached with the server's own transport (mTLS, CA).
		ctx = context.WithValue(context.Background(), oauth2.HTTPClient, base)
		return oauth2.ReuseTokenSource(nil, cc.TokenSource(ctx)), nil
	}
	return nil, nil
}

// Client wraps base so that requests carry the bearer token from ts.
// A nil ts returns base unchanged.
func Client(base *http.Client, ts oauth2.TokenSource) *http.Client {
	if ts == nil {
		return base
	}
	c := *base
	c.Transport = &Transport{Source: ts, Base: base.Transport}
	return &c
}

// Transport adds "Authorization: Bearer" to requests, but never to a
// redirect that leaves the origin of the request the caller made: files may
// be redirected to object storage, which must not see the token
// (bulk-data-checklist 3 #23). oauth2.Transport alone would add it to every hop.
type Transport struct {
	Source oauth2.TokenSource
	Base   http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if crossOriginRedirect(req) {
		if req.Header.Get("Authorization") != "" {
			req = req.Clone(req.Context())
			req.Header.Del("Authorization")
		}
		return base.RoundTrip(req)
	}
	tok, err := t.Source.Token()
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("get access token: %w", err)
	}
	r2 := req.Clone(req.Context())
	tok.SetAuthHeader(r2)
	return base.RoundTrip(r2)
}

// crossOriginRedirect reports whether req is a redirect hop whose origin
// differs from the first request of the chain.
func crossOriginRedirect(req *http.Request) bool {
	first := req
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	return first != req && (first.URL.Scheme != req.URL.Scheme || first.URL.Host != req.URL.Host)
}
