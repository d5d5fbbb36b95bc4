package testsuite

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulkflow/bulkflow/testsuite/authserver"
)

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	Seed                   int64         // default 1
	Patients               int           // default 100
	ResourcesPerFile       int           // max lines per NDJSON file; default 10000
	ExportDuration         time.Duration // how long status stays 202 after kickoff (wall clock); default 0
	RetryAfter             time.Duration // Retry-After sent with 202s; default 1s
	FileTTL                time.Duration // files expire (410) this long after completion; default 1h
	RangeRequests          bool          // serve Range (206, Accept-Ranges: bytes) on files
	MaxConcurrentDownloads int           // >0: above it file requests get 429 + Retry-After
	Faults                 string        // fault script (see package doc); "" = none
	Auth                   authserver.Config
	TLS                    bool // serve HTTPS with a throw-away CA (see PKI, ClientTLSConfig)
	// ClientCert (with TLS) requires a client certificate signed by the test
	// CA on every connection (mTLS).
	ClientCert       bool
	LargeAttachments int // DocumentReferences with > 4 MB inline attachments; default 3 (negative = none)
	// Attachments: a share of DocumentReferences point at Binary resources
	// (attachment.url) instead of inline data; see attachments.go.
	Attachments bool
	Logger      *slog.Logger // nil = discard
	// ManifestPageSize is the number of output entries per manifest page
	// when the client sends allowPartialManifests=true; default 2.
	ManifestPageSize int
	// Epoch is the initial data clock; zero = 2025-01-01T00:00:00Z (fixed, so
	// runs are reproducible).
	Epoch time.Time
	// NoGzip serves files uncompressed even when the client asks for gzip
	// (Accept-Encoding is a preference, RFC 9110 12.5.3): benchmarks use it
	// to measure identity on the wire. The force-gzip fault still gzips.
	NoGzip bool
}

// Server is the test FHIR Bulk Data server.
type Server struct {
	opts   Options
	data   *dataset
	mut    atomic.Pointer[mutState]
	mutMu  sync.Mutex
	log    *slog.Logger
	auth   *authserver.Server
	stats  *statsCollector
	faults faultState
	macKey []byte

	jobsMu sync.Mutex
	jobs   map[string]*job

	handler        http.Handler
	storageHandler http.Handler

	pki           *authserver.PKI
	srv, storage  *http.Server
	base, stoBase string
}

// BasePath is the FHIR base path on the listener.
const BasePath = "/fhir"

