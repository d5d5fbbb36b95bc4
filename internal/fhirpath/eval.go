package fhirpath

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
)

// MaxItems bounds the items one evaluation may produce (navigation results,
// function results, repeat() rounds). A hostile expression or resource gets an
// error instead of unbounded work or memory.
const MaxItems = 1 << 20

// ErrBudget reports an evaluation that exceeded MaxItems.
var ErrBudget = errors.New("fhirpath: evaluation exceeded its work limit")

// Context holds what an evaluation can see besides its input: the resource
// (%resource, %rootResource, getResourceKey()), the view's %constants and
// %rowIndex. One Context may serve many evaluations of one resource; it is
// not safe for concurrent use.
type Context struct {
	Resource  *Node
	Constants map[string][]Item
	RowIndex  int

	scratch ev // reused by each evaluation (evaluations do not nest)
	// Small result slices, computed string nodes and lambda scopes are
	// carved from arenas (the decoder's, json.go) that Reset rewinds.
	itemArena arena[Item]
	nodes     arena[Node]
	scopes    arena[scope]
}

// contextKeep bounds the arena memory a Context keeps between resources: a
// hostile resource's worth is dropped rather than held for the next.
const contextKeep = 1 << 20

// Reset readies the context for another resource, keeping its scratch
// memory: the results of earlier evaluations must no longer be in use.
func (c *Context) Reset(resource *Node, constants map[string][]Item) {
	c.Resource, c.Constants, c.RowIndex = resource, constants, 0
	c.itemArena.rewind()
	c.nodes.rewind()
	c.scopes.rewind()
	if c.itemArena.bytes()+c.nodes.bytes()+c.scopes.bytes() > contextKeep {
		c.itemArena.chunks, c.nodes.chunks, c.scopes.chunks = nil, nil, nil
	}
}

// stringItem is a computed string (a key), its node carved from an arena
// that Reset rewinds.
func (c *Context) stringItem(s, typ string) Item {
	n := &c.nodes.alloc(1, 32, true)[0]
	*n = Node{Kind: String, Str: s}
	return Item{N: n, T: typ}
}

// scope returns a cleared scope for a lambda, carved from an arena that
// Reset rewinds: a lambda's scope lives only while the lambda runs.
func (c *Context) scope() *scope {
	sc := &c.scopes.alloc(1, 16, true)[0]
	*sc = scope{}
	return sc
}

// items returns an empty slice with room for n items. Small ones share an
// arena chunk: results are read-only, and alloc's three-index slice keeps
// an append from spilling into a neighbour.
func (c *Context) items(n int) []Item {
	if n > 16 {
		return make([]Item, 0, n)
	}
	return c.itemArena.alloc(n, 64, true)[:0]
}

// Evaluate runs the expression with input as its focus ($this at the root).
func (e *Expr) Evaluate(ctx *Context, input []Item) ([]Item, error) {
	v := &ctx.scratch
	*v = ev{ctx: ctx, budget: MaxItems}
	if len(input) == 1 {
		v.root.this = input[0]
	}
	out, err := v.eval(e.root, input, &v.root)
	if err != nil {
		return nil, fmt.Errorf("fhirpath: %q: %w", e.src, err)
	}
	return out, nil
}

// EvaluateNode runs the expression on one node of the resource.
func (e *Expr) EvaluateNode(ctx *Context, n *Node) ([]Item, error) {
	return e.Evaluate(ctx, []Item{{N: n}})
}

// Evaluate parses and runs an expression once; for tests and tools.
func Evaluate(resource *Node, expression string) ([]Item, error) {
	e, err := Parse(expression)
	if err != nil {
		return nil, err
	}
	return e.EvaluateNode(&Context{Resource: resource}, resource)
}

type ev struct {
	ctx    *Context
	budget int
	root   scope // in ev so that one allocation serves both
}

type scope struct {
	this  Item
	index int
	total []Item
}

func (v *ev) spend(n int) error {
	v.budget -= n
	if v.budget < 0 {
		return ErrBudget
	}
	return nil
}

