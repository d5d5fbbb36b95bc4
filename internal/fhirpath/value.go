package fhirpath

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// Item is one element of a FHIRPath collection: a node of the resource (or a
// computed value) and its FHIR type when known. Without a StructureDefinition
// model the type is known from a choice element's suffix (valueQuantity is a
// Quantity), from a constant's declared type, or from a function's result;
// otherwise it is inferred from the JSON (see Type).
type Item struct {
	N *Node
	T string
	X *Node // a primitive's _name sibling (its id and extensions), or nil
}

// Type returns the FHIR type name of the item: its known type, else the one
// its JSON implies (boolean, string, integer, decimal, a resource type).
func (it Item) Type() string {
	if it.T != "" {
		return it.T
	}
	switch it.N.Kind {
	case Bool:
		return "boolean"
	case String:
		return "string"
	case Number:
		if isIntegerText(it.N.Str) {
			return "integer"
		}
		return "decimal"
	case Object:
		if rt := it.N.Get("resourceType"); rt != nil && rt.Kind == String {
			return rt.Str
		}
	}
	return ""
}

func isIntegerText(s string) bool {
	return !strings.ContainsAny(s, ".eE")
}

func stringItem(s, typ string) Item { return Item{N: &Node{Kind: String, Str: s}, T: typ} }

var (
	trueNode  = &Node{Kind: Bool, Bool: true}
	falseNode = &Node{Kind: Bool}
)

func boolItem(b bool) Item {
	if b {
		return Item{N: trueNode, T: "boolean"}
	}
	return Item{N: falseNode, T: "boolean"}
}

func intItem(v int64) Item {
	return Item{N: &Node{Kind: Number, Str: strconv.FormatInt(v, 10)}, T: "integer"}
}

// Shared single-item results. Collections returned by the evaluator are
// read-only: every function builds a new slice rather than writing into its
// input.
var (
	collTrue  = []Item{boolItem(true)}
	collFalse = []Item{boolItem(false)}
)

func boolColl(b bool) []Item {
	if b {
		return collTrue
	}
	return collFalse
}

// FHIR primitive types, by the name used in choice suffixes (lower-cased
// first letter) and ofType().
var primitiveTypes = map[string]bool{
	"boolean": true, "integer": true, "integer64": true, "string": true, "decimal": true,
	"uri": true, "url": true, "canonical": true, "base64Binary": true, "instant": true,
	"date": true, "dateTime": true, "time": true, "code": true, "oid": true, "id": true,
	"markdown": true, "unsignedInt": true, "positiveInt": true, "uuid": true, "xhtml": true,
}

// complexTypes are the FHIR R4/R5 data types a choice element can carry; a
// key like valueSet is an ordinary element, not value[x] of type "Set".
var complexTypes = map[string]bool{
	"Address": true, "Age": true, "Annotation": true, "Attachment": true,
	"CodeableConcept": true, "CodeableReference": true, "Coding": true, "ContactDetail": true,
	"ContactPoint": true, "Contributor": true, "Count": true, "DataRequirement": true,
	"Distance": true, "Dosage": true, "Duration": true, "Expression": true,
	"ExtendedContactDetail": true, "Extension": true, "HumanName": true, "Identifier": true,
	"Meta": true, "Money": true, "MoneyQuantity": true, "ParameterDefinition": true,
	"Period": true, "Quantity": true, "Range": true, "Ratio": true, "RatioRange": true,
	"Reference": true, "RelatedArtifact": true, "SampledData": true, "Signature": true,
	"SimpleQuantity": true, "Timing": true, "TriggerDefinition": true, "UsageContext": true,
	"Availability": true, "MonetaryComponent": true, "VirtualServiceDetail": true,
}

// choiceType returns the FHIR type named by a choice suffix ("Quantity",
// "DateTime"), or "" when the suffix names no type.
func choiceType(suffix string) string {
	if suffix == "" || suffix[0] < 'A' || suffix[0] > 'Z' {
		return ""
	}
	if complexTypes[suffix] {
		return suffix
	}
	lower := strings.ToLower(suffix[:1]) + suffix[1:]
	if primitiveTypes[lower] {
		return lower
	}
	return ""
}

