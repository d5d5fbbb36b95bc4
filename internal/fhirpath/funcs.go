package fhirpath

import (
	"fmt"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

type funcDef struct {
	minArgs, maxArgs int
	typeArg          bool // first argument is a type specifier, not an expression
	fn               func(v *ev, input []Item, e *expr, sc *scope) ([]Item, error)
}

func (f *funcDef) arity() string {
	switch {
	case f.minArgs == f.maxArgs && f.maxArgs == 0:
		return "no arguments"
	case f.minArgs == f.maxArgs:
		return fmt.Sprintf("%d argument(s)", f.minArgs)
	}
	return fmt.Sprintf("%d to %d arguments", f.minArgs, f.maxArgs)
}

var functions map[string]*funcDef

// FunctionNames lists the functions the engine implements.
func FunctionNames() []string {
	var out []string
	for name := range functions {
		out = append(out, name)
	}
	return out
}

func init() {
	functions = map[string]*funcDef{
		// Existence
		"empty":  {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) { return boolColl(len(in) == 0), nil }},
		"exists": {0, 1, false, fnExists},
		"all":    {1, 1, false, fnAll},
		"allTrue": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			return boolsAll(in, true)
		}},
		"allFalse": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			return boolsAll(in, false)
		}},
		"anyTrue": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			return boolsAny(in, true)
		}},
		"anyFalse": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			return boolsAny(in, false)
		}},
		"count": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			return []Item{intItem(int64(len(in)))}, nil
		}},
		"distinct": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			if err := v.spend(len(in)); err != nil {
				return nil, err
			}
			return union(in, nil), nil
		}},
		"isDistinct": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			if err := v.spend(len(in)); err != nil {
				return nil, err
			}
			return boolColl(len(union(in, nil)) == len(in)), nil
		}},
		// Filtering and projection
		"where":  {1, 1, false, fnWhere},
		"select": {1, 1, false, fnSelect},
		"repeat": {1, 1, false, fnRepeat},
		"ofType": {1, 1, true, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			out := v.ctx.items(len(in))
			for _, it := range in {
				if isType(it, e.typ) {
					out = append(out, Item{N: it.N, T: typeAfterCast(it, e.typ), X: it.X})
				}
			}
			return out, nil
		}},
		"is": {1, 1, true, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			if len(in) == 0 {
				return nil, nil
			}
			if len(in) > 1 {
				return nil, fmt.Errorf("is() needs a single item")
			}
			return boolColl(isType(in[0], e.typ)), nil
		}},
		"as": {1, 1, true, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			if len(in) > 1 {
				return nil, fmt.Errorf("as() needs a single item")
			}
			if len(in) == 1 && isType(in[0], e.typ) {
				return []Item{{N: in[0].N, T: typeAfterCast(in[0], e.typ), X: in[0].X}}, nil
			}
			return nil, nil
		}},
		// Subsetting
		"first": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			if len(in) == 0 {
				return nil, nil
			}
			return in[:1], nil
		}},
		"last": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			if len(in) == 0 {
				return nil, nil
			}
			return in[len(in)-1:], nil
		}},
		"tail": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			if len(in) <= 1 {
				return nil, nil
			}
			return in[1:], nil
		}},
		"single": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			if len(in) > 1 {
				return nil, fmt.Errorf("single() on %d items", len(in))
			}
			return in, nil
		}},
		"skip": {1, 1, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			n, err := v.argInt(e.args[0], sc)
			if err != nil || n == nil {
				return nil, err
			}
			if *n <= 0 {
				return in, nil
			}
			if *n >= int64(len(in)) {
				return nil, nil
			}
			return in[*n:], nil
		}},
		"take": {1, 1, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			n, err := v.argInt(e.args[0], sc)
			if err != nil || n == nil || *n <= 0 {
				return nil, err
			}
			if *n >= int64(len(in)) {
				return in, nil
			}
			return in[:*n], nil
		}},
		"intersect": {1, 1, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			other, err := v.argEval(e.args[0], sc)
			if err != nil {
				return nil, err
			}
			if err := v.spend(len(in) * (1 + len(other)) / 16); err != nil {
				return nil, err
			}
			var out []Item
			for _, it := range in {
				if containsItem(other, it) && !containsItem(out, it) {
					out = append(out, it)
				}
			}
			return out, nil
		}},
		"exclude": {1, 1, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			other, err := v.argEval(e.args[0], sc)
			if err != nil {
				return nil, err
			}
			if err := v.spend(len(in) * (1 + len(other)) / 16); err != nil {
				return nil, err
			}
			var out []Item
			for _, it := range in {
				if !containsItem(other, it) {
					out = append(out, it)
				}
			}
			return out, nil
		}},
		// Combining
		"union": {1, 1, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			other, err := v.argEval(e.args[0], sc)
			if err != nil {
				return nil, err
			}
			if err := v.spend(len(in) + len(other)); err != nil {
				return nil, err
			}
			return union(in, other), nil
		}},
		"combine": {1, 1, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			other, err := v.argEval(e.args[0], sc)
			if err != nil {
				return nil, err
			}
			if err := v.spend(len(other)); err != nil {
				return nil, err
			}
			return append(append([]Item(nil), in...), other...), nil
		}},
		// Conversion and utility
		"iif": {2, 3, false, fnIif},
		"not": {0, 0, false, fnNot},
		"hasValue": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			return boolColl(len(in) == 1 && in[0].N.Kind != Object && in[0].N.Kind != Array), nil
		}},
		"trace": {1, 2, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) { return in, nil }},
		"toString": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			it, err := single(in, "toString")
			if err != nil || it == nil || it.N.Kind == Object || it.N.Kind == Array {
				return nil, err
			}
			return []Item{stringItem(stringOf(*it), "string")}, nil
		}},
		"toInteger":         {0, 0, false, fnToInteger},
		"toDecimal":         {0, 0, false, fnToDecimal},
		"toBoolean":         {0, 0, false, fnToBoolean},
		"convertsToInteger": {0, 0, false, convertsTo(fnToInteger)},
		"convertsToDecimal": {0, 0, false, convertsTo(fnToDecimal)},
		"convertsToBoolean": {0, 0, false, convertsTo(fnToBoolean)},
		"convertsToString": {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			it, err := single(in, "convertsToString")
			if err != nil || it == nil {
				return nil, err
			}
			return boolColl(it.N.Kind != Object && it.N.Kind != Array), nil
		}},
		// Strings
		"length": {0, 0, false, strFn(func(s string, v *ev, e *expr, sc *scope) ([]Item, error) {
			return []Item{intItem(int64(utf8.RuneCountInString(s)))}, nil
		})},
		"upper": {0, 0, false, strFn(func(s string, v *ev, e *expr, sc *scope) ([]Item, error) {
			return []Item{stringItem(strings.ToUpper(s), "string")}, nil
		})},
		"lower": {0, 0, false, strFn(func(s string, v *ev, e *expr, sc *scope) ([]Item, error) {
			return []Item{stringItem(strings.ToLower(s), "string")}, nil
		})},
		"trim": {0, 0, false, strFn(func(s string, v *ev, e *expr, sc *scope) ([]Item, error) {
			return []Item{stringItem(strings.TrimSpace(s), "string")}, nil
		})},
		"toChars": {0, 0, false, strFn(func(s string, v *ev, e *expr, sc *scope) ([]Item, error) {
			if err := v.spend(len(s)); err != nil {
				return nil, err
			}
			var out []Item
			for _, r := range s {
				out = append(out, stringItem(string(r), "string"))
			}
			return out, nil
		})},
		"startsWith": {1, 1, false, strArgFn(func(s, a string) []Item { return boolColl(strings.HasPrefix(s, a)) })},
		"endsWith":   {1, 1, false, strArgFn(func(s, a string) []Item { return boolColl(strings.HasSuffix(s, a)) })},
		"contains":   {1, 1, false, strArgFn(func(s, a string) []Item { return boolColl(strings.Contains(s, a)) })},
		"indexOf": {1, 1, false, strArgFn(func(s, a string) []Item {
			i := strings.Index(s, a)
			if i > 0 {
				i = utf8.RuneCountInString(s[:i])
			}
			return []Item{intItem(int64(i))}
		})},
		"substring": {1, 2, false, fnSubstring},
		"replace":   {2, 2, false, fnReplace},
		"split": {1, 1, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			s, err := singleString(in, "split")
			if err != nil || s == nil {
				return nil, err
			}
			sep, err := v.argString(e.args[0], sc)
			if err != nil || sep == nil {
				return nil, err
			}
			parts := strings.Split(*s, *sep)
			if err := v.spend(len(parts)); err != nil {
				return nil, err
			}
			out := make([]Item, len(parts))
			for i, p := range parts {
				out[i] = stringItem(p, "string")
			}
			return out, nil
		}},
		"join": {0, 1, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
			sep := ""
			if len(e.args) == 1 {
				s, err := v.argString(e.args[0], sc)
				if err != nil {
					return nil, err
				}
				if s != nil {
					sep = *s
				}
			}
			parts := make([]string, 0, len(in))
			for _, it := range in {
				if it.N.Kind == Object || it.N.Kind == Array {
					return nil, fmt.Errorf("join() needs strings, got %s", kindName(it))
				}
				parts = append(parts, stringOf(it))
			}
			s := strings.Join(parts, sep)
			if err := v.spend(len(s) / 8); err != nil {
				return nil, err
			}
			return []Item{stringItem(s, "string")}, nil
		}},
		"matches":        {1, 1, false, fnMatches},
		"replaceMatches": {2, 2, false, fnReplaceMatches},
		// Math
		"abs":      {0, 0, false, mathFn("abs")},
		"ceiling":  {0, 0, false, mathFn("ceiling")},
		"floor":    {0, 0, false, mathFn("floor")},
		"truncate": {0, 0, false, mathFn("truncate")},
		"round":    {0, 1, false, fnRound},
		// Tree navigation
		"children":    {0, 0, false, func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) { return v.children(in) }},
		"descendants": {0, 0, false, fnDescendants},
		// FHIR and SQL on FHIR
		"extension":       {1, 1, false, fnExtension},
		"getResourceKey":  {0, 0, false, fnResourceKey},
		"getReferenceKey": {0, 1, true, fnReferenceKey},
		"lowBoundary":     {0, 1, false, boundaryFn(false)},
		"highBoundary":    {0, 1, false, boundaryFn(true)},
	}
}

