package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// ErrTemporary marks token and discovery failures worth retrying later with
// backoff: HTTP 5xx, 429 and network errors (checklist §3 #2: "Token 5xx or
// 429 → back off"). Test with errors.Is(err, auth.ErrTemporary). Such errors
// also implement net.Error with Temporary() true, so callers that classify
// transport errors as transient (internal/bulk) retry them as well. Any other
// token failure (an OAuth error such as invalid_client, a malformed response)
// is permanent: retrying the same credentials would fail the same way.
var ErrTemporary = errors.New("temporary authorization failure")

// temporaryError wraps a retryable failure.
type temporaryError struct{ err error }

func (e *temporaryError) Error() string        { return e.err.Error() }
func (e *temporaryError) Unwrap() error        { return e.err }
func (e *temporaryError) Is(target error) bool { return target == ErrTemporary }

// Timeout and Temporary make temporaryError a net.Error.
func (e *temporaryError) Timeout() bool   { return false }
func (e *temporaryError) Temporary() bool { return true }

func temporary(err error) error { return &temporaryError{err} }

// TokenError is a failed token request: an RFC 6749 §5.2 error response
// (Code, Description, URI) or, when the body is not one, just the status.
// It never holds the request (with its assertion or secret).
type TokenError struct {
	TokenURL    string
	StatusCode  int
	Code        string // "error", e.g. invalid_client, invalid_scope
	Description string // "error_description", sanitised and shortened
	URI         string // "error_uri"
}

// Permanent reports that retrying cannot help: the server rejected the
// credentials or the request (4xx). The protocol client classifies by it.
func (e *TokenError) Permanent() bool {
	return e.StatusCode >= 400 && e.StatusCode < 500 && e.StatusCode != 429
}

func (e *TokenError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "token endpoint %s: HTTP %d", e.TokenURL, e.StatusCode)
	if e.Code == "" {
		b.WriteString(" (not an OAuth 2.0 error response)")
		return b.String()
	}
	b.WriteString(": " + e.Code)
	if e.Description != "" {
		b.WriteString(": " + e.Description)
	}
	if e.URI != "" {
		b.WriteString(" (see " + e.URI + ")")
	}
	return b.String()
}

const (
	maxBody        = 1 << 20
	maxDescription = 300
	assertionType  = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// endpoint does HTTP for a fetcher.
type endpoint struct {
	client *http.Client
}

// tokenRequest POSTs form to tokenURL (backend-services.md L110-154:
// application/x-www-form-urlencoded) and parses the response. redact is a
// value (the assertion) that must not appear in an error even if a server
// echoes it.
func (ep endpoint) tokenRequest(ctx context.Context, tokenURL string, form url.Values, setAuth func(*http.Request), redact string) (*oauth2.Token, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, tokenRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, 0, fmt.Errorf("token endpoint %q: %w", tokenURL, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if setAuth != nil {
		setAuth(req)
	}
	resp, err := ep.client.Do(req)
	if err != nil {
		// *url.Error names only the token URL; the form is in the body.
		return nil, 0, temporary(fmt.Errorf("token request: %w", err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, 0, temporary(fmt.Errorf("token endpoint %s: read response: %w", tokenURL, err))
	}
	if resp.StatusCode/100 != 2 {
		te := &TokenError{TokenURL: tokenURL, StatusCode: resp.StatusCode}
		var oe struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
			URI         string `json:"error_uri"`
		}
		if json.Unmarshal(body, &oe) == nil && oe.Error != "" {
			te.Code = clean(oe.Error, 64, redact)
			te.Description = clean(oe.Description, maxDescription, redact)
			te.URI = clean(oe.URI, maxDescription, redact)
		}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return nil, 0, temporary(te)
		}
		return nil, 0, te
	}
	return parseToken(tokenURL, body)
}

// parseToken reads a token response (backend-services.md L192-229).
func parseToken(tokenURL string, body []byte) (*oauth2.Token, time.Duration, error) {
	var r struct {
		AccessToken string          `json:"access_token"`
		TokenType   string          `json:"token_type"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
		Scope       string          `json:"scope"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, 0, fmt.Errorf("token endpoint %s: response is not a JSON token response", tokenURL)
	}
	if r.AccessToken == "" {
		return nil, 0, fmt.Errorf("token endpoint %s: response has no access_token", tokenURL)
	}
	// token_type is "Fixed value: bearer"; the SMART example sends "Bearer",
	// so compare case-insensitively (checklist §2, §3 #4). Any other type
	// (DPoP, mac, none) needs a scheme this client does not speak.
	if !strings.EqualFold(r.TokenType, "bearer") {
		return nil, 0, fmt.Errorf("token endpoint %s: token_type %q is not supported (want bearer)", tokenURL, clean(r.TokenType, 40, ""))
	}
	life, ok := parseExpiresIn(r.ExpiresIn)
	if !ok {
		slog.Debug("auth: token response has no usable expires_in; assuming the default", "tokenURL", tokenURL, "lifetime", defaultLifetime)
	}
	tok := (&oauth2.Token{AccessToken: r.AccessToken, TokenType: "Bearer"}).WithExtra(map[string]any{"scope": r.Scope})
	return tok, life, nil
}

// parseExpiresIn accepts a JSON number or a numeric string and clamps it to
// [minLifetime, maxLifetime]. Missing, null, non-numeric or non-positive
// values give defaultLifetime and false.
func parseExpiresIn(raw json.RawMessage) (time.Duration, bool) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return defaultLifetime, false
	}
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal(raw, &s); err != nil {
			return defaultLifetime, false
		}
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(secs) || secs <= 0 {
		return defaultLifetime, false
	}
	// Clamp in seconds first: 1e12 seconds would overflow a Duration.
	secs = min(max(secs, minLifetime.Seconds()), maxLifetime.Seconds())
	return time.Duration(secs * float64(time.Second)), true
}

// clean makes a server-supplied string safe for an error message: no
// control characters, bounded length, and never the redacted value.
func clean(s string, n int, redact string) string {
	if redact != "" {
		s = strings.ReplaceAll(s, redact, "[redacted]")
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}

// secretFetcher is OAuth 2.0 client credentials with a shared secret
// (RFC 6749 §4.4, client_secret_basic / client_secret_post).
type secretFetcher struct {
	ep     endpoint
	cfg    Config
	secret string
}

func (f *secretFetcher) fetch(ctx context.Context) (*oauth2.Token, time.Duration, error) {
	form := url.Values{"grant_type": {"client_credentials"}}
	if len(f.cfg.Scopes) > 0 {
		form.Set("scope", strings.Join(f.cfg.Scopes, " "))
	}
	var setAuth func(*http.Request)
	if f.cfg.AuthStyle == "post" {
		form.Set("client_id", f.cfg.ClientID)
		form.Set("client_secret", f.secret)
	} else {
		// RFC 6749 §2.3.1: Basic credentials are form-urlencoded first.
		setAuth = func(r *http.Request) {
			r.SetBasicAuth(url.QueryEscape(f.cfg.ClientID), url.QueryEscape(f.secret))
		}
	}
	return f.ep.tokenRequest(ctx, f.cfg.TokenURL, form, setAuth, f.secret)
}
