// Package bulk is a FHIR Bulk Data $export protocol client (BD2/BD3, with
// BD4-draft manifest tolerance). It knows nothing of workflows: each method
// does one HTTP exchange (Status may do two) and returns an *Error whose Kind
// tells the caller what to do next. See IsRetryable.
package bulk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/bulkflow/bulkflow/internal/auth"
)

// Client talks to one FHIR server. The zero value is not usable: set BaseURL.
type Client struct {
	BaseURL       string        // FHIR base, e.g. https://ehr.example.org/fhir
	HTTP          *http.Client  // authorised client for kickoff/status/delete/manifest pages and files with requiresAccessToken=true
	FileHTTP      *http.Client  // used for files when requiresAccessToken=false: must send NO Authorization header; nil = a plain client
	MinRetryAfter time.Duration // clamp range for server-supplied waits; defaults 1s
	MaxRetryAfter time.Duration //   and 10 min
	UserAgent     string
	// Observe, when set, is told of every HTTP exchange this client makes
	// (after the response headers, or the failure): the audit trail's source.
	Observe func(ctx context.Context, ex Exchange)
	// Origins is the credential rule (auth.Origins): the origins that may
	// receive the token and client certificate. Status URLs and manifest
	// pages must be on one of them (a foreign one is refused, see
	// docs/security.md); nil means the FHIR base's origin only.
	Origins *auth.Origins
	// IdleTimeout fails a request that receives no bytes (headers or body)
	// for this long (default 60s). MaxBodyTime bounds a whole kick-off,
	// status, manifest-page or DELETE exchange however slowly its bytes
	// trickle (default 2 min). MaxManifestPages bounds a link-next chain
	// (default 1000).
	IdleTimeout      time.Duration
	MaxBodyTime      time.Duration
	MaxManifestPages int
}

// Exchange is one HTTP request and its outcome, without secrets: the URL
// has no query string or user info.
type Exchange struct {
	Op       string // kickoff, status, manifest, download, delete
	Method   string
	URL      string
	Status   int // 0 when no response arrived
	Err      error
	Duration time.Duration
}

// do sends req with hc and reports the exchange to Observe. logURL is the
// request URL as it may appear in logs and errors. Unless hc follows no
// redirects itself, the redirect policy (checkRedirect) is applied. The
// request is guarded by the idle timeout: no bytes for IdleTimeout, while
// waiting for headers or reading the body, fails it with a *Error that is
// ErrStalled and names the URL and the phase.
func (c *Client) do(hc *http.Client, op string, req *http.Request, logURL string) (*http.Response, error) {
	if hc.CheckRedirect == nil {
		cp := *hc
		cp.CheckRedirect = c.checkRedirect(op)
		hc = &cp
	}
	start := time.Now()
	req, g := c.guard(req, op, logURL)
	resp, err := hc.Do(req)
	if err != nil {
		err = g.fail(err)
	} else {
		g.headers(resp)
	}
	if c.Observe != nil {
		ex := Exchange{Op: op, Method: req.Method, URL: logURL, Err: err, Duration: time.Since(start)}
		if resp != nil {
			ex.Status = resp.StatusCode
		}
		c.Observe(req.Context(), ex)
	}
	return resp, err
}

func (c *Client) origins() *auth.Origins {
	if c.Origins != nil {
		return c.Origins
	}
	o, err := auth.NewOrigins(c.BaseURL, "", nil)
	if err != nil {
		return nil // allows nothing; base() reports the bad BaseURL
	}
	return o
}

// foreign is the permanent error for a URL the server named on an origin
// the credentials may not go to (issue 16 §2). Polling it without
// credentials would, at best, fail with 401 after hours of retries and, at
// worst, take an export's data from a host the user never configured.
func (c *Client) foreign(op, what, rawURL string) *Error {
	u, _ := url.Parse(rawURL)
	return &Error{Op: op, URL: redactOrigin(rawURL), Kind: KindPermanent,
		Err: fmt.Errorf("%w: the server named a %s on %s, which is neither this server's origin nor in its allowedOrigins (%s); "+
			"bulkflow does not send credentials there or follow it. If that origin belongs to the FHIR server, add it to allowedOrigins for this server in the worker's servers file",
			ErrForeignOrigin, what, auth.Origin(u), strings.Join(c.origins().List(), ", "))}
}

