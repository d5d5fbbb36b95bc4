package activities

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/bulkflow/bulkflow/internal/bulk"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// Inline mode (attachments "inline", docs/lake.md): while a file
// downloads, each url-only attachment whose contentType is listed is
// fetched (up to maxAttachmentBytes, default 1 MiB: the document is held in
// memory to be base64-encoded into the line) and written into the
// attachment as "data", before its "url", which stays. The staged line is
// then not the server's: such files are never resumed with Range (they
// start over, like Parquet output). The file's download slot covers the
// fetches (no second slot is taken: that could deadlock a limit of one).
// Each reference's outcome goes to the sidecar as an AttachmentRecord; the
// attachments phase only collects them into the index.

type inliner struct {
	a      *Activities
	ctx    context.Context
	c      *bulk.Client
	policy *AttachmentPolicy
}

func (in *inliner) inline(line []byte, ref attachmentRef) ([]byte, AttachmentRecord, error) {
	rec := AttachmentRecord{ResourceType: ref.Type, ID: ref.ID, Index: ref.Index, ContentType: ref.ContentType}
	if !in.policy.inlines(ref.ContentType) {
		rec.Status, rec.Detail = AttachmentSkipped, "contentType not in attachmentTypes"
		return line, rec, nil
	}
	u, err := in.c.ResolveAttachmentURL(ref.URL)
	if err != nil {
		rec.Status, rec.Detail = AttachmentInvalid, clipText(err.Error(), 200)
		return line, rec, nil
	}
	rec.URL = in.c.RedactAttachmentURL(u)
	if !in.c.AttachmentAllowed(u) {
		rec.Status, rec.Detail = AttachmentRefusedOrigin, "the attachment is on an origin that is neither the FHIR server's nor in its allowedOrigins: not fetched"
		return line, rec, nil
	}
	maxBytes, over := in.room(line)
	if maxBytes <= 0 || ref.Size != nil && *ref.Size > maxBytes {
		rec.Status, rec.Detail = AttachmentTooLarge, over
		if ref.Size != nil {
			rec.Size = *ref.Size
		}
		return line, rec, nil
	}
	var wantSHA1 []byte
	if ref.Hash != "" {
		if b, err := base64.StdEncoding.DecodeString(ref.Hash); err == nil && len(b) == sha1.Size {
			wantSHA1 = b
		}
	}
	// The spot: the attachment's "url" member as the server wrote it.
	key, _ := json.Marshal(ref.URL)
	key = append([]byte(`"url":`), key...)
	at := bytes.Index(line, key)
	if at < 0 {
		rec.Status, rec.Detail = AttachmentInvalid, "the url is not written plainly in the line: not inlined"
		return line, rec, nil
	}
	var lastErr error
	var waited time.Duration
	for try := 1; try <= attachmentAttempts; {
		body, err := in.fetch(u, ref.ContentType, maxBytes)
		if wait, ok := rateLimitWait(in.ctx, err, waited, time.Now()); ok {
			select {
			case <-in.ctx.Done():
				return line, rec, in.ctx.Err()
			case <-time.After(wait):
			}
			waited += wait
			continue
		}
		var be *bulk.Error
		switch {
		case err == nil:
		case errors.As(err, &be) && (be.Kind == bulk.KindFileGone || be.Kind == bulk.KindPermanent && be.StatusCode >= 400):
			rec.Status, rec.Detail = AttachmentMissing, fmt.Sprintf("the server answered %d", be.StatusCode)
			return line, rec, nil
		case !bulk.IsRetryable(err):
			rec.Status, rec.Detail = AttachmentMissing, clipText(err.Error(), 300)
			return line, rec, nil
		default:
			lastErr = err
			try++
			time.Sleep(bulk.Backoff(try, 500*time.Millisecond, 5*time.Second))
			continue
		}
		n := int64(len(body))
		rec.Size = n
		switch {
		case n > maxBytes:
			rec.Status, rec.Detail = AttachmentTooLarge, over
			return line, rec, nil
		case ref.Size != nil && *ref.Size != n:
			rec.Status, rec.Detail = AttachmentHashMismatch, fmt.Sprintf("received %d bytes, attachment.size says %d", n, *ref.Size)
		case wantSHA1 != nil && !bytes.Equal(sha1Of(body), wantSHA1):
			rec.Status, rec.Detail = AttachmentHashMismatch, "the SHA-1 of the bytes received differs from attachment.hash"
		default:
			sum := sha256.Sum256(body)
			rec.Status, rec.SHA256, rec.Detail = AttachmentInlined, hex.EncodeToString(sum[:]), ""
			out := make([]byte, 0, len(line)+base64.StdEncoding.EncodedLen(len(body))+10)
			out = append(out, line[:at]...)
			out = append(out, `"data":"`...)
			out = base64.StdEncoding.AppendEncode(out, body)
			out = append(out, `",`...)
			out = append(out, line[at:]...)
			return out, rec, nil
		}
		try++ // a mismatch is fetched again, then recorded
	}
	if rec.Status == AttachmentHashMismatch {
		return line, rec, nil
	}
	return line, rec, fmt.Errorf("inline attachment %d of %s/%s: %w", ref.Index, ref.Type, ref.ID, lastErr)
}

// room is the most bytes a document may have to be inlined into line, and
// what to record when it has more: maxAttachmentBytes, and no more than
// keeps the line (its base64 and all) within the worker's line cap. A
// resource with many attachments cannot grow past what the worker reads.
func (in *inliner) room(line []byte) (int64, string) {
	maxBytes := in.policy.maxBytes()
	left := int64(in.a.maxLine()-len(line)-len(`"data":"",`)) / 4 * 3 // base64: 4 bytes per 3
	if left < maxBytes {
		return left, fmt.Sprintf("inlining it would make the line longer than the worker's line cap of %d bytes (-max-line-mib): not inlined", in.a.maxLine())
	}
	return maxBytes, fmt.Sprintf("over maxAttachmentBytes %d: not inlined", maxBytes)
}

func sha1Of(b []byte) []byte { s := sha1.Sum(b); return s[:] }

// fetch reads at most maxBytes+1 bytes of the document.
func (in *inliner) fetch(u interface{ String() string }, contentType string, maxBytes int64) ([]byte, error) {
	pu, err := in.c.ResolveAttachmentURL(u.String())
	if err != nil {
		return nil, err
	}
	att, err := in.c.OpenAttachment(in.ctx, pu, contentType)
	if err != nil {
		return nil, err
	}
	defer att.Body.Close()
	b, err := io.ReadAll(io.LimitReader(att.Body, maxBytes+1))
	if err != nil {
		var be *bulk.Error
		if errors.As(err, &be) {
			return nil, err
		}
		if errors.Is(err, bulk.ErrNoBinaryData) {
			return nil, &bulk.Error{Op: bulk.OpAttachment, URL: in.c.RedactAttachmentURL(pu), Kind: bulk.KindPermanent, StatusCode: 422, Err: err}
		}
		return nil, &bulk.Error{Op: bulk.OpAttachment, URL: in.c.RedactAttachmentURL(pu), Kind: bulk.KindTransient, Err: err}
	}
	return b, nil
}

// readInlined reads the records a download left in inline mode.
func readInlined(ctx context.Context, s sink.Sink, run, filePath string, a *Activities, fr FileResult) ([]AttachmentRecord, error) {
	out, err := readSidecar[AttachmentRecord](ctx, s, run, filePath, a, "attachment records")
	for i := range out {
		out[i].Source, out[i].Generation = fr.Index, fr.Generation
	}
	return out, err
}