// typeAfterCast keeps the narrower known type when an item passes ofType().
func typeAfterCast(it Item, spec string) string {
	if it.T != "" {
		return it.T
	}
	t := normType(spec)
	if primitiveTypes[t] || complexTypes[t] {
		return t
	}
	return ""
}

// lambda evaluates an expression argument once per input item, with $this
// and $index bound.
func (v *ev) lambda(in []Item, a *expr, sc *scope, f func(i int, it Item, r []Item) (stop bool, err error)) error {
	// One focus slice and one scope serve every item: each result is
	// consumed by f before the next evaluation.
	focus := v.ctx.items(1)[:1]
	s := v.ctx.scope()
	s.total = sc.total
	for i, it := range in {
		focus[0], s.this, s.index = it, it, i
		r, err := v.eval(a, focus, s)
		if err != nil {
			return err
		}
		stop, err := f(i, it, r)
		if err != nil || stop {
			return err
		}
	}
	return nil
}

func fnWhere(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	out := v.ctx.items(len(in)) // at most all of them: never regrown
	err := v.lambda(in, e.args[0], sc, func(_ int, it Item, r []Item) (bool, error) {
		t, err := toTri(r)
		if err != nil {
			return true, fmt.Errorf("where(): %w", err)
		}
		if t == triTrue {
			out = append(out, it)
		}
		return false, nil
	})
	return out, err
}

