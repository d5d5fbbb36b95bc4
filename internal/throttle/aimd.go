// Package throttle adapts how many downloads run at once against one FHIR
// server: additive increase, multiplicative decrease (AIMD), the rule TCP
// uses to share a link. The fleet's budget (internal/budget) applies the
// same rule to one window per server for all workers; a Limiter is the
// per-process budget (budget.Local, -download-budget worker).
package throttle

import (
	"context"
	"sync"
	"time"
)

// Outcome is how a request that held a slot ended.
type Outcome int

const (
	// Success counts towards the next additive increase.
	Success Outcome = iota
	// Throttled (429, 503) halves the limit.
	Throttled
	// Other failures leave the limit alone.
	Other
)

// Limiter is an AIMD concurrency limit in [1, Max].
type Limiter struct {
	mu        sync.Mutex
	max       int
	limit     int
	inflight  int
	successes int
	seq       uint64 // slots handed out
	cutAt     uint64 // seq when the limit was last halved
	cutTime   time.Time
	wake      chan struct{}

	// Hold is how long after a cut the limit stays put before growing
	// again: a server that just said 429 is not probed right away.
	Hold time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// New returns a Limiter that starts at max, with a 10 s hold after a cut.
func New(max int) *Limiter {
	if max < 1 {
		max = 1
	}
	return &Limiter{max: max, limit: max, wake: make(chan struct{}), Hold: 10 * time.Second}
}

func (l *Limiter) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Slot is one acquired unit of concurrency.
type Slot struct {
	l   *Limiter
	seq uint64
}

// Acquire waits for a free slot or ctx's end.
func (l *Limiter) Acquire(ctx context.Context) (*Slot, error) {
	for {
		l.mu.Lock()
		if l.inflight < l.limit {
			l.inflight++
			l.seq++
			s := &Slot{l: l, seq: l.seq}
			l.mu.Unlock()
			return s, nil
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wake:
		}
	}
}

// Release returns the slot and adapts the limit to how the request ended.
// A burst of 429s from requests that were all in flight together halves
// the limit once, not once per request: only requests started after the
// last cut can cut again.
func (s *Slot) Release(o Outcome) {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inflight--
	switch o {
	case Throttled:
		if s.seq > l.cutAt {
			l.limit = max(1, l.limit/2)
			l.cutAt = l.seq
			l.cutTime = l.now()
			l.successes = 0
		}
	case Success:
		if !l.cutTime.IsZero() && l.now().Sub(l.cutTime) < l.Hold {
			break
		}
		l.successes++
		if l.successes >= l.limit && l.limit < l.max {
			l.limit++
			l.successes = 0
		}
	}
	close(l.wake)
	l.wake = make(chan struct{})
}

// Limit is the current limit.
func (l *Limiter) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limit
}

// InFlight is the number of held slots.
func (l *Limiter) InFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inflight
}
