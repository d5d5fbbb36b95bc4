package fhirpath

import (
	"testing"
	"time"
)

// FuzzEvaluate: any expression over any JSON ends in a result or an error,
// never a panic, and within bounded time.
func FuzzEvaluate(f *testing.F) {
	for _, s := range []string{
		"name.given.join(', ')", "value.ofType(Quantity).value.lowBoundary()", "repeat($this & 'x')",
		"extension('u').extension('v').value.ofType(Coding).code", "getResourceKey() = link.other.getReferenceKey(Patient)",
		"@2010-10-10T.highBoundary()", "iif(a, b, c).where($index > 1)", "(1|2).select($this * 2.5 div 0)",
		"descendants().count()", "'a'.matches('(a+)+$')", "%rowIndex + %resource.id.length()",
	} {
		f.Add(s, patientJSON)
	}
	f.Add("a.b.c", `{"a":[{"b":{"c":[1,null,"x",{"d":[]}]}}]}`)
	f.Add("valueX", `{"valueString":"s","valueQuantity":{"value":1e400}}`)
	f.Fuzz(func(t *testing.T, expr, doc string) {
		n, err := ParseJSON([]byte(doc))
		if err != nil {
			return
		}
		e, err := Parse(expr)
		if err != nil {
			return
		}
		start := time.Now()
		ctx := &Context{Resource: n, Constants: map[string][]Item{"c": {stringItem("x", "string")}}}
		_, _ = e.EvaluateNode(ctx, n)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("%q took %v", expr, d)
		}
	})
}

// FuzzParseJSON: the decoder never panics and agrees with itself.
func FuzzParseJSON(f *testing.F) {
	f.Add(patientJSON)
	f.Add(`[1,-2.5e3,"\ud83d\ude00",{"":null}]`)
	f.Fuzz(func(t *testing.T, doc string) {
		_, _ = ParseJSON([]byte(doc))
	})
}
