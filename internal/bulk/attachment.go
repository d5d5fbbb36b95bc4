package bulk

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// OpAttachment names attachment fetches in errors and the audit trail.
const OpAttachment = "attachment"

// ErrNoBinaryData: a Binary resource returned as JSON carried no data.
var ErrNoBinaryData = errors.New("the Binary resource has no data element")

// Attachment is an open attachment body.
type Attachment struct {
	// Body is the attachment's bytes: the response body, or the decoded
	// data of a Binary resource the server returned as FHIR JSON.
	Body io.ReadCloser
	// ContentType is the response's media type (without parameters).
	ContentType string
	// Binary is true when Body is decoded from a Binary resource.
	Binary bool
}

// ResolveAttachmentURL resolves an attachment URL against the FHIR base
// (a relative "Binary/123" is relative to the base, not its parent).
func (c *Client) ResolveAttachmentURL(raw string) (*url.URL, error) {
	base, err := c.base()
	if err != nil {
		return nil, err
	}
	ref, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, errors.New("unparseable attachment URL")
	}
	if !strings.HasSuffix(base.Path, "/") {
		base.Path += "/"
	}
	u := base.ResolveReference(ref)
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("attachment URL scheme %q is not http(s)", u.Scheme)
	}
	return u, nil
}

// AttachmentAllowed reports whether u is on an origin the server's
// credentials may go to (auth.Origins): the only origins bulkflow fetches
// attachments from.
func (c *Client) AttachmentAllowed(u *url.URL) bool { return c.origins().Allows(u) }

// RedactAttachmentURL is how an attachment URL appears in errors, logs and
// the attachment index: without query or fragment (they may carry a
// capability), and only the origin for a URL on an origin the credentials
// may not go to.
func (c *Client) RedactAttachmentURL(u *url.URL) string {
	if !c.AttachmentAllowed(u) {
		return RedactCapability(u.String())
	}
	return redactURL(u.String())
}

// OpenAttachment GETs an attachment (an absolute URL from
// ResolveAttachmentURL that AttachmentAllowed accepts) with Accept set to
// the attachment's contentType: a FHIR server then answers a Binary read
// with the raw content. A server that answers with the Binary resource as
// FHIR JSON is accepted too: its data is decoded while it streams. The
// token goes only where auth.Origins allows; a redirect to another origin
// (pre-signed object storage) is followed without it, as for files.
//
// Errors are *Error: 403/404/410 are KindFileGone (the attachment is
// missing), 429 KindRateLimited, 5xx and network errors KindTransient.
func (c *Client) OpenAttachment(ctx context.Context, u *url.URL, contentType string) (*Attachment, error) {
	logURL := c.RedactAttachmentURL(u)
	if !c.AttachmentAllowed(u) {
		return nil, &Error{Op: OpAttachment, URL: logURL, Kind: KindPermanent, Err: fmt.Errorf("%w: the attachment is on %s, which is neither this server's origin nor in its allowedOrigins", ErrForeignOrigin, redactOrigin(u.String()))}
	}
	req, err := c.newRequest(ctx, "GET", u.String(), nil)
	if err != nil {
		return nil, &Error{Op: OpAttachment, URL: logURL, Kind: KindPermanent, Err: errors.New("bad attachment URL")}
	}
	accept := "*/*"
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && mt != "" {
		// The contentType first; FHIR JSON (a Binary resource) is understood too.
		accept = mt + ", application/fhir+json;q=0.5, */*;q=0.1"
	}
	req.Header.Set("Accept", accept)
	resp, err := c.doFile(req, true, logURL)
	if err != nil {
		e := transportErrorAs(OpAttachment, logURL, err)
		e.Op = OpAttachment
		return nil, e
	}
	if resp.StatusCode != http.StatusOK {
		e := c.errorFromResponse(opDownload, u.String(), resp, resp.StatusCode)
		_ = resp.Body.Close()
		e.Op, e.URL = OpAttachment, logURL
		if resp.StatusCode >= 200 && resp.StatusCode < 400 {
			e.Kind, e.Err = KindPermanent, fmt.Errorf("unexpected status %d for an attachment: want 200", resp.StatusCode)
		}
		return nil, e
	}
	rt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	a := &Attachment{Body: resp.Body, ContentType: rt}
	want, _, _ := mime.ParseMediaType(contentType)
	if isJSONType(rt) && !isJSONType(want) {
		a.Body, a.Binary = &binaryData{rc: resp.Body, br: newBR(resp.Body)}, true
	}
	return a, nil
}

