package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/internal/bulk"
)

// Error types as they appear in Temporal. Workflows list the non-retryable
// ones in their retry policies; the decision itself is made here, from the
// protocol client's classification, and nowhere else.
const (
	ErrTransient      = "Transient"
	ErrRateLimited    = "RateLimited"
	ErrJobGone        = "JobGone"
	ErrFileGone       = "FileGone"
	ErrUnauthorized   = "Unauthorized"
	ErrTruncatedFile  = "TruncatedFile"
	ErrInvalidContent = "InvalidContent"
	ErrPermanent      = "Permanent"
)

// NonRetryable lists the error types no retry can fix.
var NonRetryable = []string{ErrJobGone, ErrFileGone, ErrInvalidContent, ErrPermanent, ErrUnauthorized,
	"Config", "InvalidInput", "InvalidManifest", "PlanMissing"}

// temporalError turns a protocol or sink error into a Temporal application
// error whose type says what happened and whether retrying can help. A
// server-supplied Retry-After becomes NextRetryDelay, so 429s and 503s are
// waited out exactly as long as the server asked (clamped by the client).
func temporalError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	var retryAfter time.Duration
	if be := (*bulk.Error)(nil); errors.As(err, &be) {
		retryAfter = be.RetryAfter
	}
	typ, nonRetryable := ErrTransient, false
	switch bulk.KindOf(err) {
	case bulk.KindRateLimited:
		typ = ErrRateLimited
	case bulk.KindJobGone:
		typ, nonRetryable = ErrJobGone, true
	case bulk.KindFileGone:
		typ, nonRetryable = ErrFileGone, true
	case bulk.KindUnauthorized:
		// The auth transport already retried with a fresh token (or has none
		// to refresh: a static bearer token), so the credentials are wrong.
		typ, nonRetryable = ErrUnauthorized, true
		err = fmt.Errorf("%w; the server refused the credentials even with a fresh token: check this server's auth in the worker's servers file", err)
	case bulk.KindTruncated:
		typ = ErrTruncatedFile
	case bulk.KindInvalidContent:
		typ, nonRetryable = ErrInvalidContent, true
	case bulk.KindPermanent:
		typ, nonRetryable = ErrPermanent, true
	}
	return temporal.NewApplicationErrorWithOptions(err.Error(), typ, temporal.ApplicationErrorOptions{
		NonRetryable:   nonRetryable,
		NextRetryDelay: retryAfter,
	})
}

// errorType is the Temporal type of an activity error, for audit and metrics.
func errorType(err error) string {
	var ae *temporal.ApplicationError
	if errors.As(err, &ae) {
		return ae.Type()
	}
	return "Unknown"
}

func permanent(typ string, err error) error {
	return temporal.NewApplicationErrorWithOptions(err.Error(), typ, temporal.ApplicationErrorOptions{NonRetryable: true})
}

func retryable(typ string, err error) error {
	return temporal.NewApplicationError(err.Error(), typ)
}
