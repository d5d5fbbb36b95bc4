package ndjson

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Meta is what Inspect extracts from one resource line.
type Meta struct {
	ResourceType, ID, LastUpdated, VersionID string
	Subject                                  string // top-level subject.reference, else patient.reference; "" if neither
}

// Error explains why a line was rejected. It never quotes more than ~40
// bytes of the line (lines are patient data).
type Error struct {
	Line   int64 // 1-based line number; 0 when not known (Inspect/Check alone)
	Offset int   // 0-based byte offset in the line; -1 when not about a position
	Syntax bool  // the line is not valid JSON (as opposed to valid JSON that is not a usable resource)
	Msg    string
}

func (e *Error) Error() string {
	s := "ndjson: "
	if e.Line > 0 {
		s += "line " + strconv.FormatInt(e.Line, 10) + ": "
	}
	if e.Syntax {
		s += "invalid JSON: "
	}
	if e.Offset >= 0 {
		s += "byte " + strconv.Itoa(e.Offset) + ": "
	}
	return s + e.Msg
}

// maxDepth matches encoding/json's nesting limit, so Inspect accepts exactly
// what json.Valid accepts, and recursion stays bounded.
const maxDepth = 10000

type scanner struct {
	d     []byte
	i     int
	depth int
	err   *Error
}

// Inspect checks that line is one valid JSON object (the full grammar, in a
// single pass with no allocation beyond the returned strings) and extracts
// the top-level resourceType, id, meta.lastUpdated, meta.versionId and
// subject/patient reference. Nested "resourceType" keys (contained
// resources, Bundle entries) are not confused with the top-level one.
//
// Errors: *Error with Syntax=true for malformed JSON; Syntax=false for a
// non-object line, a non-string or duplicated top-level resourceType.
//
// Valid lines take fastInspect; anything it declines goes through
// inspectSlow, the recursive scanner that explains what is wrong.
func Inspect(line []byte) (Meta, error) {
	if m, ok := fastInspect(line); ok {
		return m, nil
	}
	return inspectSlow(line)
}

// inspectSlow is Inspect by recursive descent, with precise errors.
func inspectSlow(line []byte) (Meta, error) {
	var m Meta
	s := scanner{d: line}
	s.skipWS()
	if s.i >= len(s.d) {
		return m, &Error{Offset: s.i, Syntax: true, Msg: "empty line"}
	}
	if c := s.d[s.i]; c != '{' {
		if s.value() && s.end() {
			return m, &Error{Offset: 0, Msg: "line is a JSON " + kindName(c) + ", not an object (one resource per line)"}
		}
		return m, s.err
	}
	if !s.topObject(&m) || !s.end() {
		return Meta{}, s.err
	}
	return m, nil
}

