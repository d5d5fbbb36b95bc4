package testsuite

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2*flushSize); return &b }}

// serveCapability serves requiresAccessToken=false URLs: the URL itself is
// the credential, and a client "SHALL NOT provide" a token there (BD3 L701).
func (s *Server) serveCapability(w http.ResponseWriter, r *http.Request) {
	mac, jobID, name, ok := splitSigned(r.URL.Path, "/_cap/")
	if !ok || mac != s.mac("cap", jobID, name) {
		writeOO(w, 404, "error", "not-found", "unknown capability URL")
		return
	}
	if r.Header.Get("Authorization") != "" {
		s.stats.add(func(st *Stats) { st.AuthHeaderOnCapabilityURL++ })
		s.log.Warn("Authorization header sent to a capability URL", "path", r.URL.Path)
	}
	s.serveFile(w, r, jobID, name, "capability")
}

// serveStorage is the redirect target standing in for object storage on a
// second listener; an Authorization header arriving here leaked across origins.
func (s *Server) serveStorage(w http.ResponseWriter, r *http.Request) {
	mac, jobID, name, ok := splitSigned(r.URL.Path, "/_storage/")
	if !ok || mac != s.mac("sto", jobID, name) {
		writeOO(w, 403, "error", "forbidden", "bad storage signature")
		return
	}
	if r.Header.Get("Authorization") != "" {
		s.stats.add(func(st *Stats) { st.AuthHeaderForwardedOnRedirect++ })
		s.log.Warn("Authorization header forwarded to object storage", "path", r.URL.Path)
	}
	s.serveFile(w, r, jobID, name, "storage")
}

