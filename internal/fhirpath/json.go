package fhirpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// Kind is the JSON kind of a Node.
type Kind uint8

const (
	Null Kind = iota
	Bool
	Number
	String
	Object
	Array
)

func (k Kind) String() string {
	switch k {
	case Null:
		return "null"
	case Bool:
		return "boolean"
	case Number:
		return "number"
	case String:
		return "string"
	case Object:
		return "object"
	case Array:
		return "array"
	}
	return "?"
}

// Node is one decoded JSON value. A resource is decoded once into a tree of
// Nodes and every expression of every view walks that tree: objects keep their
// keys in document order (FHIR objects are small, so a linear scan beats a
// map), numbers keep their literal text (decimal precision is significant in
// FHIR: 1.0 and 1.00 have different boundaries).
type Node struct {
	Kind Kind
	Bool bool
	Str  string   // String: the value; Number: the literal text
	Keys []string // Object: keys, parallel to Kids
	Kids []Node   // Object: values; Array: elements
}

// Get returns the value of key in an object, or nil. Of duplicate keys the
// last wins, as with encoding/json.
func (n *Node) Get(key string) *Node {
	if n == nil || n.Kind != Object {
		return nil
	}
	for i := len(n.Keys) - 1; i >= 0; i-- {
		if n.Keys[i] == key {
			return &n.Kids[i]
		}
	}
	return nil
}

// MaxDepth bounds the nesting of a decoded document. FHIR resources nest a
// few dozen levels at most (deep Questionnaire items included); anything
// deeper is hostile and is refused before it can exhaust the stack.
const MaxDepth = 200

// ErrTooDeep reports a document nested deeper than MaxDepth.
var ErrTooDeep = errors.New("JSON nested deeper than the limit")

// ParseJSON decodes one JSON document (one NDJSON line). The input is copied
// once; strings without escapes share that copy, so a resource costs about
// one allocation per object or array.
func ParseJSON(data []byte) (*Node, error) {
	p := parserPool.Get().(*jsonParser)
	defer p.release()
	return p.parse(string(data))
}

func (p *jsonParser) parse(s string) (*Node, error) {
	return p.parseInto(new(Node), s)
}

// parseInto is parse into n (a Decoder's root, reused).
func (p *jsonParser) parseInto(n *Node, s string) (*Node, error) {
	p.s, p.i = s, 0
	p.skipWS()
	base := len(p.stack)
	err := p.push(0)
	if err != nil {
		clear(p.stack[base:])
		p.stack, p.keys = p.stack[:base], p.keys[:0]
		return nil, err
	}
	*n = p.stack[base]
	p.stack[base] = Node{}
	p.stack = p.stack[:base]
	p.skipWS()
	if p.i != len(p.s) {
		return nil, p.errf("unexpected data after the JSON value")
	}
	return n, nil
}

// jsonParser keeps its scratch stacks between documents (sync.Pool), and
// carves the children of every container out of a few large arenas instead
// of one allocation per object and array.
type jsonParser struct {
	s         string
	i         int
	stack     []Node
	keys      []string
	nodeArena arena[Node]
	keyArena  arena[string]

	// A Decoder's parser keeps its arenas and carves the next document's
	// nodes from them again (reuse), walking the chunks in order.
	reuse bool

	// elements, when set, gives the top-level elements to decode once the
	// resource's type is known (DecodeProjected); names are those of the
	// document's type, applied while projected.
	elements  func(resourceType string) (names []string, all bool)
	names     []string
	projected bool
	rtAgain   bool
}

var parserPool = sync.Pool{New: func() any { return &jsonParser{} }}

func (p *jsonParser) release() {
	clear(p.stack[:cap(p.stack)])
	clear(p.keys[:cap(p.keys)])
	p.stack, p.keys = p.stack[:0], p.keys[:0]
	p.s = ""
	p.nodeArena.rewind()
	p.keyArena.rewind()
	parserPool.Put(p)
}

func (p *jsonParser) allocNodes(k int) []Node { return p.nodeArena.alloc(k, len(p.s)/24, p.reuse) }

func (p *jsonParser) allocKeys(k int) []string { return p.keyArena.alloc(k, len(p.s)/48, p.reuse) }

