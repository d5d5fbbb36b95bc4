//go:build !unix

package views

import "time"

func cpuTime() time.Duration { return 0 }
