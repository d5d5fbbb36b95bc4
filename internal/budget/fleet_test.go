package budget

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/internal/throttle"
)

// fakeLimiter stands in for the limiter workflow: k slots, asks wait for a
// free one.
type fakeLimiter struct {
	mu        sync.Mutex
	cond      *sync.Cond
	k, inUse  int
	exchanges atomic.Int64
}

func newFakeLimiter(k int) *fakeLimiter {
	f := &fakeLimiter{k: k}
	f.cond = sync.NewCond(&f.mu)
	return f
}

func (f *fakeLimiter) exchange(ctx context.Context, _ string, _ int, r Request) (Reply, error) {
	f.exchanges.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inUse -= r.Return
	f.cond.Broadcast()
	if !r.Ask {
		return Reply{Window: f.k, InUse: f.inUse}, nil
	}
	deadline := time.Now().Add(r.WaitUpTo)
	for f.inUse >= f.k {
		if time.Now().After(deadline) {
			return Reply{Window: f.k, InUse: f.inUse, Retry: true}, nil
		}
		go func() { time.Sleep(10 * time.Millisecond); f.cond.Broadcast() }()
		f.cond.Wait()
	}
	n := min(r.Want, f.k-f.inUse)
	f.inUse += n
	return Reply{Granted: n, Window: f.k, InUse: f.inUse}, nil
}

// Two worker processes that always have downloads waiting share a budget
// of 2, the second arriving when the first holds both: each gets its turn (a granted slot serves its holder for Reuse,
// then goes back), and most downloads take a slot without a round trip.
func TestFleetSharesSlotsAndSavesRoundTrips(t *testing.T) {
	lim := newFakeLimiter(2)
	var done [2]atomic.Int64
	var inUse, maxInUse atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 2 {
		f := &Fleet{Holder: string(rune('a' + w)), Reuse: 100 * time.Millisecond, WaitUpTo: time.Second, exchange: lim.exchange}
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The second worker comes when the first holds every slot.
				time.Sleep(time.Duration(w) * 100 * time.Millisecond)
				for ctx.Err() == nil {
					l, err := f.Acquire(ctx, "ehr", 2)
					if err != nil {
						return
					}
					n := inUse.Add(1)
					for m := maxInUse.Load(); n > m && !maxInUse.CompareAndSwap(m, n); m = maxInUse.Load() {
					}
					time.Sleep(2 * time.Millisecond) // a small file
					inUse.Add(-1)
					done[w].Add(1)
					l.Release(throttle.Success)
				}
			}()
		}
	}
	wg.Wait()
	a, b := done[0].Load(), done[1].Load()
	ex := lim.exchanges.Load()
	t.Logf("downloads %d + %d, %d exchanges with the limiter, at most %d at once", a, b, ex, maxInUse.Load())
	if maxInUse.Load() > 2 {
		t.Errorf("%d downloads at once with a budget of 2", maxInUse.Load())
	}
	// Turns are coarse (a slot serves its holder for Reuse), so the split
	// is uneven on a loaded machine (up to 73/27 seen); starving is far
	// below the fifth each worker must get, as in the fleet e2e test.
	if a*5 < a+b || b*5 < a+b {
		t.Errorf("one worker starved the other: %d vs %d downloads", a, b)
	}
	if ex*5 > a+b {
		t.Errorf("%d exchanges for %d downloads: slots are not reused", ex, a+b)
	}
}

// A worker that stops gracefully gives its slots back at once, not after
// its lease expires.
func TestFleetCloseGivesSlotsBack(t *testing.T) {
	lim := newFakeLimiter(3)
	f := &Fleet{Holder: "a", Linger: time.Hour, Reuse: time.Hour, WaitUpTo: time.Second, exchange: lim.exchange}
	var leases []Lease
	for range 2 {
		l, err := f.Acquire(context.Background(), "ehr", 3)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	for _, l := range leases {
		l.Release(throttle.Success)
	}
	lim.mu.Lock()
	held := lim.inUse
	lim.mu.Unlock()
	if held == 0 {
		t.Fatal("the slots went back before Close: the test shows nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f.Close(ctx)
	lim.mu.Lock()
	defer lim.mu.Unlock()
	if lim.inUse != 0 {
		t.Errorf("%d slots still held after Close", lim.inUse)
	}
}

// The cost of a download's slot once this process holds one (the common
// case for small files): no round trip, a mutex.
func BenchmarkFleetSlotReused(b *testing.B) {
	lim := newFakeLimiter(8)
	f := &Fleet{Holder: "a", Linger: time.Hour, Reuse: time.Hour, exchange: lim.exchange}
	ctx := context.Background()
	for b.Loop() {
		l, err := f.Acquire(ctx, "ehr", 8)
		if err != nil {
			b.Fatal(err)
		}
		l.Release(throttle.Success)
	}
	b.ReportMetric(float64(lim.exchanges.Load())/float64(b.N), "exchanges/op")
}
