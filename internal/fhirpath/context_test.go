package fhirpath

import (
	"strings"
	"testing"
)

// A Context keeps its arenas for the next resource, but not a hostile
// resource's worth of them (contextKeep).
func TestContextResetBoundsKeptMemory(t *testing.T) {
	for _, tc := range []struct {
		name     string
		elements int
		kept     bool
	}{
		{"ordinary resource: memory kept for the next", 10, true},
		{"huge resource: memory dropped", 60_000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := `{"resourceType":"Basic","x":[` + strings.TrimSuffix(strings.Repeat(`{"y":1},`, tc.elements), ",") + `]}`
			n, err := ParseJSON([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			e, err := Parse("x.where(y = 1).y")
			if err != nil {
				t.Fatal(err)
			}
			var c Context
			c.Reset(n, nil)
			got, err := e.EvaluateNode(&c, n)
			if err != nil || len(got) != tc.elements {
				t.Fatalf("%d items, %v", len(got), err)
			}
			used := c.itemArena.bytes() + c.nodes.bytes() + c.scopes.bytes()
			c.Reset(n, nil)
			kept := c.itemArena.bytes() + c.nodes.bytes() + c.scopes.bytes()
			if tc.kept && (kept == 0 || kept != used) {
				t.Errorf("kept %d of %d bytes: an ordinary resource's arenas should serve the next", kept, used)
			}
			if !tc.kept && (used <= contextKeep || kept != 0) {
				t.Errorf("used %d bytes, kept %d: a hostile resource's arenas must be dropped (limit %d)", used, kept, contextKeep)
			}
		})
	}
}