// NewServer builds the dataset index (prefix sums only) and the handlers.
func NewServer(opts Options) (*Server, error) {
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	if opts.Patients <= 0 {
		opts.Patients = 100
	}
	if opts.ResourcesPerFile <= 0 {
		opts.ResourcesPerFile = 10000
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = time.Second
	}
	if opts.FileTTL <= 0 {
		opts.FileTTL = time.Hour
	}
	if opts.LargeAttachments == 0 {
		opts.LargeAttachments = 3
	} else if opts.LargeAttachments < 0 {
		opts.LargeAttachments = 0
	}
	if opts.ManifestPageSize <= 0 {
		opts.ManifestPageSize = 2
	}
	if opts.Epoch.IsZero() {
		opts.Epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	s := &Server{opts: opts, log: opts.Logger, stats: newStats(), jobs: map[string]*job{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.data = newDataset(opts.Seed, opts.Patients, opts.LargeAttachments, opts.Epoch.UnixMilli())
	s.data.attachOn = opts.Attachments
	s.mut.Store(&mutState{clock: opts.Epoch.UnixMilli()})
	s.faults.counters = map[string]int{}
	if err := s.SetFaults(opts.Faults); err != nil {
		return nil, err
	}
	if opts.Auth.Mode != "" && opts.Auth.Mode != authserver.ModeNone {
		a, err := authserver.New(opts.Auth)
		if err != nil {
			return nil, err
		}
		s.auth = a
	}
	s.macKey = make([]byte, 32)
	if _, err := rand.Read(s.macKey); err != nil {
		return nil, err
	}
	s.handler = s.wrap(s.route)
	s.storageHandler = s.wrap(func(w *recorder, r *http.Request) string {
		if strings.HasPrefix(r.URL.Path, "/_storage/") {
			s.serveStorage(w, r)
			return "storage"
		}
		if id, ok := strings.CutPrefix(r.URL.Path, "/_attach/"); ok {
			s.serveBinary(w, r, id, true)
			return "binary2"
		}
		writeOO(w, 404, "error", "not-found", "no such object")
		return "other"
	})
	return s, nil
}

// Auth returns the embedded authorization server (nil when auth is off),
// e.g. to call ExpireAllTokens or read its Stats.
func (s *Server) Auth() *authserver.Server { return s.auth }

// Handler serves everything (FHIR base under /fhir, capability and storage
// URLs, /_admin) for httptest use. Without Start, redirects to "object
// storage" stay on the same host.
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens on addr (e.g. "127.0.0.1:0") and serves in the background.
// A second listener on the same host stands in for object storage (the 307
// redirect target of the "redirect" file fault).
func (s *Server) Start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(ln.Addr().String())
	sln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		ln.Close()
		return err
	}
	scheme := "http"
	newSrv := func(h http.Handler) *http.Server {
		return &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	}
	s.srv, s.storage = newSrv(s.handler), newSrv(s.storageHandler)
	if s.opts.TLS {
		scheme = "https"
		pki, err := authserver.NewTestPKI(host)
		if err != nil {
			ln.Close()
			sln.Close()
			return err
		}
		s.pki = pki
		cfg := pki.ServerTLSConfig(s.opts.ClientCert)
		// HTTP/1.1 only: the reset fault hijacks the connection.
		cfg.NextProtos = []string{"http/1.1"}
		s.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		s.storage.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		ln = tls.NewListener(ln, cfg)
		// object storage does not ask for client certificates
		sln = tls.NewListener(sln, pki.ServerTLSConfig(false))
	}
	s.base = scheme + "://" + ln.Addr().String() + BasePath
	s.stoBase = scheme + "://" + sln.Addr().String()
	s.data.attBase, s.data.attSecond = s.base, s.stoBase
	go s.srv.Serve(ln)
	go s.storage.Serve(sln)
	s.log.Info("test FHIR server started", "base", s.base, "storage", s.stoBase, "patients", s.opts.Patients, "seed", s.opts.Seed)
	return nil
}

// BaseURL is the FHIR base, e.g. "http://127.0.0.1:41234/fhir" (after Start).
func (s *Server) BaseURL() string { return s.base }

// PKI returns the throw-away CA and certificates when TLS is on (after Start).
func (s *Server) PKI() *authserver.PKI { return s.pki }

// ClientTLSConfig trusts the server's CA (and presents the client
// certificate when ClientCert is set); nil without TLS.
func (s *Server) ClientTLSConfig() *tls.Config {
	if s.pki == nil {
		return nil
	}
	return s.pki.ClientTLSConfig(s.opts.ClientCert)
}

// Close stops both listeners and in-flight requests.
func (s *Server) Close() error {
	var errs []error
	for _, h := range []*http.Server{s.srv, s.storage} {
		if h != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := h.Shutdown(ctx); err != nil {
				errs = append(errs, h.Close())
			}
			cancel()
		}
	}
	return errors.Join(errs...)
}

// Shutdown stops gracefully, waiting for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	for _, h := range []*http.Server{s.srv, s.storage} {
		if h != nil {
			errs = append(errs, h.Shutdown(ctx))
		}
	}
	return errors.Join(errs...)
}

// GroupIDs lists the Group ids usable for Group-level export.
func (s *Server) GroupIDs() []string {
	out := make([]string, numGroups)
	for g := range out {
		out[g] = s.data.id(tGroup, g)
	}
	return out
}

// wrap adds stats and request logging around a handler returning its endpoint kind.
func (s *Server) wrap(h func(w *recorder, r *http.Request) string) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w := &recorder{ResponseWriter: rw}
		kind := h(w, r)
		code := w.status
		if w.hijacked {
			code = 0
		}
		s.stats.add(func(st *Stats) {
			st.Requests[kind]++
			if st.StatusCodes[kind] == nil {
				st.StatusCodes[kind] = map[int]int64{}
			}
			st.StatusCodes[kind][code]++
			st.BytesServed += w.bytes
		})
		s.log.Info("request", "method", r.Method, "path", r.URL.Path, "kind", kind, "status", code,
			"bytes", w.bytes, "dur", time.Since(start).Round(time.Microsecond))
	})
}