// arena carves the children of containers out of large chunks. Reused (a
// Decoder's), it keeps its chunks and carves the next document from them
// again, in order.
type arena[T any] struct {
	cur    []T
	chunks [][]T // kept for reuse
	next   int   // the next chunk to carve from
}

// alloc returns k elements; the three-index slice keeps an append by a
// caller from spilling into a neighbour. A new chunk holds at least want.
func (a *arena[T]) alloc(k, want int, reuse bool) []T {
	if cap(a.cur)-len(a.cur) < k {
		a.cur = a.chunk(k, want, reuse)
	}
	l := len(a.cur)
	a.cur = a.cur[:l+k]
	return a.cur[l : l+k : l+k]
}

func (a *arena[T]) chunk(k, want int, reuse bool) []T {
	want = max(k, want, 32)
	if !reuse {
		return make([]T, 0, want)
	}
	for a.next < len(a.chunks) {
		c := a.chunks[a.next]
		a.next++
		if cap(c) >= k {
			return c[:0]
		}
	}
	c := make([]T, 0, max(want, 1024))
	a.chunks = append(a.chunks, c)
	a.next = len(a.chunks)
	return c
}

// rewind makes the next alloc start again from the first kept chunk: the
// previous document is dead.
func (a *arena[T]) rewind() { a.cur, a.next = nil, 0 }

// bytes is what the kept chunks hold.
func (a *arena[T]) bytes() int {
	var zero T
	n := 0
	for _, c := range a.chunks {
		n += cap(c)
	}
	return n * int(unsafe.Sizeof(zero))
}

// A Decoder decodes one document after another into memory it reuses: the
// tree Decode returns is valid only until the next Decode (its strings stay
// valid: they live in a fresh copy of each document). For a loop that is done
// with each resource before it reads the next, as Runner is; a Decoder is not
// safe for concurrent use.
type Decoder struct {
	p    jsonParser
	root Node // the tree's root, reused as its nodes are
}

// decoderKeep bounds the arena memory a Decoder keeps between documents: a
// huge document's arenas are dropped rather than held for the next.
const decoderKeep = 4 << 20

// Decode decodes one JSON document (one NDJSON line), as ParseJSON does.
func (d *Decoder) Decode(data []byte) (*Node, error) {
	return d.DecodeProjected(data, nil)
}

// DecodeProjected is Decode that builds only the top-level elements of a
// resource that KeepElement keeps for the names elements gives for its type
// (all: every element), once it has read the type: in FHIR JSON
// resourceType comes first, and a document where it does not is decoded
// whole. Skipped values are still checked, so a document decodes without
// error exactly when ParseJSON accepts it.
func (d *Decoder) DecodeProjected(data []byte, elements func(resourceType string) (names []string, all bool)) (*Node, error) {
	return d.decode(string(data), elements)
}

// DecodeInPlace is DecodeProjected without the copy of data: the tree's
// strings are part of data, so it is valid only while data is unchanged,
// and whatever outlives it must copy the text it keeps.
func (d *Decoder) DecodeInPlace(data []byte, elements func(resourceType string) (names []string, all bool)) (*Node, error) {
	return d.decode(unsafe.String(unsafe.SliceData(data), len(data)), elements)
}

func (d *Decoder) decode(s string, elements func(resourceType string) (names []string, all bool)) (*Node, error) {
	p := &d.p
	p.elements, p.names, p.projected, p.rtAgain = elements, nil, false, false
	p.reuse = true
	p.nodeArena.rewind()
	p.keyArena.rewind()
	defer func() {
		clear(p.stack[:cap(p.stack)])
		clear(p.keys[:cap(p.keys)])
		p.stack, p.keys = p.stack[:0], p.keys[:0]
		p.s = ""
		p.nodeArena.cur, p.keyArena.cur = nil, nil
		p.elements, p.names, p.projected = nil, nil, false
		if p.nodeArena.bytes()+p.keyArena.bytes() > decoderKeep {
			p.nodeArena.chunks, p.keyArena.chunks = nil, nil
		}
	}()
	n, err := p.parseInto(&d.root, s)
	if err == nil && p.rtAgain {
		// A second resourceType: decode it all (the last one wins, as
		// everywhere, and the projection was chosen by the first).
		p.elements, p.names, p.projected = nil, nil, false
		p.nodeArena.rewind()
		p.keyArena.rewind()
		n, err = p.parseInto(&d.root, s)
	}
	return n, err
}

