package fhirpath

import (
	"fmt"
	"strings"
)

// Limits on an expression, so that a hostile ViewDefinition cannot make the
// parser or the evaluator recurse without bound.
const (
	MaxExprLen   = 16 << 10
	MaxExprDepth = 64
)

type tokKind uint8

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tDate // @... literal, text without the '@'
	tConst
	tSpecial // $this, $index, $total
	tOp
)

type token struct {
	kind tokKind
	text string
	pos  int
}

func lex(src string) ([]token, error) {
	var out []token
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '/' && i+1 < len(src) && src[i+1] == '/':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(src) && src[i+1] == '*':
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return nil, fmt.Errorf("position %d: unterminated comment", i)
			}
			i += end + 4
		case isIdentStart(c):
			j := i
			for j < len(src) && isIdentPart(src[j]) {
				j++
			}
			out = append(out, token{tIdent, src[i:j], i})
			i = j
		case c == '`':
			s, n, err := lexQuoted(src[i:], '`')
			if err != nil {
				return nil, fmt.Errorf("position %d: %w", i, err)
			}
			out = append(out, token{tIdent, s, i})
			i += n
		case c == '\'':
			s, n, err := lexQuoted(src[i:], '\'')
			if err != nil {
				return nil, fmt.Errorf("position %d: %w", i, err)
			}
			out = append(out, token{tString, s, i})
			i += n
		case c >= '0' && c <= '9':
			j := i
			for j < len(src) && src[j] >= '0' && src[j] <= '9' {
				j++
			}
			if j+1 < len(src) && src[j] == '.' && src[j+1] >= '0' && src[j+1] <= '9' {
				j++
				for j < len(src) && src[j] >= '0' && src[j] <= '9' {
					j++
				}
			}
			if j < len(src) && src[j] == 'L' { // long literal
				j++
			}
			out = append(out, token{tNumber, src[i:j], i})
			i = j
		case c == '@':
			j := i + 1
			for j < len(src) && (isIdentPart(src[j]) || strings.IndexByte("-:+", src[j]) >= 0 ||
				(src[j] == '.' && j+1 < len(src) && src[j+1] >= '0' && src[j+1] <= '9')) {
				j++
			}
			if j == i+1 {
				return nil, fmt.Errorf("position %d: empty date/time literal", i)
			}
			out = append(out, token{tDate, src[i+1 : j], i})
			i = j
		case c == '%':
			j := i + 1
			switch {
			case j < len(src) && isIdentStart(src[j]):
				for j < len(src) && isIdentPart(src[j]) {
					j++
				}
				out = append(out, token{tConst, src[i+1 : j], i})
			case j < len(src) && (src[j] == '`' || src[j] == '\''):
				s, n, err := lexQuoted(src[j:], src[j])
				if err != nil {
					return nil, fmt.Errorf("position %d: %w", i, err)
				}
				out = append(out, token{tConst, s, i})
				j += n
			default:
				return nil, fmt.Errorf("position %d: '%%' must be followed by a constant name", i)
			}
			i = j
		case c == '$':
			j := i + 1
			for j < len(src) && isIdentPart(src[j]) {
				j++
			}
			name := src[i:j]
			if name != "$this" && name != "$index" && name != "$total" {
				return nil, fmt.Errorf("position %d: unknown special variable %q", i, name)
			}
			out = append(out, token{tSpecial, name, i})
			i = j
		default:
			two := ""
			if i+1 < len(src) {
				two = src[i : i+2]
			}
			switch two {
			case "<=", ">=", "!=", "!~":
				out = append(out, token{tOp, two, i})
				i += 2
				continue
			}
			if strings.IndexByte(".[](),+-*/&|=~<>{}", c) >= 0 {
				out = append(out, token{tOp, string(c), i})
				i++
				continue
			}
			return nil, fmt.Errorf("position %d: unexpected character %q", i, c)
		}
	}
	out = append(out, token{tEOF, "", len(src)})
	return out, nil
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentPart(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

// lexQuoted reads a '...' or `...` literal with FHIRPath escapes; it returns
// the value and the number of bytes consumed.
func lexQuoted(s string, q byte) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		if c == q {
			return b.String(), i + 1, nil
		}
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i >= len(s) {
			break
		}
		switch s[i] {
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'f':
			b.WriteByte('\f')
		case 'u':
			if i+4 >= len(s) {
				return "", 0, fmt.Errorf("invalid \\u escape")
			}
			var r rune
			for _, h := range s[i+1 : i+5] {
				r <<= 4
				switch {
				case h >= '0' && h <= '9':
					r |= h - '0'
				case h >= 'a' && h <= 'f':
					r |= h - 'a' + 10
				case h >= 'A' && h <= 'F':
					r |= h - 'A' + 10
				default:
					return "", 0, fmt.Errorf("invalid \\u escape")
				}
			}
			b.WriteRune(r)
			i += 4
		default: // \' \" \` \\ \/
			b.WriteByte(s[i])
		}
	}
	return "", 0, fmt.Errorf("unterminated literal")
}