func fnSelect(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	var out []Item
	err := v.lambda(in, e.args[0], sc, func(_ int, _ Item, r []Item) (bool, error) {
		out = append(out, r...)
		return false, v.spend(len(r))
	})
	return out, err
}

func fnExists(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	if len(e.args) == 0 {
		return boolColl(len(in) > 0), nil
	}
	found := false
	err := v.lambda(in, e.args[0], sc, func(_ int, _ Item, r []Item) (bool, error) {
		t, err := toTri(r)
		if err != nil {
			return true, fmt.Errorf("exists(): %w", err)
		}
		found = t == triTrue
		return found, nil
	})
	return boolColl(found), err
}

func fnAll(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	all := true
	err := v.lambda(in, e.args[0], sc, func(_ int, _ Item, r []Item) (bool, error) {
		t, err := toTri(r)
		if err != nil {
			return true, fmt.Errorf("all(): %w", err)
		}
		all = t == triTrue
		return !all, nil
	})
	return boolColl(all), err
}

// fnRepeat applies the projection to the input, then to each new result,
// until nothing new appears. A JSON tree has no cycles, but an expression
// can produce values forever (repeat($this & 'x')); the work budget stops it.
func fnRepeat(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	var out []Item
	seen := map[any]bool{}
	queue := in
	for len(queue) > 0 {
		var next []Item
		err := v.lambda(queue, e.args[0], sc, func(_ int, _ Item, r []Item) (bool, error) {
			if err := v.spend(len(r)); err != nil {
				return true, err
			}
			for _, it := range r {
				k := itemKey(it)
				if !seen[k] {
					seen[k] = true
					out = append(out, it)
					next = append(next, it)
				}
			}
			return false, nil
		})
		if err != nil {
			return nil, err
		}
		queue = next
	}
	return out, nil
}

