package bulk

import (
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ParseRetryAfter reads a Retry-After value: delta-seconds or an HTTP-date
// (BD2 L308: the server SHOULD send Retry-After, "clients SHOULD use this
// information"). A negative delta or a date in the past gives 0. Garbage
// gives ok=false. Absurd values (e.g. an epoch timestamp sent as seconds)
// are returned as-is, saturated: callers Clamp them.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if isInteger(v) {
		neg := v[0] == '-'
		digits := strings.TrimLeft(v, "+-")
		n, err := strconv.ParseInt(digits, 10, 64)
		if err != nil || n > math.MaxInt64/int64(time.Second) {
			// Overflow: all digits, just too big.
			if neg {
				return 0, true
			}
			return time.Duration(math.MaxInt64), true
		}
		if neg {
			return 0, true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d < 0 {
		d = 0
	}
	return d, true
}

func isInteger(s string) bool {
	if s[0] == '-' || s[0] == '+' {
		s = s[1:]
	}
	if s == "" || len(s) > 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Clamp limits d to [lo, hi]. If hi < lo, lo wins.
func Clamp(d, lo, hi time.Duration) time.Duration {
	if d > hi {
		d = hi
	}
	if d < lo {
		d = lo
	}
	return d
}

// Backoff returns a wait for the given 0-based attempt: exponential
// (base*2^attempt, capped at max) with full jitter, i.e. uniform in
// (0, cap]. BD2 L306: "Clients SHOULD follow an exponential backoff approach".
func Backoff(attempt int, base, max time.Duration) time.Duration {
	c := BackoffCeiling(attempt, base, max)
	if c <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(c))) + 1
}

// BackoffCeiling is the deterministic part of Backoff (the jitter-free cap),
// for tests and for logging "next poll within ...".
func BackoffCeiling(attempt int, base, max time.Duration) time.Duration {
	if base <= 0 || max <= 0 {
		return 0
	}
	if attempt < 0 {
		attempt = 0
	}
	d := base
	for i := 0; i < attempt; i++ {
		if d >= max/2 {
			return max
		}
		d *= 2
	}
	return min(d, max)
}
