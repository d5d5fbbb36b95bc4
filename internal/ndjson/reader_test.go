package ndjson

import (
	"io"
	"strings"
	"testing"
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