type exprKind uint8

const (
	eLiteral exprKind = iota
	eEmpty            // {}
	eMember           // identifier: navigate from the input (or type filter at the root)
	eFunc             // function call on the input
	eThis
	eIndex
	eTotal
	eConst
	eDot     // l.r where r is a member or function
	eIndexer // l[r]
	eUnary   // op l
	eBinary  // l op r
	eIs      // l is typ
	eAs      // l as typ
)

type expr struct {
	kind    exprKind
	op      string
	name    string // member, function or constant name
	typ     string // type specifier of is/as/ofType/getReferenceKey
	lit     Item
	litColl []Item // {lit}, built once
	args    []*expr
	l, r    *expr
	fn      *funcDef
}

// Expr is a parsed FHIRPath expression, safe for concurrent use.
type Expr struct {
	src       string
	root      *expr
	constants []string
}

// String returns the source text.
func (e *Expr) String() string { return e.src }

// Constants returns the names of the %constants the expression uses, other
// than the ones every evaluation defines (%resource, %rootResource,
// %context, %rowIndex, %ucum).
func (e *Expr) Constants() []string { return e.constants }

// Parse compiles a FHIRPath expression. Unknown functions and malformed
// syntax are refused here, not when the expression first meets data.
func Parse(src string) (*Expr, error) {
	if len(src) > MaxExprLen {
		return nil, fmt.Errorf("fhirpath: expression longer than %d bytes", MaxExprLen)
	}
	if strings.TrimSpace(src) == "" {
		return nil, fmt.Errorf("fhirpath: empty expression")
	}
	toks, err := lex(src)
	if err != nil {
		return nil, fmt.Errorf("fhirpath: %q: %w", src, err)
	}
	p := &parser{toks: toks, consts: map[string]bool{}}
	root, err := p.expression(0, 0)
	if err == nil && p.peek().kind != tEOF {
		err = p.errf("unexpected %q", p.peek().text)
	}
	if err != nil {
		return nil, fmt.Errorf("fhirpath: %q: %w", src, err)
	}
	fillLiterals(root)
	e := &Expr{src: src, root: root}
	for name := range p.consts {
		e.constants = append(e.constants, name)
	}
	return e, nil
}

// MustParse is Parse for expressions fixed in the program.
func MustParse(src string) *Expr {
	e, err := Parse(src)
	if err != nil {
		panic(err)
	}
	return e
}

type parser struct {
	toks   []token
	i      int
	consts map[string]bool
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) errf(format string, a ...any) error {
	return fmt.Errorf("position %d: %s", p.peek().pos, fmt.Sprintf(format, a...))
}

func (p *parser) isOp(s string) bool {
	t := p.peek()
	return t.kind == tOp && t.text == s
}