// itemKey identifies an item for repeat()'s "already seen": a node of the
// resource by identity, a primitive by its value.
func itemKey(it Item) any {
	switch it.N.Kind {
	case Object, Array:
		return it.N
	case Number:
		if r, ok := toRat(it.N); ok {
			return "n" + r.RatString()
		}
	case Bool:
		if it.N.Bool {
			return "btrue"
		}
		return "bfalse"
	}
	return "s" + it.N.Str
}

func boolsAll(in []Item, want bool) ([]Item, error) {
	for _, it := range in {
		if it.N.Kind != Bool {
			return nil, fmt.Errorf("expected booleans, got %s", kindName(it))
		}
		if it.N.Bool != want {
			return boolColl(false), nil
		}
	}
	return boolColl(true), nil
}

func boolsAny(in []Item, want bool) ([]Item, error) {
	for _, it := range in {
		if it.N.Kind != Bool {
			return nil, fmt.Errorf("expected booleans, got %s", kindName(it))
		}
		if it.N.Bool == want {
			return boolColl(true), nil
		}
	}
	return boolColl(false), nil
}

func fnIif(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	s := sc
	if len(in) == 1 {
		s = &scope{this: in[0], total: sc.total}
	}
	c, err := v.argEval(e.args[0], s)
	if err != nil {
		return nil, err
	}
	t, err := toTri(c)
	if err != nil {
		return nil, fmt.Errorf("iif(): %w", err)
	}
	if t == triTrue {
		return v.argEval(e.args[1], s)
	}
	if len(e.args) == 3 {
		return v.argEval(e.args[2], s)
	}
	return nil, nil
}

func fnNot(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	t, err := toTri(in)
	if err != nil {
		return nil, fmt.Errorf("not(): %w", err)
	}
	switch t {
	case triTrue:
		return boolColl(false), nil
	case triFalse:
		return boolColl(true), nil
	}
	return nil, nil
}

func single(in []Item, fn string) (*Item, error) {
	switch len(in) {
	case 0:
		return nil, nil
	case 1:
		return &in[0], nil
	}
	return nil, fmt.Errorf("%s() needs a single item, got %d", fn, len(in))
}

func singleString(in []Item, fn string) (*string, error) {
	it, err := single(in, fn)
	if err != nil || it == nil {
		return nil, err
	}
	if it.N.Kind != String {
		return nil, fmt.Errorf("%s() needs a string, got %s", fn, kindName(*it))
	}
	return &it.N.Str, nil
}

func fnToInteger(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	it, err := single(in, "toInteger")
	if err != nil || it == nil {
		return nil, err
	}
	switch it.N.Kind {
	case Bool:
		if it.N.Bool {
			return []Item{intItem(1)}, nil
		}
		return []Item{intItem(0)}, nil
	case Number, String:
		if i, err := strconv.ParseInt(strings.TrimPrefix(it.N.Str, "+"), 10, 64); err == nil {
			return []Item{intItem(i)}, nil
		}
	}
	return nil, nil
}

func fnToDecimal(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	it, err := single(in, "toDecimal")
	if err != nil || it == nil {
		return nil, err
	}
	switch it.N.Kind {
	case Bool:
		s := "0.0"
		if it.N.Bool {
			s = "1.0"
		}
		return []Item{{N: &Node{Kind: Number, Str: s}, T: "decimal"}}, nil
	case Number:
		return []Item{{N: it.N, T: "decimal"}}, nil
	case String:
		s := strings.TrimPrefix(it.N.Str, "+")
		if _, err := ParseJSON([]byte(s)); err == nil && len(s) > 0 && (s[0] == '-' || (s[0] >= '0' && s[0] <= '9')) && !strings.ContainsAny(s, "eE") {
			return []Item{{N: &Node{Kind: Number, Str: s}, T: "decimal"}}, nil
		}
	}
	return nil, nil
}

