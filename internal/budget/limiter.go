// Package budget shares one download budget per FHIR server across every
// worker process of a task queue and every export: the cap in the servers
// file (maxConcurrentDownloads) is what the server sees from the fleet.
//
// The budget of a server is a long-lived Temporal workflow, the limiter
// (LimiterWorkflow, ID WorkflowID(queue, server)), started on demand by the
// first worker that needs a slot (update-with-start). Workers hold slots under
// leases that expire unless renewed, so a killed worker's slots come back
// after its lease TTL. The limiter runs AIMD on the fleet's one window: a
// 429 halves it, successes grow it back (docs/architecture.md, "One
// download budget per server").
//
// Round trips are per worker and per second, not per file: a worker keeps
// the slots it was granted and reuses them for its next downloads for a
// short while (Fleet.Reuse), then gives them back so that the other workers
// get their turn.
package budget

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"go.temporal.io/sdk/workflow"
)

// WorkflowName is the limiter's registered workflow type.
const WorkflowName = "DownloadBudgetWorkflow"

// ExchangeUpdate is the one Update a worker sends its server's limiter:
// give slots back, report outcomes, renew its lease, ask for slots.
const ExchangeUpdate = "exchange"

// WorkflowID is the limiter's workflow ID for a server (its name in the
// servers file, or its base URL) on a task queue: every worker of the queue
// derives the same one. The queue is part of it because the limiter runs
// on that queue: a budget shared with another queue would stall when that
// queue's workers go away.
func WorkflowID(taskQueue, server string) string {
	return "bulkflow-download-budget:" + taskQueue + ":" + server
}

// Defaults of the limiter.
const (
	// DefaultHold: after a cut the window stays put this long before it
	// grows again, so a server that just said 429 is not probed at once.
	DefaultHold = 10 * time.Second
	// DefaultIdleAfter: a limiter with no holder and no waiter ends after
	// this long; the next worker that needs a slot starts it again.
	DefaultIdleAfter = 10 * time.Minute
	// DefaultMaxEvents: the limiter continues as new past this history
	// length (or when Temporal suggests it), carrying its holders.
	DefaultMaxEvents = 5000
	// DefaultMaxExchanges: ... or past this many exchanges in one run (an
	// exchange costs a few events: its update and a share of a workflow
	// task).
	DefaultMaxExchanges = 1000
)

// State is the limiter's input and what it carries across continue-as-new.
type State struct {
	Server string `json:"server"`
	// Max is the servers file's maxConcurrentDownloads for the server, as
	// the latest exchange reported it.
	Max int `json:"max"`
	// Window is the AIMD window in [1, Max]: slots held by all holders
	// together never exceed it when granted.
	Window int `json:"window,omitempty"`
	// Successes since the last increase.
	Successes int `json:"successes,omitempty"`
	// Epoch counts the cuts: a 429 cuts again only if its download started
	// after the last cut, so one burst halves once.
	Epoch int       `json:"epoch,omitempty"`
	CutAt time.Time `json:"cutAt,omitempty"`
	// Holders are the workers holding slots (sorted by ID).
	Holders []Holder `json:"holders,omitempty"`

	// Tunables (tests); zero means the default.
	Hold         time.Duration `json:"hold,omitempty"`
	IdleAfter    time.Duration `json:"idleAfter,omitempty"`
	MaxEvents    int           `json:"maxEvents,omitempty"`
	MaxExchanges int           `json:"maxExchanges,omitempty"`
}

// Holder is one worker process's share.
type Holder struct {
	ID      string        `json:"id"`
	Slots   int           `json:"slots"`
	Expires time.Time     `json:"expires"`
	TTL     time.Duration `json:"ttl"`
	// GiveSeq is the last applied non-asking exchange and AskSeq the last
	// answered ask, with its grant: a retried exchange (its answer was
	// lost) is answered again, never applied twice, across continue-as-new
	// too.
	GiveSeq int64 `json:"giveSeq,omitempty"`
	AskSeq  int64 `json:"askSeq,omitempty"`
	Granted int   `json:"granted,omitempty"`
}

// Request is one exchange of a worker with the limiter.
type Request struct {
	Holder string        `json:"holder"`
	TTL    time.Duration `json:"ttl"`
	Max    int           `json:"max"`
	// Ask: wait (up to WaitUpTo) for slots, then grant up to Want.
	// Otherwise the exchange returns at once (give back, report, renew).
	Ask      bool          `json:"ask,omitempty"`
	Want     int           `json:"want,omitempty"`
	WaitUpTo time.Duration `json:"waitUpTo,omitempty"`
	// Seq numbers the holder's asks and, separately, its other exchanges.
	Seq int64 `json:"seq"`
	// Return gives slots back. Successes and Throttled count downloads
	// that ended since the last report; ThrottledEpoch is the newest epoch
	// one of the throttled downloads started in.
	Return         int `json:"return,omitempty"`
	Successes      int `json:"successes,omitempty"`
	Throttled      int `json:"throttled,omitempty"`
	ThrottledEpoch int `json:"throttledEpoch,omitempty"`
	// Held is how many slots the worker believes it holds (after Return):
	// a limiter that no longer knows the holder says so (Expired).
	Held int `json:"held,omitempty"`
}

