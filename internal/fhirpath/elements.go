package fhirpath

import "strings"

// Elements reports which top-level elements of the resource the expression
// can read, so that a decoder may skip the others (Decoder.DecodeProjected).
// names are the element names the expression navigates by, at any depth (a
// superset of the top-level ones it needs); all is true when the
// expression may see the resource as a whole (children(), descendants(),
// $this, %resource, a function applied straight to the resource, ...), in
// which case nothing may be skipped. The analysis is deliberately
// conservative: an expression it cannot vouch for asks for all.
func (e *Expr) Elements() (names []string, all bool) {
	a := elemAnalysis{}
	a.start(e.root)
	if a.all {
		return nil, true
	}
	return a.names, false
}

type elemAnalysis struct {
	names []string
	all   bool
}

func (a *elemAnalysis) add(name string) {
	for _, n := range a.names {
		if n == name {
			return
		}
	}
	a.names = append(a.names, name)
}

// valueFuncs never return (part of) their input items, so they are safe
// straight on the resource.
var valueFuncs = map[string]bool{
	"exists": true, "empty": true, "count": true, "getResourceKey": true,
	"extension": true, "hasValue": true,
}

// start visits an expression evaluated on the resource or on $this: what it
// begins with must not hand the resource itself on.
func (a *elemAnalysis) start(e *expr) {
	if e == nil || a.all {
		return
	}
	switch e.kind {
	case eDot:
		a.start(e.l)
		a.chain(e.r)
	case eMember:
		if e.name == "" || (e.name[0] >= 'A' && e.name[0] <= 'Z') {
			a.all = true // a type name at the root is the resource itself
			return
		}
		a.add(e.name)
	case eFunc:
		if !valueFuncs[e.name] {
			a.all = true
			return
		}
		a.chain(e)
	case eLiteral, eEmpty, eIndex:
	case eConst:
		switch e.name {
		case "resource", "rootResource", "context":
			a.all = true
		}
	case eIndexer:
		a.start(e.l)
		a.start(e.r)
	case eUnary, eIs, eAs:
		a.start(e.l)
	case eBinary:
		a.start(e.l)
		a.start(e.r)
	default: // $this, $total, anything new
		a.all = true
	}
}

// chain visits the right side of a dot: it works on what its left side
// gave, not on the resource, but its arguments start afresh.
func (a *elemAnalysis) chain(e *expr) {
	if e == nil || a.all {
		return
	}
	switch e.kind {
	case eMember:
		a.add(e.name)
	case eFunc:
		switch e.name {
		case "children", "descendants", "trace":
			a.all = true
			return
		case "extension":
			a.add("extension")
		}
		for _, arg := range e.args {
			a.start(arg)
		}
	default:
		a.start(e)
	}
}

// KeepElement reports whether a top-level key of a resource must be decoded
// for expressions that navigate by names: resourceType and id always (the
// resource's key), a name itself, its choice forms (value -> valueQuantity)
// and the _name siblings that carry a primitive's extensions.
func KeepElement(names []string, key string) bool {
	if key == "resourceType" || key == "id" {
		return true
	}
	k := strings.TrimPrefix(key, "_")
	for _, n := range names {
		if strings.HasPrefix(k, n) {
			return true
		}
	}
	return false
}