func splitSigned(path, prefix string) (mac, jobID, name string, ok bool) {
	parts := strings.SplitN(strings.TrimPrefix(path, prefix), "/", 3)
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// serveFile serves one NDJSON file (BD2 L554-594). via is "file" (the
// protected URL), "capability" or "storage".
func (s *Server) serveFile(w http.ResponseWriter, r *http.Request, jobID, name, via string) {
	var rules []*faultRule
	if via != "storage" {
		key := strings.TrimSuffix(name, ".ndjson")
		typ, _, _ := strings.Cut(key, ".")
		rules = s.faultsFor("file", jobID+"/"+name, func(sel string) bool { return sel == key || sel == typ })
		if s.applyResponseFault(w, rules) {
			return
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeOO(w, 405, "error", "not-supported", "files accept GET")
		return
	}
	if via == "file" && !s.authorize(w, r) {
		return
	}
	j := s.lookupJob(jobID)
	if j == nil {
		writeOO(w, 404, "error", "not-found", "export job "+jobID+" not found (deleted or never existed)")
		return
	}
	j.mu.Lock()
	bm, completed := j.manifest, j.completedAt
	var f *fileEntry
	if bm != nil { // byName is complete (and safe to read) once a manifest exists
		f = j.byName[name]
	}
	j.mu.Unlock()
	if bm == nil || f == nil {
		writeOO(w, 404, "error", "not-found", "no such file "+name)
		return
	}
	if time.Since(completed) > s.opts.FileTTL {
		writeOO(w, 410, "error", "not-found", "file "+name+" expired; re-fetch the manifest or re-export")
		return
	}
	if via != "storage" && hasFault(rules, "redirect") != nil {
		// 307 to a different origin ("MAY be served by file servers other
		// than a FHIR-specific server", BD2 L400)
		sto := s.stoBase
		if sto == "" {
			sto = strings.TrimSuffix(baseOf(r), BasePath)
		}
		w.Header().Set("Location", sto+"/_storage/"+s.mac("sto", jobID, name)+"/"+jobID+"/"+name)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	n := s.stats.downloadStart()
	defer s.stats.downloadEnd()
	if m := s.opts.MaxConcurrentDownloads; m > 0 && n > int64(m) {
		s.stats.add(func(st *Stats) { st.DownloadsRejected++ })
		w.Header().Set("Retry-After", strconv.Itoa(int((s.opts.RetryAfter+time.Second-1)/time.Second)))
		writeOO(w, 429, "error", "throttled", fmt.Sprintf("too many concurrent downloads (max %d)", m))
		return
	}
	bf := &bodyFault{resetLines: -1}
	for _, rule := range rules {
		addBodyFault(bf, rule, f.count())
	}
	s.writeBody(w, r, j, f, bf)
}

// countWriter counts wire bytes and, for the reset fault, fails after limit.
type countWriter struct {
	w     io.Writer
	n     int64
	limit int64 // -1 = none
}

var errReset = errors.New("injected reset")

func (c *countWriter) Write(b []byte) (int, error) {
	if c.limit >= 0 && c.n+int64(len(b)) > c.limit {
		k, _ := c.w.Write(b[:c.limit-c.n])
		c.n += int64(k)
		return k, errReset
	}
	k, err := c.w.Write(b)
	c.n += int64(k)
	return k, err
}

// slowWriter caps throughput at bps (the "slow" fault), honouring cancellation.
type slowWriter struct {
	ctx   context.Context
	w     io.Writer
	bps   int64
	start time.Time
	n     int64
}

func (s *slowWriter) Write(b []byte) (int, error) {
	chunk := int(max(s.bps/20, 1))
	done := 0
	for done < len(b) {
		k := min(chunk, len(b)-done)
		m, err := s.w.Write(b[done : done+k])
		done += m
		s.n += int64(m)
		if err != nil {
			return done, err
		}
		if f, ok := s.w.(http.Flusher); ok {
			f.Flush()
		}
		due := s.start.Add(time.Duration(float64(s.n) / float64(s.bps) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-s.ctx.Done():
				return done, s.ctx.Err()
			}
		}
	}
	return done, nil
}

// rangeWriter passes through bytes [skip, skip+left) of the stream.
type rangeWriter struct {
	w          io.Writer
	skip, left int64
}

var errRangeDone = errors.New("range done")

func (rw *rangeWriter) Write(b []byte) (int, error) {
	n := len(b)
	if rw.skip >= int64(len(b)) {
		rw.skip -= int64(len(b))
		return n, nil
	}
	b = b[rw.skip:]
	rw.skip = 0
	if int64(len(b)) > rw.left {
		b = b[:rw.left]
	}
	k, err := rw.w.Write(b)
	rw.left -= int64(k)
	if err == nil && rw.left == 0 {
		err = errRangeDone
	}
	return n, err
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(name), "gzip") {
			return !strings.Contains(strings.ReplaceAll(params, " ", ""), "q=0") || strings.Contains(params, "q=0.")
		}
	}
	return false
}

// parseRange handles one "bytes=" range; ok=false means ignore the header
// (multi-range or syntax we do not serve: RFC 9110 lets us send 200).
func parseRange(h string, size int64) (start, end int64, satisfiable, ok bool) {
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, false
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, false
	}
	var err error
	switch {
	case a == "":
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, false
		}
		start, end = max(0, size-n), size-1
	default:
		if start, err = strconv.ParseInt(a, 10, 64); err != nil {
			return 0, 0, false, false
		}
		end = size - 1
		if b != "" {
			if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
				return 0, 0, false, false
			}
			end = min(end, size-1)
		}
	}
	return start, end, start < size && size > 0, true
}

