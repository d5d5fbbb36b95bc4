package testsuite

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Query is what a kickoff asks for.
type Query struct {
	Level    string // "system" | "patient" | "group"
	GroupID  string
	Types    []string  // empty = all types the level covers
	Since    time.Time // zero = none
	Until    time.Time // zero = none
	Patients []string  // "Patient/<id>" references (POST `patient` param)
}

// Expected is exactly what an export yields.
type Expected struct {
	Counts  map[string]int                 // resourceType -> resources in output[]
	IDs     map[string]map[string]struct{} // resourceType -> ids in output[]
	Deleted map[string]map[string]struct{} // resourceType -> ids listed in deleted[] (only with Since)
	// Attachments lists the url attachments of the exported
	// DocumentReferences (Options.Attachments), by id.
	Attachments []ExpectedAttachment
}

// elemFilter implements _elements (BD2 L170-180): listed elements plus the
// mandatory ones (which the generator writes unconditionally).
type elemFilter struct {
	all    map[string]bool
	byType [numTypes]map[string]bool
}

func parseElements(vals []string) (*elemFilter, error) {
	f := &elemFilter{all: map[string]bool{}}
	for _, v := range vals {
		for _, e := range strings.Split(v, ",") {
			e = strings.TrimSpace(e)
			if e == "" {
				continue
			}
			if typ, el, ok := strings.Cut(e, "."); ok {
				t, ok := typeByName(typ)
				if !ok || el == "" {
					return nil, fmt.Errorf("_elements: unknown element %q", e)
				}
				if f.byType[t] == nil {
					f.byType[t] = map[string]bool{}
				}
				f.byType[t][el] = true
			} else {
				f.all[e] = true
			}
		}
	}
	return f, nil
}

// subsets: a type with no applicable element list is returned whole (and untagged).
func (f *elemFilter) subsets(t rtype) bool { return len(f.all) > 0 || len(f.byType[t]) > 0 }

func (f *elemFilter) has(t rtype, name string) bool {
	if !f.subsets(t) {
		return true
	}
	return f.all[name] || f.byType[t][name]
}

// typeFilter is one single-type query of _typeFilter (BD3 L299-301): its
// params are ANDed, comma values within a param are ORed.
type typeFilter struct {
	params []filterParam
}

type filterParam struct {
	name string
	vals []string
}

// codeMatches is token search on one coding: "code" or "system|code".
func codeMatches(c *coding, v string) bool {
	if c == nil {
		return false
	}
	if sys, code, found := strings.Cut(v, "|"); found {
		return c.code == code && (sys == "" || c.system == sys)
	}
	return c.code == v
}

