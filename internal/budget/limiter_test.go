package budget

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// harness drives one limiter workflow in Temporal's time-skipping test
// environment: exchanges are Updates sent at given workflow times.
type harness struct {
	t      *testing.T
	env    *testsuite.TestWorkflowEnvironment
	start  time.Time
	held   map[string]int // slots per holder, as the replies say
	maxSum int            // the most slots held at once
	n      int
}

func newHarness(t *testing.T) *harness {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(LimiterWorkflow, workflow.RegisterOptions{Name: WorkflowName})
	return &harness{t: t, env: env, start: env.Now(), held: map[string]int{}}
}

// at sends r at workflow time d; got (if any) sees the reply and when it came.
func (h *harness) at(d time.Duration, r Request, got func(Reply, time.Duration)) {
	h.n++
	id := fmt.Sprintf("u%d", h.n)
	h.env.RegisterDelayedCallback(func() {
		if !r.Ask {
			h.held[r.Holder] -= r.Return
		}
		h.env.UpdateWorkflow(ExchangeUpdate, id, &testsuite.TestUpdateCallback{
			OnReject: func(err error) { h.t.Errorf("exchange %+v rejected: %v", r, err) },
			OnAccept: func() {},
			OnComplete: func(v any, err error) {
				if err != nil {
					h.t.Errorf("exchange %+v: %v", r, err)
					return
				}
				rep := toReply(h.t, v)
				h.held[r.Holder] += rep.Granted
				sum := 0
				for _, n := range h.held {
					sum += n
				}
				h.maxSum = max(h.maxSum, sum)
				if got != nil {
					got(rep, h.env.Now().Sub(h.start))
				}
			},
		}, r)
	}, d)
}

func toReply(t *testing.T, v any) Reply {
	if r, ok := v.(Reply); ok {
		return r
	}
	b, _ := json.Marshal(v)
	var r Reply
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("reply %v: %v", v, err)
	}
	return r
}

func ask(holder string, seq int64, want int, ttl, wait time.Duration) Request {
	return Request{Holder: holder, TTL: ttl, Max: 0, Ask: true, Want: want, WaitUpTo: wait, Seq: seq}
}

func give(holder string, seq int64, ret int, ttl time.Duration) Request {
	return Request{Holder: holder, TTL: ttl, Seq: seq, Return: ret}
}

// run executes the limiter until it ends (idle); a limiter still running
// after 3 hours of workflow time is cancelled (and fails the test).
func (h *harness) run(in State) {
	h.env.RegisterDelayedCallback(func() {
		h.t.Error("the limiter was still running after 3h")
		h.env.CancelWorkflow()
	}, 3*time.Hour)
	h.env.ExecuteWorkflow(WorkflowName, in)
	if !h.env.IsWorkflowCompleted() {
		h.t.Fatal("limiter did not end")
	}
}

// Four workers ask for more than the budget, again and again: the slots
// held together never exceed K, and every ask is served in the end.
func TestLimiterNeverGrantsMoreThanK(t *testing.T) {
	const k = 3
	h := newHarness(t)
	served := map[string]int{}
	for w := range 4 {
		holder := fmt.Sprintf("w%d", w)
		seq, gseq := int64(0), int64(0)
		var loop func(d time.Duration, round int)
		loop = func(d time.Duration, round int) {
			if round == 5 {
				return
			}
			seq++
			h.at(d, ask(holder, seq, 2, time.Minute, 30*time.Second), func(rep Reply, now time.Duration) {
				if rep.Retry {
					loop(0, round)
					return
				}
				served[holder] += rep.Granted
				// Hold the slots 2 s of workflow time, give them back, ask again.
				gseq++
				h.at(2*time.Second, give(holder, gseq, rep.Granted, time.Minute), nil)
				loop(2*time.Second+time.Millisecond, round+1)
			})
		}
		loop(time.Duration(w)*time.Millisecond, 0)
	}
	h.run(State{Server: "ehr", Max: k, IdleAfter: time.Hour})
	if h.maxSum > k {
		t.Errorf("%d slots held at once, budget %d", h.maxSum, k)
	}
	if h.maxSum < k {
		t.Errorf("at most %d slots held at once: the budget of %d was never used in full", h.maxSum, k)
	}
	for w := range 4 {
		if served[fmt.Sprintf("w%d", w)] < 5 {
			t.Errorf("worker %d got %d slots over 5 asks: %v", w, served[fmt.Sprintf("w%d", w)], served)
		}
	}
}

// A worker that dies holding every slot stops renewing: its lease expires
// and the slots go to the worker that waits. A worker that renews keeps them.
func TestLimiterExpiryReturnsADeadHoldersSlots(t *testing.T) {
	for _, renews := range []bool{false, true} {
		t.Run(fmt.Sprintf("renews=%v", renews), func(t *testing.T) {
			h := newHarness(t)
			const ttl = 10 * time.Second
			h.at(0, ask("dead", 1, 2, ttl, 5*time.Second), func(rep Reply, _ time.Duration) {
				if rep.Granted != 2 {
					t.Errorf("first ask granted %d, want 2", rep.Granted)
				}
			})
			if renews {
				for i := range 10 {
					h.at(time.Duration(3*(i+1))*time.Second, give("dead", int64(i+1), 0, ttl), nil)
				}
			}
			var grantedAt time.Duration
			h.at(time.Second, ask("live", 1, 1, time.Minute, 20*time.Second), func(rep Reply, now time.Duration) {
				if rep.Granted > 0 {
					grantedAt = now
				}
			})
			h.run(State{Server: "ehr", Max: 2, IdleAfter: 2 * time.Minute})
			switch {
			case renews && grantedAt != 0:
				t.Errorf("a renewing holder lost its slots: the waiter got one at %v", grantedAt)
			case !renews && grantedAt == 0:
				t.Error("the dead holder's slots never came back")
			case !renews && (grantedAt < ttl || grantedAt > ttl+2*time.Second):
				t.Errorf("the waiter got a slot at %v, want just after the %v lease", grantedAt, ttl)
			}
		})
	}
}

