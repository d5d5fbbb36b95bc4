package bulk

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrorKind says what a caller should do about an error. The single place
// that maps a kind to "retry or not" is IsRetryable.
type ErrorKind int

const (
	KindTransient      ErrorKind = iota + 1 // 5xx, transient OperationOutcome, network errors, resets: retry with backoff
	KindRateLimited                         // 429 (and 503 with Retry-After): wait RetryAfter (or backoff)
	KindJobGone                             // 404/410 on status: the job was deleted or expired: resubmit, don't re-poll
	KindFileGone                            // 403/404/410 on a file: re-fetch the manifest (expired link)
	KindUnauthorized                        // 401: token expired/invalid (auth layer may refresh and retry once)
	KindTruncated                           // body ended mid-line / count mismatch: re-download the file
	KindInvalidContent                      // a line that is not JSON / wrong resourceType: permanent, names file + line
	KindPermanent                           // other 4xx, bad manifest after retry, bad request: fail with the server's message
)

func (k ErrorKind) String() string {
	switch k {
	case KindTransient:
		return "transient"
	case KindRateLimited:
		return "rate-limited"
	case KindJobGone:
		return "job-gone"
	case KindFileGone:
		return "file-gone"
	case KindUnauthorized:
		return "unauthorized"
	case KindTruncated:
		return "truncated"
	case KindInvalidContent:
		return "invalid-content"
	case KindPermanent:
		return "permanent"
	case 0:
		return "none"
	}
	return "ErrorKind(" + strconv.Itoa(int(k)) + ")"
}

// Error is the only error type the client returns for protocol failures.
// It never carries tokens, query strings or resource content.
type Error struct {
	Op          string        // "kickoff", "status", "manifest", "delete", "download"
	URL         string        // request URL WITHOUT query string
	StatusCode  int           // 0 when no HTTP response was received
	Kind        ErrorKind     // what to do about it; see IsRetryable
	RetryAfter  time.Duration // clamped server-supplied wait, 0 if none
	Diagnostics string        // OperationOutcome text or a sanitised body excerpt, <= 500 chars
	Err         error         // underlying cause, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.URL != "" {
		b.WriteByte(' ')
		b.WriteString(e.URL)
	}
	b.WriteString(": ")
	n := b.Len()
	if e.StatusCode != 0 {
		b.WriteString(strconv.Itoa(e.StatusCode))
		if t := http.StatusText(e.StatusCode); t != "" {
			b.WriteByte(' ')
			b.WriteString(t)
		}
	}
	if e.Diagnostics != "" {
		if b.Len() > n {
			b.WriteString(": ")
		}
		b.WriteString(e.Diagnostics)
	}
	if e.Err != nil {
		if b.Len() > n {
			b.WriteString(": ")
		}
		b.WriteString(e.Err.Error())
	}
	if b.Len() == n {
		b.WriteString(e.Kind.String())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf classifies any error:
//   - *Error (anywhere in the chain): its Kind.
//   - context.DeadlineExceeded: KindTransient (a timed-out attempt may succeed
//     with a fresh deadline; the caller's retry policy bounds it).
//   - context.Canceled: KindPermanent (the caller asked to stop; retrying
//     would ignore that).
//   - io.ErrUnexpectedEOF: KindTruncated.
//   - net.Error (timeouts, resets, refused, DNS): KindTransient.
//   - anything else: KindPermanent. nil gives 0.
func KindOf(err error) ErrorKind {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) && e.Kind != 0 {
		return e.Kind
	}
	switch {
	case errors.Is(err, context.Canceled):
		return KindPermanent
	case errors.Is(err, context.DeadlineExceeded):
		return KindTransient
	case errors.Is(err, io.ErrUnexpectedEOF):
		return KindTruncated
	}
	// Checked before net.Error: http.Client wraps everything in *url.Error,
	// which is a net.Error, and a rejected login or a certificate the
	// server refuses will not fix itself on retry.
	var perm interface{ Permanent() bool }
	if errors.As(err, &perm) && perm.Permanent() {
		return KindPermanent
	}
	if unreachable(err) != "" && !errors.Is(err, syscall.ECONNREFUSED) {
		// Unknown host, TLS/scheme mismatch, a certificate the worker does
		// not trust: the configuration is wrong, and no retry fixes it
		// (issue 12 §3). A refused connection stays transient: the
		// activity retries it a few times quickly (ConnRefused).
		return KindPermanent
	}
	var certErr *tls.CertificateVerificationError
	var alert tls.AlertError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &alert) || errors.As(err, &unknownCA) || errors.As(err, &hostErr) {
		return KindPermanent
	}
	// A TLS alert from the server ("remote error: tls: certificate
	// required", "bad certificate", ...) arrives as a *net.OpError around an
	// unexported type: the handshake was refused, a retry cannot fix it.
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "remote error" && strings.Contains(opErr.Error(), "tls:") {
		return KindPermanent
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return KindTransient
	}
	if isConnReset(err) {
		return KindTransient
	}
	return KindPermanent
}

