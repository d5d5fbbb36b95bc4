package ndjson

import (
	"encoding/binary"
	"math/bits"
)

// fastMaxDepth bounds the nesting the fast path tracks (one bit per level
// in a uint64). Deeper lines are valid JSON up to maxDepth: the slow path
// takes them.
const fastMaxDepth = 64

// Fields whose values the fast path records: what the next value belongs to.
const (
	fNone uint8 = iota
	fResourceType
	fID
	fMeta // an object value opens the meta context at depth 2
	fSubject
	fPatient
	fLastUpdated // meta.lastUpdated
	fVersionID   // meta.versionId
	fRefSubject  // subject.reference
	fRefPatient  // patient.reference
)

// span is a string value of the line, without its quotes.
type span struct {
	start, end int
	esc, set   bool
}

func (s span) str(d []byte) string {
	if !s.set {
		return ""
	}
	if s.esc {
		return decodeString(d[s.start:s.end])
	}
	return string(d[s.start:s.end])
}

// strOK marks the bytes a JSON string holds as they are: not '"', '\\' or
// a control character.
var strOK = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// fastInspect is Inspect's fast path: one loop over the line, no recursion,
// closures or allocations beyond the returned strings (BenchmarkInspect:
// about 2x the recursive scanner on FHIR lines). It accepts exactly the
// JSON grammar (the same as json.Valid) and extracts the same Meta as
// inspectSlow. ok=false means "let inspectSlow decide": the line is
// invalid, or valid but unusual (not an object, nesting deeper than
// fastMaxDepth, an escaped key where keys matter, a duplicated or
// non-string top-level resourceType). inspectSlow then produces the same
// answer or the precise error, so errors are unchanged
// (FuzzFastInspect compares the two on every input).
func fastInspect(d []byte) (m Meta, ok bool) {
	sp, ok := fastScan(d)
	if !ok {
		return m, false
	}
	m.ResourceType, m.ID = sp.rt.str(d), sp.id.str(d)
	m.LastUpdated, m.VersionID = sp.lu.str(d), sp.vid.str(d)
	if m.Subject = sp.subj.str(d); m.Subject == "" {
		m.Subject = sp.pat.str(d)
	}
	return m, true
}

// spans locates Meta's strings in a line.
type spans struct {
	rt, id, lu, vid, subj, pat span
}

// fastScan is fastInspect without the strings: it allocates nothing.
// Keys are read at the top of the loop (key set) and strings try their
// first eight bytes inline before calling scanString: most FHIR keys and
// values are that short, and the call was a fifth of the check.
func fastScan(d []byte) (sp spans, ok bool) {
	n := len(d)
	i := 0
	for i < n && isWS(d[i]) {
		i++
	}
	if i >= n || d[i] != '{' {
		return sp, false
	}
	var (
		objects uint64 // bit k set: the container at depth k+1 is an object
		depth   int
		field   uint8 // what the next value belongs to
		ctx2    uint8 // the depth-1 key whose object is open at depth 2
		key     bool  // a key comes next (after '{' or ',' in an object)
	)
	for {
		if key {
			// `"key" :` at i, whitespace after the colon skipped.
			if i >= n || d[i] != '"' {
				return sp, false
			}
			start := i + 1
			end, esc, ok := stringEnd(d, start)
			if !ok {
				return sp, false
			}
			i = end + 1
			for i < n && isWS(d[i]) {
				i++
			}
			if i >= n || d[i] != ':' {
				return sp, false
			}
			i++
			for i < n && isWS(d[i]) {
				i++
			}
			field = fNone
			if depth == 1 || depth == 2 && ctx2 != fNone {
				if esc {
					return sp, false // an escaped key that may matter: the slow path decodes it
				}
				field = classify(d[start:end], depth, ctx2)
			}
			key = false
		}
		// A value starts at i (whitespace skipped).
		if i >= n {
			return sp, false
		}
		c := d[i]
		if field == fResourceType && c != '"' {
			return sp, false // not a string: the slow path says so
		}
		switch c {
		case '"':
			start := i + 1
			end, esc, ok := stringEnd(d, start)
			if !ok {
				return sp, false
			}
			i = end + 1
			if field != fNone {
				s := span{start: start, end: end, esc: esc, set: true}
				switch field {
				case fResourceType:
					if sp.rt.set {
						return sp, false // duplicate: the slow path says where
					}
					sp.rt = s
				case fID:
					sp.id = s
				case fLastUpdated:
					sp.lu = s
				case fVersionID:
					sp.vid = s
				case fRefSubject:
					sp.subj = s
				case fRefPatient:
					sp.pat = s
				}
			}
		case '{', '[':
			if depth == fastMaxDepth {
				return sp, false
			}
			if depth == 1 {
				ctx2 = fNone
				if c == '{' && (field == fMeta || field == fSubject || field == fPatient) {
					ctx2 = field
				}
			}
			if c == '{' {
				objects |= 1 << depth
			} else {
				objects &^= 1 << depth
			}
			depth++
			i++
			for i < n && isWS(d[i]) {
				i++
			}
			if i < n && (c == '{' && d[i] == '}' || c == '[' && d[i] == ']') {
				i++
				depth--
				break // an empty container is a complete value
			}
			if c == '[' {
				field = fNone // the first element
			} else {
				key = true
			}
			continue
		case 't':
			if n-i < 4 || string(d[i:i+4]) != "true" {
				return sp, false
			}
			i += 4
		case 'f':
			if n-i < 5 || string(d[i:i+5]) != "false" {
				return sp, false
			}
			i += 5
		case 'n':
			if n-i < 4 || string(d[i:i+4]) != "null" {
				return sp, false
			}
			i += 4
		default:
			if i, ok = scanNumber(d, i); !ok {
				return sp, false
			}
		}
		// After a value: ',' then the next key or element, or close
		// containers.
		for {
			for i < n && isWS(d[i]) {
				i++
			}
			if depth == 0 {
				if i != n {
					return sp, false // something after the object
				}
				return sp, true
			}
			if i >= n {
				return sp, false
			}
			inObject := objects&(1<<(depth-1)) != 0
			switch c := d[i]; {
			case c == ',':
				i++
				for i < n && isWS(d[i]) {
					i++
				}
				if inObject {
					key = true
				} else {
					field = fNone
				}
			case c == '}' && inObject, c == ']' && !inObject:
				i++
				depth--
				continue
			default:
				return sp, false
			}
			break
		}
	}
}