// Status is one poll result.
type Status struct {
	Done       bool          // 200 with a complete manifest (all link-next pages NOT yet followed, see FetchAll)
	Progress   string        // X-Progress (sanitised, <= 100 chars)
	RetryAfter time.Duration // clamped; 0 when absent (caller then uses Backoff)
	Manifest   *Manifest     // set when Done (and for a 202 partial manifest with allowPartialManifests)
	Expires    time.Time     // from Expires header, zero if absent
}

const (
	defaultMinRetryAfter = time.Second
	defaultMaxRetryAfter = 10 * time.Minute
	maxManifestBody      = 256 << 20 // thousands of files fit in a few MB; this only stops runaway bodies
	// A page holds hundreds to thousands of files, so 1000 pages is a
	// million-plus files: more than any export seen, while an endless chain
	// still fails within minutes instead of hours.
	defaultMaxManifestPages = 1000
	defaultIdleTimeout      = 60 * time.Second
	defaultMaxBodyTime      = 2 * time.Minute
)

func (c *Client) minRetry() time.Duration {
	if c.MinRetryAfter > 0 {
		return c.MinRetryAfter
	}
	return defaultMinRetryAfter
}

func (c *Client) maxRetry() time.Duration {
	if c.MaxRetryAfter > 0 {
		return max(c.MaxRetryAfter, c.minRetry())
	}
	return max(defaultMaxRetryAfter, c.minRetry())
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

var plainFileClient = &http.Client{}

func (c *Client) fileClient(requiresAccessToken bool) *http.Client {
	if requiresAccessToken {
		return c.httpClient()
	}
	// BD3 L701: "A client SHALL NOT provide a SMART Backend Services access
	// token when dereferencing an output URL where requiresAccessToken is
	// false."
	if c.FileHTTP != nil {
		return c.FileHTTP
	}
	return plainFileClient
}

func (c *Client) newRequest(ctx context.Context, method, rawURL string, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, rawURL, rd)
	if err != nil {
		// url.Parse errors quote the whole URL, query included: keep only
		// the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("bad URL %q: %w", redactURL(rawURL), err)
	}
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	return req, nil
}

// readLimited reads at most limit bytes; the bool says the body was longer.
func readLimited(r io.Reader, limit int64) ([]byte, bool, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if int64(len(b)) > limit {
		return b[:limit], true, err
	}
	return b, false, err
}

// drainClose lets the connection be reused for small leftovers, but never
// reads much of a large body.
func drainClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 4<<10)
	_ = body.Close()
}

// errorFromResponse reads a bounded excerpt of the body (BD2 L394: never
// assume error bodies are JSON) and classifies it.
func (c *Client) errorFromResponse(op, rawURL string, resp *http.Response, code int) *Error {
	body, _, _ := readLimited(resp.Body, maxErrorBody)
	return c.classifyHTTP(op, rawURL, resp, code, body)
}

