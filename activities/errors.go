package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
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
	// ErrKickoffUnanswered: the kick-off request got no response in time.
	// The server may have started an export anyway, so a retry may start a
	// second one: retryable by type, so the workflow decides (list it as
	// non-retryable, or find and DELETE the orphan before retrying).
	ErrKickoffUnanswered = "KickoffUnanswered"
)

// Budgets for failures that are transient by nature but, repeated, mean the
// server will not get better (issue 12 §3, issue 16 §4). Counted with the
// activity's attempt number, so they hold whatever the workflow's retry
// policy says.
const (
	// A refused connection is retried quickly this many attempts in all
	// (about 10s, 20s, 40s apart), then permanent: a server restarting is
	// back by then, a wrong port never is.
	refusedAttempts = 4
	refusedDelay    = 10 * time.Second
	// A request that stalls (no bytes for the idle timeout, or a body that
	// never ends) is retried this many attempts in all, then permanent.
	stalledAttempts = 3
)

// NonRetryable lists the error types no retry can fix.
var NonRetryable = []string{ErrJobGone, ErrFileGone, ErrInvalidContent, ErrPermanent, ErrUnauthorized,
	"Config", "InvalidInput", "InvalidManifest", "PlanMissing"}

// temporalErrorCtx turns a protocol or sink error into a Temporal
// application error whose type says what happened and whether retrying can
// help. A server-supplied Retry-After becomes NextRetryDelay, so 429s and
// 503s are waited out exactly as long as the server asked (clamped by the
// client). The attempt budgets of the activity running in ctx apply: a
// refused connection or a stalled request that keeps happening becomes
// permanent, saying how many attempts it had.
func temporalErrorCtx(ctx context.Context, err error) error {
	return temporalErrorAt(attemptOf(ctx, 0), err)
}

// attemptOf is the attempt number the budgets count: the activity's own,
// or the workflow's when it drives the retries (then each activity
// execution is attempt 1).
func attemptOf(ctx context.Context, workflowAttempt int32) int32 {
	var attempt int32
	if activity.IsActivity(ctx) {
		attempt = activity.GetInfo(ctx).Attempt
	}
	return max(attempt, workflowAttempt)
}

// temporalErrorAt decides with the attempt number (1-based; 0 = unknown,
// no budget applies).
func temporalErrorAt(attempt int32, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if bulk.KindOf(err) == bulk.KindTransient && attempt > 0 {
		switch {
		case bulk.ConnRefused(err):
			if attempt >= refusedAttempts {
				return permanent(ErrPermanent, fmt.Errorf("%w (attempt %d of at most %d for a refused connection: giving up)", err, attempt, refusedAttempts))
			}
			return temporal.NewApplicationErrorWithOptions(err.Error(), ErrTransient, temporal.ApplicationErrorOptions{
				NextRetryDelay: refusedDelay << (attempt - 1)})
		case errors.Is(err, bulk.ErrStalled):
			if attempt >= stalledAttempts {
				return permanent(ErrPermanent, fmt.Errorf("%w (attempt %d of at most %d for a stalled request: giving up)", err, attempt, stalledAttempts))
			}
		}
	}
	return temporalErrorKind(err)
}

func temporalErrorKind(err error) error {
	var retryAfter time.Duration
	if be := (*bulk.Error)(nil); errors.As(err, &be) {
		retryAfter = be.RetryAfter
	}
	typ, nonRetryable := ErrTransient, false
	var be *bulk.Error
	if errors.As(err, &be) && be.Op == "kickoff" && errors.Is(err, bulk.ErrStalled) {
		typ = ErrKickoffUnanswered
	}
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