func (v *ev) eval(e *expr, input []Item, sc *scope) ([]Item, error) {
	switch e.kind {
	case eLiteral:
		return e.litColl, nil
	case eEmpty:
		return nil, nil
	case eThis:
		if sc.this.N == nil {
			return nil, nil
		}
		return []Item{sc.this}, nil
	case eIndex:
		return []Item{intItem(int64(sc.index))}, nil
	case eTotal:
		return sc.total, nil
	case eConst:
		return v.constant(e.name)
	case eMember:
		return v.member(input, e.name)
	case eFunc:
		return e.fn.fn(v, input, e, sc)
	case eDot:
		left, err := v.eval(e.l, input, sc)
		if err != nil {
			return nil, err
		}
		return v.eval(e.r, left, sc)
	case eIndexer:
		left, err := v.eval(e.l, input, sc)
		if err != nil {
			return nil, err
		}
		idx, err := v.argInt(e.r, sc)
		if err != nil || idx == nil {
			return nil, err
		}
		if *idx < 0 || *idx >= int64(len(left)) {
			return nil, nil
		}
		return left[*idx : *idx+1], nil
	case eUnary:
		operand, err := v.eval(e.l, input, sc)
		if err != nil || e.op == "+" || len(operand) == 0 {
			return operand, err
		}
		if len(operand) > 1 || operand[0].N.Kind != Number {
			return nil, fmt.Errorf("unary '-' needs a single number")
		}
		return arith("-", intItem(0), operand[0])
	case eIs, eAs:
		operand, err := v.eval(e.l, input, sc)
		if err != nil || len(operand) == 0 {
			return nil, err
		}
		if len(operand) > 1 {
			return nil, fmt.Errorf("'%s' needs a single item, got %d", map[exprKind]string{eIs: "is", eAs: "as"}[e.kind], len(operand))
		}
		ok := isType(operand[0], e.typ)
		if e.kind == eIs {
			return boolColl(ok), nil
		}
		if ok {
			return operand, nil
		}
		return nil, nil
	case eBinary:
		return v.binary(e, input, sc)
	}
	return nil, fmt.Errorf("internal: unknown expression kind %d", e.kind)
}

func (v *ev) constant(name string) ([]Item, error) {
	switch name {
	case "resource", "rootResource", "context":
		if v.ctx.Resource == nil {
			return nil, nil
		}
		return []Item{{N: v.ctx.Resource}}, nil
	case "rowIndex":
		return []Item{intItem(int64(v.ctx.RowIndex))}, nil
	case "ucum":
		return []Item{stringItem("http://unitsofmeasure.org", "uri")}, nil
	}
	c, ok := v.ctx.Constants[name]
	if !ok {
		return nil, fmt.Errorf("undefined constant %%%s", name)
	}
	return c, nil
}

// member navigates to the children called name of every input item. A
// choice element is found by its suffixed key (value -> valueQuantity, typed
// Quantity); a capitalised name that is the input resource's type selects
// the resource itself (Patient.name.given).
func (v *ev) member(input []Item, name string) ([]Item, error) {
	var out []Item
	upper := name != "" && name[0] >= 'A' && name[0] <= 'Z'
	for _, it := range input {
		n := it.N
		if n.Kind != Object {
			// A primitive's id and extensions live in its _name sibling.
			if it.X == nil {
				continue
			}
			n = it.X
		}
		if upper {
			if rt := n.Get("resourceType"); rt != nil && rt.Kind == String && rt.Str == name {
				out = append(out, it)
				continue
			}
		}
		if c := n.Get(name); c != nil {
			if out == nil && len(input) == 1 {
				// The common case: size the result exactly.
				size := 1
				if c.Kind == Array {
					size = len(c.Kids)
				}
				out = v.ctx.items(size)
			}
			var err error
			if out, err = v.appendValue(out, c, "", primitiveExt(n, c, name)); err != nil {
				return nil, err
			}
			continue
		}
		for i, k := range n.Keys {
			if len(k) > len(name) && k[:len(name)] == name {
				if t := choiceType(k[len(name):]); t != "" {
					var err error
					if out, err = v.appendValue(out, &n.Kids[i], t, primitiveExt(n, &n.Kids[i], k)); err != nil {
						return nil, err
					}
				}
			}
		}
	}
	return out, nil
}

