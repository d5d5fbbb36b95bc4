package sink

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
)

// Hashed is a Writer that keeps the size and SHA-256 of exactly the bytes
// the underlying Writer accepted: what a staged object's record (and the
// run's manifest) says of it, computed on the way in rather than by reading
// the object back.
type Hashed struct {
	Writer
	h hash.Hash
	n int64
}

// NewHashed wraps w.
func NewHashed(w Writer) *Hashed { return &Hashed{Writer: w, h: sha256.New()} }

func (w *Hashed) Write(p []byte) (int, error) {
	n, err := w.Writer.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Size is the number of bytes written.
func (w *Hashed) Size() int64 { return w.n }

// SHA256 is the hex SHA-256 of the bytes written.
func (w *Hashed) SHA256() string { return hex.EncodeToString(w.h.Sum(nil)) }

// Stored is the underlying Writer's (StoredOf), so wrapping loses nothing.
func (w *Hashed) Stored() string { return StoredOf(w.Writer) }
