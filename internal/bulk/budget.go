package bulk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// ErrStalled marks an exchange that stopped making progress: no bytes for
// IdleTimeout, or a kick-off/status/manifest/DELETE exchange still going
// after MaxBodyTime. It is retryable (KindTransient); the caller bounds how
// many times in a row (activities: a few attempts, then permanent).
var ErrStalled = errors.New("stalled")

// ErrForeignOrigin marks a status or manifest URL, or a redirect, on an
// origin credentials may not go to. Always KindPermanent.
var ErrForeignOrigin = errors.New("refused")

// ErrBadRedirect marks a redirect to a non-http(s) scheme or a redirect
// chain longer than maxRedirects. Always KindPermanent.
var ErrBadRedirect = errors.New("bad redirect")

func (c *Client) idleTimeout() time.Duration {
	if c.IdleTimeout > 0 {
		return c.IdleTimeout
	}
	return defaultIdleTimeout
}

func (c *Client) maxBodyTime() time.Duration {
	if c.MaxBodyTime > 0 {
		return c.MaxBodyTime
	}
	return defaultMaxBodyTime
}

// guard watches one exchange: the idle timer fires when no bytes arrived
// for IdleTimeout (waiting for headers, then between body reads), the total
// timer when a non-download exchange outlives MaxBodyTime. Either cancels
// the request with a cause that is a *Error naming the URL and the phase.
type guard struct {
	c      *Client
	op     string
	url    string
	idle   time.Duration
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	phase string
	timer *time.Timer
	total *time.Timer
}

func (c *Client) guard(req *http.Request, op, logURL string) (*http.Request, *guard) {
	ctx, cancel := context.WithCancelCause(req.Context())
	g := &guard{c: c, op: op, url: logURL, idle: c.idleTimeout(), ctx: ctx, cancel: cancel, phase: "waiting for the response headers"}
	if op == opKickoff {
		g.phase = "waiting for the kick-off response (the server may have started an export anyway)"
	}
	g.timer = time.AfterFunc(g.idle, func() {
		g.mu.Lock()
		phase := g.phase
		g.mu.Unlock()
		cancel(&Error{Op: op, URL: logURL, Kind: KindTransient,
			Err: fmt.Errorf("%w: no bytes for %s while %s", ErrStalled, g.idle, phase)})
	})
	if op != opDownload {
		d := c.maxBodyTime()
		g.total = time.AfterFunc(d, func() {
			cancel(&Error{Op: op, URL: logURL, Kind: KindTransient,
				Err: fmt.Errorf("%w: the exchange took longer than %s (a body that never ends?)", ErrStalled, d)})
		})
	}
	return req.WithContext(ctx), g
}

// stop releases the timers and the request context.
func (g *guard) stop() {
	g.timer.Stop()
	if g.total != nil {
		g.total.Stop()
	}
	g.cancel(nil)
}

// cause is the guard's own error when it cancelled the request, else nil.
func (g *guard) cause() error {
	var e *Error
	if cause := context.Cause(g.ctx); cause != nil && errors.As(cause, &e) && errors.Is(e, ErrStalled) {
		return e
	}
	return nil
}

// fail replaces a Do error caused by the guard with the guard's error.
func (g *guard) fail(err error) error {
	if ge := g.cause(); ge != nil {
		err = ge
	}
	g.stop()
	return err
}

// headers switches to watching the body.
func (g *guard) headers(resp *http.Response) {
	g.mu.Lock()
	g.phase = "reading the response body"
	if g.op == opDownload {
		g.phase = "reading the file body"
	}
	g.mu.Unlock()
	g.timer.Reset(g.idle)
	resp.Body = &guardedBody{rc: resp.Body, g: g}
}

type guardedBody struct {
	rc   io.ReadCloser
	g    *guard
	once sync.Once
}

func (b *guardedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.g.timer.Reset(b.g.idle)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		if ge := b.g.cause(); ge != nil {
			return n, ge
		}
	}
	return n, err
}

func (b *guardedBody) Close() error {
	err := b.rc.Close()
	b.once.Do(b.g.stop)
	return err
}

// checkRedirect is the redirect policy of every request the client lets
// net/http follow: only http(s) targets (a file:// or ftp:// Location can
// never succeed, so it is permanent, not a transport error retried for
// hours), at most maxRedirects hops (a loop is permanent too), and, except
// for file downloads (which may go to object storage without credentials),
// only origins the credentials may go to: a kick-off or status request
// redirected elsewhere would carry the request (patient ids included) to a
// host the user never configured.
func (c *Client) checkRedirect(op string) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if err := checkHop(op, req, len(via)); err != nil {
			return err
		}
		if op != opDownload && !c.origins().Allows(req.URL) {
			return c.foreign(op, "redirect target", req.URL.String())
		}
		return nil
	}
}

// checkHop checks one redirect hop; hops counts the requests already made.
func checkHop(op string, next *http.Request, hops int) error {
	if next.URL.Scheme != "http" && next.URL.Scheme != "https" {
		return &Error{Op: op, URL: redactOrigin(next.URL.String()), Kind: KindPermanent,
			Err: fmt.Errorf("%w: the server redirected to a %q URL; only http and https can be followed", ErrBadRedirect, sanitize(next.URL.Scheme, 20))}
	}
	if hops > maxRedirects {
		return &Error{Op: op, URL: redactOrigin(next.URL.String()), Kind: KindPermanent,
			Err: fmt.Errorf("%w: more than %d redirects (a redirect loop?)", ErrBadRedirect, maxRedirects)}
	}
	return nil
}