func (tf typeFilter) match(a attrs) bool {
	for _, p := range tf.params {
		ok := false
		for _, v := range p.vals {
			switch p.name {
			case "status", "clinical-status":
				ok = a.status == v
			case "category":
				ok = a.cat == v
			case "code", "vaccine-code", "type":
				ok = codeMatches(a.code, v) || codeMatches(a.alt, v)
			}
			if ok {
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// supportedFilterParams is the documented _typeFilter subset.
var supportedFilterParams = map[rtype][]string{
	tObservation:        {"status", "category", "code"},
	tCondition:          {"clinical-status", "category", "code"},
	tMedicationRequest:  {"status", "code"},
	tProcedure:          {"status", "code"},
	tImmunization:       {"status", "vaccine-code"},
	tAllergyIntolerance: {"clinical-status", "category", "code"},
	tEncounter:          {"status"},
	tDocumentReference:  {"status", "type"},
}

// splitTypeFilters splits a _typeFilter value on commas that start a new
// "Type?" query: BD2 joins repeats with commas, but commas also OR values.
func splitTypeFilters(v string) []string {
	var out []string
	start := 0
	for i := 0; i < len(v); i++ {
		if v[i] != ',' {
			continue
		}
		rest := v[i+1:]
		if q := strings.IndexByte(rest, '?'); q > 0 {
			if _, ok := typeByName(rest[:q]); ok {
				out = append(out, v[start:i])
				start = i + 1
			}
		}
	}
	return append(out, v[start:])
}

func parseTypeFilter(q string) (rtype, typeFilter, error) {
	typ, query, ok := strings.Cut(q, "?")
	t, known := typeByName(typ)
	if !ok || !known {
		return 0, typeFilter{}, fmt.Errorf("_typeFilter %q: expected ResourceType?param=value", q)
	}
	var tf typeFilter
	for _, kv := range strings.Split(query, "&") {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || val == "" {
			return 0, typeFilter{}, fmt.Errorf("_typeFilter %q: malformed parameter %q", q, kv)
		}
		supported := false
		for _, s := range supportedFilterParams[t] {
			supported = supported || s == name
		}
		if !supported {
			return 0, typeFilter{}, fmt.Errorf("_typeFilter %q: search parameter %q is not supported for %s", q, name, typ)
		}
		tf.params = append(tf.params, filterParam{name, strings.Split(val, ",")})
	}
	return t, tf, nil
}

// plan is a resolved query against the dataset as of transaction time tt.
type plan struct {
	d        *dataset
	level    string
	group    int              // group index for level group
	patients map[int]struct{} // nil = every patient in scope
	types    []rtype          // sorted
	since    int64            // unix ms
	until    int64            // unix ms
	hasSince bool
	hasUntil bool
	filters  [numTypes][]typeFilter
	tt       int64
	mut      *mutState
}

var levelTypes = map[string][]rtype{}

func init() {
	for t := rtype(0); t < numTypes; t++ {
		levelTypes["system"] = append(levelTypes["system"], t)
		if isCompartment(t) {
			// Patient and Group level = the patient compartment only (the
			// Group resource itself is not exported at Group level).
			levelTypes["patient"] = append(levelTypes["patient"], t)
			levelTypes["group"] = append(levelTypes["group"], t)
		}
	}
}

// errBadRequest marks query errors that map to 400; errNotFound to 404.
type queryError struct {
	status int
	msg    string
}

func (e *queryError) Error() string { return e.msg }

func badRequest(format string, a ...any) error {
	return &queryError{400, fmt.Sprintf(format, a...)}
}

// newPlan resolves q. Types not covered by the level are silently dropped.
func (s *Server) newPlan(q Query) (*plan, error) {
	d := s.data
	mut := s.mut.Load()
	pl := &plan{d: d, level: q.Level, tt: mut.clock, mut: mut}
	lt, ok := levelTypes[q.Level]
	if !ok {
		return nil, badRequest("unknown export level %q", q.Level)
	}
	if q.Level == "group" {
		g, ok := d.parseID(tGroup, q.GroupID)
		if !ok {
			return nil, &queryError{404, fmt.Sprintf("Group/%s not found", q.GroupID)}
		}
		pl.group = g
	}
	if len(q.Types) == 0 {
		pl.types = append(pl.types, lt...)
	} else {
		seen := map[rtype]bool{}
		for _, name := range q.Types {
			t, ok := typeByName(name)
			if !ok {
				return nil, badRequest("_type: unsupported resource type %q", name)
			}
			if seen[t] {
				continue
			}
			seen[t] = true
			for _, x := range lt {
				if x == t {
					pl.types = append(pl.types, t)
				}
			}
		}
		sort.Slice(pl.types, func(a, b int) bool { return pl.types[a] < pl.types[b] })
	}
	if !q.Since.IsZero() {
		pl.hasSince, pl.since = true, q.Since.UnixMilli()
	}
	if !q.Until.IsZero() {
		pl.hasUntil, pl.until = true, q.Until.UnixMilli()
	}
	if len(q.Patients) > 0 {
		if q.Level == "system" {
			return nil, badRequest("the patient parameter applies to Patient and Group level exports only")
		}
		pl.patients = map[int]struct{}{}
		for _, ref := range q.Patients {
			id := strings.TrimPrefix(ref, "Patient/")
			if i := strings.LastIndex(ref, "/Patient/"); i >= 0 { // absolute references (BD2 L74)
				id = ref[i+len("/Patient/"):]
			}
			p, ok := d.parseID(tPatient, id)
			if !ok {
				return nil, badRequest("patient: unknown patient %q", ref)
			}
			if q.Level == "group" && !d.isMember(pl.group, p) {
				return nil, badRequest("patient: %q is not a member of Group/%s", ref, q.GroupID)
			}
			pl.patients[p] = struct{}{}
		}
	}
	return pl, nil
}

func (pl *plan) inScope(p int) bool {
	if pl.patients != nil {
		_, ok := pl.patients[p]
		return ok
	}
	if pl.level == "group" {
		return pl.d.isMember(pl.group, p)
	}
	return true
}

// versionAt returns the version of (t, j) current at instant tt.
func (m *mutState) versionAt(t rtype, j int, tt int64) version {
	if mm := m.byType[t]; mm != nil {
		if vs, ok := mm[j]; ok {
			for i := len(vs) - 1; i >= 0; i-- {
				if vs[i].at <= tt {
					return vs[i]
				}
			}
		}
	}
	return version{ver: 1}
}

// match decides whether (t, j) is in the export and at which version.
func (pl *plan) match(t rtype, j int) (version, bool) {
	v := pl.mut.versionAt(t, j, pl.tt)
	if v.deleted {
		return v, false
	}
	if pl.hasSince || pl.hasUntil {
		lu := v.at
		if v.ver <= 1 {
			lu = pl.d.baseLU(t, j)
		}
		// _since: "changed after" (BD2 L130) = exclusive. _until: inclusive,
		// like transactionTime's "up to and including", so (since, until]
		// windows tile without gaps or overlaps.
		if pl.hasSince && lu <= pl.since || pl.hasUntil && lu > pl.until {
			return v, false
		}
	}
	if fs := pl.filters[t]; fs != nil {
		a := pl.d.attrs(t, j, v.ver)
		ok := false
		for _, f := range fs {
			if f.match(a) {
				ok = true
				break
			}
		}
		if !ok {
			return v, false
		}
	}
	return v, true
}

// each calls fn for every matching resource of type t with index >= from, in
// index order, until fn returns false.
func (pl *plan) each(t rtype, from int, fn func(j, p int, v version) bool) {
	d := pl.d
	if !isCompartment(t) {
		if t == tGroup && pl.level != "system" {
			return
		}
		for j := from; j < d.total[t]; j++ {
			if v, ok := pl.match(t, j); ok && !fn(j, -1, v) {
				return
			}
		}
		return
	}
	pre := d.prefix[t]
	p := 0
	if from > 0 {
		p = d.patientOf(t, from)
	}
	for ; p < d.n; p++ {
		end := int(pre[p+1])
		if end <= from || !pl.inScope(p) {
			continue
		}
		for j := max(from, int(pre[p])); j < end; j++ {
			if v, ok := pl.match(t, j); ok && !fn(j, p, v) {
				return
			}
		}
	}
}

// span is one output file: the index of its first resource and its line count.
type span struct {
	start, count int
}

// spans computes file boundaries for type t with a counting pass (no JSON is
// generated; memory is one span per file).
func (pl *plan) spans(t rtype, perFile int) []span {
	var out []span
	pl.each(t, 0, func(j, p int, v version) bool {
		if len(out) == 0 || out[len(out)-1].count == perFile {
			out = append(out, span{start: j})
		}
		out[len(out)-1].count++
		return true
	})
	return out
}

// delRef is one deleted resource listed in deleted[].
type delRef struct {
	t rtype
	j int
}

// deletions lists resources deleted in (since, tt] within the plan's scope
// (BD2 L474-496). Only meaningful with _since.
func (pl *plan) deletions() []delRef {
	var out []delRef
	if !pl.hasSince {
		return nil
	}
	for _, t := range pl.types {
		mm := pl.mut.byType[t]
		keys := make([]int, 0, len(mm))
		for j := range mm {
			keys = append(keys, j)
		}
		sort.Ints(keys)
		for _, j := range keys {
			vs := mm[j]
			var del *version
			prev := version{ver: 1}
			for i := range vs {
				if vs[i].at > pl.tt {
					break
				}
				if vs[i].deleted {
					del = &vs[i]
					break
				}
				prev = vs[i]
			}
			if del == nil || del.at <= pl.since || pl.hasUntil && del.at > pl.until {
				continue
			}
			if isCompartment(t) && !pl.inScope(pl.d.patientOf(t, j)) {
				continue
			}
			if fs := pl.filters[t]; fs != nil {
				a := pl.d.attrs(t, j, prev.ver)
				ok := false
				for _, f := range fs {
					ok = ok || f.match(a)
				}
				if !ok {
					continue
				}
			}
			out = append(out, delRef{t, j})
		}
	}
	return out
}

// Expected returns exactly what an export for q started now yields.
func (s *Server) Expected(q Query) (Expected, error) {
	pl, err := s.newPlan(q)
	if err != nil {
		return Expected{}, err
	}
	e := Expected{Counts: map[string]int{}, IDs: map[string]map[string]struct{}{}}
	for _, t := range pl.types {
		name := typeNames[t]
		ids := map[string]struct{}{}
		pl.each(t, 0, func(j, p int, v version) bool {
			ids[s.data.id(t, j)] = struct{}{}
			if t == tDocumentReference {
				if ea, ok := s.expectedAttachment(j); ok {
					e.Attachments = append(e.Attachments, ea)
				}
			}
			return true
		})
		if len(ids) > 0 {
			e.IDs[name] = ids
			e.Counts[name] = len(ids)
		}
	}
	if pl.hasSince {
		e.Deleted = map[string]map[string]struct{}{}
		for _, dr := range pl.deletions() {
			name := typeNames[dr.t]
			if e.Deleted[name] == nil {
				e.Deleted[name] = map[string]struct{}{}
			}
			e.Deleted[name][s.data.id(dr.t, dr.j)] = struct{}{}
		}
	}
	return e, nil
}
