package bulk

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	// klauspost's decoders are drop-in and decode about twice as fast as
	// the standard library's (BenchmarkGzipDecode): gzip decoding was the
	// largest single cost of a compressed download.
	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zlib"
)

// File is an open download. Read errors from Body are *Error values
// (KindTruncated for a short or corrupt body, KindTransient for resets).
type File struct {
	Body          io.ReadCloser // DECODED body: gzip / deflate Content-Encoding handled even when not asked for
	Encoding      string        // Content-Encoding seen
	ContentLength int64         // -1 unknown (of the wire body)
	Offset        int64         // the offset actually served: == requested when a 206 honoured the Range, 0 when the server sent the whole file
	AcceptRanges  bool
	// Validator identifies this version of the file for a later resume
	// (If-Range, RFC 9110 13.1.5): a strong ETag, else a strong
	// Last-Modified (an HTTP-date at least one second before the response's
	// Date, RFC 9110 8.8.2.2). "" when the server offers neither: such a
	// file is never resumed, since a regenerated file would be spliced.
	Validator string
}

// OpenFileFrom resumes a download at offset only when validator (the
// File.Validator of the attempt that staged the first offset bytes) is
// given: the request carries If-Range, so a server whose file changed
// answers 200 with the whole new file (File.Offset 0: start over). A 206
// whose own validator differs from the one sent (a server that ignores
// If-Range) is dropped and the whole file fetched again. Without a
// validator it starts from zero.
func (c *Client) OpenFileFrom(ctx context.Context, fileURL string, requiresAccessToken bool, offset int64, validator string) (*File, error) {
	if validator == "" || offset <= 0 {
		return c.openFile(ctx, fileURL, requiresAccessToken, 0, "")
	}
	f, err := c.openFile(ctx, fileURL, requiresAccessToken, offset, validator)
	if err != nil || f.Offset == 0 || f.Validator == validator {
		return f, err
	}
	_ = f.Body.Close()
	return c.openFile(ctx, fileURL, requiresAccessToken, 0, "")
}

// responseValidator is the strong validator of a response, "" if none.
func responseValidator(h http.Header) string {
	if et := strings.TrimSpace(h.Get("ETag")); et != "" {
		// A weak ETag (W/"...") MUST NOT be sent in If-Range (RFC 9110
		// 13.1.5); an unquoted one is malformed: neither can vouch for bytes.
		if strings.HasPrefix(et, `"`) && strings.HasSuffix(et, `"`) && len(et) >= 2 && len(et) <= 256 && !hasControl(et) {
			return et
		}
		return ""
	}
	lm, err := http.ParseTime(h.Get("Last-Modified"))
	if err != nil {
		return ""
	}
	date, err := http.ParseTime(h.Get("Date"))
	if err != nil || date.Sub(lm) < time.Second {
		return "" // changed within the same second it was served: weak
	}
	return lm.UTC().Format(http.TimeFormat)
}

// OpenFile starts a file download (BD2 L554-594, BD3 L693-775).
//
// It asks for gzip (BD3 L705: the client "SHOULD include gzip" in
// Accept-Encoding) unless offset > 0: then it asks for identity and
// Range: bytes=offset-, because byte ranges of a compressed representation
// cannot be resumed. Range is our policy, not the spec's: a server that
// ignores it answers 200 and File.Offset is 0 (start over).
//
// With requiresAccessToken=false the request goes through FileHTTP (or a
// plain client) and carries no Authorization header (BD3 L701).
func (c *Client) OpenFile(ctx context.Context, fileURL string, requiresAccessToken bool, offset int64) (*File, error) {
	return c.openFile(ctx, fileURL, requiresAccessToken, offset, "")
}

