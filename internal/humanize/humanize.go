// Package humanize writes counts, byte sizes and durations for people:
// 1,234,567 resources, 3.4 GiB, 2h05m. The CLI's progress line and the
// workflow's current details in the Temporal UI share it, so both read alike.
package humanize

import (
	"fmt"
	"strconv"
	"time"
)

// Count writes n with thousands separators: 1234567 -> "1,234,567".
func Count(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// Bytes writes a size in binary units: "512 B", "1.5 KiB", "3.4 GiB".
func Bytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit && exp < 5; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// Duration writes d to the second, short: "45s", "12m03s", "2h05m", "3d04h".
func Duration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", d/time.Second)
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", d/time.Minute, d%time.Minute/time.Second)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	return fmt.Sprintf("%dd%02dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
}

// Progress is the one-line download summary the Temporal UI's current
// details show: "1,234 of 5,000 files; 12,345,678 resources, 3.4 GiB,
// 2 retries".
func Progress(filesDone, filesTotal int, resources, bytes int64, retries int) string {
	return fmt.Sprintf("%s of %s files; %s resources, %s, %s retries",
		Count(int64(filesDone)), Count(int64(filesTotal)), Count(resources), Bytes(bytes), Count(int64(retries)))
}