// Reply answers an exchange.
type Reply struct {
	Granted int `json:"granted"`
	Window  int `json:"window"`
	InUse   int `json:"inUse"`
	Waiting int `json:"waiting"`
	Epoch   int `json:"epoch"`
	// Retry: the ask got nothing (it waited WaitUpTo, or the limiter is
	// continuing as new): ask again.
	Retry bool `json:"retry,omitempty"`
	// Expired: the holder's lease had expired and its slots were handed
	// back: the worker must not use the slots it thought it held.
	Expired bool `json:"expired,omitempty"`
}

type limiter struct {
	State
	inUse    int
	queue    []int64 // waiting asks, first come first served
	ticket   int64
	draining bool
	asking   map[string]int64 // holder -> ask seq being answered
	ops      int              // exchanges in this run
}

func (l *limiter) holder(id string) *Holder {
	i, ok := slices.BinarySearchFunc(l.Holders, id, func(h Holder, id string) int { return cmpStr(h.ID, id) })
	if !ok {
		return nil
	}
	return &l.Holders[i]
}

func (l *limiter) addHolder(id string) *Holder {
	i, _ := slices.BinarySearchFunc(l.Holders, id, func(h Holder, id string) int { return cmpStr(h.ID, id) })
	l.Holders = slices.Insert(l.Holders, i, Holder{ID: id})
	return &l.Holders[i]
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// report applies a request's outcomes to the window (AIMD).
func (l *limiter) report(now time.Time, r Request) {
	if r.Max > 0 && r.Max != l.Max {
		l.Max = r.Max
		l.Window = min(max(1, l.Window), l.Max)
	}
	if r.Throttled > 0 && r.ThrottledEpoch >= l.Epoch {
		l.Window = max(1, l.Window/2)
		l.Epoch++
		l.CutAt = now
		l.Successes = 0
	}
	if r.Successes > 0 && (l.CutAt.IsZero() || now.Sub(l.CutAt) >= l.hold()) {
		l.Successes += r.Successes
		for l.Successes >= l.Window && l.Window < l.Max {
			l.Successes -= l.Window
			l.Window++
		}
		if l.Window >= l.Max {
			l.Successes = 0
		}
	}
}

func (l *limiter) hold() time.Duration {
	if l.Hold > 0 {
		return l.Hold
	}
	return DefaultHold
}

func (l *limiter) reply(granted int) Reply {
	return Reply{Granted: granted, Window: l.Window, InUse: l.inUse, Waiting: len(l.queue), Epoch: l.Epoch}
}

// expire hands back the slots of holders whose lease ran out.
func (l *limiter) expire(now time.Time, logger interface{ Warn(string, ...any) }) {
	kept := l.Holders[:0]
	for _, h := range l.Holders {
		if !h.Expires.After(now) && l.asking[h.ID] == 0 {
			if h.Slots > 0 {
				logger.Warn("download budget: a worker's lease expired; its slots are free again", "server", l.Server, "holder", h.ID, "slots", h.Slots)
			}
			l.inUse -= h.Slots
			continue
		}
		kept = append(kept, h)
	}
	l.Holders = kept
}

func (l *limiter) nextExpiry() time.Time {
	var t time.Time
	for _, h := range l.Holders {
		if t.IsZero() || h.Expires.Before(t) {
			t = h.Expires
		}
	}
	return t
}

// LimiterWorkflow is the download budget of one server for the whole
// fleet. Its state is a handful of numbers per worker process; it holds no
// URL, token or resource.
func LimiterWorkflow(ctx workflow.Context, in State) error {
	l := &limiter{State: in, asking: map[string]int64{}}
	if l.Max < 1 {
		l.Max = 1
	}
	if l.Window < 1 || l.Window > l.Max {
		l.Window = l.Max
	}
	for _, h := range l.Holders {
		l.inUse += h.Slots
	}
	logger := workflow.GetLogger(ctx)
	err := workflow.SetUpdateHandlerWithOptions(ctx, ExchangeUpdate, func(ctx workflow.Context, r Request) (Reply, error) {
		return l.exchange(ctx, r)
	}, workflow.UpdateHandlerOptions{Validator: func(r Request) error {
		if r.Holder == "" || r.TTL <= 0 || r.Want < 0 || r.Return < 0 || r.Successes < 0 || r.Throttled < 0 || r.Held < 0 || r.Seq < 1 {
			return errors.New("malformed download budget exchange")
		}
		return nil
	}})
	if err != nil {
		return err
	}
	maxEvents := in.MaxEvents
	if maxEvents <= 0 {
		maxEvents = DefaultMaxEvents
	}
	idleAfter := in.IdleAfter
	if idleAfter <= 0 {
		idleAfter = DefaultIdleAfter
	}
	maxOps := in.MaxExchanges
	if maxOps <= 0 {
		maxOps = DefaultMaxExchanges
	}
	needCAN := func() bool {
		info := workflow.GetInfo(ctx)
		return l.ops >= maxOps || info.GetContinueAsNewSuggested() || info.GetCurrentHistoryLength() >= maxEvents
	}
	idle := func() bool { return len(l.Holders) == 0 && len(l.queue) == 0 }
	for {
		l.expire(workflow.Now(ctx), logger)
		if needCAN() {
			// Waiting asks answer "retry" and are asked again of the next
			// run; the holders and the window travel with it.
			l.draining = true
			if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
				return err
			}
			return workflow.NewContinueAsNewError(ctx, WorkflowName, l.State)
		}
		if idle() {
			ok, err := workflow.AwaitWithTimeout(ctx, idleAfter, func() bool { return !idle() || needCAN() })
			if err != nil {
				return err
			}
			if !ok && idle() && workflow.AllHandlersFinished(ctx) {
				return nil
			}
			continue
		}
		next := l.nextExpiry()
		wait := max(next.Sub(workflow.Now(ctx)), time.Second)
		if _, err := workflow.AwaitWithTimeout(ctx, wait, func() bool {
			return needCAN() || idle() || l.nextExpiry().Before(next)
		}); err != nil {
			return err
		}
	}
}

