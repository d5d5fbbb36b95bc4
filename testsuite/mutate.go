package testsuite

import (
	"time"
)

// mutState is the copy-on-write mutation history: a few versions for the few
// resources Mutate touched. Readers load it once per file, lock-free.
type mutState struct {
	clock  int64 // data clock, unix ms
	round  int
	byType [numTypes]map[int][]version
}

// Now returns the server's data clock: the transactionTime of an export
// started now. It only moves with Mutate (not with the wall clock), so runs
// are reproducible.
func (s *Server) Now() time.Time { return time.UnixMilli(s.mut.Load().clock).UTC() }

// Mutate advances the data clock by advance (at least 1 ms, so changes are
// strictly after any earlier transactionTime) and applies a deterministic set
// of updates (new version, meta.lastUpdated = new clock, status/value changed)
// and deletes. The choice depends only on Seed and the number of earlier
// Mutate calls. Earlier exports are unaffected: files serve the versions
// current at their own transactionTime.
func (s *Server) Mutate(advance time.Duration, updates, deletes int) {
	s.mutMu.Lock()
	defer s.mutMu.Unlock()
	old := s.mut.Load()
	n := &mutState{clock: old.clock + max(advance.Milliseconds(), 1), round: old.round + 1}
	for t := range n.byType {
		if old.byType[t] != nil {
			m := make(map[int][]version, len(old.byType[t])+1)
			for k, v := range old.byType[t] {
				m[k] = v
			}
			n.byType[t] = m
		}
	}
	d := s.data
	// Updates touch clinical types plus Patient/Practitioner/Organization;
	// deletes only clinical types (so references from other resources stay valid).
	updTypes := []rtype{tPatient, tEncounter, tObservation, tCondition, tMedicationRequest, tProcedure,
		tImmunization, tAllergyIntolerance, tDocumentReference, tPractitioner, tOrganization}
	delTypes := updTypes[1:9]
	pick := func(types []rtype, salt uint64) (rtype, int, version, bool) {
		total := 0
		for _, t := range types {
			total += d.total[t]
		}
		if total == 0 {
			return 0, 0, version{}, false
		}
		for try := uint64(0); try < 32; try++ {
			x := int(mix(d.seed^uint64(n.round)<<40^salt<<8^try) % uint64(total))
			for _, t := range types {
				if x < d.total[t] {
					cur := n.versionAt(t, x, n.clock)
					if cur.deleted || d.large[x] > 0 && t == tDocumentReference {
						break // try another
					}
					return t, x, cur, true
				}
				x -= d.total[t]
			}
		}
		return 0, 0, version{}, false
	}
	add := func(t rtype, j int, v version) {
		if n.byType[t] == nil {
			n.byType[t] = map[int][]version{}
		}
		vs := n.byType[t][j]
		n.byType[t][j] = append(vs[:len(vs):len(vs)], v) // copy: readers of old still see old
	}
	for i := 0; i < updates; i++ {
		if t, j, cur, ok := pick(updTypes, uint64(i)<<1); ok {
			add(t, j, version{at: n.clock, ver: cur.ver + 1})
		}
	}
	for i := 0; i < deletes; i++ {
		if t, j, cur, ok := pick(delTypes, uint64(i)<<1|1); ok {
			add(t, j, version{at: n.clock, ver: cur.ver + 1, deleted: true})
		}
	}
	s.mut.Store(n)
	s.log.Info("data mutated", "now", s.Now(), "updates", updates, "deletes", deletes)
}