func (p *jsonParser) errf(format string, a ...any) error {
	return fmt.Errorf("json: offset %d: %s", p.i, fmt.Sprintf(format, a...))
}

func (p *jsonParser) skipWS() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// push decodes one value into a new slot on top of the stack (no copy of
// the node on the way: containers fill their slot once their children are
// in the arena).
func (p *jsonParser) push(depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("json: offset %d: %w (%d)", p.i, ErrTooDeep, MaxDepth)
	}
	if p.i >= len(p.s) {
		return p.errf("unexpected end of input")
	}
	idx := len(p.stack)
	p.stack = append(p.stack, Node{})
	switch c := p.s[p.i]; {
	case c == '{':
		return p.object(idx, depth)
	case c == '[':
		return p.array(idx, depth)
	case c == '"':
		str, err := p.str()
		p.stack[idx].Kind, p.stack[idx].Str = String, str
		return err
	case c == 't':
		return p.lit(&p.stack[idx], "true", Bool, true)
	case c == 'f':
		return p.lit(&p.stack[idx], "false", Bool, false)
	case c == 'n':
		return p.lit(&p.stack[idx], "null", Null, false)
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number(&p.stack[idx])
	}
	return p.errf("unexpected character")
}

func (p *jsonParser) lit(n *Node, word string, k Kind, b bool) error {
	if !strings.HasPrefix(p.s[p.i:], word) {
		return p.errf("invalid literal")
	}
	p.i += len(word)
	n.Kind, n.Bool = k, b
	return nil
}

func (p *jsonParser) number(n *Node) error {
	start := p.i
	s := p.s
	if s[p.i] == '-' {
		p.i++
	}
	digits := func() int {
		j := p.i
		for p.i < len(s) && s[p.i] >= '0' && s[p.i] <= '9' {
			p.i++
		}
		return p.i - j
	}
	if p.i < len(s) && s[p.i] == '0' {
		p.i++
	} else if digits() == 0 {
		return p.errf("invalid number")
	}
	if p.i < len(s) && s[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return p.errf("invalid number")
		}
	}
	if p.i < len(s) && (s[p.i] == 'e' || s[p.i] == 'E') {
		p.i++
		if p.i < len(s) && (s[p.i] == '+' || s[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return p.errf("invalid number")
		}
	}
	n.Kind, n.Str = Number, s[start:p.i]
	return nil
}

func (p *jsonParser) str() (string, error) {
	p.i++ // opening quote
	start := p.i
	s := p.s
	ascii := true
	for p.i < len(s) {
		p.i = plainRun(s, p.i)
		if p.i >= len(s) {
			break
		}
		c := s[p.i]
		if c == '"' {
			out := s[start:p.i]
			p.i++
			if !ascii {
				out = validUTF8(out)
			}
			return out, nil
		}
		if c >= 0x80 {
			ascii = false
		}
		if c == '\\' {
			return p.strSlow(start)
		}
		if c < 0x20 {
			return "", p.errf("control character in string")
		}
		p.i++
	}
	return "", p.errf("unterminated string")
}

// plainRun returns the index of the first byte from i on that a string
// scan must look at (a quote, a backslash, a control character or a
// non-ASCII byte), or, with none in the whole words from i, len(s) minus
// less than 8: most of a FHIR string (URLs, codes, display text) is passed
// over a word at a time, and the word that ends it (a key's closing quote)
// is not walked again byte by byte.
func plainRun(s string, i int) int {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	for i+8 <= len(s) {
		// One 8-byte load (i+8 <= len(s)): read only, never written.
		x := binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(s[i:]), 8))
		q := x ^ (lo * '"')
		b := x ^ (lo * '\\')
		// The has-zero-byte test can flag a byte after a real hit (a
		// borrow), never one before it: the lowest flag is exact, and the
		// little-endian load puts the first byte lowest.
		if m := ((q-lo)&^q | (b-lo)&^b | (x-lo*0x20)&^x | x) & hi; m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
		i += 8
	}
	return i
}