func (s *Server) writeBody(w http.ResponseWriter, r *http.Request, j *job, f *fileEntry, bf *bodyFault) {
	h := w.Header()
	// BD2 L580: NDJSON Content-Type "SHALL be application/fhir+ndjson"
	h.Set("Content-Type", "application/fhir+ndjson")
	if s.opts.RangeRequests {
		h.Set("Accept-Ranges", "bytes")
	}
	gzipped := bf.forceGzip || !s.opts.NoGzip && acceptsGzip(r)
	version := 0
	if bf.regenerate {
		version = 1
	}
	// RFC 9110 8.8.3: a strong entity tag names one version of one
	// representation; the gzip-coded one is a different representation.
	etag := fileETag(j.id, f.name, version, gzipped)
	h.Set("ETag", etag)
	if bf.regenerate {
		s.writeRegenerated(w, r, j, f, bf, etag, gzipped)
		return
	}
	cw := &countWriter{w: w, limit: -1}
	defer func() { s.stats.add(func(st *Stats) { st.FileBytesServed += cw.n }) }()
	var out io.Writer = cw
	if bf.bps > 0 {
		out = &slowWriter{ctx: r.Context(), w: cw, bps: bf.bps, start: time.Now()}
	}
	clean := !bf.midline && bf.dropLines == 0 && bf.resetLines < 0 && bf.resetBytes == 0
	if rg := r.Header.Get("Range"); rg != "" && s.opts.RangeRequests && clean && s.ifRangeHolds(r, fileETag(j.id, f.name, version, false)) {
		size := s.fileSize(j, f)
		start, end, satisfiable, ok := parseRange(rg, size)
		if ok {
			if !satisfiable {
				h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
				writeOO(w, http.StatusRequestedRangeNotSatisfiable, "error", "invalid", "range not satisfiable")
				return
			}
			h.Set("ETag", fileETag(j.id, f.name, version, false)) // a range is of the identity representation
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
			h.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
			w.WriteHeader(http.StatusPartialContent)
			s.stats.add(func(st *Stats) { st.RangeRequests++ })
			if r.Method == http.MethodHead {
				return
			}
			rw := &rangeWriter{w: out, skip: start, left: end - start + 1}
			s.generate(s.newGen(rw, j), j, f)
			if start == 0 && end == size-1 {
				s.stats.add(func(st *Stats) { st.FilesServed++ })
			}
			return
		}
	}
	var gz *gzip.Writer
	if gzipped {
		// BD3 L705: compression is marked with Content-Encoding
		h.Set("Content-Encoding", "gzip")
		h.Add("Vary", "Accept-Encoding")
		gz, _ = gzip.NewWriterLevel(out, gzip.BestSpeed)
		out = gz
	}
	if bf.resetBytes > 0 {
		cw.limit = bf.resetBytes
	}
	w.WriteHeader(200)
	if r.Method == http.MethodHead {
		return
	}
	g := s.newGen(out, j)
	defer s.putGen(g)
	count := f.count()
	maxLines := -1 // -1 = all
	switch {
	case bf.midline:
		g.cutAt = count // checklist 3.24: a 200 whose last line is cut
	case bf.dropLines > 0:
		maxLines = max(count-bf.dropLines, 0) // a 200 that ends cleanly but short
	case bf.resetLines >= 0:
		maxLines = bf.resetLines
	}
	complete := false
	if maxLines != 0 {
		g.stopAt = max(maxLines, 0)
		complete = s.generate(g, j, f)
	}
	reset := bf.resetLines >= 0 || bf.resetBytes > 0
	if reset {
		if gz != nil {
			gz.Flush()
		}
		hijackClose(w, true) // the client sees a partial chunked body, then RST
		return
	}
	if gz != nil {
		gz.Close()
	}
	if complete && g.err == nil && !bf.midline && bf.dropLines == 0 {
		s.stats.add(func(st *Stats) { st.FilesServed++ })
	}
}

// fileETag is the strong entity tag of a file version and coding.
func fileETag(jobID, name string, version int, gzipped bool) string {
	t := fmt.Sprintf(`"%s.%s.v%d`, jobID, strings.TrimSuffix(name, ".ndjson"), version)
	if gzipped {
		t += "-gzip"
	}
	return t + `"`
}

// ifRangeHolds applies RFC 9110 13.1.5: a Range is honoured only when
// If-Range is absent or strongly matches the current entity tag (this
// server sends no Last-Modified, so an HTTP-date never matches). Otherwise
// the whole representation is sent with 200.
func (s *Server) ifRangeHolds(r *http.Request, identityETag string) bool {
	v := strings.TrimSpace(r.Header.Get("If-Range"))
	if v == "" || (v == identityETag && !strings.HasPrefix(v, "W/")) {
		return true
	}
	if r.Header.Get("Range") != "" {
		s.stats.add(func(st *Stats) { st.IfRangeMismatches++ })
	}
	return false
}

