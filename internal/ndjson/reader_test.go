package ndjson

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestReaderOffset(t *testing.T) {
	long := strings.Repeat("x", 300<<10) // longer than the bufio buffer
	src := "\ufeff{\"a\":1}\r\n\n{\"b\":\"" + long + "\"}\n  \n{\"c\":3}"
	r := NewReader(strings.NewReader(src))
	var offs []int64
	for {
		_, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, r.Offset())
	}
	want := []int64{int64(len("\ufeff{\"a\":1}\r\n")), int64(len("\ufeff{\"a\":1}\r\n\n{\"b\":\"" + long + "\"}\n")), int64(len(src))}
	if len(offs) != 3 || offs[0] != want[0] || offs[1] != want[1] || offs[2] != want[2] {
		t.Fatalf("offsets %v, want %v", offs, want)
	}
}

// endless is an endless line: what a small gzip bomb inflates to.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.EOF
	}
	k := min(int64(len(p)), e.n)
	for i := range p[:k] {
		p[i] = 'A'
	}
	e.n -= k
	return int(k), nil
}

// readEndless reads one line of size bytes with a cap of max, returning
// the error, the bytes allocated and the peak heap seen while reading.
func readEndless(size int64, maxLine int) (err error, alloc, peak uint64) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	done := make(chan struct{})
	peakc := make(chan uint64)
	go func() {
		var m runtime.MemStats
		var p uint64
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&m)
			p = max(p, m.HeapAlloc)
			select {
			case <-done:
				peakc <- p
				return
			case <-t.C:
			}
		}
	}()
	r := NewReader(&endless{n: size})
	r.SetMaxLineBytes(maxLine)
	_, err = r.Next()
	close(done)
	p := <-peakc
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(r)
	return err, after.TotalAlloc - before.TotalAlloc, p - min(p, before.HeapAlloc)
}

// A 300 MB endless line against the 64 MiB cap: refused with a message
// naming the line and the cap, having allocated about 1.25x the cap in
// total and never holding more than 1.5x of it.
func TestReaderLineCapBoundsMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~128 MiB")
	}
	const cap = DefaultMaxLineBytes
	err, alloc, peak := readEndless(300<<20, cap)
	var lt *LineTooLongError
	if !errors.As(err, &lt) || !errors.Is(err, ErrLineTooLong) || lt.Line != 1 {
		t.Fatalf("err = %v, want a LineTooLongError for line 1", err)
	}
	if want := "line 1 is longer than the 64 MiB cap"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	t.Logf("300 MB line, 64 MiB cap: %.1f MiB allocated in total (%.2fx the cap), peak heap %.1f MiB (%.2fx)",
		float64(alloc)/(1<<20), float64(alloc)/cap, float64(peak)/(1<<20), float64(peak)/cap)
	if alloc > cap*3/2 {
		t.Errorf("allocated %d bytes for a line capped at %d: want at most 1.5x", alloc, cap)
	}
	if peak > cap*3/2 {
		t.Errorf("peak heap %d bytes for a line capped at %d: want at most 1.5x", peak, cap)
	}
}

// Lines at the cap pass, one byte more fails, whichever path reads them.
func TestReaderCapExact(t *testing.T) {
	for _, max := range []int{100, 300 << 10} { // below and above the bufio buffer
		for _, tc := range []struct {
			n    int
			ok   bool
			tail string
		}{{max, true, "\n{}\n"}, {max, true, ""}, {max + 1, false, "\n{}\n"}, {max + 1, false, ""}} {
			r := NewReader(strings.NewReader("{}\n" + strings.Repeat("x", tc.n) + tc.tail))
			r.SetMaxLineBytes(max)
			r.Next()
			_, err := r.Next()
			if (err == nil) != tc.ok {
				t.Errorf("max %d, line %d%q: err %v, want ok=%v", max, tc.n, tc.tail, err, tc.ok)
			}
			if !tc.ok && !strings.Contains(fmt.Sprint(err), "line 2 is longer than") {
				t.Errorf("message %v", err)
			}
		}
	}
}

// BenchmarkEndlessLine reports the memory a 300 MB line costs: with the
// old default (1 GiB cap) it is read whole; with the 64 MiB cap it is
// refused at the cap.
func BenchmarkEndlessLine(b *testing.B) {
	for _, c := range []struct {
		name string
		max  int
	}{{"cap=64MiB", DefaultMaxLineBytes}, {"cap=1GiB", 1 << 30}} {
		b.Run(c.name, func(b *testing.B) {
			var alloc, peak uint64
			for i := 0; i < b.N; i++ {
				_, a, p := readEndless(300<<20, c.max)
				alloc, peak = max(alloc, a), max(peak, p)
			}
			b.ReportMetric(float64(alloc)/(1<<20), "MiB-alloc/line")
			b.ReportMetric(float64(peak)/(1<<20), "MiB-peak/line")
		})
	}
}