// primitiveExt finds the _key sibling that carries a primitive's id and
// extensions (FHIR JSON: "birthDate": "1970", "_birthDate": {"extension":
// [...]}), or nil. Objects have none; the scan allocates nothing.
func primitiveExt(parent, value *Node, key string) *Node {
	switch value.Kind {
	case Object:
		return nil
	case Array:
		if len(value.Kids) == 0 || value.Kids[0].Kind == Object {
			return nil
		}
	}
	for i := len(parent.Keys) - 1; i >= 0; i-- {
		k := parent.Keys[i]
		if len(k) == len(key)+1 && k[0] == '_' && k[1:] == key {
			return &parent.Kids[i]
		}
	}
	return nil
}

// appendValue adds the value (each element of an array) to out; ext is the
// value's _key sibling, an object or an array parallel to the values.
func (v *ev) appendValue(out []Item, n *Node, t string, ext *Node) ([]Item, error) {
	switch n.Kind {
	case Null:
		return out, nil
	case Array:
		if err := v.spend(len(n.Kids)); err != nil {
			return nil, err
		}
		for i := range n.Kids {
			if n.Kids[i].Kind != Null {
				it := Item{N: &n.Kids[i], T: t}
				if ext != nil && ext.Kind == Array && i < len(ext.Kids) && ext.Kids[i].Kind == Object {
					it.X = &ext.Kids[i]
				}
				out = append(out, it)
			}
		}
		return out, nil
	}
	if err := v.spend(1); err != nil {
		return nil, err
	}
	it := Item{N: n, T: t}
	if ext != nil && ext.Kind == Object {
		it.X = ext
	}
	return append(out, it), nil
}

// argEval evaluates a non-lambda argument in the scope of the expression
// that holds the call.
func (v *ev) argEval(a *expr, sc *scope) ([]Item, error) {
	var in []Item
	if sc.this.N != nil {
		in = []Item{sc.this}
	}
	return v.eval(a, in, sc)
}

func (v *ev) argInt(a *expr, sc *scope) (*int64, error) {
	r, err := v.argEval(a, sc)
	if err != nil || len(r) == 0 {
		return nil, err
	}
	if len(r) > 1 || r[0].N.Kind != Number || !isIntegerText(r[0].N.Str) {
		return nil, fmt.Errorf("expected an integer argument")
	}
	i, err := strconv.ParseInt(r[0].N.Str, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("integer argument out of range")
	}
	return &i, nil
}

func (v *ev) argString(a *expr, sc *scope) (*string, error) {
	r, err := v.argEval(a, sc)
	if err != nil || len(r) == 0 {
		return nil, err
	}
	if len(r) > 1 || r[0].N.Kind != String {
		return nil, fmt.Errorf("expected a string argument")
	}
	return &r[0].N.Str, nil
}

// toTri is FHIRPath's singleton evaluation of a collection as a Boolean.
func toTri(c []Item) (tri, error) {
	switch {
	case len(c) == 0:
		return triEmpty, nil
	case len(c) > 1:
		return triEmpty, fmt.Errorf("expected a single boolean, got %d items", len(c))
	case c[0].N.Kind == Bool:
		return triOf(c[0].N.Bool), nil
	}
	return triTrue, nil
}

func triColl(t tri) []Item {
	switch t {
	case triTrue:
		return boolColl(true)
	case triFalse:
		return boolColl(false)
	}
	return nil
}