func (c *Client) openFile(ctx context.Context, fileURL string, requiresAccessToken bool, offset int64, ifRange string) (*File, error) {
	if offset < 0 {
		offset = 0
	}
	// A capability URL is the credential: errors, logs and the audit trail
	// see only its origin (RedactFileURL), from the very first exchange.
	logURL := c.RedactFileURL(fileURL, requiresAccessToken)
	req, err := c.newRequest(ctx, "GET", fileURL, nil)
	if err != nil {
		return nil, &Error{Op: opDownload, URL: logURL, Kind: KindPermanent, Err: errors.New("bad file URL")}
	}
	// BD2 L566: Accept is optional and defaults to application/fhir+ndjson.
	req.Header.Set("Accept", "application/fhir+ndjson")
	// Setting Accept-Encoding ourselves turns off net/http's transparent
	// gzip, so we see (and report) the real encoding and wire length.
	if offset > 0 {
		req.Header.Set("Accept-Encoding", "identity")
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
		if ifRange != "" {
			req.Header.Set("If-Range", ifRange)
		}
	} else {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	if !requiresAccessToken {
		req.Header.Del("Authorization")
	}
	resp, err := c.doFile(req, requiresAccessToken, logURL)
	if err != nil {
		return nil, transportErrorAs(opDownload, logURL, err)
	}
	fail := func(e *Error) (*File, error) {
		drainClose(resp.Body)
		return nil, e
	}
	f := &File{
		Encoding:      strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))),
		ContentLength: resp.ContentLength,
		AcceptRanges:  strings.Contains(strings.ToLower(resp.Header.Get("Accept-Ranges")), "bytes"),
		Validator:     responseValidator(resp.Header),
	}
	switch resp.StatusCode {
	case http.StatusOK:
		f.Offset = 0
	case http.StatusPartialContent:
		if offset == 0 {
			// We sent no Range; a 206 here is a partial body we cannot use.
			return fail(&Error{Op: opDownload, URL: logURL, StatusCode: resp.StatusCode, Kind: KindTruncated,
				Err: errors.New("206 Partial Content without a Range request")})
		}
		start, ok := contentRangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != offset {
			return fail(&Error{Op: opDownload, URL: logURL, StatusCode: resp.StatusCode, Kind: KindTruncated,
				Err: fmt.Errorf("206 with Content-Range %q does not start at the requested offset %d: download the whole file", sanitize(resp.Header.Get("Content-Range"), 60), offset)})
		}
		if f.Encoding != "" && f.Encoding != "identity" {
			return fail(&Error{Op: opDownload, URL: logURL, StatusCode: resp.StatusCode, Kind: KindTruncated,
				Err: fmt.Errorf("206 range of a %q-encoded body cannot be decoded mid-stream: download the whole file", sanitize(f.Encoding, 20))})
		}
		f.Offset = offset
	default:
		if resp.StatusCode >= 200 && resp.StatusCode < 400 {
			return fail(&Error{Op: opDownload, URL: logURL, StatusCode: resp.StatusCode, Kind: KindPermanent,
				Err: errors.New("unexpected status for a file: want 200")})
		}
		e := c.errorFromResponse(opDownload, fileURL, resp, resp.StatusCode)
		e.URL = logURL
		if requiresAccessToken && (e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden) && !c.origins().AllowsString(fileURL) {
			e.Kind = KindPermanent
			e.Err = fmt.Errorf("the manifest says the file needs the access token, but it is on %s, where this server's credentials may not go, so it was requested without them; if that origin serves this server's files, add it to allowedOrigins in the worker's servers file", redactOrigin(fileURL))
		}
		_ = resp.Body.Close()
		return nil, e
	}

	wire := &wireReader{rc: resp.Body, want: resp.ContentLength, op: opDownload, url: logURL}
	body, err := decodeBody(f.Encoding, wire)
	if err != nil {
		_ = resp.Body.Close()
		return nil, wire.wrap(err)
	}
	f.Body = &fileBody{r: body, wire: wire}
	return f, nil
}

const maxRedirects = 10

// doFile sends a file request. With requiresAccessToken=false it is one
// plain Do on the token-free client. With true, redirects are followed by
// hand: same-origin hops keep the authorised client, and the first
// cross-origin hop (typically a FHIR server redirecting to a pre-signed
// object-store URL) and everything after it go through the token-free
// client. net/http alone drops only headers set on the request, not the
// Authorization an oauth2 Transport adds on every round trip, and object
// stores reject a request carrying both a token and a signature
// (checklist 3 #23).
//
// Every hop is checked (checkHop): a Location that is not http(s), or more
// than maxRedirects hops, is a permanent error, never a transport error
// retried for hours.
func (c *Client) doFile(req *http.Request, requiresAccessToken bool, logURL string) (*http.Response, error) {
	if !requiresAccessToken {
		return c.do(c.fileClient(false), opDownload, req, logURL)
	}
	noFollow := *c.httpClient()
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	origin := req.URL
	for hop := 0; ; hop++ {
		resp, err := c.do(&noFollow, opDownload, req, logURL)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			return resp, nil
		}
		loc := resp.Header.Get("Location")
		if loc == "" {
			return resp, nil // caller reports the unexpected 3xx
		}
		next, err := req.URL.Parse(loc)
		drainClose(resp.Body)
		if err != nil {
			return nil, &Error{Op: opDownload, URL: logURL, Kind: KindPermanent, Err: fmt.Errorf("%w: unparseable redirect Location", ErrBadRedirect)}
		}
		nreq := req.Clone(req.Context())
		nreq.URL, nreq.Host = next, ""
		if err := checkHop(opDownload, nreq, hop+1); err != nil {
			return nil, err
		}
		if next.Scheme != origin.Scheme || next.Host != origin.Host {
			nreq.Header.Del("Authorization")
			return c.do(c.fileClient(false), opDownload, nreq, RedactCapability(next.String()))
		}
		req, logURL = nreq, c.RedactFileURL(next.String(), true)
	}
}