func (p *parser) expect(s string) error {
	if !p.isOp(s) {
		if p.peek().kind == tEOF {
			return p.errf("expected %q, found the end", s)
		}
		return p.errf("expected %q, found %q", s, p.peek().text)
	}
	p.next()
	return nil
}

// binaryPrec gives each infix operator its precedence (higher binds tighter);
// 0 means the token is not an infix operator.
func binaryPrec(t token) int {
	switch t.kind {
	case tOp:
		switch t.text {
		case "*", "/":
			return 10
		case "+", "-", "&":
			return 9
		case "|":
			return 7
		case "<", ">", "<=", ">=":
			return 6
		case "=", "~", "!=", "!~":
			return 5
		}
	case tIdent:
		switch t.text {
		case "div", "mod":
			return 10
		case "is", "as":
			return 8
		case "in", "contains":
			return 4
		case "and":
			return 3
		case "or", "xor":
			return 2
		case "implies":
			return 1
		}
	}
	return 0
}

func (p *parser) expression(minPrec, depth int) (*expr, error) {
	if depth > MaxExprDepth {
		return nil, p.errf("expression nested deeper than %d", MaxExprDepth)
	}
	left, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		prec := binaryPrec(t)
		if prec == 0 || prec <= minPrec {
			return left, nil
		}
		p.next()
		if t.text == "is" || t.text == "as" {
			typ, err := p.typeSpecifier()
			if err != nil {
				return nil, err
			}
			k := eIs
			if t.text == "as" {
				k = eAs
			}
			left = &expr{kind: k, l: left, typ: typ}
			continue
		}
		right, err := p.expression(prec, depth+1)
		if err != nil {
			return nil, err
		}
		left = &expr{kind: eBinary, op: t.text, l: left, r: right}
	}
}

func (p *parser) typeSpecifier() (string, error) {
	t := p.next()
	if t.kind == tString { // getReferenceKey('Patient'), as the spec's examples write it
		return t.text, nil
	}
	if t.kind != tIdent {
		return "", fmt.Errorf("position %d: expected a type name", t.pos)
	}
	name := t.text
	if p.isOp(".") && p.toks[p.i+1].kind == tIdent {
		p.next()
		name += "." + p.next().text
	}
	return name, nil
}

func (p *parser) unary(depth int) (*expr, error) {
	if p.isOp("+") || p.isOp("-") {
		op := p.next().text
		operand, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		if depth > MaxExprDepth {
			return nil, p.errf("expression nested deeper than %d", MaxExprDepth)
		}
		return &expr{kind: eUnary, op: op, l: operand}, nil
	}
	return p.postfix(depth)
}

func (p *parser) postfix(depth int) (*expr, error) {
	e, err := p.term(depth)
	if err != nil {
		return nil, err
	}
	for {
		switch {
		case p.isOp("."):
			p.next()
			inv, err := p.invocation(depth)
			if err != nil {
				return nil, err
			}
			e = &expr{kind: eDot, l: e, r: inv}
		case p.isOp("["):
			p.next()
			idx, err := p.expression(0, depth+1)
			if err != nil {
				return nil, err
			}
			if err := p.expect("]"); err != nil {
				return nil, err
			}
			e = &expr{kind: eIndexer, l: e, r: idx}
		default:
			return e, nil
		}
	}
}