func (s *Server) route(w *recorder, r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/_admin/"):
		s.serveAdmin(w, r)
		return "admin"
	case strings.HasPrefix(p, "/_cap/"):
		s.serveCapability(w, r)
		return "capability"
	case strings.HasPrefix(p, "/_storage/"):
		s.serveStorage(w, r)
		return "storage"
	case !strings.HasPrefix(p, BasePath+"/"):
		writeOO(w, 404, "error", "not-found", "unknown path "+p)
		return "other"
	}
	p = p[len(BasePath):]
	switch {
	case p == "/$export" || p == "/Patient/$export" || strings.HasPrefix(p, "/Group/") && strings.HasSuffix(p, "/$export"):
		s.serveKickoff(w, r, p)
		return "kickoff"
	case p == "/metadata":
		s.serveMetadata(w, r)
		return "metadata"
	case p == "/.well-known/smart-configuration":
		s.serveWellKnown(w, r)
		return "wellknown"
	case p == "/auth/token":
		if rules := s.faultsFor("token", "", nil); s.applyResponseFault(w, rules) {
			return "token"
		}
		if s.auth == nil {
			writeOO(w, 404, "error", "not-supported", "authorization is not enabled on this server")
			return "token"
		}
		s.auth.TokenHandler().ServeHTTP(w, r)
		return "token"
	case strings.HasPrefix(p, "/_jobs/"):
		if r.Method == http.MethodDelete {
			s.serveDelete(w, r, p[len("/_jobs/"):])
			return "delete"
		}
		s.serveStatus(w, r, p[len("/_jobs/"):])
		return "status"
	case strings.HasPrefix(p, "/Binary/"):
		s.serveBinary(w, r, p[len("/Binary/"):], false)
		return "binary"
	case strings.HasPrefix(p, "/_files/"):
		jobID, name, _ := strings.Cut(p[len("/_files/"):], "/")
		s.serveFile(w, r, jobID, name, "file")
		return "file"
	}
	writeOO(w, 404, "error", "not-found", "unknown FHIR endpoint "+p)
	return "other"
}

// baseOf derives the FHIR base from the request, so Handler() works behind
// httptest or any host name.
func baseOf(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + BasePath
}

// ---- OperationOutcome helpers ----

// ooJSON is a FHIR OperationOutcome with one issue.
func ooJSON(severity, code, diag string) []byte {
	b, _ := json.Marshal(map[string]any{
		"resourceType": "OperationOutcome",
		"issue": []any{map[string]any{
			"severity": severity, "code": code, "diagnostics": diag,
		}},
	})
	return b
}

// writeOO writes an error the way BD2 L280 requires: "The body SHALL be a
// FHIR OperationOutcome resource in JSON format".
func writeOO(w http.ResponseWriter, status int, severity, code, diag string) {
	w.Header().Set("Content-Type", "application/fhir+json")
	w.WriteHeader(status)
	w.Write(ooJSON(severity, code, diag))
}

func writeJSON(w http.ResponseWriter, status int, ctype string, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		writeOO(w, 500, "fatal", "exception", err.Error())
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// hijackClose drops the connection; with flush, what was written so far
// reaches the client first (a reset mid-body), else no response at all.
func hijackClose(w http.ResponseWriter, flush bool) {
	rc := http.NewResponseController(w)
	if flush {
		_ = rc.Flush()
	}
	conn, _, err := rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // HTTP/2 or test recorder: abort is the closest thing
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST rather than FIN: a real "connection reset"
	}
	conn.Close()
}

func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	if s.auth == nil {
		return true
	}
	if e := s.auth.Authorize(r); e != nil {
		e.ServeHTTP(w, r) // as-is: may be plain text (checklist 3.6)
		return false
	}
	return true
}