func isJSONType(t string) bool {
	return t == "application/fhir+json" || t == "application/json" || t == "application/json+fhir"
}

// binaryData streams the base64 "data" of a Binary resource (a top-level
// JSON object) without holding the document: it scans to the top-level
// "data" member and decodes its string as it reads. Other members are
// skipped; escapes other than \/ cannot occur in base64 and are refused.
type binaryData struct {
	rc  io.ReadCloser
	br  *bufio.Reader
	dec io.Reader
	err error
}

func (b *binaryData) Close() error { return b.rc.Close() }

func (b *binaryData) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.dec == nil {
		if err := b.seekData(); err != nil {
			b.err = err
			return 0, err
		}
		b.dec = base64.NewDecoder(base64.StdEncoding, &b64String{br: b.br})
	}
	n, err := b.dec.Read(p)
	if err != nil && err != io.EOF {
		b.err = fmt.Errorf("Binary resource data: %w", err)
		return n, b.err
	}
	return n, err
}

// seekData reads up to the opening quote of the top-level "data" value.
func (b *binaryData) seekData() error {
	depth := 0
	expectKey := false
	for {
		c, err := b.br.ReadByte()
		if err != nil {
			if err == io.EOF {
				return ErrNoBinaryData
			}
			return err
		}
		switch c {
		case '{', '[':
			depth++
			expectKey = c == '{' && depth == 1
		case '}', ']':
			depth--
		case ',':
			expectKey = depth == 1
		case '"':
			s, err := b.readString(expectKey && depth == 1)
			if err != nil {
				return err
			}
			if expectKey && depth == 1 && s == "data" {
				if err := b.skipTo(':'); err != nil {
					return err
				}
				if err := b.skipTo('"'); err != nil {
					return err
				}
				return nil
			}
			expectKey = false
		}
	}
}

// readString consumes a JSON string after its opening quote; keep says
// whether its text is needed (short keys only).
func (b *binaryData) readString(keep bool) (string, error) {
	var sb strings.Builder
	for {
		c, err := b.br.ReadByte()
		if err != nil {
			return "", io.ErrUnexpectedEOF
		}
		switch c {
		case '"':
			return sb.String(), nil
		case '\\':
			if _, err := b.br.ReadByte(); err != nil {
				return "", io.ErrUnexpectedEOF
			}
		default:
			if keep && sb.Len() < 16 {
				sb.WriteByte(c)
			}
		}
	}
}

func (b *binaryData) skipTo(want byte) error {
	for {
		c, err := b.br.ReadByte()
		if err != nil {
			return io.ErrUnexpectedEOF
		}
		switch {
		case c == want:
			return nil
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
		default:
			return fmt.Errorf("malformed Binary resource: %q where %q was expected", c, want)
		}
	}
}

// b64String yields a JSON string's bytes up to its closing quote.
type b64String struct {
	br   *bufio.Reader
	done bool
}

func (s *b64String) Read(p []byte) (int, error) {
	if s.done {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) {
		c, err := s.br.ReadByte()
		if err != nil {
			return n, io.ErrUnexpectedEOF
		}
		switch c {
		case '"':
			s.done = true
			if n == 0 {
				return 0, io.EOF
			}
			return n, nil
		case '\\':
			e, err := s.br.ReadByte()
			if err != nil {
				return n, io.ErrUnexpectedEOF
			}
			if e != '/' {
				return n, fmt.Errorf("escape \\%c in base64 data", e)
			}
			c = '/'
		}
		p[n] = c
		n++
	}
	return n, nil
}

func newBR(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 32<<10) }
