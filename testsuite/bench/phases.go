package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"go.temporal.io/api/enums/v1"
)

// phases (-phases) prints where one run's first-GET-to-commit window went,
// from the timestamps of its workflows' histories: the activities of the
// parent and its chunk children, grouped by type, with the span from the
// first one's scheduling to the last one's completion, the summed
// schedule-to-start wait (a task waiting for the worker) and run time, and
// the gaps between the phases (workflow tasks and Temporal round trips).
type activitySpan struct {
	typ                           string
	scheduled, started, completed time.Time
}

func (e *env) timeline(ctx context.Context, id string, first time.Time, w io.Writer) error {
	var spans []activitySpan
	var children []string
	var end time.Time
	read := func(wid string) error {
		it := e.tc.GetWorkflowHistory(ctx, wid, "", false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		byID := map[int64]*activitySpan{}
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				return err
			}
			t := ev.GetEventTime().AsTime()
			switch {
			case ev.GetActivityTaskScheduledEventAttributes() != nil:
				byID[ev.GetEventId()] = &activitySpan{typ: ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName(), scheduled: t}
			case ev.GetActivityTaskStartedEventAttributes() != nil:
				if s := byID[ev.GetActivityTaskStartedEventAttributes().GetScheduledEventId()]; s != nil {
					s.started = t
				}
			case ev.GetActivityTaskCompletedEventAttributes() != nil:
				if s := byID[ev.GetActivityTaskCompletedEventAttributes().GetScheduledEventId()]; s != nil {
					s.completed = t
				}
			case ev.GetChildWorkflowExecutionStartedEventAttributes() != nil && wid == id:
				children = append(children, ev.GetChildWorkflowExecutionStartedEventAttributes().GetWorkflowExecution().GetWorkflowId())
			case ev.GetWorkflowExecutionCompletedEventAttributes() != nil && wid == id:
				end = t
			}
		}
		for _, s := range byID {
			spans = append(spans, *s)
		}
		return nil
	}
	if err := read(id); err != nil {
		return err
	}
	for _, c := range children {
		if err := read(c); err != nil {
			return err
		}
	}
	type agg struct {
		n               int
		from, to        time.Time
		wait, run       time.Duration
		maxRun, maxWait time.Duration
	}
	by := map[string]*agg{}
	for _, s := range spans {
		if s.completed.IsZero() || s.completed.Before(first) {
			continue
		}
		a := by[s.typ]
		if a == nil {
			a = &agg{from: s.scheduled, to: s.completed}
			by[s.typ] = a
		}
		a.n++
		if s.scheduled.Before(a.from) {
			a.from = s.scheduled
		}
		if s.completed.After(a.to) {
			a.to = s.completed
		}
		if !s.started.IsZero() {
			a.wait += s.started.Sub(s.scheduled)
			a.run += s.completed.Sub(s.started)
			a.maxWait = max(a.maxWait, s.started.Sub(s.scheduled))
			a.maxRun = max(a.maxRun, s.completed.Sub(s.started))
		}
	}
	var types []string
	for t := range by {
		types = append(types, t)
	}
	sort.Slice(types, func(i, j int) bool { return by[types[i]].from.Before(by[types[j]].from) })
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f", d.Seconds()*1000) }
	var b strings.Builder
	fmt.Fprintf(&b, "  phases after the first GET (ms from it; wait = scheduled to started, run = started to completed):\n")
	for _, t := range types {
		a := by[t]
		fmt.Fprintf(&b, "    %-14s x%-4d %6s .. %6s  wait sum %5s max %4s  run sum %6s max %5s\n", t, a.n,
			ms(a.from.Sub(first)), ms(a.to.Sub(first)), ms(a.wait), ms(a.maxWait), ms(a.run), ms(a.maxRun))
	}
	if !end.IsZero() {
		fmt.Fprintf(&b, "    workflow completed at %s\n", ms(end.Sub(first)))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