// Kickoff starts an export and returns the absolute status URL.
func (c *Client) Kickoff(ctx context.Context, kr KickoffRequest) (string, error) {
	if err := kr.Validate(); err != nil {
		return "", &Error{Op: opKickoff, URL: redactURL(c.BaseURL), Kind: KindPermanent, Err: err}
	}
	base, err := c.base()
	if err != nil {
		return "", &Error{Op: opKickoff, URL: redactURL(c.BaseURL), Kind: KindPermanent, Err: err}
	}
	endpoint := kr.endpoint(base.String())
	method := kr.method()
	var req *http.Request
	if method == "POST" {
		req, err = c.newRequest(ctx, "POST", endpoint, kr.parametersBody())
		if err == nil {
			req.Header.Set("Content-Type", "application/fhir+json")
		}
	} else {
		u := endpoint
		if q := kr.query().Encode(); q != "" {
			u += "?" + q
		}
		req, err = c.newRequest(ctx, "GET", u, nil)
	}
	if err != nil {
		return "", &Error{Op: opKickoff, URL: redactURL(endpoint), Kind: KindPermanent, Err: err}
	}
	// BD2 L104-112: Accept and Prefer: respond-async; BD2 L146: lenient.
	req.Header.Set("Accept", "application/fhir+json")
	prefer := "respond-async"
	if kr.Lenient {
		prefer += ", handling=lenient"
	}
	req.Header.Set("Prefer", prefer)

	resp, err := c.do(c.httpClient(), opKickoff, req, redactURL(endpoint))
	if err != nil {
		return "", transportError(opKickoff, endpoint, err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return "", &Error{Op: opKickoff, URL: redactURL(endpoint), StatusCode: resp.StatusCode, Kind: KindPermanent,
				Err: errors.New("expected 202 Accepted: the server did not start an asynchronous export (BD2 L273)")}
		}
		return "", c.errorFromResponse(opKickoff, endpoint, resp, resp.StatusCode)
	}
	// BD2 L275: 202 + "Content-Location header with the absolute URL of an
	// endpoint for subsequent status requests".
	loc := strings.TrimSpace(resp.Header.Get("Content-Location"))
	if loc == "" {
		return "", &Error{Op: opKickoff, URL: redactURL(endpoint), StatusCode: resp.StatusCode, Kind: KindPermanent,
			Err: errors.New("202 Accepted without a Content-Location header: the server did not say where to poll for status (BD2 L275); the export may be running server-side")}
	}
	// Relative Content-Location: tolerated, resolved against the FHIR base
	// (the spec asks for absolute).
	root := *base
	if !strings.HasSuffix(root.Path, "/") {
		root.Path += "/"
		root.RawPath = ""
	}
	abs, err := resolveURL(loc, &root)
	if err != nil {
		return "", &Error{Op: opKickoff, URL: redactURL(endpoint), StatusCode: resp.StatusCode, Kind: KindPermanent,
			Err: fmt.Errorf("bad Content-Location: %w", err)}
	}
	if !c.origins().AllowsString(abs) {
		return "", c.foreign(opKickoff, "status URL (Content-Location)", abs)
	}
	return abs, nil
}

func (c *Client) base() (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(c.BaseURL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("Client.BaseURL %q must be an absolute http(s) FHIR base URL like https://ehr.example.org/fhir", redactURL(c.BaseURL))
	}
	u.RawQuery, u.Fragment = "", ""
	return u, nil
}