// contentRangeStart parses "bytes 100-199/200" (or "bytes 100-199/*").
func contentRangeStart(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, false
	}
	dash := strings.IndexByte(rest, '-')
	if dash <= 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(rest[:dash]), 10, 64)
	return n, err == nil && n >= 0
}

// decodeBody handles Content-Encoding whether or not we asked for it
// (checklist 3 #25; BD3 L705: a client "SHALL accept files that are
// uncompressed or encoded with gzip").
func decodeBody(enc string, r io.Reader) (io.Reader, error) {
	switch enc {
	case "", "identity":
		return r, nil
	case "gzip", "x-gzip":
		// The decoder reads the wire a byte at a time through a
		// bufio.Reader of its own (4 KiB unless given one): a larger one
		// means fewer reads of the body (BenchmarkGzipDecode/client).
		zr, err := gzip.NewReader(bufio.NewReaderSize(r, 64<<10))
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("gzip header: %w", err)
		}
		return zr, nil
	case "deflate":
		// HTTP "deflate" is zlib-wrapped (RFC 9110 8.4.1.2), but some servers
		// send raw DEFLATE: sniff the zlib header.
		br := bufio.NewReaderSize(r, 512)
		h, err := br.Peek(2)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if h[0]&0x0f == 8 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
			zr, err := zlib.NewReader(br)
			if err != nil {
				return nil, fmt.Errorf("zlib header: %w", err)
			}
			return zr, nil
		}
		return flate.NewReader(br), nil
	}
	return nil, &Error{Kind: KindPermanent, Err: fmt.Errorf("unsupported Content-Encoding %q (we accept gzip, deflate, identity)", sanitize(enc, 30))}
}

// wireReader counts wire bytes and turns an early EOF into
// io.ErrUnexpectedEOF, so a short body never looks like a clean end, even
// behind a RoundTripper that does not enforce Content-Length.
type wireReader struct {
	rc   io.ReadCloser
	n    int64
	want int64
	op   string
	url  string
}

func (w *wireReader) Read(p []byte) (int, error) {
	n, err := w.rc.Read(p)
	w.n += int64(n)
	if w.want >= 0 && w.n > w.want {
		return n, fmt.Errorf("body longer than Content-Length %d", w.want)
	}
	if errors.Is(err, io.EOF) && w.want >= 0 && w.n < w.want {
		return n, fmt.Errorf("body ended after %d of %d bytes (Content-Length): %w", w.n, w.want, io.ErrUnexpectedEOF)
	}
	return n, err
}

// wrap converts a read error into an *Error with the right kind.
func (w *wireReader) wrap(err error) error {
	if err == nil || errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Op == "" {
			e.Op, e.URL = w.op, w.url
		}
		return e
	}
	kind := KindOf(err)
	// flate returns CorruptInputError by value: a pointer target never matched.
	var ce flate.CorruptInputError
	if errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.Is(err, zlib.ErrChecksum) ||
		errors.Is(err, zlib.ErrHeader) || errors.As(err, &ce) || strings.Contains(err.Error(), "Content-Length") {
		kind = KindTruncated // corrupt or short: download the whole file again
	}
	return &Error{Op: w.op, URL: w.url, Kind: kind, Err: fmt.Errorf("after %d wire bytes: %w", w.n, sanitizeErr(err))}
}

// sanitizeErr drops URLs with queries that net/http may embed.
func sanitizeErr(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return transportError("", "", err).Err
}

type fileBody struct {
	r    io.Reader
	wire *wireReader
	err  error
}

func (b *fileBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.r.Read(p)
	if err != nil {
		if errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			// The decoder is done; make sure the wire body is complete too
			// (a gzip stream can end before trailing garbage or a short body).
			return n, err
		}
		b.err = b.wire.wrap(err)
		return n, b.err
	}
	return n, nil
}

func (b *fileBody) Close() error {
	if c, ok := b.r.(io.Closer); ok && b.r != io.Reader(b.wire) {
		_ = c.Close()
	}
	return b.wire.rc.Close()
}
