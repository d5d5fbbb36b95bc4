package fhirpath

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
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

var fuzzDecoder Decoder

// FuzzParseJSON: the decoder never panics, accepts exactly what
// encoding/json accepts (short of the depth limit), and reads the same
// strings.
func FuzzParseJSON(f *testing.F) {
	f.Add(patientJSON)
	f.Add(`[1,-2.5e3,"\ud83d\ude00",{"":null}]`)
	f.Add(`{"a":"\u00e9\n","b":[true,false,null]}`)
	f.Fuzz(func(t *testing.T, doc string) {
		n, err := ParseJSON([]byte(doc))
		if errors.Is(err, ErrTooDeep) {
			if _, perr := fuzzDecoder.DecodeProjected([]byte(doc), evenElements); !errors.Is(perr, ErrTooDeep) {
				t.Fatalf("projected decode: %v, want too deep", perr)
			}
			return
		}
		if err != nil {
			if _, perr := fuzzDecoder.DecodeProjected([]byte(doc), evenElements); perr == nil {
				t.Fatalf("projected decode accepts what ParseJSON refuses (%v)", err)
			}
		}
		if valid := json.Valid([]byte(doc)); valid != (err == nil) {
			t.Fatalf("ParseJSON error %v, but encoding/json valid=%v for %q", err, valid, doc)
		}
		if err != nil {
			return
		}
		var std any
		d := json.NewDecoder(strings.NewReader(doc))
		d.UseNumber()
		if err := d.Decode(&std); err != nil {
			t.Fatal(err)
		}
		if got := plain(n); !reflect.DeepEqual(got, std) {
			t.Fatalf("ParseJSON reads %#v, encoding/json %#v", got, std)
		}
		// A Decoder that has decoded other documents reads the same.
		fuzzDecoder.Decode([]byte(patientJSON))
		dn, err := fuzzDecoder.Decode([]byte(doc))
		if err != nil {
			t.Fatalf("Decoder: %v", err)
		}
		if got := plain(dn); !reflect.DeepEqual(got, std) {
			t.Fatalf("Decoder reads %#v, encoding/json %#v", got, std)
		}
		checkProjection(t, doc)
	})
}

// plain converts a Node the way encoding/json with UseNumber decodes: a
// later duplicate key overwrites an earlier one.
func plain(n *Node) any {
	switch n.Kind {
	case Bool:
		return n.Bool
	case String:
		return n.Str
	case Number:
		return json.Number(n.Str)
	case Array:
		out := make([]any, len(n.Kids))
		for i := range n.Kids {
			out[i] = plain(&n.Kids[i])
		}
		return out
	case Object:
		out := map[string]any{}
		for i, k := range n.Keys {
			out[k] = plain(&n.Kids[i])
		}
		return out
	}
	return nil
}

// evenElements keeps the top-level keys that start with a, c or e.
func evenElements(string) ([]string, bool) { return []string{"a", "c", "e"}, false }

func keepEven(_, key string) bool { return KeepElement([]string{"a", "c", "e"}, key) }

// checkProjection: a projected decode is the whole decode with the refused
// top-level keys left out, when the document leads with one resourceType,
// and the whole decode otherwise.
func checkProjection(t *testing.T, doc string) {
	t.Helper()
	full, err := ParseJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := full
	if full.Kind == Object && len(full.Keys) > 0 && full.Keys[0] == "resourceType" && full.Kids[0].Kind == String &&
		!slices.Contains(full.Keys[1:], "resourceType") {
		want = &Node{Kind: Object}
		for i, k := range full.Keys {
			if i == 0 || keepEven("", k) {
				want.Keys = append(want.Keys, k)
				want.Kids = append(want.Kids, full.Kids[i])
			}
		}
	}
	got, err := fuzzDecoder.DecodeProjected([]byte(doc), evenElements)
	if err != nil {
		t.Fatalf("projected decode: %v", err)
	}
	if !reflect.DeepEqual(plain(got), plain(want)) {
		t.Fatalf("projected decode reads %#v, want %#v", plain(got), plain(want))
	}
}