func kindName(c byte) string {
	switch c {
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

func (s *scanner) fail(msg string) bool {
	if s.err == nil {
		s.err = &Error{Offset: s.i, Syntax: true, Msg: msg}
	}
	return false
}

func (s *scanner) failAt(off int, syntax bool, msg string) bool {
	if s.err == nil {
		s.err = &Error{Offset: off, Syntax: syntax, Msg: msg}
	}
	return false
}

func (s *scanner) unexpected(what string) bool {
	if s.i >= len(s.d) {
		return s.fail("line ends early (truncated?): expected " + what)
	}
	return s.fail("expected " + what + ", found " + describe(s.d[s.i]))
}

func describe(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

func (s *scanner) skipWS() {
	for s.i < len(s.d) {
		switch s.d[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// end accepts only trailing whitespace.
func (s *scanner) end() bool {
	s.skipWS()
	if s.i != len(s.d) {
		return s.fail("unexpected " + describe(s.d[s.i]) + " after the end of the JSON value")
	}
	return true
}

// key reads an object key (s.i at '"'), returning its raw bytes and whether
// it contained escapes.
func (s *scanner) key() (raw []byte, esc bool, ok bool) {
	if s.i >= len(s.d) || s.d[s.i] != '"' {
		return nil, false, s.unexpected("'\"' starting an object key")
	}
	start := s.i + 1
	esc, ok = s.str()
	if !ok {
		return nil, false, false
	}
	raw = s.d[start : s.i-1]
	s.skipWS()
	if s.i >= len(s.d) || s.d[s.i] != ':' {
		return nil, false, s.unexpected("':' after an object key")
	}
	s.i++
	s.skipWS()
	return raw, esc, true
}

// keyIs compares a key with name, decoding escapes only when present.
func keyIs(raw []byte, esc bool, name string) bool {
	if !esc {
		return string(raw) == name
	}
	return decodeString(raw) == name
}

func decodeString(raw []byte) string {
	q := make([]byte, 0, len(raw)+2)
	q = append(q, '"')
	q = append(q, raw...)
	q = append(q, '"')
	var out string
	if err := json.Unmarshal(q, &out); err != nil {
		return string(raw)
	}
	return out
}

// stringValue reads a string value (s.i at '"').
func (s *scanner) stringValue() (string, bool) {
	start := s.i + 1
	esc, ok := s.str()
	if !ok {
		return "", false
	}
	raw := s.d[start : s.i-1]
	if esc {
		return decodeString(raw), true
	}
	return string(raw), true
}

// topObject walks the top-level object, extracting Meta fields.
func (s *scanner) topObject(m *Meta) bool {
	s.i++ // '{'
	s.depth = 1
	s.skipWS()
	if s.i < len(s.d) && s.d[s.i] == '}' {
		s.i++
		s.depth = 0
		return true
	}
	rtSeen := false
	var patientRef string
	for {
		keyOff := s.i
		raw, esc, ok := s.key()
		if !ok {
			return false
		}
		isStr := s.i < len(s.d) && s.d[s.i] == '"'
		switch {
		case keyIs(raw, esc, "resourceType"):
			if rtSeen {
				return s.failAt(keyOff, false, "duplicate top-level resourceType")
			}
			rtSeen = true
			if !isStr {
				valOff := s.i
				if !s.value() {
					return false
				}
				return s.failAt(valOff, false, "top-level resourceType is not a string")
			}
			if m.ResourceType, ok = s.stringValue(); !ok {
				return false
			}
		case isStr && keyIs(raw, esc, "id"):
			if m.ID, ok = s.stringValue(); !ok {
				return false
			}
		case s.i < len(s.d) && s.d[s.i] == '{' && keyIs(raw, esc, "meta"):
			if !s.object(func(k []byte, e bool) (bool, bool) {
				if s.d[s.i] != '"' {
					return false, true
				}
				var v string
				var ok bool
				switch {
				case keyIs(k, e, "lastUpdated"):
					v, ok = s.stringValue()
					m.LastUpdated = v
				case keyIs(k, e, "versionId"):
					v, ok = s.stringValue()
					m.VersionID = v
				default:
					return false, true
				}
				return true, ok
			}) {
				return false
			}
		case s.i < len(s.d) && s.d[s.i] == '{' && (keyIs(raw, esc, "subject") || keyIs(raw, esc, "patient")):
			isSubject := keyIs(raw, esc, "subject")
			if !s.object(func(k []byte, e bool) (bool, bool) {
				if s.d[s.i] != '"' || !keyIs(k, e, "reference") {
					return false, true
				}
				v, ok := s.stringValue()
				if isSubject {
					m.Subject = v
				} else {
					patientRef = v
				}
				return true, ok
			}) {
				return false
			}
		default:
			if !s.value() {
				return false
			}
		}
		s.skipWS()
		if s.i >= len(s.d) {
			return s.unexpected("',' or '}' in the top-level object")
		}
		switch s.d[s.i] {
		case ',':
			s.i++
			s.skipWS()
		case '}':
			s.i++
			s.depth = 0
			if m.Subject == "" {
				m.Subject = patientRef
			}
			return true
		default:
			return s.unexpected("',' or '}' in the top-level object")
		}
	}
}

// object walks a nested object (s.i at '{'), offering each value to take,
// which returns handled=true when it consumed the value itself.
func (s *scanner) object(take func(key []byte, esc bool) (handled, ok bool)) bool {
	if s.depth++; s.depth > maxDepth {
		return s.fail("nested too deeply")
	}
	s.i++
	s.skipWS()
	if s.i < len(s.d) && s.d[s.i] == '}' {
		s.i++
		s.depth--
		return true
	}
	for {
		raw, esc, ok := s.key()
		if !ok {
			return false
		}
		if s.i >= len(s.d) {
			return s.unexpected("a value")
		}
		handled, ok := take(raw, esc)
		if !ok {
			return false
		}
		if !handled && !s.value() {
			return false
		}
		s.skipWS()
		if s.i >= len(s.d) {
			return s.unexpected("',' or '}' in an object")
		}
		switch s.d[s.i] {
		case ',':
			s.i++
			s.skipWS()
		case '}':
			s.i++
			s.depth--
			return true
		default:
			return s.unexpected("',' or '}' in an object")
		}
	}
}

// value validates any JSON value starting at s.i.
func (s *scanner) value() bool {
	if s.i >= len(s.d) {
		return s.unexpected("a value")
	}
	switch c := s.d[s.i]; c {
	case '"':
		_, ok := s.str()
		return ok
	case '{':
		return s.object(func([]byte, bool) (bool, bool) { return false, true })
	case '[':
		return s.array()
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		if c == '-' || c >= '0' && c <= '9' {
			return s.number()
		}
		return s.unexpected("a value")
	}
}

func (s *scanner) array() bool {
	if s.depth++; s.depth > maxDepth {
		return s.fail("nested too deeply")
	}
	s.i++
	s.skipWS()
	if s.i < len(s.d) && s.d[s.i] == ']' {
		s.i++
		s.depth--
		return true
	}
	for {
		if !s.value() {
			return false
		}
		s.skipWS()
		if s.i >= len(s.d) {
			return s.unexpected("',' or ']' in an array")
		}
		switch s.d[s.i] {
		case ',':
			s.i++
			s.skipWS()
		case ']':
			s.i++
			s.depth--
			return true
		default:
			return s.unexpected("',' or ']' in an array")
		}
	}
}

func (s *scanner) literal(lit string) bool {
	if len(s.d)-s.i < len(lit) || string(s.d[s.i:s.i+len(lit)]) != lit {
		for j := 0; j < len(lit); j++ {
			if s.i+j >= len(s.d) {
				s.i += j
				return s.unexpected(strconv.Quote(lit))
			}
			if s.d[s.i+j] != lit[j] {
				s.i += j
				return s.fail("invalid literal: expected " + strconv.Quote(lit) + ", found " + describe(s.d[s.i]))
			}
		}
	}
	s.i += len(lit)
	return true
}

func (s *scanner) digits() int {
	start := s.i
	for s.i < len(s.d) && s.d[s.i] >= '0' && s.d[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

func (s *scanner) number() bool {
	if s.d[s.i] == '-' {
		s.i++
	}
	if s.i >= len(s.d) {
		return s.unexpected("a digit")
	}
	switch c := s.d[s.i]; {
	case c == '0':
		s.i++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return s.unexpected("a digit")
	}
	if s.i < len(s.d) && s.d[s.i] == '.' {
		s.i++
		if s.digits() == 0 {
			return s.unexpected("a digit after '.'")
		}
	}
	if s.i < len(s.d) && (s.d[s.i] == 'e' || s.d[s.i] == 'E') {
		s.i++
		if s.i < len(s.d) && (s.d[s.i] == '+' || s.d[s.i] == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return s.unexpected("a digit in the exponent")
		}
	}
	return true
}

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// str scans a string (s.i at the opening quote) and leaves s.i after the
// closing quote. It is the hot loop (base64 attachments): 8 bytes at a time
// while no byte is '"', '\\' or a control character.
func (s *scanner) str() (esc bool, ok bool) {
	d := s.d
	i := s.i + 1
	for {
		for i+8 <= len(d) {
			x := binary.LittleEndian.Uint64(d[i:])
			q := x ^ (lsb * '"')
			b := x ^ (lsb * '\\')
			// High bit set in a lane that is zero (q, b) or < 0x20 (x).
			t := ((q - lsb) &^ q) | ((b - lsb) &^ b) | ((x - lsb*0x20) &^ x)
			if t&msb != 0 {
				break
			}
			i += 8
		}
		if i >= len(d) {
			s.i = i
			return esc, s.fail("line ends inside a string (truncated?)")
		}
		c := d[i]
		switch {
		case c == '"':
			s.i = i + 1
			return esc, true
		case c == '\\':
			esc = true
			if i+1 >= len(d) {
				s.i = i + 1
				return esc, s.fail("line ends inside a string escape")
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for j := 2; j < 6; j++ {
					if i+j >= len(d) {
						s.i = i + j
						return esc, s.fail("line ends inside a \\u escape")
					}
					if !isHex(d[i+j]) {
						s.i = i + j
						return esc, s.fail("invalid \\u escape: expected a hex digit, found " + describe(d[i+j]))
					}
				}
				i += 6
			default:
				s.i = i + 1
				return esc, s.fail("invalid escape \\" + describe(d[i+1]) + " in a string")
			}
		case c < 0x20:
			s.i = i
			return esc, s.fail("control character " + describe(c) + " in a string (must be escaped)")
		default:
			i++
		}
	}
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// Validator checks resource lines of one file.
type Validator struct {
	WantType string // "" = any (e.g. BD3 organized output, which mixes types)
}

// Check is Inspect plus: a top-level resourceType must be present and, if
// WantType is set, equal to it (deleted[] files: "Bundle"; error[] files:
// "OperationOutcome").
func (v Validator) Check(line []byte) (Meta, error) {
	m, err := Inspect(line)
	if err != nil {
		return m, err
	}
	if m.ResourceType == "" {
		return m, &Error{Offset: -1, Msg: "no top-level resourceType: not a FHIR resource"}
	}
	if v.WantType != "" && m.ResourceType != v.WantType {
		return m, &Error{Offset: -1, Msg: fmt.Sprintf("resourceType %s in a file of %s", strconv.Quote(clip(m.ResourceType, 40)), strconv.Quote(clip(v.WantType, 40)))}
	}
	return m, nil
}

// Scan checks every line from r and calls fn (if not nil) for each valid
// one. It stops at the first invalid line with an *Error naming the line,
// or at a read error (returned as is, wrapped). It returns the number of
// resources accepted; r.MissingFinalNewline tells whether the file ended
// without a newline.
func (v Validator) Scan(r *Reader, fn func(line []byte, m Meta) error) (int64, error) {
	var n int64
	for {
		line, err := r.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		m, err := v.Check(line)
		if err != nil {
			return n, WithLine(err, r.Line())
		}
		if fn != nil {
			if err := fn(line, m); err != nil {
				return n, err
			}
		}
		n++
	}
}

// WithLine sets the line number on an *Error (returning a copy).
func WithLine(err error, line int64) error {
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.Line = line
		return &c
	}
	return fmt.Errorf("ndjson: line %d: %w", line, err)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + "..."
}
