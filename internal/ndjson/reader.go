// Package ndjson reads and checks FHIR NDJSON files as a stream: one
// resource per line, lines of any length (multi-MB attachments), memory
// proportional to the longest line.
package ndjson

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// DefaultBufferSize is the bufio size: lines shorter than this are returned
// straight from the bufio buffer without copying.
const DefaultBufferSize = 256 << 10

// DefaultMaxLineBytes bounds one line so that a body without newlines (a
// few MB of gzip can inflate to GBs of one endless line) cannot exhaust
// memory. 64 MiB: one resource is one line, and resources carry their
// attachments inline as base64 (a DocumentReference with a scanned PDF or
// a Media with an image: tens of MB), so the cap sits above the largest
// real resource and far below a worker's memory. Change it with
// SetMaxLineBytes (worker-wide: activities.Activities.MaxLineBytes).
const DefaultMaxLineBytes = 64 << 20

// ErrLineTooLong is returned (wrapped in a *LineTooLongError) when a line
// exceeds the maximum.
var ErrLineTooLong = errors.New("ndjson: line too long")

// LineTooLongError names the line that passed the cap. It is the server's
// data, not a transfer problem: fetching the file again cannot help.
type LineTooLongError struct {
	Line int64 // 1-based physical line number
	Max  int   // the cap in bytes
}

func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("line %d is longer than the %s cap", e.Line, FormatBytes(int64(e.Max)))
}

func (e *LineTooLongError) Unwrap() error { return ErrLineTooLong }

// FormatBytes prints a byte size as MiB (or KiB, or bytes) for messages.
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// Reader splits a stream into lines. It does not use bufio.Scanner, whose
// token limit (64 KiB by default) is far below real attachment lines.
//
// Blank lines (empty, or only spaces/tabs/CR) are skipped but counted in
// Line, so numbers match what an editor shows. A final line without a
// trailing newline is returned normally and MissingFinalNewline reports it:
// the caller decides whether that means truncation (usually: yes, combined
// with a count or Content-Length check). A UTF-8 byte order mark at the
// start of the stream is dropped.
type Reader struct {
	br        *bufio.Reader
	long      []byte // owned buffer, grown only for lines longer than the bufio buffer
	line      int64  // physical line number of the last line read (including blank ones)
	last      int64  // number of the line last returned by Next
	missingNL bool
	maxLine   int
	consumed  int64 // stream bytes read through the end of the last physical line
	lastOff   int64 // consumed when the last line was returned
	err       error
}

// NewReader wraps r with a DefaultBufferSize bufio.Reader.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, DefaultBufferSize), maxLine: DefaultMaxLineBytes}
}

// NewReaderBuffer wraps r with br (reset to read r): callers that read
// many small streams reuse their buffers. Lines are at most br.Size() long
// before the Reader copies them into a buffer of its own; br must not be
// used elsewhere until the Reader is done.
func NewReaderBuffer(br *bufio.Reader, r io.Reader) *Reader {
	br.Reset(r)
	return &Reader{br: br, maxLine: DefaultMaxLineBytes}
}

// SetMaxLineBytes changes the longest accepted line (<= 0: no limit).
func (r *Reader) SetMaxLineBytes(n int) { r.maxLine = n }

// Next returns the next non-blank line without its trailing "\n" or "\r\n".
// The slice is valid until the next call. It returns io.EOF at a clean end;
// any other error is sticky.
func (r *Reader) Next() ([]byte, error) {
	for {
		if r.err != nil {
			return nil, r.err
		}
		b, err := r.readLine()
		if err != nil {
			r.err = err
			return nil, err
		}
		r.line++
		if r.line == 1 && len(b) >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF {
			b = b[3:] // a UTF-8 byte order mark is not part of the first resource
		}
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
		if isBlank(b) {
			continue
		}
		r.last = r.line
		r.lastOff = r.consumed
		return b, nil
	}
}