// IsRetryable is the single source of truth for "may the same operation
// succeed if tried again later" (with backoff, after RetryAfter, or after a
// fresh token):
//
//	retryable:     Transient, RateLimited, Truncated (download again),
//	               Unauthorized (only with a fresh token; the auth layer
//	               should refresh once, and a retry policy bounds the rest)
//	not retryable: JobGone (resubmit the export instead), FileGone (re-fetch
//	               the manifest instead), InvalidContent, Permanent
func IsRetryable(err error) bool {
	switch KindOf(err) {
	case KindTransient, KindRateLimited, KindTruncated, KindUnauthorized:
		return true
	}
	return false
}

// InvalidContent builds the error for a bad line in a downloaded file, so that
// callers (who run the ndjson validator) report it uniformly.
func InvalidContent(fileURL string, line int64, err error) *Error {
	return &Error{Op: "download", URL: redactURL(fileURL), Kind: KindInvalidContent,
		Err: fmt.Errorf("line %d: %w", line, err)}
}

// Truncated builds the error for a file that ended early or whose line count
// does not match the manifest count.
func Truncated(fileURL string, reason string) *Error {
	return &Error{Op: "download", URL: redactURL(fileURL), Kind: KindTruncated,
		Err: errors.New(sanitize(reason, maxDiagnostics))}
}

// ConnRefused reports whether err is a refused TCP connection: nothing
// listens at the URL's host and port. Transient (a server restarting), but
// callers bound it to a few quick attempts: a wrong port refuses forever.
func ConnRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// unreachable names the configuration problem behind a transport error that
// no retry can fix, with what to do, or "" when err is not one. A refused
// connection is named too (ConnRefused decides its budget).
func unreachable(err error) string {
	if err == nil {
		return ""
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return fmt.Sprintf("unknown host %s (DNS has no such name): is the FHIR server URL right?", sanitize(dnsErr.Name, 100))
	}
	var rhe tls.RecordHeaderError
	if errors.As(err, &rhe) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return "the server answered plain HTTP on an https:// URL (tls: first record does not look like a TLS handshake): use http:// or the server's TLS port"
	}
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var certErr *tls.CertificateVerificationError
	switch {
	case errors.As(err, &unknownCA):
		return "the server's certificate is signed by an authority this worker does not trust: set tls.caFile for this server in the servers file (or fix the server's chain)"
	case errors.As(err, &hostErr):
		return fmt.Sprintf("the server's certificate is not valid for %s (%s): is the FHIR server URL's host name right?", sanitize(hostErr.Host, 100), sanitize(hostErr.Error(), 200))
	case errors.As(err, &invalid):
		return fmt.Sprintf("the server's certificate is invalid (%s)", sanitize(invalid.Error(), 200))
	case errors.As(err, &certErr):
		return fmt.Sprintf("the server's certificate failed verification (%s)", sanitize(certErr.Error(), 200))
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		var op *net.OpError
		addr := "the server"
		if errors.As(err, &op) && op.Addr != nil {
			addr = op.Addr.String()
		}
		return fmt.Sprintf("connection refused by %s: is the FHIR server URL right and the server running?", sanitize(addr, 100))
	}
	return ""
}