func (p *jsonParser) strSlow(start int) (string, error) {
	var b strings.Builder
	b.WriteString(p.s[start:p.i])
	s := p.s
	for p.i < len(s) {
		c := s[p.i]
		switch {
		case c == '"':
			p.i++
			return validUTF8(b.String()), nil
		case c < 0x20:
			return "", p.errf("control character in string")
		case c != '\\':
			b.WriteByte(c)
			p.i++
			continue
		}
		p.i++
		if p.i >= len(s) {
			break
		}
		e := s[p.i]
		p.i++
		switch e {
		case '"', '\\', '/':
			b.WriteByte(e)
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", p.errf("invalid \\u escape")
			}
			if utf16.IsSurrogate(r) {
				// A valid pair takes the next escape too; otherwise
				// U+FFFD, and the next escape is read on its own (as
				// encoding/json does: "\ud800\u0000" is U+FFFD, U+0000).
				dec := utf8.RuneError
				if strings.HasPrefix(s[p.i:], `\u`) {
					save := p.i
					p.i += 2
					if x, ok := p.hex4(); ok {
						dec = utf16.DecodeRune(r, x)
					}
					if dec == utf8.RuneError {
						p.i = save
					}
				}
				r = dec
			}
			b.WriteRune(r)
		default:
			return "", p.errf("invalid escape")
		}
	}
	return "", p.errf("unterminated string")
}

func (p *jsonParser) hex4() (rune, bool) {
	if p.i+4 > len(p.s) {
		return 0, false
	}
	v, err := strconv.ParseUint(p.s[p.i:p.i+4], 16, 32)
	if err != nil {
		return 0, false
	}
	p.i += 4
	return rune(v), true
}

func (p *jsonParser) object(idx, depth int) error {
	p.i++ // {
	base, kbase := len(p.stack), len(p.keys)
	p.skipWS()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		p.stack[idx].Kind = Object
		return nil
	}
	for {
		p.skipWS()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return p.errf("expected object key")
		}
		k, err := p.str()
		if err != nil {
			return err
		}
		p.skipWS()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return p.errf("expected ':'")
		}
		p.i++
		p.skipWS()
		if depth == 0 && p.projected && k != "resourceType" && !KeepElement(p.names, k) {
			if err := p.skip(depth + 1); err != nil {
				return err
			}
		} else {
			p.keys = append(p.keys, k)
			if err := p.push(depth + 1); err != nil {
				return err
			}
			if v := &p.stack[len(p.stack)-1]; depth == 0 && p.elements != nil && k == "resourceType" {
				if len(p.stack) == base+1 && v.Kind == String {
					// FHIR JSON leads with resourceType: from here on the
					// projection of that type applies.
					var all bool
					p.names, all = p.elements(v.Str)
					p.projected = !all
				} else {
					p.rtAgain = true // which type wins is for a whole decode to say
				}
			}
		}
		p.skipWS()
		if p.i >= len(p.s) {
			return p.errf("unterminated object")
		}
		if p.s[p.i] == ',' {
			p.i++
			continue
		}
		if p.s[p.i] == '}' {
			p.i++
			break
		}
		return p.errf("expected ',' or '}'")
	}
	kids := p.allocNodes(len(p.stack) - base)
	copy(kids, p.stack[base:])
	keys := p.allocKeys(len(p.keys) - kbase)
	copy(keys, p.keys[kbase:])
	n := &p.stack[idx]
	n.Kind, n.Kids, n.Keys = Object, kids, keys
	clear(p.stack[base:])
	p.stack = p.stack[:base]
	p.keys = p.keys[:kbase]
	return nil
}

func (p *jsonParser) array(idx, depth int) error {
	p.i++ // [
	base := len(p.stack)
	p.skipWS()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		p.stack[idx].Kind = Array
		return nil
	}
	for {
		p.skipWS()
		if err := p.push(depth + 1); err != nil {
			return err
		}
		p.skipWS()
		if p.i >= len(p.s) {
			return p.errf("unterminated array")
		}
		if p.s[p.i] == ',' {
			p.i++
			continue
		}
		if p.s[p.i] == ']' {
			p.i++
			break
		}
		return p.errf("expected ',' or ']'")
	}
	kids := p.allocNodes(len(p.stack) - base)
	copy(kids, p.stack[base:])
	p.stack[idx].Kind, p.stack[idx].Kids = Array, kids
	clear(p.stack[base:])
	p.stack = p.stack[:base]
	return nil
}

