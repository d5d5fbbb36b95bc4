package budget

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/bulkflow/bulkflow/internal/throttle"
)

// Fleet is the Budget of a worker process that shares each server's slots
// with every other worker through the server's limiter workflow.
type Fleet struct {
	// TaskQueue runs the limiter workflows (the worker's own queue).
	TaskQueue string
	// Holder names this process in the limiters; unique per process run.
	Holder string
	// TTL is the lease: a worker silent this long loses its slots
	// (default 30 s). It renews every TTL/3 while it holds slots, and
	// stops using its slots after 0.8 TTL without an answer.
	TTL time.Duration
	// Reuse is how long a granted slot serves this process's next
	// downloads before it goes back to the fleet (default 1 s): the
	// other workers' turn comes at least this often.
	Reuse time.Duration
	// Linger keeps a slot nobody here waits for this long before giving
	// it back (default 200 ms): back-to-back small files stay local.
	Linger time.Duration
	// WaitUpTo bounds one ask's wait in the limiter (default 10 s).
	WaitUpTo time.Duration
	Logger   *slog.Logger

	exchange func(ctx context.Context, server string, max int, r Request) (Reply, error)

	mu    sync.Mutex
	pools map[string]*pool
}

// NewFleet returns the fleet budget of a worker on taskQueue.
func NewFleet(c client.Client, taskQueue string, logger *slog.Logger) *Fleet {
	f := &Fleet{TaskQueue: taskQueue, Holder: holderID(), Logger: cmp.Or(logger, slog.New(slog.DiscardHandler))}
	f.exchange = func(ctx context.Context, server string, max int, r Request) (Reply, error) {
		return temporalExchange(ctx, c, f.TaskQueue, server, max, r)
	}
	return f
}

// holderID names this process: host, pid and a random suffix (a restarted
// process with the same pid is a new holder).
func holderID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
}

// temporalExchange sends one exchange, starting the limiter if it is not
// running. The update ID is derived from the holder and sequence, so a
// retried exchange is answered once (the limiter also deduplicates by
// sequence across continue-as-new).
func temporalExchange(ctx context.Context, c client.Client, queue, server string, max int, r Request) (Reply, error) {
	kind := "give"
	if r.Ask {
		kind = "ask"
	}
	start := c.NewWithStartWorkflowOperation(client.StartWorkflowOptions{
		ID:                       WorkflowID(queue, server),
		TaskQueue:                queue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		StaticSummary:            "download budget of " + server,
	}, WorkflowName, State{Server: server, Max: max})
	h, err := c.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
		StartWorkflowOperation: start,
		UpdateOptions: client.UpdateWorkflowOptions{
			UpdateID:     fmt.Sprintf("%s-%s-%d", r.Holder, kind, r.Seq),
			UpdateName:   ExchangeUpdate,
			Args:         []any{r},
			WaitForStage: client.WorkflowUpdateStageCompleted,
		},
	})
	if err != nil {
		return Reply{}, err
	}
	var rep Reply
	err = h.Get(ctx, &rep)
	return rep, err
}

func (f *Fleet) ttl() time.Duration    { return cmp.Or(f.TTL, 30*time.Second) }
func (f *Fleet) reuse() time.Duration  { return cmp.Or(f.Reuse, time.Second) }
func (f *Fleet) linger() time.Duration { return cmp.Or(f.Linger, 200*time.Millisecond) }

// wait: an ask renews the lease when it is sent and when it is answered,
// so it waits at most a third of the TTL.
func (f *Fleet) wait() time.Duration { return cmp.Or(f.WaitUpTo, min(10*time.Second, f.ttl()/3)) }

// Acquire implements Budget.
func (f *Fleet) Acquire(ctx context.Context, server string, max int) (Lease, error) {
	return f.pool(server, max).acquire(ctx)
}