func fnToBoolean(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	it, err := single(in, "toBoolean")
	if err != nil || it == nil {
		return nil, err
	}
	switch it.N.Kind {
	case Bool:
		return []Item{boolItem(it.N.Bool)}, nil
	case Number:
		if r, ok := toRat(it.N); ok {
			switch {
			case r.Cmp(big.NewRat(1, 1)) == 0:
				return boolColl(true), nil
			case r.Sign() == 0:
				return boolColl(false), nil
			}
		}
	case String:
		switch strings.ToLower(it.N.Str) {
		case "true", "t", "yes", "y", "1", "1.0":
			return boolColl(true), nil
		case "false", "f", "no", "n", "0", "0.0":
			return boolColl(false), nil
		}
	}
	return nil, nil
}

func convertsTo(conv func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error)) func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	return func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
		if len(in) == 0 {
			return nil, nil
		}
		r, err := conv(v, in, e, sc)
		if err != nil {
			return nil, err
		}
		return boolColl(len(r) == 1), nil
	}
}

func strFn(f func(s string, v *ev, e *expr, sc *scope) ([]Item, error)) func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	return func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
		s, err := singleString(in, e.name)
		if err != nil || s == nil {
			return nil, err
		}
		return f(*s, v, e, sc)
	}
}

func strArgFn(f func(s, arg string) []Item) func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	return func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
		s, err := singleString(in, e.name)
		if err != nil || s == nil {
			return nil, err
		}
		a, err := v.argString(e.args[0], sc)
		if err != nil || a == nil {
			return nil, err
		}
		return f(*s, *a), nil
	}
}

func fnSubstring(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	s, err := singleString(in, "substring")
	if err != nil || s == nil {
		return nil, err
	}
	start, err := v.argInt(e.args[0], sc)
	if err != nil || start == nil {
		return nil, err
	}
	runes := []rune(*s)
	if *start < 0 || *start >= int64(len(runes)) {
		return nil, nil
	}
	end := int64(len(runes))
	if len(e.args) == 2 {
		n, err := v.argInt(e.args[1], sc)
		if err != nil {
			return nil, err
		}
		if n != nil {
			if *n <= 0 {
				return []Item{stringItem("", "string")}, nil
			}
			if *n < end-*start {
				end = *start + *n
			}
		}
	}
	return []Item{stringItem(string(runes[*start:end]), "string")}, nil
}

func fnReplace(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	s, err := singleString(in, "replace")
	if err != nil || s == nil {
		return nil, err
	}
	pat, err := v.argString(e.args[0], sc)
	if err != nil || pat == nil {
		return nil, err
	}
	rep, err := v.argString(e.args[1], sc)
	if err != nil || rep == nil {
		return nil, err
	}
	n := strings.Count(*s, *pat)
	if *pat == "" {
		n = len(*s) + 1
	}
	if err := v.spend(n * (len(*rep) + 1) / 8); err != nil {
		return nil, err
	}
	return []Item{stringItem(strings.ReplaceAll(*s, *pat, *rep), "string")}, nil
}

// Compiled regular expressions, shared by all evaluations. Go's RE2 engine
// runs in linear time, so a hostile pattern cannot backtrack forever; the
// cache is bounded so that patterns taken from data cannot grow it.
var (
	regexMu    sync.Mutex
	regexCache = map[string]*regexp.Regexp{}
)

const maxRegexLen = 4096

func compileRegex(p string) (*regexp.Regexp, error) {
	if len(p) > maxRegexLen {
		return nil, fmt.Errorf("regular expression longer than %d bytes", maxRegexLen)
	}
	regexMu.Lock()
	re, ok := regexCache[p]
	regexMu.Unlock()
	if ok {
		return re, nil
	}
	p = strings.Clone(p) // it outlives the resource, whose text may be reused (Decoder.DecodeInPlace)
	re, err := regexp.Compile(p)
	if err != nil {
		return nil, fmt.Errorf("invalid regular expression: %w", err)
	}
	regexMu.Lock()
	if len(regexCache) < 256 {
		regexCache[p] = re
	}
	regexMu.Unlock()
	return re, nil
}