// explained wraps a transport error with its cause in words, keeping the
// original for errors.Is/As.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg + " (" + e.err.Error() + ")" }
func (e *explained) Unwrap() error { return e.err }

func isConnReset(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe")
}

// redactOrigin keeps only scheme://host[:port] of a URL.
func redactOrigin(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "(unparseable URL)"
	}
	return sanitize(u.Scheme, 20) + "://" + sanitize(u.Host, 200)
}

// RedactCapability is how a URL that is itself a credential appears in
// errors, logs and the audit trail: a capability URL (requiresAccessToken
// false, BD3 L701) may carry its secret in the path as well as the query, so
// only the origin is kept, with a short hash of the whole URL so that lines
// about the same file can be matched. 32 bits of hash reveal nothing of a
// secret with real entropy.
func RedactCapability(s string) string {
	sum := sha256.Sum256([]byte(s))
	return redactOrigin(s) + "/(capability URL " + hex.EncodeToString(sum[:4]) + ")"
}

// RedactFileURL is how a file URL appears in errors, logs and the audit
// trail: with its path (query dropped) when it is fetched with credentials
// on an origin they may go to, else as a capability URL (RedactCapability).
func (c *Client) RedactFileURL(fileURL string, requiresAccessToken bool) string {
	if requiresAccessToken && c.origins().AllowsString(fileURL) {
		return redactURL(fileURL)
	}
	return RedactCapability(fileURL)
}

// redactURL strips userinfo, query and fragment: query strings can hold
// capability tokens (pre-signed file URLs) and patient ids.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if i := strings.IndexAny(s, "?#"); i >= 0 {
			s = s[:i]
		}
		return sanitize(s, 300)
	}
	u.User = nil
	u.RawQuery = ""
	u.ForceQuery = false
	u.Fragment = ""
	u.RawFragment = ""
	return u.String()
}

// transportError wraps an error from http.Client.Do or a body read.
func transportError(op, rawURL string, err error) *Error {
	return transportErrorAs(op, redactURL(rawURL), err)
}

// transportErrorAs is transportError with the URL already redacted. An
// *Error of our own (a guard timeout, a refused redirect) is returned as it
// is; a transport failure with a known configuration cause says so first.
func transportErrorAs(op, logURL string, err error) *Error {
	var own *Error
	if errors.As(err, &own) && own.Op != "" {
		return own
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// Go's *url.Error embeds the full URL (query included): rebuilt
		// with the redacted one.
		err = &url.Error{Op: ue.Op, URL: logURL, Err: ue.Err}
	}
	kind := KindOf(err)
	if msg := unreachable(err); msg != "" {
		err = &explained{msg: msg, err: err}
	}
	return &Error{Op: op, URL: logURL, Kind: kind, Err: err}
}

// transientIssueCodes are IssueType "transient" and its children (FHIR R4
// ValueSet issue-type). BD2 L394: a poll failure that does not mean the job
// failed "SHOULD use a transient code".
var transientIssueCodes = map[string]bool{
	"transient": true, "lock-error": true, "no-store": true, "exception": true,
	"timeout": true, "incomplete": true, "throttled": true,
}

