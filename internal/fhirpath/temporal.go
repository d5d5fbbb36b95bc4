package fhirpath

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Precision of a date, dateTime or time, coarsest first. Seconds and their
// fraction are one precision, as FHIRPath compares them.
const (
	precYear = iota + 1
	precMonth
	precDay
	precHour
	precMinute
	precSecond
)

// temporal is a parsed FHIR date, dateTime, instant or time, keeping the
// precision it was written with.
type temporal struct {
	kind       string // "date", "dateTime" or "time"
	f          [7]int // year, month, day, hour, minute, second, nanosecond
	prec       int
	fracDigits int // digits written after the seconds' point
	hasTZ      bool
	tzText     string // as written: "Z" or "+hh:mm"
	tzOff      int    // minutes east of UTC
}

func atoiN(s string, n int) (int, bool) {
	if len(s) != n {
		return 0, false
	}
	v := 0
	for i := 0; i < n; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}

// parseDatePart reads YYYY[-MM[-DD]] from the front of s.
func parseDatePart(t *temporal, s string) (rest string, ok bool) {
	if len(s) < 4 {
		return "", false
	}
	if t.f[0], ok = atoiN(s[:4], 4); !ok {
		return "", false
	}
	t.f[1], t.f[2] = 1, 1
	t.prec = precYear
	s = s[4:]
	if strings.HasPrefix(s, "-") {
		if len(s) < 3 {
			return "", false
		}
		if t.f[1], ok = atoiN(s[1:3], 2); !ok || t.f[1] < 1 || t.f[1] > 12 {
			return "", false
		}
		t.prec = precMonth
		s = s[3:]
		if strings.HasPrefix(s, "-") {
			if len(s) < 3 {
				return "", false
			}
			if t.f[2], ok = atoiN(s[1:3], 2); !ok || t.f[2] < 1 || t.f[2] > daysIn(t.f[0], t.f[1]) {
				return "", false
			}
			t.prec = precDay
			s = s[3:]
		}
	}
	return s, true
}

// parseTimePart reads hh[:mm[:ss[.fff]]] from the front of s.
func parseTimePart(t *temporal, s string) (rest string, ok bool) {
	if len(s) < 2 {
		return "", false
	}
	if t.f[3], ok = atoiN(s[:2], 2); !ok || t.f[3] > 23 {
		return "", false
	}
	t.prec = precHour
	s = s[2:]
	if strings.HasPrefix(s, ":") {
		if len(s) < 3 {
			return "", false
		}
		if t.f[4], ok = atoiN(s[1:3], 2); !ok || t.f[4] > 59 {
			return "", false
		}
		t.prec = precMinute
		s = s[3:]
		if strings.HasPrefix(s, ":") {
			if len(s) < 3 {
				return "", false
			}
			if t.f[5], ok = atoiN(s[1:3], 2); !ok || t.f[5] > 60 {
				return "", false
			}
			t.prec = precSecond
			s = s[3:]
			if strings.HasPrefix(s, ".") {
				j := 1
				for j < len(s) && s[j] >= '0' && s[j] <= '9' {
					j++
				}
				digits := s[1:j]
				if digits == "" || len(digits) > 9 {
					return "", false
				}
				t.fracDigits = len(digits)
				ns, _ := strconv.Atoi(digits + strings.Repeat("0", 9-len(digits)))
				t.f[6] = ns
				s = s[j:]
			}
		}
	}
	return s, true
}

func parseTZ(t *temporal, s string) bool {
	switch {
	case s == "":
		return true
	case s == "Z":
		t.hasTZ, t.tzText = true, "Z"
		return true
	case len(s) == 6 && (s[0] == '+' || s[0] == '-') && s[3] == ':':
		h, ok1 := atoiN(s[1:3], 2)
		m, ok2 := atoiN(s[4:6], 2)
		if !ok1 || !ok2 || h > 14 || m > 59 {
			return false
		}
		t.hasTZ, t.tzText, t.tzOff = true, s, h*60+m
		if s[0] == '-' {
			t.tzOff = -t.tzOff
		}
		return true
	}
	return false
}