func (p *parser) term(depth int) (*expr, error) {
	t := p.peek()
	switch t.kind {
	case tString:
		p.next()
		return &expr{kind: eLiteral, lit: stringItem(t.text, "string")}, nil
	case tNumber:
		p.next()
		text := strings.TrimSuffix(t.text, "L")
		typ := "integer"
		if strings.Contains(text, ".") {
			typ = "decimal"
		}
		if nt := p.peek(); nt.kind == tString || (nt.kind == tIdent && calendarUnits[nt.text]) {
			return nil, p.errf("quantity literals are not supported")
		}
		return &expr{kind: eLiteral, lit: Item{N: &Node{Kind: Number, Str: text}, T: typ}}, nil
	case tDate:
		p.next()
		it, err := temporalLiteral(t.text)
		if err != nil {
			return nil, p.errf("%v", err)
		}
		return &expr{kind: eLiteral, lit: it}, nil
	case tConst:
		p.next()
		if !builtinConstants[t.text] {
			p.consts[t.text] = true
		}
		return &expr{kind: eConst, name: t.text}, nil
	case tSpecial:
		p.next()
		switch t.text {
		case "$this":
			return &expr{kind: eThis}, nil
		case "$index":
			return &expr{kind: eIndex}, nil
		default:
			return &expr{kind: eTotal}, nil
		}
	case tOp:
		switch t.text {
		case "(":
			p.next()
			e, err := p.expression(0, depth+1)
			if err != nil {
				return nil, err
			}
			if err := p.expect(")"); err != nil {
				return nil, err
			}
			return e, nil
		case "{":
			p.next()
			if err := p.expect("}"); err != nil {
				return nil, err
			}
			return &expr{kind: eEmpty}, nil
		}
	case tIdent:
		if t.text == "true" || t.text == "false" {
			if !(p.toks[p.i+1].kind == tOp && p.toks[p.i+1].text == "(") {
				p.next()
				return &expr{kind: eLiteral, lit: boolItem(t.text == "true")}, nil
			}
		}
		return p.invocation(depth)
	case tEOF:
		return nil, p.errf("unexpected end of expression")
	}
	return nil, p.errf("unexpected %q", t.text)
}

var calendarUnits = map[string]bool{
	"year": true, "years": true, "month": true, "months": true, "week": true, "weeks": true,
	"day": true, "days": true, "hour": true, "hours": true, "minute": true, "minutes": true,
	"second": true, "seconds": true, "millisecond": true, "milliseconds": true,
}

var builtinConstants = map[string]bool{
	"resource": true, "rootResource": true, "context": true, "rowIndex": true, "ucum": true,
}

func (p *parser) invocation(depth int) (*expr, error) {
	t := p.next()
	switch t.kind {
	case tSpecial:
		switch t.text {
		case "$this":
			return &expr{kind: eThis}, nil
		case "$index":
			return &expr{kind: eIndex}, nil
		}
		return &expr{kind: eTotal}, nil
	case tIdent:
	default:
		return nil, fmt.Errorf("position %d: expected a name, found %q", t.pos, t.text)
	}
	if !p.isOp("(") {
		return &expr{kind: eMember, name: t.text}, nil
	}
	p.next()
	fn, ok := functions[t.text]
	if !ok {
		return nil, fmt.Errorf("position %d: unknown function %s()", t.pos, t.text)
	}
	e := &expr{kind: eFunc, name: t.text, fn: fn}
	if !p.isOp(")") {
		for {
			if fn.typeArg && len(e.args) == 0 {
				typ, err := p.typeSpecifier()
				if err != nil {
					return nil, err
				}
				e.typ = typ
				e.args = append(e.args, nil)
			} else {
				a, err := p.expression(0, depth+1)
				if err != nil {
					return nil, err
				}
				e.args = append(e.args, a)
			}
			if !p.isOp(",") {
				break
			}
			p.next()
		}
	}
	if err := p.expect(")"); err != nil {
		return nil, err
	}
	if len(e.args) < fn.minArgs || len(e.args) > fn.maxArgs {
		return nil, fmt.Errorf("position %d: %s() takes %s", t.pos, t.text, fn.arity())
	}
	return e, nil
}

func fillLiterals(e *expr) {
	if e == nil {
		return
	}
	if e.kind == eLiteral {
		e.litColl = []Item{e.lit}
	}
	fillLiterals(e.l)
	fillLiterals(e.r)
	for _, a := range e.args {
		fillLiterals(a)
	}
}