// classifyHTTP turns a non-success response into an *Error. op decides how
// 404/410/403 and 5xx are read. body is at most maxErrorBody bytes.
func (c *Client) classifyHTTP(op, rawURL string, resp *http.Response, code int, body []byte) *Error {
	e := &Error{Op: op, URL: redactURL(rawURL), StatusCode: code}
	oo, isOO := parseOperationOutcome(body)
	if isOO {
		e.Diagnostics = oo.diagnostics()
	} else {
		e.Diagnostics = bodyExcerpt(resp.Header.Get("Content-Type"), code, body)
	}
	if ra, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		e.RetryAfter = Clamp(ra, c.minRetry(), c.maxRetry())
	}
	switch {
	case code == http.StatusUnauthorized:
		e.Kind = KindUnauthorized
	case code == http.StatusTooManyRequests:
		e.Kind = KindRateLimited
	case code == http.StatusServiceUnavailable && e.RetryAfter > 0:
		e.Kind = KindRateLimited
	case code == http.StatusRequestTimeout:
		e.Kind = KindTransient
	case (code == http.StatusNotFound || code == http.StatusGone) && (op == opStatus || op == opManifest):
		// BD2 L300: after a delete, polling "SHALL return a 404"; expired
		// jobs give 404/410 too. Resubmit, don't re-poll.
		e.Kind = KindJobGone
	case (code == http.StatusForbidden || code == http.StatusNotFound || code == http.StatusGone) && op == opDownload:
		// BD3 L695: the client "MAY re-fetch the output manifest if output
		// links have expired".
		e.Kind = KindFileGone
	case code == http.StatusRequestedRangeNotSatisfiable && op == opDownload:
		// Our offset is past the end: the partial copy is wrong; start over.
		e.Kind = KindTruncated
	case code >= 500 && code <= 599:
		e.Kind = KindTransient
		// BD2 L392-396: on status, a 5xx that is not transient means the job
		// failed; record the OperationOutcome.
		if (op == opStatus || op == opManifest) && isOO && !oo.transient() {
			e.Kind = KindPermanent
		}
	default:
		e.Kind = KindPermanent
	}
	return e
}

const (
	opKickoff  = "kickoff"
	opStatus   = "status"
	opManifest = "manifest"
	opDelete   = "delete"
	opDownload = "download"
)

const (
	maxErrorBody   = 64 << 10
	maxDiagnostics = 500
)

type operationOutcome struct {
	ResourceType string `json:"resourceType"`
	Issue        []struct {
		Severity    string `json:"severity"`
		Code        string `json:"code"`
		Diagnostics string `json:"diagnostics"`
		Details     struct {
			Text string `json:"text"`
		} `json:"details"`
	} `json:"issue"`
}

func parseOperationOutcome(body []byte) (*operationOutcome, bool) {
	body = trimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return nil, false
	}
	var oo operationOutcome
	if err := jsonUnmarshal(body, &oo); err != nil || oo.ResourceType != "OperationOutcome" {
		return nil, false
	}
	return &oo, true
}

// transient reports whether every error/fatal issue has a transient code and
// at least one transient code is present.
func (oo *operationOutcome) transient() bool {
	seen := false
	for _, is := range oo.Issue {
		code := strings.ToLower(strings.TrimSpace(is.Code))
		if transientIssueCodes[code] {
			seen = true
			continue
		}
		switch strings.ToLower(is.Severity) {
		case "error", "fatal", "":
			return false
		}
	}
	return seen
}

func (oo *operationOutcome) diagnostics() string {
	var texts, codes []string
	for _, is := range oo.Issue {
		t := strings.TrimSpace(is.Diagnostics)
		if t == "" {
			t = strings.TrimSpace(is.Details.Text)
		}
		if t != "" {
			texts = append(texts, t)
		}
		if is.Severity != "" || is.Code != "" {
			codes = append(codes, is.Severity+"/"+is.Code)
		}
		if len(texts) >= 10 {
			break
		}
	}
	s := strings.Join(texts, "; ")
	if s == "" {
		s = "no diagnostics"
	}
	if len(codes) > 3 {
		codes = codes[:3]
	}
	suffix := " (OperationOutcome " + strings.Join(codes, ", ") + ")"
	if len(codes) == 0 {
		suffix = " (OperationOutcome)"
	}
	suffix = " " + sanitize(suffix, 120)
	return sanitize(s, maxDiagnostics-len(suffix)) + suffix
}

