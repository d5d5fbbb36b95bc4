package bulk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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

func isConnReset(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe")
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

// transportError wraps an error from http.Client.Do or a body read. Go's
// *url.Error embeds the full URL (with query), so it is rebuilt without it.
func transportError(op, rawURL string, err error) *Error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = &url.Error{Op: ue.Op, URL: redactURL(ue.URL), Err: ue.Err}
	}
	return &Error{Op: op, URL: redactURL(rawURL), Kind: KindOf(err), Err: err}
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