func fnMatches(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	s, err := singleString(in, "matches")
	if err != nil || s == nil {
		return nil, err
	}
	p, err := v.argString(e.args[0], sc)
	if err != nil || p == nil {
		return nil, err
	}
	// FHIRPath's matches() is anchored-free but (s) flag: '.' matches newlines.
	re, err := compileRegex("(?s)" + *p)
	if err != nil {
		return nil, err
	}
	return boolColl(re.MatchString(*s)), nil
}

func fnReplaceMatches(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	s, err := singleString(in, "replaceMatches")
	if err != nil || s == nil {
		return nil, err
	}
	p, err := v.argString(e.args[0], sc)
	if err != nil || p == nil {
		return nil, err
	}
	rep, err := v.argString(e.args[1], sc)
	if err != nil || rep == nil {
		return nil, err
	}
	re, err := compileRegex("(?s)" + *p)
	if err != nil {
		return nil, err
	}
	out := re.ReplaceAllString(*s, *rep)
	if err := v.spend(len(out) / 8); err != nil {
		return nil, err
	}
	return []Item{stringItem(out, "string")}, nil
}

func mathFn(op string) func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	return func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
		it, err := single(in, op)
		if err != nil || it == nil {
			return nil, err
		}
		if it.N.Kind != Number {
			return nil, fmt.Errorf("%s() needs a number, got %s", op, kindName(*it))
		}
		r, ok := toRat(it.N)
		if !ok {
			return nil, fmt.Errorf("invalid number")
		}
		if op == "abs" {
			s := strings.TrimPrefix(it.N.Str, "-")
			return []Item{{N: &Node{Kind: Number, Str: s}, T: it.Type()}}, nil
		}
		q := new(big.Int).Quo(r.Num(), r.Denom()) // truncates toward zero
		if !r.IsInt() {
			switch {
			case op == "floor" && r.Sign() < 0:
				q.Sub(q, big.NewInt(1))
			case op == "ceiling" && r.Sign() > 0:
				q.Add(q, big.NewInt(1))
			}
		}
		return []Item{{N: &Node{Kind: Number, Str: q.String()}, T: "integer"}}, nil
	}
}

func fnRound(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	it, err := single(in, "round")
	if err != nil || it == nil {
		return nil, err
	}
	if it.N.Kind != Number {
		return nil, fmt.Errorf("round() needs a number")
	}
	prec := int64(0)
	if len(e.args) == 1 {
		p, err := v.argInt(e.args[0], sc)
		if err != nil || p == nil {
			return nil, err
		}
		if *p < 0 || *p > 28 {
			return nil, fmt.Errorf("round() precision out of range")
		}
		prec = *p
	}
	r, ok := toRat(it.N)
	if !ok {
		return nil, fmt.Errorf("invalid number")
	}
	return []Item{{N: &Node{Kind: Number, Str: r.FloatString(int(prec))}, T: "decimal"}}, nil
}