// classify says which recorded field, if any, the value of key belongs to:
// keys matter at depth 1 and in the meta/subject/patient object at depth 2.
func classify(key []byte, depth int, ctx2 uint8) uint8 {
	if depth == 1 {
		switch string(key) {
		case "resourceType":
			return fResourceType
		case "id":
			return fID
		case "meta":
			return fMeta
		case "subject":
			return fSubject
		case "patient":
			return fPatient
		}
		return fNone
	}
	switch {
	case ctx2 == fMeta && string(key) == "lastUpdated":
		return fLastUpdated
	case ctx2 == fMeta && string(key) == "versionId":
		return fVersionID
	case ctx2 == fSubject && string(key) == "reference":
		return fRefSubject
	case ctx2 == fPatient && string(key) == "reference":
		return fRefPatient
	}
	return fNone
}

// specials flags (high bit of each lane) the bytes of x that end a run of
// plain string bytes: '"', '\\' or a control character. The lowest flagged
// lane is exact (a borrow only ever flags lanes above a real hit).
func specials(x uint64) uint64 {
	q := x ^ (lsb * '"')
	b := x ^ (lsb * '\\')
	return (((q - lsb) &^ q) | ((b - lsb) &^ b) | ((x - lsb*0x20) &^ x)) & msb
}

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// stringEnd returns the index of the closing quote of the string that
// starts at start (just after its opening quote). Most keys and values
// end within 8 bytes: one word tells, without calling scanString.
func stringEnd(d []byte, start int) (end int, esc, ok bool) {
	if start+8 <= len(d) {
		if t := specials(binary.LittleEndian.Uint64(d[start:])); t != 0 {
			if k := start + bits.TrailingZeros64(t)>>3; d[k] == '"' {
				return k, false, true
			}
		}
	}
	i, esc, ok := scanString(d, start)
	return i - 1, esc, ok
}

// scanString checks a string whose opening quote is just before i and
// returns the index after its closing quote. Eight bytes at a time while
// none is '"', '\\' or a control character; the lowest flagged lane is
// exact (a borrow only ever flags lanes above a real hit).
func scanString(d []byte, i int) (int, bool, bool) {
	n := len(d)
	esc := false
	for {
		for i+8 <= n {
			if t := specials(binary.LittleEndian.Uint64(d[i:])); t != 0 {
				i += bits.TrailingZeros64(t) >> 3
				goto special
			}
			i += 8
		}
		for i < n && strOK[d[i]] {
			i++
		}
		if i >= n {
			return i, esc, false
		}
	special:
		switch d[i] {
		case '"':
			return i + 1, esc, true
		case '\\':
			esc = true
			if i+1 >= n {
				return i, esc, false
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > n || !isHex(d[i+2]) || !isHex(d[i+3]) || !isHex(d[i+4]) || !isHex(d[i+5]) {
					return i, esc, false
				}
				i += 6
			default:
				return i, esc, false
			}
		default:
			return i, esc, false // a control character
		}
	}
}

// scanNumber checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at i.
// What may follow (',' '}' ']' or whitespace) is the caller's check.
func scanNumber(d []byte, i int) (int, bool) {
	n := len(d)
	if d[i] == '-' {
		i++
		if i >= n {
			return i, false
		}
	}
	switch c := d[i]; {
	case c == '0':
		i++
	case c >= '1' && c <= '9':
		i++
		for i < n && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		return i, false
	}
	if i < n && d[i] == '.' {
		i++
		j := i
		for i < n && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == j {
			return i, false
		}
	}
	if i < n && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < n && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j := i
		for i < n && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == j {
			return i, false
		}
	}
	return i, true
}

// CheckID is Check for a caller that needs only the id: the same checks,
// the same errors, but the top-level id comes back as a slice of line
// (nil if none; valid as long as line is) and a valid line costs no
// allocation. The plain NDJSON download path uses it: Meta's five strings
// per line were a tenth of the check's time, and garbage besides.
func (v Validator) CheckID(line []byte) ([]byte, error) {
	sp, ok := fastScan(line)
	if !ok || sp.id.esc || sp.rt.esc || !sp.rt.set ||
		v.WantType != "" && string(line[sp.rt.start:sp.rt.end]) != v.WantType {
		// Unusual or wrong: Check decides, and words the error.
		m, err := v.Check(line)
		if err != nil || m.ID == "" {
			return nil, err
		}
		return []byte(m.ID), nil
	}
	if !sp.id.set {
		return nil, nil
	}
	return line[sp.id.start:sp.id.end], nil
}
