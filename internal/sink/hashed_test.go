package sink

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// shortWriter accepts at most max bytes in all, then fails: Hashed must
// count and hash only what was accepted.
type shortWriter struct {
	Writer
	got []byte
	max int
}

func (w *shortWriter) Write(p []byte) (int, error) {
	n := min(len(p), w.max-len(w.got))
	w.got = append(w.got, p[:n]...)
	if n < len(p) {
		return n, errors.New("disk full")
	}
	return n, nil
}

func (w *shortWriter) Stored() string { return "crc32c:abc" }

func TestHashedKeepsSizeAndHashOfWhatWasAccepted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		max    int
	}{
		{"nothing", nil, 10},
		{"several writes", []string{"{\"a\":1}\n", "{\"b\":2}\n"}, 100},
		{"a write cut short", []string{"0123456789", "abcdef"}, 13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner := &shortWriter{max: tc.max}
			h := NewHashed(inner)
			for _, s := range tc.writes {
				h.Write([]byte(s))
			}
			sum := sha256.Sum256(inner.got)
			if h.Size() != int64(len(inner.got)) || h.SHA256() != hex.EncodeToString(sum[:]) {
				t.Errorf("size %d sha %s, want %d and the hash of %q", h.Size(), h.SHA256(), len(inner.got), inner.got)
			}
			if h.Stored() != "crc32c:abc" {
				t.Errorf("Stored %q: the underlying writer's checksum is lost", h.Stored())
			}
		})
	}
}

// Through a real local sink: the object holds what Size and SHA256 say.
func TestHashedOnLocalSink(t *testing.T) {
	l, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w, err := l.Create(context.Background(), "run", "Patient/p.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHashed(w)
	body := strings.Repeat("{\"resourceType\":\"Patient\"}\n", 1000)
	if _, err := h.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(body))
	if h.Size() != int64(len(body)) || h.SHA256() != hex.EncodeToString(sum[:]) {
		t.Fatalf("size %d sha %s", h.Size(), h.SHA256())
	}
	if h.Stored() != StoredOf(w) || h.Stored() == "" {
		t.Errorf("Stored %q, the local writer's %q", h.Stored(), StoredOf(w))
	}
}