// Stats implements Budget.
func (f *Fleet) Stats(server string) (int, int) {
	f.mu.Lock()
	p := f.pools[server]
	f.mu.Unlock()
	if p == nil {
		return 0, 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.window, p.inUse
}

func (f *Fleet) pool(server string, max int) *pool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.pools[server]; ok {
		p.mu.Lock()
		p.max = max
		p.mu.Unlock()
		return p
	}
	if f.pools == nil {
		f.pools = map[string]*pool{}
	}
	p := &pool{f: f, server: server, max: max, window: max, wake: make(chan struct{}), kick: make(chan struct{}, 1)}
	f.pools[server] = p
	return p
}

// Close gives back every slot this process holds and no download uses, and
// waits (until ctx ends) for the limiters to have them: a worker that stops
// gracefully does not keep its slots for a lease TTL.
func (f *Fleet) Close(ctx context.Context) {
	f.mu.Lock()
	pools := make([]*pool, 0, len(f.pools))
	for _, p := range f.pools {
		pools = append(pools, p)
	}
	f.mu.Unlock()
	for _, p := range pools {
		p.mu.Lock()
		p.ret += len(p.idle)
		p.idle = nil
		if p.ret > 0 {
			p.start()
		}
		p.mu.Unlock()
	}
	for _, p := range pools {
		for {
			p.mu.Lock()
			done := p.ret == 0 && !p.giving
			p.mu.Unlock()
			if done || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// pool is this process's share of one server's budget.
type pool struct {
	f      *Fleet
	server string

	mu      sync.Mutex
	max     int
	idle    []slot // granted, not in use
	inUse   int
	waiters int
	wake    chan struct{} // closed when a slot may be free
	kick    chan struct{} // wakes the runner
	running bool
	asking  bool
	giving  bool // a give-back is on its way
	gen     int  // bumped when the limiter said our lease had expired

	// To report with the next exchange.
	ret, successes, throttled, throttledEpoch int

	window, epoch   int
	lastAck         time.Time // send time of the last answered exchange
	askSeq, giveSeq int64
}

type slot struct {
	granted time.Time
	since   time.Time // idle since
	gen     int
}

type lease struct {
	p     *pool
	s     slot
	epoch int
	once  sync.Once
}

func (p *pool) held() int { return len(p.idle) + p.inUse }

// fenced: no answer from the limiter for most of the lease: the slots may
// have been handed to others, so none is used any more.
func (p *pool) fenced(now time.Time) bool {
	return !p.lastAck.IsZero() && now.Sub(p.lastAck) > p.f.ttl()*8/10
}

func (p *pool) acquire(ctx context.Context) (Lease, error) {
	p.mu.Lock()
	for {
		now := time.Now()
		if p.fenced(now) && len(p.idle) > 0 {
			p.ret += len(p.idle)
			p.idle = nil
		}
		if n := len(p.idle); n > 0 {
			s := p.idle[n-1]
			p.idle = p.idle[:n-1]
			p.inUse++
			l := &lease{p: p, s: s, epoch: p.epoch}
			p.mu.Unlock()
			return l, nil
		}
		p.waiters++
		p.start()
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.waiters--
			p.mu.Unlock()
			return nil, ctx.Err()
		case <-wake:
		}
		p.mu.Lock()
		p.waiters--
	}
}

// Release implements Lease.
func (l *lease) Release(o throttle.Outcome) {
	l.once.Do(func() {
		p := l.p
		p.mu.Lock()
		defer p.mu.Unlock()
		p.inUse--
		switch o {
		case throttle.Success:
			p.successes++
		case throttle.Throttled:
			p.throttled++
			p.throttledEpoch = max(p.throttledEpoch, l.epoch)
		}
		now := time.Now()
		switch {
		case l.s.gen != p.gen:
			// The limiter reclaimed it already.
		case o == throttle.Throttled || now.Sub(l.s.granted) >= p.f.reuse() || p.fenced(now):
			p.ret++
		default:
			l.s.since = now
			p.idle = append(p.idle, l.s)
			p.broadcast()
		}
		p.start()
	})
}

func (p *pool) broadcast() {
	close(p.wake)
	p.wake = make(chan struct{})
}

// start makes sure the runner works (p.mu held).
func (p *pool) start() {
	if !p.running {
		p.running = true
		go p.run()
	}
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run gives back, reports and renews, and starts an ask when this process
// waits for slots; it ends when the pool holds nothing and nobody waits.
func (p *pool) run() {
	for {
		p.mu.Lock()
		now := time.Now()
		kept := p.idle[:0]
		for _, s := range p.idle {
			if now.Sub(s.since) < p.f.linger() && now.Sub(s.granted) < p.f.reuse() && !p.fenced(now) {
				kept = append(kept, s)
			} else {
				p.ret++
			}
		}
		p.idle = kept
		if p.waiters > len(p.idle) && !p.asking {
			p.asking = true
			go p.ask()
		}
		// An ask in flight renews the lease itself.
		renewDue := p.held() > 0 && !p.asking && now.Sub(p.lastAck) >= p.f.ttl()/3
		if p.ret > 0 || p.throttled > 0 || renewDue || (p.successes > 0 && p.held() == 0 && !p.asking) {
			p.giveSeq++
			r := Request{Holder: p.f.Holder, TTL: p.f.ttl(), Max: p.max, Seq: p.giveSeq, Return: p.ret,
				Successes: p.successes, Throttled: p.throttled, ThrottledEpoch: p.throttledEpoch, Held: p.held()}
			p.ret, p.successes, p.throttled, p.throttledEpoch = 0, 0, 0, 0
			p.giving = true
			p.mu.Unlock()
			rep, sent := p.send(r)
			p.mu.Lock()
			p.giving = false
			p.answered(rep, sent)
			p.mu.Unlock()
			continue
		}
		if p.held() == 0 && p.waiters == 0 && !p.asking {
			p.running = false
			p.mu.Unlock()
			return
		}
		next := p.f.linger() / 2
		p.mu.Unlock()
		t := time.NewTimer(next)
		select {
		case <-p.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// ask asks the limiter for as many slots as this process waits for.
func (p *pool) ask() {
	for {
		p.mu.Lock()
		want := min(p.waiters-len(p.idle), p.max)
		if want <= 0 {
			p.asking = false
			p.mu.Unlock()
			p.kickRunner()
			return
		}
		p.askSeq++
		r := Request{Holder: p.f.Holder, TTL: p.f.ttl(), Max: p.max, Ask: true, Want: want, WaitUpTo: p.f.wait(), Seq: p.askSeq, Held: p.held()}
		p.mu.Unlock()
		rep, sent := p.send(r)
		p.mu.Lock()
		p.answered(rep, sent)
		for range rep.Granted {
			p.idle = append(p.idle, slot{granted: time.Now(), since: time.Now(), gen: p.gen})
		}
		if rep.Granted > 0 {
			p.broadcast()
		}
		p.mu.Unlock()
	}
}

func (p *pool) kickRunner() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// answered takes in a reply (p.mu held).
func (p *pool) answered(rep Reply, sent time.Time) {
	if rep.Window > 0 {
		p.window = rep.Window
	}
	p.epoch = max(p.epoch, rep.Epoch)
	p.lastAck = sent
	if rep.Expired {
		p.f.Logger.Warn("download budget: this worker's lease had expired (no answer from Temporal for a while); its slots went back to the fleet", "server", p.server)
		p.gen++
		p.idle = nil
	}
}

// send delivers one exchange, retrying the same one (same sequence, so it
// is applied once) until it is answered: a lost give-back would leave
// slots counted against the fleet.
func (p *pool) send(r Request) (Reply, time.Time) {
	backoff := 200 * time.Millisecond
	for {
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), r.WaitUpTo+30*time.Second)
		rep, err := p.f.exchange(ctx, p.server, r.Max, r)
		cancel()
		if err == nil {
			return rep, sent
		}
		p.f.Logger.Warn("download budget: exchange with the limiter failed; retrying", "server", p.server, "error", shortErr(err), "retry_in", backoff)
		time.Sleep(backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
