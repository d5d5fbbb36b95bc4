package throttle

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestHalvesOncePerBurstAndGrowsBack(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(8)
	l.Now = func() time.Time { return now }
	var slots []*Slot
	for i := 0; i < 8; i++ {
		s, err := l.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, s)
	}
	// Eight concurrent requests all get 429: one halving, not eight.
	for _, s := range slots {
		s.Release(Throttled)
	}
	if got := l.Limit(); got != 4 {
		t.Fatalf("limit after one burst = %d, want 4", got)
	}
	// A new 429 after the cut halves again.
	s, _ := l.Acquire(context.Background())
	s.Release(Throttled)
	if got := l.Limit(); got != 2 {
		t.Fatalf("limit = %d, want 2", got)
	}
	// Within the hold after a cut, successes do not grow the limit.
	for i := 0; i < 10; i++ {
		s, _ := l.Acquire(context.Background())
		s.Release(Success)
	}
	if got := l.Limit(); got != 2 {
		t.Fatalf("limit grew to %d during the hold", got)
	}
	now = now.Add(l.Hold)
	// Additive increase: one step per limit's worth of successes.
	for want := 3; want <= 8; want++ {
		for i := 0; i < want-1; i++ {
			s, _ := l.Acquire(context.Background())
			s.Release(Success)
		}
		if got := l.Limit(); got != want {
			t.Fatalf("limit = %d, want %d", got, want)
		}
	}
	for i := 0; i < 100; i++ {
		s, _ := l.Acquire(context.Background())
		s.Release(Success)
	}
	if got := l.Limit(); got != 8 {
		t.Fatalf("limit = %d, must not pass max 8", got)
	}
	for i := 0; i < 10; i++ {
		s, _ := l.Acquire(context.Background())
		s.Release(Throttled)
	}
	if got := l.Limit(); got != 1 {
		t.Fatalf("limit = %d, floor is 1", got)
	}
}

// Simulates a server that allows cap concurrent requests and answers 429
// above it: after adapting, the limiter holds in-flight requests at or under
// the cap.
func TestConvergesUnderAServerCap(t *testing.T) {
	const cap = 3
	l := New(16)
	var mu sync.Mutex
	inflight, over, lateOver := 0, 0, 0
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				s, err := l.Acquire(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				inflight++
				rejected := inflight > cap
				if rejected {
					over++
					if i >= 20 {
						lateOver++
					}
				}
				mu.Unlock()
				time.Sleep(200 * time.Microsecond)
				mu.Lock()
				inflight--
				mu.Unlock()
				if rejected {
					s.Release(Throttled)
				} else {
					s.Release(Success)
				}
			}
		}(w)
	}
	wg.Wait()
	if over == 0 {
		t.Fatal("the cap was never hit: the test proves nothing")
	}
	// After the first cuts the limit sits under the cap for the hold, so
	// the second half of the run sees no 429 at all.
	t.Logf("rejections: %d in all, %d in the second half; limit %d", over, lateOver, l.Limit())
	if lateOver != 0 {
		t.Errorf("%d rejections after adapting", lateOver)
	}
	if l.Limit() > cap {
		t.Errorf("limit %d above the server's cap %d", l.Limit(), cap)
	}
}

func TestAcquireHonoursContext(t *testing.T) {
	l := New(1)
	s, _ := l.Acquire(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Acquire(ctx); err == nil {
		t.Fatal("acquired past the limit")
	}
	s.Release(Success)
	if _, err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
}
