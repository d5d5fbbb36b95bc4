package main

import (
	"math"
	"runtime"
	"testing"
	"time"
)

// The CPU bound is the measured CPU spread over every core, over the floor:
// the least "x floor" that work allows (docs/benchmarks.md, "The floor
// ratio's bound"); the version without the worker leaves out its CPU.
func TestSummarizeCPUBound(t *testing.T) {
	cores := float64(runtime.NumCPU())
	run := func(worker, temporal, server, floor time.Duration) runResult {
		return runResult{files: 1, bytes: 1e6, wall: 2 * time.Second, window: time.Second,
			user: worker, temporal: temporal, server: server, windowCPU: worker + temporal + server, windowNoWorker: temporal + server, floor: floor}
	}
	for _, tc := range []struct {
		name               string
		runs               []runResult
		bound, boundNoWork float64
	}{
		{"one run", []runResult{run(2*time.Second, time.Second, time.Second, time.Second)}, 4 / cores, 2 / cores},
		{"median of three", []runResult{
			run(time.Second, 0, 0, time.Second),
			run(3*time.Second, 0, time.Second, time.Second),
			run(8*time.Second, 0, 0, time.Second),
		}, 4 / cores, 0},
		{"no floor, no bound", []runResult{run(time.Second, time.Second, 0, 0)}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := summarize(scenario{Name: "x"}, tc.runs)
			if math.Abs(r.BoundRatio-tc.bound) > 1e-9 || math.Abs(r.BoundRatioNoWorker-tc.boundNoWork) > 1e-9 {
				t.Errorf("bound %.3f without worker %.3f, want %.3f and %.3f", r.BoundRatio, r.BoundRatioNoWorker, tc.bound, tc.boundNoWork)
			}
		})
	}
}