// parseTemporal parses s as the given kind ("date", "dateTime", "instant",
// "time").
func parseTemporal(s, kind string) (temporal, bool) {
	t := temporal{kind: kind}
	var ok bool
	switch kind {
	case "time":
		if s, ok = parseTimePart(&t, s); !ok || s != "" {
			return t, false
		}
		return t, true
	case "date":
		if s, ok = parseDatePart(&t, s); !ok || s != "" {
			return t, false
		}
		return t, true
	case "dateTime", "instant":
		t.kind = "dateTime"
		if s, ok = parseDatePart(&t, s); !ok {
			return t, false
		}
		if strings.HasPrefix(s, "T") {
			if t.prec != precDay {
				return t, false
			}
			if s = s[1:]; s == "" { // FHIRPath literal @2014-01-01T
				return t, true
			}
			if s, ok = parseTimePart(&t, s); !ok {
				return t, false
			}
		}
		return t, parseTZ(&t, s)
	}
	return t, false
}

// temporalLiteral turns the text of an @... literal into an Item.
func temporalLiteral(text string) (Item, error) {
	kind := "date"
	s := text
	switch {
	case strings.HasPrefix(text, "T"):
		kind, s = "time", text[1:]
	case strings.Contains(text, "T"):
		kind = "dateTime"
	}
	if _, ok := parseTemporal(s, kind); !ok {
		return Item{}, fmt.Errorf("invalid date/time literal @%s", text)
	}
	return stringItem(strings.TrimSuffix(s, "T"), kind), nil
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// key returns the fields to compare, normalised to UTC where a time zone is
// known.
func (t temporal) key() [7]int {
	if t.kind == "dateTime" && t.hasTZ && t.prec >= precHour {
		u := time.Date(t.f[0], time.Month(t.f[1]), t.f[2], t.f[3], t.f[4], t.f[5], t.f[6],
			time.FixedZone("", t.tzOff*60)).UTC()
		return [7]int{u.Year(), int(u.Month()), u.Day(), u.Hour(), u.Minute(), u.Second(), u.Nanosecond()}
	}
	return t.f
}

// compareTemporal returns -1, 0 or 1, or ok=false when the precisions differ
// and the values agree as far as both go (FHIRPath's "unknown").
func compareTemporal(a, b temporal) (c int, ok bool) {
	ka, kb := a.key(), b.key()
	first := 0
	if a.kind == "time" {
		first = precHour - 1
	}
	last := min(a.prec, b.prec)
	if last == precSecond {
		last = 7 // seconds include their fraction
	}
	for i := first; i < last && i < 7; i++ {
		if ka[i] != kb[i] {
			if ka[i] < kb[i] {
				return -1, true
			}
			return 1, true
		}
	}
	if a.prec != b.prec {
		return 0, false
	}
	return 0, true
}

// boundary implements lowBoundary/highBoundary for dates and times: the
// earliest or latest instant the value can stand for.
func (t temporal) boundary(high bool) string {
	f := t.f
	if t.kind != "time" {
		if t.prec < precMonth {
			f[1] = 1
			if high {
				f[1] = 12
			}
		}
		if t.prec < precDay {
			f[2] = 1
			if high {
				f[2] = daysIn(f[0], f[1])
			}
		}
	}
	if t.kind == "date" {
		return fmt.Sprintf("%04d-%02d-%02d", f[0], f[1], f[2])
	}
	lim := [7]int{0, 0, 0, 23, 59, 59, 999}
	tp := t.prec
	ms := f[6] / 1e6
	for i, p := range []int{precHour, precMinute, precSecond} {
		if tp < p {
			f[3+i] = 0
			if high {
				f[3+i] = lim[3+i]
			}
		}
	}
	if tp < precSecond || t.fracDigits == 0 {
		ms = 0
		if high {
			ms = 999
		}
	} else if t.fracDigits < 3 && high {
		// .5 stands for .500 to .599
		scale := []int{100, 10}[t.fracDigits-1]
		ms = ms/scale*scale + scale - 1
	}
	clock := fmt.Sprintf("%02d:%02d:%02d.%03d", f[3], f[4], f[5], ms)
	if t.kind == "time" {
		return clock
	}
	tz := t.tzText
	if !t.hasTZ {
		// Unknown zone: the earliest instant is in the easternmost zone.
		tz = "+14:00"
		if high {
			tz = "-12:00"
		}
	}
	return fmt.Sprintf("%04d-%02d-%02dT%s%s", f[0], f[1], f[2], clock, tz)
}