// parentType gives the FHIR base type of specialised primitives, so that
// ofType(string) also keeps codes and ofType(uri) keeps urls.
var parentType = map[string]string{
	"code": "string", "id": "string", "markdown": "string",
	"url": "uri", "canonical": "uri", "oid": "uri", "uuid": "uri",
	"positiveInt": "integer", "unsignedInt": "integer",
	"SimpleQuantity": "Quantity", "MoneyQuantity": "Quantity",
	"Age": "Quantity", "Count": "Quantity", "Distance": "Quantity", "Duration": "Quantity",
}

// normType maps a type specifier (FHIR.string, System.String, string) to the
// FHIR type name Items carry.
func normType(spec string) string {
	switch {
	case strings.HasPrefix(spec, "FHIR."):
		return spec[5:]
	case strings.HasPrefix(spec, "System."):
		switch spec[7:] {
		case "Boolean":
			return "boolean"
		case "String":
			return "string"
		case "Integer":
			return "integer"
		case "Long":
			return "integer64"
		case "Decimal":
			return "decimal"
		case "Date":
			return "date"
		case "DateTime":
			return "dateTime"
		case "Time":
			return "time"
		case "Quantity":
			return "Quantity"
		}
		return spec[7:]
	}
	return spec
}

var stringFamily = map[string]bool{
	"string": true, "code": true, "id": true, "markdown": true, "uri": true, "url": true,
	"canonical": true, "oid": true, "uuid": true, "base64Binary": true, "xhtml": true,
}

// isType reports whether the item is of type want or a specialisation of it.
func isType(it Item, want string) bool {
	want = normType(want)
	t := it.Type()
	for t != "" {
		if t == want {
			return true
		}
		t = parentType[t]
	}
	if it.N.Kind == Object && it.T == "" && (want == "Resource" || want == "DomainResource") {
		return it.N.Get("resourceType") != nil
	}
	if it.T != "" {
		return false
	}
	// Untyped JSON: a string may stand for any string-like or temporal
	// primitive whose form it has, a number for decimal.
	switch it.N.Kind {
	case String:
		if stringFamily[want] {
			return true
		}
		switch want {
		case "date", "dateTime", "time", "instant":
			_, ok := parseTemporal(it.N.Str, want)
			return ok
		}
	case Number:
		return want == "decimal"
	}
	return false
}

// isTemporalType reports whether t is a date/time type.
func isTemporalType(t string) bool {
	return t == "date" || t == "dateTime" || t == "instant" || t == "time"
}

func toRat(n *Node) (*big.Rat, bool) { return parseRat(n.Str) }

// Bounds on a number's text before big.Rat sees it: 1e999999999 in a
// hostile resource would otherwise cost a billion-digit power of ten.
const (
	maxNumberLen = 400
	maxExponent  = 400
)

// parseRat parses a JSON or FHIRPath number exactly, refusing texts whose
// size or exponent no real decimal has.
func parseRat(s string) (*big.Rat, bool) {
	if len(s) > maxNumberLen {
		return nil, false
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		exp, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil || exp > maxExponent || exp < -maxExponent {
			return nil, false
		}
	}
	return new(big.Rat).SetString(s)
}

// scaleOf returns the number of digits after the decimal point of a literal.
func scaleOf(s string) int {
	if strings.ContainsAny(s, "eE") {
		r, ok := parseRat(s)
		if !ok {
			return 0
		}
		for i := 0; i < 30; i++ {
			if r.IsInt() {
				return i
			}
			r.Mul(r, big.NewRat(10, 1))
		}
		return 30
	}
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return len(s) - i - 1
	}
	return 0
}

func ratText(r *big.Rat, scale int) string {
	if r.IsInt() {
		return r.Num().String()
	}
	return trimZeros(r.FloatString(scale))
}

