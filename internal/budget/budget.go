package budget

import (
	"context"
	"sync"

	"github.com/bulkflow/bulkflow/internal/throttle"
)

// Budget hands out download slots of a server. Every file download takes
// one through it (activities: Activities.downloadSlot) and gives it back
// with how the request ended.
type Budget interface {
	// Acquire waits for a slot of server, whose cap (maxConcurrentDownloads)
	// is max, or for ctx's end.
	Acquire(ctx context.Context, server string, max int) (Lease, error)
	// Stats is the server's current window and this process's slots in
	// use (for metrics).
	Stats(server string) (window, inUse int)
}

// Lease is one slot.
type Lease interface {
	// Release gives the slot back: Throttled (a 429 or 503) shrinks the
	// window, Success counts towards growing it.
	Release(throttle.Outcome)
}

// Local is a Budget of this process only: one AIMD limiter per server, as
// bulkflow had before the fleet budget. Tests and the activities' default
// without a Temporal client use it.
type Local struct {
	mu       sync.Mutex
	limiters map[string]*throttle.Limiter
}

// Acquire implements Budget.
func (b *Local) Acquire(ctx context.Context, server string, max int) (Lease, error) {
	s, err := b.limiter(server, max).Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Stats implements Budget.
func (b *Local) Stats(server string) (int, int) {
	b.mu.Lock()
	l := b.limiters[server]
	b.mu.Unlock()
	if l == nil {
		return 0, 0
	}
	return l.Limit(), l.InFlight()
}

func (b *Local) limiter(server string, max int) *throttle.Limiter {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.limiters[server]; ok {
		return l
	}
	if b.limiters == nil {
		b.limiters = map[string]*throttle.Limiter{}
	}
	l := throttle.New(max)
	b.limiters[server] = l
	return l
}
