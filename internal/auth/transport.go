package auth

import (
	"fmt"
	"io"
	"net/http"

	"golang.org/x/oauth2"
)

// Invalidator is implemented by token sources that can drop a token the
// resource server rejected (*Source does). Static tokens do not implement it,
// so a 401 for them is returned as is.
type Invalidator interface {
	// InvalidateToken drops stale if it is still the cached token, so the
	// next Token call fetches a new one. Comparing with the token that failed
	// keeps a burst of concurrent 401s to a single refresh.
	InvalidateToken(stale *oauth2.Token)
}

// Transport adds "Authorization: Bearer" to requests, but never to a
// redirect that leaves the origin of the request the caller made: files may
// be redirected to object storage, which must not see the token
// (bulk-data-checklist 3 #23). oauth2.Transport alone would add it to every hop.
//
// On a 401 it gets a new token and retries the request once, if Source is an
// Invalidator and the request can be replayed (no body, or GetBody set): a
// token may expire or be revoked in the middle of a job, and "clients can
// request new access tokens as needed" (checklist §2 "Token response", §3
// #5). The 401 means the server did not act on the request, so replaying a
// POST is safe. The 401 body is never parsed (it may be plain text, §3 #6);
// a second 401 is returned to the caller unchanged.
type Transport struct {
	Source oauth2.TokenSource
	Base   http.RoundTripper
	// Origins, when set, is the origin rule: a request to any other origin
	// goes out without the token, whatever its place in a redirect chain.
	// nil keeps only the cross-origin-redirect rule (tests, direct use).
	Origins *Origins
}

// maxDrain bounds how much of a discarded 401 body is read so the connection
// can be reused.
const maxDrain = 64 << 10

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if crossOriginRedirect(req) || (t.Origins != nil && !t.Origins.Allows(req.URL)) {
		if req.Header.Get("Authorization") != "" {
			req = req.Clone(req.Context())
			req.Header.Del("Authorization")
		}
		return base.RoundTrip(req)
	}
	tok, err := t.Source.Token()
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("get access token: %w", err)
	}
	r2 := req.Clone(req.Context())
	tok.SetAuthHeader(r2)
	resp, err := base.RoundTrip(r2)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	inv, ok := t.Source.(Invalidator)
	if !ok {
		return resp, nil
	}
	// Drop the token even if this request cannot be replayed, so the
	// caller's own retry (and every other request) gets a fresh one.
	inv.InvalidateToken(tok)
	var body io.ReadCloser
	switch {
	case req.Body == nil || req.Body == http.NoBody:
	case req.GetBody != nil:
		if body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	default:
		return resp, nil
	}
	tok2, err := t.Source.Token()
	if err != nil {
		if body != nil {
			body.Close()
		}
		drain(resp)
		return nil, fmt.Errorf("get access token after HTTP 401: %w", err)
	}
	drain(resp)
	r3 := req.Clone(req.Context())
	if body != nil {
		r3.Body = body
	}
	tok2.SetAuthHeader(r3)
	return base.RoundTrip(r3)
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	resp.Body.Close()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
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
