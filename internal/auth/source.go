package auth

import (
	"context"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// Token lifetime handling (checklist §3 #4). expires_in "SHOULD NOT exceed
// 300" (backend-services.md L192-229) but may be missing, a string, tiny or
// huge; it is clamped so a bad value neither hammers the token endpoint nor
// keeps a token the server has long forgotten.
const (
	defaultLifetime = 300 * time.Second
	minLifetime     = 10 * time.Second
	maxLifetime     = time.Hour
	// tokenRequestTimeout bounds discovery and token requests.
	tokenRequestTimeout = 30 * time.Second
)

// refreshAt is when a token obtained at t with the given lifetime is
// replaced: at 80%, so requests never go out with a token about to expire.
func refreshAt(t time.Time, lifetime time.Duration) time.Time {
	return t.Add(lifetime * 4 / 5)
}

// fetcher gets a new token from the token endpoint. It is only called with
// Source.mu held, so implementations may keep unsynchronised state.
type fetcher interface {
	fetch(ctx context.Context) (tok *oauth2.Token, lifetime time.Duration, err error)
}

// SourceStats counts a Source's work, for tests and diagnostics.
type SourceStats struct {
	Fetches       int // token requests attempted (including failed ones)
	Failures      int // token requests that failed
	Invalidations int // cached tokens dropped after a 401 or Invalidate
}

// Source is a caching token source with forced refresh. It replaces
// oauth2.ReuseTokenSource because that one cannot be told "the server
// rejected this token" and uses its own clock.
type Source struct {
	ctx context.Context
	f   fetcher
	now func() time.Time

	mu        sync.Mutex
	tok       *oauth2.Token
	refreshAt time.Time
	stats     SourceStats
}

func newSource(ctx context.Context, f fetcher, now func() time.Time) *Source {
	return &Source{ctx: ctx, f: f, now: now}
}

// Token returns the cached token, fetching a new one if there is none or it
// is due for refresh. Concurrent callers wait for a single fetch.
func (s *Source) Token() (*oauth2.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.tok != nil && now.Before(s.refreshAt) {
		return s.tok, nil
	}
	s.stats.Fetches++
	tok, life, err := s.f.fetch(s.ctx)
	if err != nil {
		s.stats.Failures++
		return nil, err
	}
	tok.Expiry = now.Add(life)
	s.tok, s.refreshAt = tok, refreshAt(now, life)
	return tok, nil
}

// Invalidate drops the cached token unconditionally.
func (s *Source) Invalidate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok != nil {
		s.tok = nil
		s.stats.Invalidations++
	}
}

// InvalidateToken implements Invalidator.
func (s *Source) InvalidateToken(stale *oauth2.Token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok != nil && stale != nil && s.tok.AccessToken == stale.AccessToken {
		s.tok = nil
		s.stats.Invalidations++
	}
}

// Stats returns a snapshot of the counters.
func (s *Source) Stats() SourceStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}
