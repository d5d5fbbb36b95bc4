//go:build unix

package views

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time (user + system, all threads, GC included) the
// process has used: benchmarks report throughput per CPU-second, which a
// busy shared machine does not distort the way wall time is.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