// bodyExcerpt describes a non-OperationOutcome error body without echoing
// anything large: gateways send HTML, proxies plain text.
func bodyExcerpt(contentType string, code int, body []byte) string {
	b := trimSpace(body)
	if len(b) == 0 {
		return ""
	}
	// HTML only when the body is: frameworks label plain strings text/html
	// (Express's res.send), and "Unauthorized: token expired" is the
	// server's own reason, worth showing as it is.
	if looksHTML(b) {
		title := htmlTitle(b)
		if title == "" {
			title = strconv.Itoa(code) + " " + http.StatusText(code)
		}
		return "HTML error page (" + sanitize(title, 100) + ")"
	}
	if b[0] == '{' {
		// OAuth-style or ad-hoc JSON errors: keep only well-known message
		// fields, never arbitrary content.
		var m map[string]any
		if jsonUnmarshal(b, &m) == nil {
			var parts []string
			for _, k := range []string{"error", "error_description", "message", "detail", "title"} {
				if s, ok := m[k].(string); ok && s != "" {
					parts = append(parts, k+": "+s)
				}
			}
			if len(parts) > 0 {
				return sanitize(strings.Join(parts, "; "), maxDiagnostics)
			}
			if rt, ok := m["resourceType"].(string); ok {
				return sanitize("unexpected "+rt+" body", 100)
			}
			return "JSON body without OperationOutcome"
		}
	}
	return sanitize(string(b), 200)
}

func looksHTML(b []byte) bool {
	if len(b) == 0 || b[0] != '<' {
		return false
	}
	head := asciiLower(string(b[:min(len(b), 512)]))
	for _, tag := range []string{"<!doctype", "<html", "<head", "<body", "<title", "<h1", "<p>", "<div", "<center", "<pre", "<?xml", "<!--"} {
		if strings.Contains(head, tag) {
			return true
		}
	}
	return false
}

func htmlTitle(b []byte) string {
	s := string(b[:min(len(b), 4096)])
	ls := asciiLower(s)
	i := strings.Index(ls, "<title>")
	if i < 0 {
		if i = strings.Index(ls, "<h1>"); i < 0 {
			return ""
		}
		j := strings.Index(ls[i:], "</h1>")
		if j < 0 {
			return ""
		}
		return strings.TrimSpace(s[i+4 : i+j])
	}
	j := strings.Index(ls[i:], "</title>")
	if j < 0 {
		return ""
	}
	return strings.TrimSpace(s[i+7 : i+j])
}

// sanitize makes server-supplied text safe for logs and terminals: control
// characters become spaces, bidi overrides and isolates (U+202A-U+202E,
// U+2066-U+2069, which can make text read differently from what it is) and
// other invisible format characters are dropped, runs of whitespace
// collapse, bearer tokens are redacted, and the result is cut to max bytes
// on a rune boundary.
func sanitize(s string, max int) string {
	if max <= 0 {
		return ""
	}
	var b strings.Builder
	space := false
	for _, r := range s {
		if isInvisible(r) {
			continue
		}
		if r == '\uFFFD' || r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == ' ' || r == '\u2028' || r == '\u2029' {
			if !space && b.Len() > 0 {
				b.WriteByte(' ')
			}
			space = true
			continue
		}
		space = false
		b.WriteRune(r)
		if b.Len() > max+64 {
			break
		}
	}
	out := strings.TrimSpace(b.String())
	out = redactBearer(out)
	if len(out) > max {
		cut := max - 3
		for cut > 0 && !isRuneStart(out[cut]) {
			cut--
		}
		out = out[:cut] + "..."
	}
	return out
}

// isInvisible: bidi embeddings, overrides and isolates, marks, zero-width
// characters and the BOM.
func isInvisible(r rune) bool {
	return r >= 0x202A && r <= 0x202E || r >= 0x2066 && r <= 0x2069 || r == 0x200E || r == 0x200F || r == 0x061C ||
		r >= 0x200B && r <= 0x200D || r == 0x2060 || r == 0xFEFF
}

// asciiLower lowercases ASCII only, so byte offsets in the result are valid
// in the input (strings.ToLower may change lengths on odd UTF-8).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

func redactBearer(s string) string {
	ls := asciiLower(s)
	i := strings.Index(ls, "bearer ")
	if i < 0 {
		return s
	}
	j := i + len("bearer ")
	k := j
	for k < len(s) && s[k] != ' ' && s[k] != '"' && s[k] != ',' {
		k++
	}
	if k == j {
		return s
	}
	return s[:j] + "[redacted]" + redactBearer(s[k:])
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r' || b[0] == '\n' || b[0] == 0xEF || b[0] == 0xBB || b[0] == 0xBF) {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r' || b[len(b)-1] == '\n') {
		b = b[:len(b)-1]
	}
	return b
}
