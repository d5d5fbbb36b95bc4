package testsuite

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// fileKind distinguishes output, deleted and error files.
type fileKind uint8

const (
	kindOutput fileKind = iota
	kindDeleted
	kindError
)

type fileEntry struct {
	name  string // "Observation.1.ndjson"
	key   string // "Observation.1" (fault selector)
	typ   string // "Observation", "deleted" or "error"
	kind  fileKind
	t     rtype
	sp    span
	lines [][]byte // error files: the OperationOutcome lines
	dels  []delRef // deleted files: resources, bundled deleteBundle per line
}

const deleteBundle = 100 // entries per deletion Bundle

func (f *fileEntry) count() int {
	switch f.kind {
	case kindError:
		return len(f.lines)
	case kindDeleted:
		return (len(f.dels) + deleteBundle - 1) / deleteBundle
	}
	return f.sp.count
}

type job struct {
	id       string
	pl       *plan
	el       *elemFilter
	request  string
	partial  bool
	since    bool
	notes    [][]byte // lenient-mode OperationOutcomes for error[] (BD2 L507)
	created  time.Time
	readyAt  time.Time
	done     chan struct{} // closed when the counting pass has finished
	files    []*fileEntry  // output files, then deleted, then error
	byName   map[string]*fileEntry
	manifest *builtManifest

	mu          sync.Mutex
	deleted     bool
	completedAt time.Time
	sizes       map[string]int64 // uncompressed sizes, computed for Range
}

// builtManifest is frozen at the first complete status response, so later
// polls see the same manifest (BD3 L485: the server "SHALL NOT alter a manifest").
type builtManifest struct {
	capURLs bool
	files   []*fileEntry
}

// ---- kickoff ----

// kickoffParams is the parsed request, GET or POST.
type kickoffParams struct {
	vals     map[string][]string
	lenient  bool
	patients []string
}

var knownParams = map[string]bool{
	"_outputFormat": true, "_since": true, "_until": true, "_type": true, "_elements": true,
	"_typeFilter": true, "patient": true, "includeAssociatedData": true, "allowPartialManifests": true,
}