// skip checks one JSON value as value would, without building it: the
// same errors, at the same offsets, for the same input.
func (p *jsonParser) skip(depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("json: offset %d: %w (%d)", p.i, ErrTooDeep, MaxDepth)
	}
	if p.i >= len(p.s) {
		return p.errf("unexpected end of input")
	}
	var dummy Node
	switch c := p.s[p.i]; {
	case c == '{':
		return p.skipContainer(depth, '}', true)
	case c == '[':
		return p.skipContainer(depth, ']', false)
	case c == '"':
		return p.skipStr()
	case c == 't':
		return p.lit(&dummy, "true", Bool, true)
	case c == 'f':
		return p.lit(&dummy, "false", Bool, false)
	case c == 'n':
		return p.lit(&dummy, "null", Null, false)
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number(&dummy)
	}
	return p.errf("unexpected character")
}

func (p *jsonParser) skipContainer(depth int, end byte, object bool) error {
	p.i++ // { or [
	p.skipWS()
	if p.i < len(p.s) && p.s[p.i] == end {
		p.i++
		return nil
	}
	for {
		p.skipWS()
		if object {
			if p.i >= len(p.s) || p.s[p.i] != '"' {
				return p.errf("expected object key")
			}
			if err := p.skipStr(); err != nil {
				return err
			}
			p.skipWS()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return p.errf("expected ':'")
			}
			p.i++
			p.skipWS()
		}
		if err := p.skip(depth + 1); err != nil {
			return err
		}
		p.skipWS()
		if p.i >= len(p.s) {
			if object {
				return p.errf("unterminated object")
			}
			return p.errf("unterminated array")
		}
		if p.s[p.i] == ',' {
			p.i++
			continue
		}
		if p.s[p.i] == end {
			p.i++
			return nil
		}
		if object {
			return p.errf("expected ',' or '}'")
		}
		return p.errf("expected ',' or ']'")
	}
}

// skipStr checks a string as str does (escapes, control characters)
// without building it.
func (p *jsonParser) skipStr() error {
	p.i++ // opening quote
	s := p.s
	for p.i < len(s) {
		p.i = plainRun(s, p.i)
		if p.i >= len(s) {
			break
		}
		c := s[p.i]
		switch {
		case c == '"':
			p.i++
			return nil
		case c < 0x20:
			return p.errf("control character in string")
		case c != '\\':
			p.i++
			continue
		}
		p.i++
		if p.i >= len(s) {
			break
		}
		e := s[p.i]
		p.i++
		switch e {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			if _, ok := p.hex4(); !ok {
				return p.errf("invalid \\u escape")
			}
		default:
			return p.errf("invalid escape")
		}
	}
	return p.errf("unterminated string")
}

// FromAny converts a value decoded by encoding/json (with or without
// UseNumber) into a Node, for callers that already hold one.
func FromAny(v any) (*Node, error) {
	var n Node
	if err := fromAny(&n, v, 0); err != nil {
		return nil, err
	}
	return &n, nil
}

func fromAny(n *Node, v any, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("json: %w (%d)", ErrTooDeep, MaxDepth)
	}
	switch x := v.(type) {
	case nil:
		n.Kind = Null
	case bool:
		n.Kind, n.Bool = Bool, x
	case string:
		n.Kind, n.Str = String, x
	case float64:
		n.Kind, n.Str = Number, strconv.FormatFloat(x, 'f', -1, 64)
	case interface{ String() string }: // json.Number
		n.Kind, n.Str = Number, x.String()
	case []any:
		n.Kind = Array
		n.Kids = make([]Node, len(x))
		for i := range x {
			if err := fromAny(&n.Kids[i], x[i], depth+1); err != nil {
				return err
			}
		}
	case map[string]any:
		n.Kind = Object
		// Sorted keys: a Go map has no order, and output must not depend on chance.
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		n.Keys = keys
		n.Kids = make([]Node, len(keys))
		for i, k := range keys {
			if err := fromAny(&n.Kids[i], x[k], depth+1); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("json: unsupported Go value %T", v)
	}
	return nil
}

// validUTF8 replaces each byte that is not part of valid UTF-8 with U+FFFD,
// as encoding/json does, so that every string handed on is valid text.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteString("\uFFFD")
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
