package fhirpath

import (
	"math/rand/v2"
	"testing"
)

// TestPlainRun: plainRun stops exactly at the first byte a string scan must
// see (never past it, never before it within whole words), against a byte
// loop, for strings with specials at every position of a word, including
// the bytes a borrow of the has-zero test could flag falsely (0x01 after
// a quote, 0x21 '!' after a control character).
func TestPlainRun(t *testing.T) {
	special := func(c byte) bool { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80 }
	alphabet := []byte{'a', 'Z', '0', ' ', '!', '#', '"', '\\', 0x00, 0x01, 0x1f, 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xff}
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 200000; n++ {
		b := make([]byte, r.IntN(24))
		for i := range b {
			if r.IntN(4) == 0 {
				b[i] = alphabet[r.IntN(len(alphabet))]
			} else {
				b[i] = 'a' + byte(r.IntN(26))
			}
		}
		s := string(b)
		start := 0
		if len(s) > 0 {
			start = r.IntN(len(s))
		}
		got := plainRun(s, start)
		want := start
		for want < len(s) && !special(s[want]) {
			want++
		}
		// Exact when a whole word holds the first special byte; otherwise
		// it may stop early only in the tail shorter than a word.
		if got > want || (got < want && got+8 <= len(s)) {
			t.Fatalf("plainRun(%q, %d) = %d, first special byte at %d", s, start, got, want)
		}
		for i := start; i < got; i++ {
			if special(s[i]) {
				t.Fatalf("plainRun(%q, %d) = %d passes over byte %d", s, start, got, i)
			}
		}
	}
}