func (s *Server) serveKickoff(w http.ResponseWriter, r *http.Request, p string) {
	level, groupID := "system", ""
	if p == "/Patient/$export" {
		level = "patient"
	} else if strings.HasPrefix(p, "/Group/") {
		level, groupID = "group", strings.TrimSuffix(strings.TrimPrefix(p, "/Group/"), "/$export")
	}
	// kickoff-specific faults (Content-Location variants) apply at the 202 below
	kickRules := s.faultsFor("kickoff", "", func(sel string) bool { return sel == level })
	if s.applyResponseFault(w, kickRules) {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		writeOO(w, 405, "error", "not-supported", "kick-off accepts GET and POST (BD2 L66)")
		return
	}
	if !s.authorize(w, r) {
		return
	}
	// BD2 L104-112: clients send Accept: application/fhir+json and Prefer:
	// respond-async; "a server MAY return an error" when omitted — we do.
	if !strings.Contains(r.Header.Get("Accept"), "application/fhir+json") {
		writeOO(w, 400, "error", "invalid", "kick-off requires Accept: application/fhir+json")
		return
	}
	prefer := strings.ToLower(strings.Join(r.Header.Values("Prefer"), ","))
	if !strings.Contains(prefer, "respond-async") {
		writeOO(w, 400, "error", "invalid", "kick-off requires Prefer: respond-async")
		return
	}
	kp := kickoffParams{vals: map[string][]string{}, lenient: strings.Contains(prefer, "handling=lenient")}
	if r.Method == http.MethodPost {
		if err := parseParametersBody(r, &kp); err != nil {
			writeOO(w, 400, "error", "invalid", err.Error())
			return
		}
	} else {
		for k, v := range r.URL.Query() {
			kp.vals[k] = append(kp.vals[k], v...)
		}
		if _, ok := kp.vals["patient"]; ok && !kp.lenient {
			writeOO(w, 400, "error", "not-supported", "the patient parameter is only supported with POST (BD2 L114)")
			return
		}
	}
	var notes [][]byte
	unsupported := func(msg string) bool {
		if !kp.lenient {
			writeOO(w, 400, "error", "not-supported", msg)
			return false
		}
		// BD2 L146-189 + L507: process anyway and report in error[]
		notes = append(notes, ooJSON("information", "informational", msg+" (ignored: Prefer handling=lenient)"))
		return true
	}
	for k := range kp.vals {
		if !knownParams[k] || k == "patient" && r.Method == http.MethodGet {
			if !unsupported(fmt.Sprintf("unsupported kick-off parameter %q", k)) {
				return
			}
			delete(kp.vals, k)
		}
	}
	q := Query{Level: level, GroupID: groupID, Patients: kp.patients}
	if of := kp.vals["_outputFormat"]; len(of) > 0 {
		// BD2 L116: SHALL accept the full and the two abbreviated NDJSON types
		switch of[0] {
		case "application/fhir+ndjson", "application/ndjson", "ndjson":
		default:
			writeOO(w, 400, "error", "not-supported", fmt.Sprintf("_outputFormat %q is not supported; use application/fhir+ndjson", of[0]))
			return
		}
	}
	for _, k := range []string{"_since", "_until"} {
		if v := kp.vals[k]; len(v) > 0 {
			t, err := time.Parse(time.RFC3339Nano, v[0])
			if err != nil {
				writeOO(w, 400, "error", "invalid", fmt.Sprintf("%s: %q is not a FHIR instant", k, v[0]))
				return
			}
			if k == "_since" {
				q.Since = t
			} else {
				q.Until = t
			}
		}
	}
	// BD2 L68: repeated params are treated as one comma-delimited list
	for _, v := range kp.vals["_type"] {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				q.Types = append(q.Types, t)
			}
		}
	}
	partial := false
	if v := kp.vals["allowPartialManifests"]; len(v) > 0 {
		b, err := strconv.ParseBool(v[0])
		if err != nil {
			writeOO(w, 400, "error", "invalid", "allowPartialManifests must be true or false")
			return
		}
		partial = b
	}
	var el *elemFilter
	if v := kp.vals["_elements"]; len(v) > 0 {
		var err error
		if el, err = parseElements(v); err != nil {
			writeOO(w, 400, "error", "invalid", err.Error())
			return
		}
	}
	pl, err := s.newPlan(q)
	if err != nil {
		status := 400
		if qe, ok := err.(*queryError); ok {
			status = qe.status
		}
		code := "invalid"
		if status == 404 {
			code = "not-found"
		}
		writeOO(w, status, "error", code, err.Error())
		return
	}
	for _, v := range kp.vals["_typeFilter"] {
		for _, f := range splitTypeFilters(v) {
			t, tf, err := parseTypeFilter(f)
			if err != nil {
				if !unsupported(err.Error()) {
					return
				}
				continue
			}
			pl.filters[t] = append(pl.filters[t], tf)
		}
	}
	// includeAssociatedData is tolerated and ignored (no Provenance here).

	j := &job{
		id: newID(), pl: pl, el: el, partial: partial, since: pl.hasSince, notes: notes,
		created: time.Now(), done: make(chan struct{}), byName: map[string]*fileEntry{},
	}
	j.readyAt = j.created.Add(s.opts.ExportDuration)
	j.request = baseOf(r) + p
	if r.Method == http.MethodGet && r.URL.RawQuery != "" {
		j.request += "?" + r.URL.RawQuery // POST: "without parameters" (BD2 L420)
	}
	s.jobsMu.Lock()
	s.jobs[j.id] = j
	s.jobsMu.Unlock()
	go s.planJob(j)
	s.stats.add(func(st *Stats) { st.Kickoffs++ })

	loc := baseOf(r) + "/_jobs/" + j.id
	switch {
	case hasFault(kickRules, "no-content-location") != nil:
	case hasFault(kickRules, "relative-content-location") != nil:
		w.Header().Set("Content-Location", "_jobs/"+j.id)
	default:
		// BD2 L276: "Content-Location header with the absolute URL"
		w.Header().Set("Content-Location", loc)
	}
	writeOO(w, 202, "information", "informational", "export job "+j.id+" accepted")
	s.log.Info("export started", "job", j.id, "level", level, "types", len(pl.types), "tt", fmtInstant(pl.tt))
}