// writeRegenerated serves version 1 of an output file: its lines in
// another order (rotated by half), so the count and the set of resources
// match the manifest but the bytes at any offset differ from version 0.
// Range and If-Range work as on version 0.
func (s *Server) writeRegenerated(w http.ResponseWriter, r *http.Request, j *job, f *fileEntry, bf *bodyFault, etag string, gzipped bool) {
	var buf strings.Builder
	g := s.newGen(&buf, j)
	s.generate(g, j, f)
	s.putGen(g)
	lines := strings.SplitAfter(buf.String(), "\n")
	if n := len(lines); n > 0 && lines[n-1] == "" {
		lines = lines[:n-1]
	}
	half := len(lines) / 2
	body := strings.Join(append(append([]string(nil), lines[half:]...), lines[:half]...), "")
	h := w.Header()
	if rg := r.Header.Get("Range"); rg != "" && s.opts.RangeRequests && s.ifRangeHolds(r, fileETag(j.id, f.name, 1, false)) {
		if start, end, satisfiable, ok := parseRange(rg, int64(len(body))); ok {
			if !satisfiable {
				h.Set("Content-Range", fmt.Sprintf("bytes */%d", len(body)))
				writeOO(w, http.StatusRequestedRangeNotSatisfiable, "error", "invalid", "range not satisfiable")
				return
			}
			h.Set("ETag", fileETag(j.id, f.name, 1, false))
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(body)))
			h.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
			w.WriteHeader(http.StatusPartialContent)
			s.stats.add(func(st *Stats) { st.RangeRequests++ })
			io.WriteString(w, body[start:end+1])
			return
		}
	}
	var out io.Writer = w
	var gz *gzip.Writer
	if gzipped {
		h.Set("Content-Encoding", "gzip")
		h.Add("Vary", "Accept-Encoding")
		gz, _ = gzip.NewWriterLevel(w, gzip.BestSpeed)
		out = gz
	}
	w.WriteHeader(http.StatusOK)
	io.WriteString(out, body)
	if gz != nil {
		gz.Close()
	}
	s.stats.add(func(st *Stats) { st.FilesServed++ })
}

func (s *Server) newGen(w io.Writer, j *job) *gen {
	bp := bufPool.Get().(*[]byte)
	return &gen{d: s.data, w: w, el: j.el, b: (*bp)[:0]}
}

func (s *Server) putGen(g *gen) {
	if cap(g.b) <= 1<<20 { // do not pin multi-MB attachment buffers
		b := g.b[:0]
		bufPool.Put(&b)
	}
}

// generate writes file f; true when every line was emitted.
func (s *Server) generate(g *gen, j *job, f *fileEntry) bool {
	count := f.count()
	switch f.kind {
	case kindOutput:
		emitted := 0
		j.pl.each(f.t, f.sp.start, func(jj, p int, v version) bool {
			g.resource(f.t, jj, p, v)
			emitted++
			return g.endLine() && emitted < f.sp.count
		})
	case kindError:
		for _, l := range f.lines {
			g.b = append(g.b, l...)
			if !g.endLine() {
				break
			}
		}
	case kindDeleted:
		// BD2 L480-490: each line a transaction Bundle of DELETE entries
		for i := 0; i < len(f.dels); i += deleteBundle {
			g.s(`{"resourceType":"Bundle","id":"`)
			g.s(j.id)
			g.s(`-deleted-`)
			g.i(i / deleteBundle)
			g.s(`","type":"transaction","entry":[`)
			for k, d := range f.dels[i:min(i+deleteBundle, len(f.dels))] {
				if k > 0 {
					g.b = append(g.b, ',')
				}
				g.s(`{"request":{"method":"DELETE","url":"`)
				g.s(typeNames[d.t])
				g.b = append(g.b, '/')
				g.s(idPrefix[d.t])
				g.i(d.j)
				g.s(`"}}`)
			}
			g.s(`]}`)
			if !g.endLine() {
				break
			}
		}
	}
	g.flush()
	return g.line == count && g.cutAt == 0 && g.err == nil
}

// fileSize is the uncompressed size, computed once by generating into a
// counter (Range needs the complete length).
func (s *Server) fileSize(j *job, f *fileEntry) int64 {
	j.mu.Lock()
	if n, ok := j.sizes[f.name]; ok {
		j.mu.Unlock()
		return n
	}
	j.mu.Unlock()
	cw := &countWriter{w: io.Discard, limit: -1}
	g := s.newGen(cw, j)
	s.generate(g, j, f)
	s.putGen(g)
	j.mu.Lock()
	if j.sizes == nil {
		j.sizes = map[string]int64{}
	}
	j.sizes[f.name] = cw.n
	j.mu.Unlock()
	return cw.n
}
