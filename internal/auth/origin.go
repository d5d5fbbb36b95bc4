package auth

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
)

// Origins is the set of origins (scheme, host, port) that may receive a
// server's credentials: the bearer token and the mTLS client certificate.
// It is the one rule that decides where credentials go (issue 16 §2): the
// FHIR base's origin, the configured token endpoint's origin, and the
// origins the servers file lists in allowedOrigins for that server. Nothing
// a FHIR server sends (a Content-Location, a manifest link, a redirect) can
// add to it.
type Origins struct {
	set map[string]bool
}

// NewOrigins builds the rule for a server. fhirBase is required; tokenURL
// may be ""; extra are the servers file's allowedOrigins, each a bare
// origin such as "https://cdn.example.org" (see CheckOrigin).
func NewOrigins(fhirBase, tokenURL string, extra []string) (*Origins, error) {
	o := &Origins{set: map[string]bool{}}
	b, err := originOf(fhirBase)
	if err != nil {
		return nil, fmt.Errorf("FHIR base URL: %w", err)
	}
	o.set[b] = true
	if tokenURL != "" {
		t, err := originOf(tokenURL)
		if err != nil {
			return nil, fmt.Errorf("tokenURL: %w", err)
		}
		o.set[t] = true
	}
	for i, e := range extra {
		if err := CheckOrigin(e); err != nil {
			return nil, fmt.Errorf("allowedOrigins[%d]: %w", i, err)
		}
		x, _ := originOf(e)
		o.set[x] = true
	}
	return o, nil
}

// Allows reports whether credentials may go to u. A nil *Origins allows
// nothing.
func (o *Origins) Allows(u *url.URL) bool {
	if o == nil || u == nil {
		return false
	}
	k, ok := originKey(u)
	return ok && o.set[k]
}

// AllowsString is Allows for a raw URL; an unparseable URL is not allowed.
func (o *Origins) AllowsString(raw string) bool {
	u, err := url.Parse(strings.TrimSpace(raw))
	return err == nil && o.Allows(u)
}

// List returns the allowed origins, sorted, for messages and logs.
func (o *Origins) List() []string {
	if o == nil {
		return nil
	}
	out := make([]string, 0, len(o.set))
	for k := range o.set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// CheckOrigin validates one allowedOrigins entry strictly: an absolute
// http(s) URL with a host and nothing else (no path beyond "/", no query,
// fragment, user info or wildcard), so what the operator wrote is exactly
// what is allowed.
func CheckOrigin(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q must be an origin like https://cdn.example.org (scheme, host, optional port)", s)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("%q must be an origin only (scheme://host[:port]): no path, query, fragment or user info", s)
	}
	if strings.ContainsAny(u.Host, "*") {
		return fmt.Errorf("%q: wildcards are not supported; list each origin", s)
	}
	if p := u.Port(); p != "" {
		if _, err := net.LookupPort("tcp", p); err != nil || strings.HasPrefix(p, "0") {
			return fmt.Errorf("%q has a bad port", s)
		}
	}
	return nil
}

// Origin is scheme://host:port of u, with the default port made explicit and
// the host lower-cased, or "" for a URL that is not absolute http(s).
func Origin(u *url.URL) string {
	k, _ := originKey(u)
	return k
}

func originOf(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", errors.New("unparseable URL")
	}
	k, ok := originKey(u)
	if !ok {
		return "", fmt.Errorf("%q is not an absolute http(s) URL", raw)
	}
	return k, nil
}

func originKey(u *url.URL) (string, bool) {
	if u == nil {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", false
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if host == "" {
		return "", false
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if scheme == "https" {
			port = "443"
		}
	}
	return scheme + "://" + net.JoinHostPort(host, port), true
}

// SplitTransport sends requests to allowed origins through Trusted (the
// transport holding the mTLS client certificate) and every other request
// through Plain (no certificate), after removing any Authorization header.
// It is checked on every round trip, redirect hops included, so a client
// certificate is never presented to an origin outside the rule, whatever the
// server sends.
type SplitTransport struct {
	Origins *Origins
	Trusted http.RoundTripper
	Plain   http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *SplitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.Origins.Allows(req.URL) {
		return orDefault(t.Trusted).RoundTrip(req)
	}
	if req.Header.Get("Authorization") != "" {
		req = req.Clone(req.Context())
		req.Header.Del("Authorization")
	}
	return orDefault(t.Plain).RoundTrip(req)
}

func orDefault(rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		return http.DefaultTransport
	}
	return rt
}