// A 429 halves the fleet's one window; a burst of 429s from downloads
// started before the cut halves it once; successes after the hold grow it
// by one per window's worth.
func TestLimiterAIMD(t *testing.T) {
	h := newHarness(t)
	var windows []int
	note := func(rep Reply, _ time.Duration) { windows = append(windows, rep.Window) }
	h.at(0, ask("w", 1, 8, time.Hour, time.Second), note)                                                    // 8
	h.at(time.Second, Request{Holder: "w", TTL: time.Hour, Seq: 1, Throttled: 1}, note)                      // epoch 0 -> 4
	h.at(2*time.Second, Request{Holder: "w", TTL: time.Hour, Seq: 2, Throttled: 3}, note)                    // old epoch: stays 4
	h.at(3*time.Second, Request{Holder: "w", TTL: time.Hour, Seq: 3, Throttled: 1, ThrottledEpoch: 1}, note) // -> 2
	h.at(4*time.Second, Request{Holder: "w", TTL: time.Hour, Seq: 4, Successes: 50}, note)                   // within the hold: stays 2
	h.at(20*time.Second, Request{Holder: "w", TTL: time.Hour, Seq: 5, Successes: 2}, note)                   // -> 3
	h.at(21*time.Second, Request{Holder: "w", TTL: time.Hour, Seq: 6, Successes: 3}, note)                   // -> 4
	h.at(22*time.Second, Request{Holder: "w", TTL: time.Hour, Seq: 6, Successes: 4}, note)                   // a retried exchange: applied once
	h.at(23*time.Second, Request{Holder: "w", TTL: time.Hour, Seq: 7, Return: 8, Successes: 100}, note)      // capped at max 8
	h.run(State{Server: "ehr", Max: 8, IdleAfter: time.Minute})
	want := []int{8, 4, 4, 2, 2, 3, 4, 4, 8}
	if fmt.Sprint(windows) != fmt.Sprint(want) {
		t.Errorf("windows %v, want %v", windows, want)
	}
}

// Past MaxExchanges the limiter continues as new carrying its holders, their
// slots and the window: nothing is handed out twice after it.
func TestLimiterContinueAsNewKeepsHolders(t *testing.T) {
	h := newHarness(t)
	const ttl = time.Hour
	h.at(0, ask("a", 1, 2, ttl, time.Second), nil)
	h.at(time.Second, ask("b", 1, 1, ttl, time.Second), nil)
	h.at(2*time.Second, Request{Holder: "a", TTL: ttl, Seq: 1, Throttled: 1}, nil) // window 4 -> 2
	for i := range 30 {
		h.at(time.Duration(3+i)*time.Second, give("b", int64(i+1), 0, ttl), nil)
	}
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 3*time.Hour)
	h.env.ExecuteWorkflow(WorkflowName, State{Server: "ehr", Max: 4, MaxExchanges: 20})
	err := h.env.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	if !asCAN(err, &can) {
		t.Fatalf("the limiter ended with %v, want continue-as-new", err)
	}
	var next State
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, hd := range next.Holders {
		got[hd.ID] = hd.Slots
	}
	if got["a"] != 2 || got["b"] != 1 || len(got) != 2 {
		t.Errorf("carried holders %v, want a:2 b:1", got)
	}
	if next.Window != 2 || next.Epoch != 1 || next.Max != 4 || next.MaxExchanges != 20 {
		t.Errorf("carried %s (maxExchanges %d), want window 2/4, epoch 1, maxExchanges 20", next, next.MaxExchanges)
	}
	if b := next.Holders[1]; b.ID != "b" || b.GiveSeq == 0 || b.AskSeq != 1 {
		t.Errorf("holder b carried %+v: its sequences must survive, so a retried exchange is not applied twice", b)
	}

	// The next run starts from the carried state: 3 of window 2 are
	// held, so an ask waits, and gets one slot once a holds fewer.
	h2 := newHarness(t)
	var grantedAt time.Duration
	h2.at(0, ask("c", 1, 1, ttl, 30*time.Second), func(rep Reply, now time.Duration) {
		if rep.Granted > 0 {
			grantedAt = now
		}
	})
	h2.at(5*time.Second, Request{Holder: "a", TTL: ttl, Seq: 100, Return: 2}, nil)
	h2.env.RegisterDelayedCallback(h2.env.CancelWorkflow, 3*time.Hour)
	h2.env.ExecuteWorkflow(WorkflowName, next)
	if grantedAt < 5*time.Second {
		t.Errorf("after continue-as-new an ask got a slot at %v while the carried holders used the whole window", grantedAt)
	}
}

func asCAN(err error, can **workflow.ContinueAsNewError) bool {
	for err != nil {
		if c, ok := err.(*workflow.ContinueAsNewError); ok {
			*can = c
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}
