package humanize

import (
	"testing"
	"time"
)

func TestHumanize(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{Count(0), "0"},
		{Count(999), "999"},
		{Count(1000), "1,000"},
		{Count(-1234567), "-1,234,567"},
		{Bytes(512), "512 B"},
		{Bytes(1536), "1.5 KiB"},
		{Bytes(3 << 30), "3.0 GiB"},
		{Bytes(5 << 20), "5.0 MiB"},
		{Duration(45 * time.Second), "45s"},
		{Duration(12*time.Minute + 3*time.Second), "12m03s"},
		{Duration(2*time.Hour + 5*time.Minute), "2h05m"},
		{Duration(76 * time.Hour), "3d04h"},
		{Progress(1234, 5000, 12345678, 3<<30, 2), "1,234 of 5,000 files; 12,345,678 resources, 3.0 GiB, 2 retries"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
