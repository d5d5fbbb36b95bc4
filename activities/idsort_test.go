package activities

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// checkRef is idSet.check's report as it was computed before
// sortIDHashes: a full sort by (hash, line), then the duplicate with the
// smallest line and the first line of its id.
func checkRef(ents []idEnt) (first, dup uint32, found bool) {
	e := slices.Clone(ents)
	slices.SortFunc(e, func(a, b idEnt) int { return cmp.Or(cmp.Compare(a.h, b.h), cmp.Compare(a.line, b.line)) })
	var d *idEnt
	for i := 1; i < len(e); i++ {
		if e[i].h == e[i-1].h && (d == nil || e[i].line < d.line) {
			d = &e[i]
		}
	}
	if d == nil {
		return 0, 0, false
	}
	for _, x := range e {
		if x.h == d.h {
			return x.line, d.line, true
		}
	}
	panic("unreachable")
}

// TestIDSetCheckMatchesFullSort: the radix sort and group scan report the
// same pair of lines as a full sort, for sets with no, one, many and
// crowded duplicates, hashes that share long prefixes, and one id repeated
// throughout (a hostile file: it must not go quadratic).
func TestIDSetCheckMatchesFullSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	gens := map[string]func(n int) []idEnt{
		"distinct": func(n int) []idEnt {
			e := make([]idEnt, n)
			for i := range e {
				e[i] = idEnt{h: rng.Uint64(), line: uint32(i + 1)}
			}
			return e
		},
		"few values": func(n int) []idEnt {
			e := make([]idEnt, n)
			for i := range e {
				e[i] = idEnt{h: uint64(rng.IntN(n/3 + 1)), line: uint32(i + 1)}
			}
			return e
		},
		"shared prefixes": func(n int) []idEnt {
			e := make([]idEnt, n)
			for i := range e {
				e[i] = idEnt{h: 0xabcdef<<40 | rng.Uint64()&0xffff, line: uint32(rng.IntN(1 << 20))}
			}
			return e
		},
		"one id throughout": func(n int) []idEnt {
			e := make([]idEnt, n)
			for i := range e {
				e[i] = idEnt{h: 42, line: uint32(n - i)}
			}
			return e
		},
	}
	for name, gen := range gens {
		for _, n := range []int{0, 1, 2, 31, 33, 257, 5000, 200000} {
			t.Run(fmt.Sprintf("%s/%d", name, n), func(t *testing.T) {
				ents := gen(n)
				if name == "distinct" && n > 2 {
					// one planted duplicate, far from its original
					ents[n-1].h = ents[n/2].h
				}
				f0, d0, ok0 := checkRef(ents)
				s := &idSet{ents: ents, path: "p"}
				err := s.check()
				if ok0 != (err != nil) {
					t.Fatalf("duplicate found %v, reference %v", err != nil, ok0)
				}
				if !slices.IsSortedFunc(s.ents, func(a, b idEnt) int { return cmp.Compare(a.h, b.h) }) {
					t.Fatal("not sorted by hash")
				}
				if ok0 {
					if want := fmt.Sprintf("lines %d and %d hold", f0, d0); !contains(err.Error(), want) {
						t.Fatalf("%v, want %q", err, want)
					}
				}
			})
		}
	}
}

func contains(s, sub string) bool {
	return len(sub) <= len(s) && (s[:len(sub)] == sub || contains(s[1:], sub))
}

// BenchmarkIDSetCheck: the end-of-file uniqueness check of a typical file
// (10,000 ids), against the full sort it replaced.
func BenchmarkIDSetCheck(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	ents := make([]idEnt, 10000)
	for i := range ents {
		ents[i] = idEnt{h: rng.Uint64(), line: uint32(i + 1)}
	}
	work := make([]idEnt, len(ents))
	b.Run("radix", func(b *testing.B) {
		for b.Loop() {
			copy(work, ents)
			if (&idSet{ents: work}).check() != nil {
				b.Fatal("duplicate")
			}
		}
	})
	b.Run("full-sort", func(b *testing.B) {
		for b.Loop() {
			copy(work, ents)
			slices.SortFunc(work, func(a, b idEnt) int { return cmp.Or(cmp.Compare(a.h, b.h), cmp.Compare(a.line, b.line)) })
		}
	})
}