func (v *ev) children(in []Item) ([]Item, error) {
	var out []Item
	for _, it := range in {
		if it.N.Kind != Object {
			continue
		}
		for i, k := range it.N.Keys {
			if k == "resourceType" {
				continue
			}
			t := ""
			var err error
			if out, err = v.appendValue(out, &it.N.Kids[i], t, nil); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func fnDescendants(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	var out []Item
	queue := in
	for len(queue) > 0 {
		next, err := v.children(queue)
		if err != nil {
			return nil, err
		}
		out = append(out, next...)
		queue = next
	}
	return out, nil
}

func fnExtension(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	url, err := v.argString(e.args[0], sc)
	if err != nil || url == nil {
		return nil, err
	}
	var out []Item
	for _, it := range in {
		holder := it.N
		if holder.Kind != Object {
			holder = it.X // a primitive's extensions
		}
		ext := holder.Get("extension")
		if ext == nil || ext.Kind != Array {
			continue
		}
		for i := range ext.Kids {
			x := &ext.Kids[i]
			if u := x.Get("url"); u != nil && u.Kind == String && u.Str == *url {
				if err := v.spend(1); err != nil {
					return nil, err
				}
				out = append(out, Item{N: x, T: "Extension"})
			}
		}
	}
	return out, nil
}

// ResourceKey is the key getResourceKey() gives a resource: "Type/id", the
// same text as the relative reference that points at it, so that keys from
// different views join and do not collide across resource types.
func ResourceKey(n *Node) (string, bool) {
	rt, id := n.Get("resourceType"), n.Get("id")
	if rt == nil || id == nil || rt.Kind != String || id.Kind != String || rt.Str == "" || id.Str == "" {
		return "", false
	}
	return rt.Str + "/" + id.Str, true
}

// ReferenceKey is the key getReferenceKey() gives a Reference.reference: the
// "Type/id" of a relative or absolute literal reference (a version suffix
// /_history/n is dropped). Contained (#id), logical (identifier only),
// urn:uuid and other forms have no key.
func ReferenceKey(ref string) (typ, key string, ok bool) {
	if ref == "" || strings.HasPrefix(ref, "#") || strings.HasPrefix(ref, "urn:") {
		return "", "", false
	}
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.IndexAny(ref, "?#"); i >= 0 {
		return "", "", false
	}
	// The last two segments, and the key is the text they span (no copy).
	i := strings.LastIndexByte(ref, '/')
	if i < 0 {
		return "", "", false
	}
	j := strings.LastIndexByte(ref[:i], '/')
	typ, id := ref[j+1:i], ref[i+1:]
	if !validResourceType(typ) || !validID(id) {
		return "", "", false
	}
	return typ, ref[j+1:], true
}

func validResourceType(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func validID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func fnResourceKey(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	var out []Item
	for _, it := range in {
		if k, ok := ResourceKey(it.N); ok {
			out = append(out, v.ctx.stringItem(k, "string"))
		}
	}
	return out, nil
}

func fnReferenceKey(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	var out []Item
	want := normType(e.typ)
	for _, it := range in {
		ref := it.N.Get("reference")
		if ref == nil || ref.Kind != String {
			continue
		}
		typ, key, ok := ReferenceKey(ref.Str)
		if !ok || (want != "" && typ != want) {
			continue
		}
		out = append(out, v.ctx.stringItem(key, "string"))
	}
	return out, nil
}

func boundaryFn(high bool) func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
	name := "lowBoundary"
	if high {
		name = "highBoundary"
	}
	return func(v *ev, in []Item, e *expr, sc *scope) ([]Item, error) {
		it, err := single(in, name)
		if err != nil || it == nil {
			return nil, err
		}
		var prec *int64
		if len(e.args) == 1 {
			if prec, err = v.argInt(e.args[0], sc); err != nil {
				return nil, err
			}
			if prec != nil && (*prec < 0 || *prec > 28) {
				return nil, nil
			}
		}
		switch it.N.Kind {
		case Number:
			return decimalBoundary(it.N.Str, prec, high)
		case String:
			t, ok := asTemporal(*it)
			if !ok {
				return nil, nil
			}
			return []Item{stringItem(t.boundary(high), t.kind)}, nil
		case Object:
			if it.Type() != "Period" && it.N.Get("start") == nil && it.N.Get("end") == nil {
				return nil, nil
			}
			// A Period's boundaries are its start's lowest and its end's
			// highest instant; an open end has none.
			key := "start"
			if high {
				key = "end"
			}
			n := it.N.Get(key)
			if n == nil || n.Kind != String {
				return nil, nil
			}
			t, ok := parseTemporal(n.Str, "dateTime")
			if !ok {
				return nil, nil
			}
			return []Item{stringItem(t.boundary(high), "dateTime")}, nil
		}
		return nil, nil
	}
}

// decimalBoundary: a decimal written with s digits after the point stands
// for everything within half a unit of its last digit (1.0 -> 0.95..1.05).
func decimalBoundary(text string, prec *int64, high bool) ([]Item, error) {
	r, ok := parseRat(text)
	if !ok {
		return nil, fmt.Errorf("invalid number")
	}
	scale := scaleOf(text)
	half := new(big.Rat).SetFrac(big.NewInt(5), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale+1)), nil))
	if high {
		r.Add(r, half)
	} else {
		r.Sub(r, half)
	}
	if prec == nil {
		return []Item{{N: &Node{Kind: Number, Str: r.FloatString(scale + 1)}, T: "decimal"}}, nil
	}
	p := int(*prec)
	pow := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(p)), nil)
	scaled := new(big.Rat).Mul(r, new(big.Rat).SetInt(pow))
	q, m := new(big.Int).DivMod(scaled.Num(), scaled.Denom(), new(big.Int)) // floor for positive denominators
	if high && m.Sign() != 0 {
		q.Add(q, big.NewInt(1))
	}
	out := new(big.Rat).SetFrac(q, pow)
	return []Item{{N: &Node{Kind: Number, Str: out.FloatString(p)}, T: "decimal"}}, nil
}