func (s *Server) mac(parts ...string) string {
	m := hmac.New(sha256.New, s.macKey)
	io.WriteString(m, strings.Join(parts, "/"))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// ---- metadata & discovery ----

func (s *Server) serveMetadata(w http.ResponseWriter, r *http.Request) {
	if rules := s.faultsFor("metadata", "", nil); s.applyResponseFault(w, rules) {
		return
	}
	base := baseOf(r)
	op := func(name, def string) map[string]any {
		return map[string]any{"name": name, "definition": def}
	}
	var types []any
	for t := rtype(0); t < numTypes; t++ {
		res := map[string]any{"type": typeNames[t], "interaction": []any{}}
		switch t {
		case tPatient:
			res["operation"] = []any{op("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export")}
		case tGroup:
			res["operation"] = []any{op("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export")}
		}
		types = append(types, res)
	}
	rest := map[string]any{
		"mode":      "server",
		"resource":  types,
		"operation": []any{op("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export")},
	}
	if s.auth != nil {
		rest["security"] = map[string]any{
			"service": []any{map[string]any{"coding": []any{map[string]any{
				"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}}}},
			"extension": []any{map[string]any{
				"url":       "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
				"extension": []any{map[string]any{"url": "token", "valueUri": base + "/auth/token"}},
			}},
		}
	}
	writeJSON(w, 200, "application/fhir+json", map[string]any{
		"resourceType":   "CapabilityStatement",
		"status":         "active",
		"date":           "2025-01-01",
		"kind":           "instance",
		"fhirVersion":    "4.0.1",
		"format":         []string{"application/fhir+json"},
		"instantiates":   []string{"http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"},
		"implementation": map[string]any{"description": "bulkflow test FHIR Bulk Data server", "url": base},
		"rest":           []any{rest},
	})
}

func (s *Server) serveWellKnown(w http.ResponseWriter, r *http.Request) {
	if rules := s.faultsFor("wellknown", "", nil); s.applyResponseFault(w, rules) {
		return
	}
	var cfg map[string]any
	if s.auth != nil {
		base := baseOf(r)
		// SMART conformance L126-195: JSON regardless of Accept; absolute URLs.
		cfg = s.auth.SmartConfiguration(base, base+"/auth/token")
	}
	if cfg == nil {
		// no SMART auth (modes none/bearer): a 404 clients must tolerate (checklist 3.1)
		writeOO(w, 404, "error", "not-found", "SMART authorization is not enabled on this server")
		return
	}
	writeJSON(w, 200, "application/json", cfg)
}

// ---- admin (outside the FHIR base) ----

func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_admin/stats":
		if r.Method == http.MethodDelete || r.Method == http.MethodPost {
			s.ResetStats()
		}
		writeJSON(w, 200, "application/json", s.Stats())
	case "/_admin/faults":
		if r.Method != http.MethodPost && r.Method != http.MethodPut {
			writeOO(w, 405, "error", "not-supported", "POST the fault script as the body")
			return
		}
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err := s.SetFaults(string(b)); err != nil {
			writeOO(w, 400, "error", "invalid", err.Error())
			return
		}
		writeOO(w, 200, "information", "informational", "fault script set")
	case "/_admin/mutate":
		if r.Method != http.MethodPost {
			writeOO(w, 405, "error", "not-supported", "POST /_admin/mutate?advance=1h&updates=10&deletes=5")
			return
		}
		q := r.URL.Query()
		adv, err := time.ParseDuration(q.Get("advance"))
		if err != nil && q.Get("advance") != "" {
			writeOO(w, 400, "error", "invalid", "advance: "+err.Error())
			return
		}
		up, _ := strconv.Atoi(q.Get("updates"))
		del, _ := strconv.Atoi(q.Get("deletes"))
		s.Mutate(adv, up, del)
		writeJSON(w, 200, "application/json", map[string]any{"now": s.Now().Format(time.RFC3339Nano)})
	default:
		writeOO(w, 404, "error", "not-found", "admin endpoints: /_admin/stats, /_admin/faults, /_admin/mutate")
	}
}

func fmtInstant(ms int64) string { return string(appendInstant(nil, ms)) }