func (v *ev) binary(e *expr, input []Item, sc *scope) ([]Item, error) {
	left, err := v.eval(e.l, input, sc)
	if err != nil {
		return nil, err
	}
	switch e.op {
	case "and", "or", "xor", "implies":
		l, err := toTri(left)
		if err != nil {
			return nil, err
		}
		// Short cuts that do not need the right side.
		switch {
		case e.op == "and" && l == triFalse:
			return boolColl(false), nil
		case e.op == "or" && l == triTrue:
			return boolColl(true), nil
		case e.op == "implies" && l == triFalse:
			return boolColl(true), nil
		}
		right, err := v.eval(e.r, input, sc)
		if err != nil {
			return nil, err
		}
		r, err := toTri(right)
		if err != nil {
			return nil, err
		}
		return triColl(logic(e.op, l, r)), nil
	}
	right, err := v.eval(e.r, input, sc)
	if err != nil {
		return nil, err
	}
	switch e.op {
	case "|":
		// Dedupe compares pairs: charge for them.
		if err := v.spend(len(left) + len(right) + (len(left)+len(right))*(len(left)+len(right))/16); err != nil {
			return nil, err
		}
		return union(left, right), nil
	case "=", "!=":
		if len(left) == 0 || len(right) == 0 {
			return nil, nil
		}
		t := equalColl(left, right)
		if e.op == "!=" && t != triEmpty {
			t = triOf(t == triFalse)
		}
		return triColl(t), nil
	case "~", "!~":
		eq := equivalentColl(left, right)
		return boolColl(eq == (e.op == "~")), nil
	case "<", "<=", ">", ">=":
		if len(left) == 0 || len(right) == 0 {
			return nil, nil
		}
		if len(left) > 1 || len(right) > 1 {
			return nil, fmt.Errorf("'%s' needs single items, got %d and %d", e.op, len(left), len(right))
		}
		c, ok, err := compareItems(left[0], right[0])
		if err != nil || !ok {
			return nil, err
		}
		switch e.op {
		case "<":
			return boolColl(c < 0), nil
		case "<=":
			return boolColl(c <= 0), nil
		case ">":
			return boolColl(c > 0), nil
		}
		return boolColl(c >= 0), nil
	case "in", "contains":
		elem, coll := left, right
		if e.op == "contains" {
			elem, coll = right, left
		}
		if len(elem) == 0 {
			return nil, nil
		}
		if len(elem) > 1 {
			return nil, fmt.Errorf("'%s' needs a single item", e.op)
		}
		for _, c := range coll {
			if equalItems(elem[0], c) == triTrue {
				return boolColl(true), nil
			}
		}
		return boolColl(false), nil
	case "&":
		var ls, rs string
		if len(left) > 1 || len(right) > 1 {
			return nil, fmt.Errorf("'&' needs single strings")
		}
		if len(left) == 1 {
			ls = stringOf(left[0])
		}
		if len(right) == 1 {
			rs = stringOf(right[0])
		}
		if err := v.spend((len(ls) + len(rs)) / 8); err != nil {
			return nil, err
		}
		return []Item{stringItem(ls+rs, "string")}, nil
	case "+", "-", "*", "/", "div", "mod":
		if len(left) == 0 || len(right) == 0 {
			return nil, nil
		}
		if len(left) > 1 || len(right) > 1 {
			return nil, fmt.Errorf("'%s' needs single items, got %d and %d", e.op, len(left), len(right))
		}
		if e.op == "+" && left[0].N.Kind == String && right[0].N.Kind == String {
			s := left[0].N.Str + right[0].N.Str
			if err := v.spend(len(s) / 8); err != nil {
				return nil, err
			}
			return []Item{stringItem(s, "string")}, nil
		}
		return arith(e.op, left[0], right[0])
	}
	return nil, fmt.Errorf("unknown operator %q", e.op)
}

func logic(op string, l, r tri) tri {
	switch op {
	case "and":
		switch {
		case l == triFalse || r == triFalse:
			return triFalse
		case l == triTrue && r == triTrue:
			return triTrue
		}
		return triEmpty
	case "or":
		switch {
		case l == triTrue || r == triTrue:
			return triTrue
		case l == triFalse && r == triFalse:
			return triFalse
		}
		return triEmpty
	case "xor":
		if l == triEmpty || r == triEmpty {
			return triEmpty
		}
		return triOf(l != r)
	case "implies":
		switch {
		case l == triFalse:
			return triTrue
		case l == triTrue:
			return r
		case r == triTrue:
			return triTrue
		}
		return triEmpty
	}
	return triEmpty
}

func equalColl(a, b []Item) tri {
	if len(a) != len(b) {
		return triFalse
	}
	res := triTrue
	for i := range a {
		switch equalItems(a[i], b[i]) {
		case triFalse:
			return triFalse
		case triEmpty:
			res = triEmpty
		}
	}
	return res
}