func trimZeros(s string) string {
	if !strings.Contains(s, ".") {
		return s
	}
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// tri is a three-valued boolean.
type tri int8

const (
	triEmpty tri = iota
	triFalse
	triTrue
)

func triOf(b bool) tri {
	if b {
		return triTrue
	}
	return triFalse
}

// equalItems is FHIRPath '=' on two single items.
func equalItems(a, b Item) tri {
	if isTemporalType(a.Type()) || isTemporalType(b.Type()) {
		c, ok, err := compareTemporalItems(a, b)
		if err != nil {
			return triFalse
		}
		if !ok {
			return triEmpty
		}
		return triOf(c == 0)
	}
	return triOf(deepEqual(a.N, b.N))
}

// asTemporal reads an item as a date, dateTime or time: by its type when
// known, else by its form.
func asTemporal(it Item) (temporal, bool) {
	if it.N.Kind != String {
		return temporal{}, false
	}
	if t := it.Type(); isTemporalType(t) {
		return parseTemporal(it.N.Str, t)
	}
	for _, k := range [...]string{"date", "dateTime", "time"} {
		if tm, ok := parseTemporal(it.N.Str, k); ok {
			return tm, true
		}
	}
	return temporal{}, false
}

func compareTemporalItems(a, b Item) (int, bool, error) {
	ta, ok1 := asTemporal(a)
	tb, ok2 := asTemporal(b)
	if !ok1 || !ok2 || (ta.kind == "time") != (tb.kind == "time") {
		return 0, false, fmt.Errorf("cannot compare %s with %s as dates or times", kindName(a), kindName(b))
	}
	c, ok := compareTemporal(ta, tb)
	return c, ok, nil
}

func deepEqual(a, b *Node) bool {
	if a.Kind != b.Kind {
		return false
	}
	switch a.Kind {
	case Null:
		return true
	case Bool:
		return a.Bool == b.Bool
	case String:
		return a.Str == b.Str
	case Number:
		return a.Str == b.Str || cmpNumbers(a.Str, b.Str) == 0
	case Array:
		if len(a.Kids) != len(b.Kids) {
			return false
		}
		for i := range a.Kids {
			if !deepEqual(&a.Kids[i], &b.Kids[i]) {
				return false
			}
		}
		return true
	case Object:
		if len(a.Keys) != len(b.Keys) {
			return false
		}
		for i, k := range a.Keys {
			v := b.Get(k)
			if v == nil || !deepEqual(&a.Kids[i], v) {
				return false
			}
		}
		return true
	}
	return false
}

// equivalentItems is FHIRPath '~': like '=' but case- and
// whitespace-insensitive for strings, and never empty.
func equivalentItems(a, b Item) bool {
	if a.N.Kind == String && b.N.Kind == String && !isTemporalType(a.Type()) && !isTemporalType(b.Type()) {
		return normSpace(a.N.Str) == normSpace(b.N.Str)
	}
	if a.N.Kind == Number && b.N.Kind == Number {
		ra, ok1 := toRat(a.N)
		rb, ok2 := toRat(b.N)
		if !ok1 || !ok2 {
			return false
		}
		// Compared at the precision of the less precise operand.
		s := min(scaleOf(a.N.Str), scaleOf(b.N.Str))
		return roundRat(ra, s).Cmp(roundRat(rb, s)) == 0
	}
	return equalItems(a, b) == triTrue
}

func normSpace(s string) string { return strings.ToLower(strings.Join(strings.Fields(s), " ")) }

func roundRat(r *big.Rat, scale int) *big.Rat {
	out, _ := new(big.Rat).SetString(r.FloatString(scale))
	return out
}

// compareItems orders two single items for < <= > >=; ok=false means the
// result is empty (dates of different precision).
func compareItems(a, b Item) (c int, ok bool, err error) {
	at, bt := a.Type(), b.Type()
	switch {
	case a.N.Kind == Number && b.N.Kind == Number:
		c := cmpNumbers(a.N.Str, b.N.Str)
		if c == 2 {
			return 0, false, fmt.Errorf("invalid number")
		}
		return c, true, nil
	case a.N.Kind == String && b.N.Kind == String:
		if isTemporalType(at) || isTemporalType(bt) {
			return compareTemporalItems(a, b)
		}
		return strings.Compare(a.N.Str, b.N.Str), true, nil
	}
	return 0, false, fmt.Errorf("cannot compare %s with %s", kindName(a), kindName(b))
}

func kindName(it Item) string {
	if t := it.Type(); t != "" {
		return t
	}
	return it.N.Kind.String()
}

// cmpNumbers orders two number literals exactly: -1, 0, 1, or 2 when one
// is not a number. Integers that fit in 64 bits, the common case, avoid
// big.Rat.
func cmpNumbers(a, b string) int {
	if len(a) < 19 && len(b) < 19 && isIntegerText(a) && isIntegerText(b) {
		x, err1 := strconv.ParseInt(a, 10, 64)
		y, err2 := strconv.ParseInt(b, 10, 64)
		if err1 == nil && err2 == nil {
			switch {
			case x < y:
				return -1
			case x > y:
				return 1
			}
			return 0
		}
	}
	ra, ok1 := parseRat(a)
	rb, ok2 := parseRat(b)
	if !ok1 || !ok2 {
		return 2
	}
	return ra.Cmp(rb)
}