// Status polls the status URL once (BD2 L306-403). In progress: Done=false.
// Complete: Done=true with the first manifest page. A malformed 200 manifest
// is fetched once more before giving up (checklist 3 #18).
func (c *Client) Status(ctx context.Context, statusURL string) (*Status, error) {
	var lastErr *Error
	for attempt := 0; attempt < 2; attempt++ {
		st, err, retry := c.statusOnce(ctx, statusURL)
		if !retry {
			if err != nil {
				return nil, err
			}
			return st, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// statusOnce returns retry=true only for a 200 whose manifest did not parse.
func (c *Client) statusOnce(ctx context.Context, statusURL string) (*Status, *Error, bool) {
	u, err := url.Parse(statusURL)
	if err != nil || !u.IsAbs() {
		return nil, &Error{Op: opStatus, URL: redactURL(statusURL), Kind: KindPermanent,
			Err: errors.New("status URL must be absolute")}, false
	}
	if !c.origins().Allows(u) {
		return nil, c.foreign(opStatus, "status URL", statusURL), false
	}
	req, err := c.newRequest(ctx, "GET", statusURL, nil)
	if err != nil {
		return nil, &Error{Op: opStatus, URL: redactURL(statusURL), Kind: KindPermanent, Err: err}, false
	}
	req.Header.Set("Accept", "application/json") // BD2 L316
	resp, err := c.do(c.httpClient(), opStatus, req, redactURL(statusURL))
	if err != nil {
		return nil, transportError(opStatus, statusURL, err), false
	}
	defer drainClose(resp.Body)

	code := resp.StatusCode
	if xs := strings.TrimSpace(resp.Header.Get("X-Export-Status")); xs != "" && code == http.StatusOK {
		// BD3 L123-125: with separate-export-status the poll itself is 200
		// and X-Export-Status carries the export's status code.
		n, err := strconv.Atoi(strings.Fields(xs)[0])
		if err != nil || n < 100 || n > 599 {
			return nil, &Error{Op: opStatus, URL: redactURL(statusURL), StatusCode: code, Kind: KindPermanent,
				Err: fmt.Errorf("X-Export-Status %q is not an HTTP status code", sanitize(xs, 40))}, false
		}
		code = n
	}
	st := &Status{Progress: sanitize(resp.Header.Get("X-Progress"), 100)}
	if ra, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		st.RetryAfter = Clamp(ra, c.minRetry(), c.maxRetry())
	}
	if exp := resp.Header.Get("Expires"); exp != "" {
		if t, err := http.ParseTime(exp); err == nil {
			st.Expires = t
		}
	}
	switch {
	case code == http.StatusAccepted:
		// BD3 L485: with allowPartialManifests a 202 MAY carry a manifest of
		// files already available. Anything else in a 202 body (an
		// OperationOutcome, nothing) is ignored.
		body, tooBig, rerr := readLimited(resp.Body, maxManifestBody)
		if rerr == nil && !tooBig && looksLikeManifest(body) {
			if m, err := parseManifest(body, u); err == nil {
				st.Manifest = m
			}
		}
		return st, nil, false
	case code == http.StatusOK:
		body, tooBig, rerr := readLimited(resp.Body, maxManifestBody)
		if rerr != nil {
			return nil, transportError(opStatus, statusURL, rerr), false
		}
		if tooBig {
			return nil, &Error{Op: opStatus, URL: redactURL(statusURL), StatusCode: code, Kind: KindPermanent,
				Err: fmt.Errorf("manifest larger than %d MiB", maxManifestBody>>20)}, false
		}
		m, err := parseManifest(body, u)
		if err != nil {
			return nil, &Error{Op: opStatus, URL: redactURL(statusURL), StatusCode: code, Kind: KindPermanent, Err: err}, true
		}
		st.Done, st.Manifest = true, m
		return st, nil, false
	case code >= 200 && code < 400:
		return nil, &Error{Op: opStatus, URL: redactURL(statusURL), StatusCode: code, Kind: KindPermanent,
			Err: errors.New("unexpected status: want 202 (in progress) or 200 (complete)")}, false
	}
	return nil, c.errorFromResponse(opStatus, statusURL, resp, code), false
}

func looksLikeManifest(b []byte) bool {
	b = trimSpace(b)
	return len(b) > 0 && b[0] == '{' && bytes.Contains(b, []byte(`"transactionTime"`))
}

// ManifestPage GETs one link-next page (BD3 L607-614). A malformed page is
// fetched once more before failing.
func (c *Client) ManifestPage(ctx context.Context, pageURL string) (*Manifest, error) {
	var lastErr *Error
	for attempt := 0; attempt < 2; attempt++ {
		m, err, retry := c.manifestOnce(ctx, pageURL)
		if !retry {
			if err != nil {
				return nil, err
			}
			return m, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func (c *Client) manifestOnce(ctx context.Context, pageURL string) (*Manifest, *Error, bool) {
	u, err := url.Parse(pageURL)
	if err != nil || !u.IsAbs() {
		return nil, &Error{Op: opManifest, URL: redactURL(pageURL), Kind: KindPermanent,
			Err: errors.New("manifest page URL must be absolute")}, false
	}
	if !c.origins().Allows(u) {
		return nil, c.foreign(opManifest, "manifest page (link next)", pageURL), false
	}
	req, err := c.newRequest(ctx, "GET", pageURL, nil)
	if err != nil {
		return nil, &Error{Op: opManifest, URL: redactURL(pageURL), Kind: KindPermanent, Err: err}, false
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.do(c.httpClient(), opManifest, req, redactURL(pageURL))
	if err != nil {
		return nil, transportError(opManifest, pageURL, err), false
	}
	defer drainClose(resp.Body)
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		body, tooBig, rerr := readLimited(resp.Body, maxManifestBody)
		if rerr != nil {
			return nil, transportError(opManifest, pageURL, rerr), false
		}
		if tooBig {
			return nil, &Error{Op: opManifest, URL: redactURL(pageURL), StatusCode: code, Kind: KindPermanent,
				Err: fmt.Errorf("manifest page larger than %d MiB", maxManifestBody>>20)}, false
		}
		m, err := parseManifest(body, u)
		if err != nil {
			return nil, &Error{Op: opManifest, URL: redactURL(pageURL), StatusCode: code, Kind: KindPermanent, Err: err}, true
		}
		return m, nil, false
	case code == http.StatusAccepted:
		e := &Error{Op: opManifest, URL: redactURL(pageURL), StatusCode: code, Kind: KindTransient,
			Err: errors.New("manifest page not ready yet")}
		if ra, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			e.RetryAfter = Clamp(ra, c.minRetry(), c.maxRetry())
		}
		return nil, e, false
	case code >= 200 && code < 400:
		return nil, &Error{Op: opManifest, URL: redactURL(pageURL), StatusCode: code, Kind: KindPermanent,
			Err: errors.New("unexpected status for a manifest page: want 200")}, false
	default:
		return nil, c.errorFromResponse(opManifest, pageURL, resp, code), false
	}
}

// FetchAll follows link next from first, merging output/error/deleted and
// dropping duplicate file URLs (checklist 3 #20). The result has Next == "".
// On error nothing is returned: the caller may keep what it already has
// from first (BD3 L612: "MAY process resources that have already been
// retrieved").
func (c *Client) FetchAll(ctx context.Context, first *Manifest) (*Manifest, error) {
	if first == nil {
		return nil, &Error{Op: opManifest, Kind: KindPermanent, Err: errors.New("FetchAll: nil manifest")}
	}
	all := *first
	all.Next = ""
	seen := map[string]bool{}
	all.Output = mergeItems(nil, first.Output, seen)
	all.Error = mergeItems(nil, first.Error, seen)
	all.Deleted = mergeItems(nil, first.Deleted, seen)
	visited := map[string]bool{}
	limit := c.MaxManifestPages
	if limit <= 0 {
		limit = defaultMaxManifestPages
	}
	for next := first.Next; next != ""; {
		if visited[next] {
			// A server whose chain loops would loop forever: its manifest
			// cannot be trusted to be complete either.
			return nil, &Error{Op: opManifest, URL: redactURL(next), Kind: KindPermanent,
				Err: fmt.Errorf("the manifest's link-next chain loops back to a page already read after %d pages: the server's paging is broken", len(visited)+1)}
		}
		if len(visited) >= limit {
			return nil, &Error{Op: opManifest, URL: redactURL(next), Kind: KindPermanent,
				Err: fmt.Errorf("the manifest's link-next chain goes on past %d pages (the limit): the server's paging looks endless", limit)}
		}
		visited[next] = true
		page, err := c.ManifestPage(ctx, next)
		if err != nil {
			return nil, err
		}
		all.Output = mergeItems(all.Output, page.Output, seen)
		all.Error = mergeItems(all.Error, page.Error, seen)
		all.Deleted = mergeItems(all.Deleted, page.Deleted, seen)
		next = page.Next
	}
	return &all, nil
}

func mergeItems(dst, src []FileItem, seen map[string]bool) []FileItem {
	if dst == nil {
		dst = make([]FileItem, 0, len(src))
	}
	for _, it := range src {
		if seen[it.URL] {
			continue
		}
		seen[it.URL] = true
		dst = append(dst, it)
	}
	return dst
}

// Delete cancels a job or tells the server the client is done (BD2 L287-303).
// 202 (any 2xx) is success; 404/410 mean the job is already gone: nil.
func (c *Client) Delete(ctx context.Context, statusURL string) error {
	if !c.origins().AllowsString(statusURL) {
		return c.foreign(opDelete, "status URL", statusURL)
	}
	req, err := c.newRequest(ctx, "DELETE", statusURL, nil)
	if err != nil {
		return &Error{Op: opDelete, URL: redactURL(statusURL), Kind: KindPermanent, Err: err}
	}
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := c.do(c.httpClient(), opDelete, req, redactURL(statusURL))
	if err != nil {
		return transportError(opDelete, statusURL, err)
	}
	defer drainClose(resp.Body)
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusNotFound || code == http.StatusGone:
		return nil
	default:
		return c.errorFromResponse(opDelete, statusURL, resp, code)
	}
}