func equivalentColl(a, b []Item) bool {
	if len(a) != len(b) {
		return false
	}
	used := make([]bool, len(b))
outer:
	for _, x := range a {
		for j, y := range b {
			if !used[j] && equivalentItems(x, y) {
				used[j] = true
				continue outer
			}
		}
		return false
	}
	return true
}

// contains reports whether coll holds an item equal to it (the same node,
// or an equal value).
func containsItem(coll []Item, it Item) bool {
	for _, c := range coll {
		if c.N == it.N || (c.N.Kind != Object && equalItems(c, it) == triTrue) || (c.N.Kind == Object && deepEqual(c.N, it.N)) {
			return true
		}
	}
	return false
}

func union(a, b []Item) []Item {
	var out []Item
	for _, c := range [][]Item{a, b} {
		for _, it := range c {
			if !containsItem(out, it) {
				out = append(out, it)
			}
		}
	}
	return out
}

func stringOf(it Item) string {
	switch it.N.Kind {
	case String, Number:
		return it.N.Str
	case Bool:
		if it.N.Bool {
			return "true"
		}
		return "false"
	}
	return ""
}

// arith is + - * / div mod on two numbers: integers stay integers (with an
// overflow check), anything else is an exact decimal.
func arith(op string, a, b Item) ([]Item, error) {
	if a.N.Kind != Number || b.N.Kind != Number {
		return nil, fmt.Errorf("'%s' needs numbers, got %s and %s", op, kindName(a), kindName(b))
	}
	if isIntegerText(a.N.Str) && isIntegerText(b.N.Str) && op != "/" {
		x, err1 := strconv.ParseInt(a.N.Str, 10, 64)
		y, err2 := strconv.ParseInt(b.N.Str, 10, 64)
		if err1 == nil && err2 == nil {
			var r int64
			switch op {
			case "+":
				r = x + y
				if (r > x) != (y > 0) {
					return nil, fmt.Errorf("integer overflow")
				}
			case "-":
				r = x - y
				if (r < x) != (y > 0) {
					return nil, fmt.Errorf("integer overflow")
				}
			case "*":
				if x != 0 && y != 0 {
					hi, lo := mulCheck(x, y)
					if !hi {
						return nil, fmt.Errorf("integer overflow")
					}
					r = lo
				}
			case "div", "mod":
				if y == 0 {
					return nil, nil
				}
				if x == math.MinInt64 && y == -1 {
					return nil, fmt.Errorf("integer overflow")
				}
				if op == "div" {
					r = x / y
				} else {
					r = x % y
				}
			}
			return []Item{intItem(r)}, nil
		}
	}
	x, ok1 := toRat(a.N)
	y, ok2 := toRat(b.N)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("invalid number")
	}
	sa, sb := scaleOf(a.N.Str), scaleOf(b.N.Str)
	r := new(big.Rat)
	scale := max(sa, sb)
	switch op {
	case "+":
		r.Add(x, y)
	case "-":
		r.Sub(x, y)
	case "*":
		r.Mul(x, y)
		scale = sa + sb
	case "/", "div", "mod":
		if y.Sign() == 0 {
			return nil, nil
		}
		r.Quo(x, y)
		scale = 8
		switch op {
		case "div":
			q := new(big.Int).Quo(r.Num(), r.Denom())
			return []Item{{N: &Node{Kind: Number, Str: q.String()}, T: "integer"}}, nil
		case "mod":
			q := new(big.Int).Quo(r.Num(), r.Denom())
			r.Sub(x, new(big.Rat).Mul(y, new(big.Rat).SetInt(q)))
			scale = max(sa, sb)
		}
	}
	if scale > 30 {
		scale = 30
	}
	return []Item{{N: &Node{Kind: Number, Str: ratText(r, scale)}, T: "decimal"}}, nil
}

func mulCheck(x, y int64) (ok bool, r int64) {
	r = x * y
	if r/y != x || (x == -1 && y == math.MinInt64) || (y == -1 && x == math.MinInt64) {
		return false, 0
	}
	return true, r
}