// parseParametersBody reads a FHIR Parameters kick-off body (BD2 L66).
func parseParametersBody(r *http.Request, kp *kickoffParams) error {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/fhir+json" && mt != "application/json" {
		return fmt.Errorf("POST kick-off needs Content-Type application/fhir+json, got %q", mt)
	}
	var body struct {
		ResourceType string `json:"resourceType"`
		Parameter    []struct {
			Name           string                      `json:"name"`
			ValueString    *string                     `json:"valueString"`
			ValueInstant   *string                     `json:"valueInstant"`
			ValueDateTime  *string                     `json:"valueDateTime"`
			ValueCode      *string                     `json:"valueCode"`
			ValueUri       *string                     `json:"valueUri"`
			ValueBoolean   *bool                       `json:"valueBoolean"`
			ValueReference *struct{ Reference string } `json:"valueReference"`
			ValueCoding    *struct{ Code string }      `json:"valueCoding"`
		} `json:"parameter"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 32<<20)).Decode(&body); err != nil {
		return fmt.Errorf("invalid Parameters body: %v", err)
	}
	if body.ResourceType != "Parameters" {
		return fmt.Errorf("POST body must be a FHIR Parameters resource, got %q", body.ResourceType)
	}
	for _, p := range body.Parameter {
		var v string
		switch {
		case p.ValueString != nil:
			v = *p.ValueString
		case p.ValueInstant != nil:
			v = *p.ValueInstant
		case p.ValueDateTime != nil:
			v = *p.ValueDateTime
		case p.ValueCode != nil:
			v = *p.ValueCode
		case p.ValueUri != nil:
			v = *p.ValueUri
		case p.ValueBoolean != nil:
			v = strconv.FormatBool(*p.ValueBoolean)
		case p.ValueReference != nil:
			v = p.ValueReference.Reference
		case p.ValueCoding != nil:
			v = p.ValueCoding.Code
		default:
			return fmt.Errorf("parameter %q has no supported value[x]", p.Name)
		}
		if p.Name == "patient" {
			kp.patients = append(kp.patients, v)
		}
		kp.vals[p.Name] = append(kp.vals[p.Name], v)
	}
	return nil
}

func newID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// planJob runs the counting pass that fixes file boundaries and counts.
func (s *Server) planJob(j *job) {
	defer close(j.done)
	per := s.opts.ResourcesPerFile
	add := func(f *fileEntry) {
		j.files = append(j.files, f)
		j.byName[f.name] = f
	}
	for _, t := range j.pl.types {
		for i, sp := range j.pl.spans(t, per) {
			key := typeNames[t] + "." + strconv.Itoa(i+1)
			add(&fileEntry{name: key + ".ndjson", key: key, typ: typeNames[t], kind: kindOutput, t: t, sp: sp})
		}
	}
	if j.since {
		dels := j.pl.deletions()
		for i := 0; len(dels) > 0; i++ {
			n := min(len(dels), per*deleteBundle)
			key := "deleted." + strconv.Itoa(i+1)
			add(&fileEntry{name: key + ".ndjson", key: key, typ: "deleted", kind: kindDeleted, dels: dels[:n]})
			dels = dels[n:]
		}
	}
	if len(j.notes) > 0 {
		add(&fileEntry{name: "error.1.ndjson", key: "error.1", typ: "error", kind: kindError, lines: j.notes})
	}
}

// ---- status / manifest ----

func (s *Server) lookupJob(id string) *job {
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	j := s.jobs[id]
	if j != nil {
		j.mu.Lock()
		gone := j.deleted
		j.mu.Unlock()
		if gone {
			return nil
		}
	}
	return j
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request, id string) {
	if rules := s.faultsFor("status", id, nil); s.applyResponseFault(w, rules) {
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, DELETE")
		writeOO(w, 405, "error", "not-supported", "status accepts GET and DELETE")
		return
	}
	if !s.authorize(w, r) {
		return
	}
	j := s.lookupJob(id)
	if j == nil {
		// BD2 L300: after DELETE, status "SHALL return a 404 error and an associated OperationOutcome"
		writeOO(w, 404, "error", "not-found", "export job "+id+" not found (deleted or never existed)")
		return
	}
	now := time.Now()
	ready := false
	select {
	case <-j.done:
		ready = !now.Before(j.readyAt)
	default:
	}
	if !ready {
		pct := 99
		if d := s.opts.ExportDuration; d > 0 {
			pct = min(99, int(100*now.Sub(j.created)/d))
		}
		// BD2 L320: 202 + optional X-Progress; Retry-After as the polling hint
		w.Header().Set("X-Progress", fmt.Sprintf("in progress: %d%%", pct))
		w.Header().Set("Retry-After", strconv.Itoa(int((s.opts.RetryAfter+time.Second-1)/time.Second)))
		w.WriteHeader(202)
		return
	}
	rules := s.faultsFor("manifest", id, nil)
	if s.applyResponseFault(w, rules) {
		return
	}
	j.mu.Lock()
	if j.manifest == nil {
		j.completedAt = now
		bm := &builtManifest{capURLs: hasFault(rules, "capability-urls") != nil, files: j.files}
		if f := hasFault(rules, "errors"); f != nil {
			bm.files = append(append([]*fileEntry(nil), j.files...), injectedErrors(int(f.intArg("n", 3))))
			j.byName[bm.files[len(bm.files)-1].name] = bm.files[len(bm.files)-1]
		}
		j.manifest = bm
	}
	bm, completed := j.manifest, j.completedAt
	j.mu.Unlock()

	base := baseOf(r)
	page := 1
	if v := r.URL.Query().Get("page"); v != "" {
		page, _ = strconv.Atoi(v)
	}
	m := s.manifestJSON(j, bm, base, page)
	if m == nil {
		writeOO(w, 404, "error", "not-found", "no such manifest page")
		return
	}
	body, _ := json.MarshalIndent(m, "", "  ")
	if hasFault(rules, "truncated") != nil {
		body = body[:len(body)/2] // checklist 3.18: malformed/truncated manifest
	}
	// BD2 L398: the server "SHOULD return an Expires header"
	w.Header().Set("Expires", completed.Add(s.opts.FileTTL).UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(200)
	w.Write(body)
}

func injectedErrors(n int) *fileEntry {
	sev := []string{"fatal", "error", "warning", "information"}
	codes := []string{"exception", "processing", "too-costly", "informational"}
	f := &fileEntry{name: "error.injected.ndjson", key: "error.injected", typ: "error", kind: kindError}
	for i := 0; i < n; i++ {
		f.lines = append(f.lines, ooJSON(sev[i%4], codes[i%4], fmt.Sprintf("injected outcome %d: some resources could not be exported", i+1)))
	}
	return f
}

type manifestItem struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int    `json:"count"`
}

type manifestLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// manifestDoc is the completion manifest (BD2 L412-551, BD3 L506-690).
type manifestDoc struct {
	TransactionTime     string          `json:"transactionTime"`
	Request             string          `json:"request"`
	RequiresAccessToken bool            `json:"requiresAccessToken"`
	Output              []manifestItem  `json:"output"`
	Deleted             *[]manifestItem `json:"deleted,omitempty"`
	Error               []manifestItem  `json:"error"`
	Link                []manifestLink  `json:"link,omitempty"`
}

func (s *Server) fileURL(j *job, bm *builtManifest, base, name string) string {
	if bm.capURLs {
		// unguessable capability URL: requiresAccessToken=false (BD3 L701)
		return strings.TrimSuffix(base, BasePath) + "/_cap/" + s.mac("cap", j.id, name) + "/" + j.id + "/" + name
	}
	return base + "/_files/" + j.id + "/" + name
}

func (s *Server) manifestJSON(j *job, bm *builtManifest, base string, page int) *manifestDoc {
	m := &manifestDoc{
		TransactionTime: fmtInstant(j.pl.tt),
		Request:         j.request,
		// BD2 L425: true when file access is protected by the same tokens
		RequiresAccessToken: s.auth != nil && !bm.capURLs,
		Output:              []manifestItem{},
		Error:               []manifestItem{},
	}
	var outputs []manifestItem
	var dels []manifestItem
	for _, f := range bm.files {
		it := manifestItem{Type: f.typ, URL: s.fileURL(j, bm, base, f.name), Count: f.count()}
		switch f.kind {
		case kindOutput:
			outputs = append(outputs, it)
		case kindDeleted:
			it.Type = "Bundle" // BD2 L480: deleted items are transaction Bundles
			dels = append(dels, it)
		case kindError:
			it.Type = "OperationOutcome"
			m.Error = append(m.Error, it)
		}
	}
	if j.since {
		if dels == nil {
			dels = []manifestItem{}
		}
		m.Deleted = &dels
	}
	if !j.partial {
		if page != 1 {
			return nil
		}
		m.Output = append(m.Output, outputs...)
		return m
	}
	// BD3 allowPartialManifests: output split over pages linked by "next";
	// error[] and deleted[] are on page 1 only.
	ps := s.opts.ManifestPageSize
	pages := max(1, (len(outputs)+ps-1)/ps)
	if page < 1 || page > pages {
		return nil
	}
	m.Output = append(m.Output, outputs[(page-1)*ps:min(len(outputs), page*ps)]...)
	if page > 1 {
		m.Error = []manifestItem{}
		if m.Deleted != nil {
			m.Deleted = &[]manifestItem{}
		}
	}
	if page < pages {
		m.Link = []manifestLink{{Relation: "next", URL: base + "/_jobs/" + j.id + "?page=" + strconv.Itoa(page+1)}}
	}
	return m
}

func (s *Server) serveDelete(w http.ResponseWriter, r *http.Request, id string) {
	if rules := s.faultsFor("delete", id, nil); s.applyResponseFault(w, rules) {
		return
	}
	if !s.authorize(w, r) {
		return
	}
	j := s.lookupJob(id)
	if j == nil {
		writeOO(w, 404, "error", "not-found", "export job "+id+" not found")
		return
	}
	j.mu.Lock()
	j.deleted = true
	j.mu.Unlock()
	// BD2 L292: 202 Accepted, optional OperationOutcome
	writeOO(w, 202, "information", "informational", "export job "+id+" deleted")
}