// readLine returns one physical line without "\n". The fast path returns a
// slice of the bufio buffer; long lines are assembled in r.long, and a line
// over the cap is refused before its bytes are kept.
func (r *Reader) readLine() ([]byte, error) {
	s, err := r.br.ReadSlice('\n')
	if err == nil {
		if err := r.checkLen(0, s); err != nil {
			return nil, err
		}
		r.consumed += int64(len(s))
		return s[:len(s)-1], nil
	}
	if err == bufio.ErrBufferFull {
		if err := r.checkLen(0, s); err != nil {
			return nil, err
		}
		r.long = r.grow(r.long[:0], s)
		for {
			s, err = r.br.ReadSlice('\n')
			if err == nil || err == bufio.ErrBufferFull || err == io.EOF {
				if err := r.checkLen(len(r.long), s); err != nil {
					return nil, err
				}
			}
			r.long = r.grow(r.long, s)
			switch err {
			case nil:
				r.consumed += int64(len(r.long))
				return r.long[:len(r.long)-1], nil
			case bufio.ErrBufferFull:
				continue
			case io.EOF:
				r.missingNL = true
				r.consumed += int64(len(r.long))
				return r.long, nil
			default:
				return nil, fmt.Errorf("ndjson: reading line %d: %w", r.line+1, err)
			}
		}
	}
	if err == io.EOF {
		if len(s) == 0 {
			return nil, io.EOF
		}
		if err := r.checkLen(0, s); err != nil {
			return nil, err
		}
		r.missingNL = true
		r.consumed += int64(len(s))
		return s, nil
	}
	// A read error mid-line: the partial line is dropped, never returned as
	// if complete.
	return nil, fmt.Errorf("ndjson: reading line %d: %w", r.line+1, err)
}

// checkLen refuses a line whose have bytes so far plus s (without its
// newline) pass the cap.
func (r *Reader) checkLen(have int, s []byte) error {
	n := have + len(s)
	if len(s) > 0 && s[len(s)-1] == '\n' {
		n--
	}
	if r.maxLine > 0 && n > r.maxLine {
		return &LineTooLongError{Line: r.line + 1, Max: r.maxLine}
	}
	return nil
}

// grow appends s to b. append's own growth (x1.25 past 256 elements,
// amortised) overshoots and, with the old array still live during each copy,
// measured 3-4x a 300 MB line. Here capacity doubles up to an eighth of the
// cap, then jumps to the cap itself (a line over it is refused before it is
// kept): a line at the cap costs about 1.25x the cap in allocations, the
// buffer is 1x once grown, and it is reused for the file's later lines.
// Untouched pages of a fresh large allocation cost no RSS.
func (r *Reader) grow(b, s []byte) []byte {
	need := len(b) + len(s)
	if need <= cap(b) {
		return append(b, s...)
	}
	c := max(2*cap(b), need, DefaultBufferSize)
	if r.maxLine > 0 && c > r.maxLine/8 {
		// Past an eighth of the cap, one jump to the cap: the doubling
		// steps above it would leave up to another cap of garbage behind.
		c = max(need, r.maxLine+1) // +1: the newline
	}
	nb := make([]byte, len(b), c)
	copy(nb, b)
	return append(nb, s...)
}

// Line is the 1-based number of the line last returned by Next (blank lines
// count). 0 before the first line.
func (r *Reader) Line() int64 { return r.last }

// Offset is the number of stream bytes up to and including the newline of
// the line last returned by Next: where a Range request resumes the stream
// after that line.
func (r *Reader) Offset() int64 { return r.lastOff }

// MissingFinalNewline reports that the stream's last line had no trailing
// newline. Only meaningful once Next has returned io.EOF.
func (r *Reader) MissingFinalNewline() bool { return r.missingNL }

func isBlank(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	if c := b[0]; c != ' ' && c != '\t' && c != '\r' {
		return false
	}
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}