func (l *limiter) exchange(ctx workflow.Context, r Request) (Reply, error) {
	l.ops++
	now := workflow.Now(ctx)
	h := l.holder(r.Holder)
	expired := false
	if h == nil {
		expired = r.Held > 0
		h = l.addHolder(r.Holder)
	}
	h.TTL = r.TTL
	h.Expires = now.Add(r.TTL)
	if !r.Ask {
		if r.Seq > h.GiveSeq {
			h.GiveSeq = r.Seq
			n := min(r.Return, h.Slots)
			h.Slots -= n
			l.inUse -= n
			l.report(now, r)
		}
		return withExpired(l.reply(0), expired), nil
	}
	if r.Seq <= h.AskSeq {
		return l.reply(h.Granted), nil // a retry of an answered ask
	}
	if l.asking[r.Holder] == r.Seq {
		// The same ask, sent again while the first still waits: answer
		// with the first's grant.
		if err := workflow.Await(ctx, func() bool {
			h := l.holder(r.Holder)
			return h == nil || h.AskSeq >= r.Seq
		}); err != nil {
			return Reply{}, err
		}
		if h := l.holder(r.Holder); h != nil && h.AskSeq == r.Seq {
			return l.reply(h.Granted), nil
		}
		return Reply{Retry: true}, nil
	}
	l.asking[r.Holder] = r.Seq
	defer delete(l.asking, r.Holder)
	l.report(now, r) // an ask carries no outcomes today; harmless if it does
	l.ticket++
	ticket := l.ticket
	l.queue = append(l.queue, ticket)
	defer func() { l.queue = slices.DeleteFunc(l.queue, func(t int64) bool { return t == ticket }) }()
	ok, err := workflow.AwaitWithTimeout(ctx, max(r.WaitUpTo, time.Second), func() bool {
		return l.draining || (l.queue[0] == ticket && l.inUse < l.Window)
	})
	if err != nil {
		return Reply{}, err
	}
	h = l.holder(r.Holder) // the slice may have moved
	if h == nil {
		h = l.addHolder(r.Holder)
		h.TTL = r.TTL
	}
	h.Expires = workflow.Now(ctx).Add(r.TTL)
	if !ok || l.draining {
		return withExpired(Reply{Window: l.Window, InUse: l.inUse, Waiting: len(l.queue) - 1, Epoch: l.Epoch, Retry: true}, expired), nil
	}
	free := l.Window - l.inUse
	n := min(max(r.Want, 1), free)
	if others := len(l.queue) - 1; others > 0 {
		// Leave a share for the asks queued behind this one.
		n = min(n, max(1, free/(others+1)))
	}
	h.Slots += n
	h.AskSeq, h.Granted = r.Seq, n
	l.inUse += n
	return withExpired(l.reply(n), expired), nil
}

func withExpired(r Reply, expired bool) Reply {
	r.Expired = expired
	return r
}

// String is for logs and test failures.
func (s State) String() string {
	return fmt.Sprintf("server %s window %d/%d epoch %d holders %d", s.Server, s.Window, s.Max, s.Epoch, len(s.Holders))
}
