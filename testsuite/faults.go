package testsuite

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault script grammar (see package doc and README):
//
//	script   = rule { (";" | newline) rule }
//	rule     = endpoint [":" selector] "=" fault ["(" args ")"] ["@" attempts]
//	args     = key["=" value] {"," key["=" value]}
//	attempts = range {"," range}        range = N | N "-" M | N "-" | "*"
//
// Attempts are counted per key: kickoff/token/metadata/wellknown per server,
// status/manifest/delete per job, file per (job, file). The first matching
// rule wins; SetFaults resets the counters.

var faultEndpoints = map[string]bool{
	"kickoff": true, "status": true, "manifest": true, "file": true, "delete": true,
	"token": true, "metadata": true, "wellknown": true, "binary": true,
}

// responseFaults replace the whole response; valid on every endpoint.
var responseFaults = map[string]bool{
	"429": true, "busy": true, "transient": true, "html": true, "text": true,
	"expired-token": true, "gone": true, "notfound": true, "drop": true,
}

var endpointFaults = map[string]map[string]bool{
	"kickoff":  {"no-content-location": true, "relative-content-location": true},
	"manifest": {"errors": true, "capability-urls": true, "truncated": true},
	"file": {"truncate-midline": true, "truncate-lines": true, "reset": true, "slow": true,
		"redirect": true, "force-gzip": true, "regenerate": true},
	"binary": {"slow": true}, // attachments.go
}

type attRange struct{ lo, hi int } // hi 0 = open-ended

type faultRule struct {
	text     string
	endpoint string
	sel      string
	name     string
	args     map[string]string
	attempts []attRange // nil = every attempt
}

func (r *faultRule) fires(attempt int) bool {
	if r.attempts == nil {
		return true
	}
	for _, a := range r.attempts {
		if attempt >= a.lo && (a.hi == 0 || attempt <= a.hi) {
			return true
		}
	}
	return false
}

func (r *faultRule) intArg(k string, def int64) int64 {
	if v, ok := r.args[k]; ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return n
		}
	}
	return def
}

func parseFaults(script string) ([]faultRule, error) {
	var rules []faultRule
	for _, part := range strings.FieldsFunc(script, func(c rune) bool { return c == ';' || c == '\n' }) {
		part = strings.TrimSpace(part)
		if part == "" || strings.HasPrefix(part, "#") {
			continue
		}
		r := faultRule{text: part, args: map[string]string{}}
		lhs, rhs, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("fault rule %q: want endpoint=fault", part)
		}
		r.endpoint, r.sel, _ = strings.Cut(strings.TrimSpace(lhs), ":")
		if !faultEndpoints[r.endpoint] {
			return nil, fmt.Errorf("fault rule %q: unknown endpoint %q", part, r.endpoint)
		}
		rhs = strings.TrimSpace(rhs)
		if i := strings.LastIndexByte(rhs, '@'); i >= 0 && i > strings.LastIndexByte(rhs, ')') {
			att := strings.TrimSpace(rhs[i+1:])
			rhs = strings.TrimSpace(rhs[:i])
			if att != "*" {
				for _, a := range strings.Split(att, ",") {
					lo, hi, isRange := strings.Cut(strings.TrimSpace(a), "-")
					var ar attRange
					var err error
					if ar.lo, err = strconv.Atoi(lo); err != nil || ar.lo < 1 {
						return nil, fmt.Errorf("fault rule %q: bad attempt %q", part, a)
					}
					ar.hi = ar.lo
					if isRange {
						ar.hi = 0
						if hi != "" {
							if ar.hi, err = strconv.Atoi(hi); err != nil || ar.hi < ar.lo {
								return nil, fmt.Errorf("fault rule %q: bad attempt range %q", part, a)
							}
						}
					}
					r.attempts = append(r.attempts, ar)
				}
			}
		}
		r.name = rhs
		if i := strings.IndexByte(rhs, '('); i >= 0 {
			if !strings.HasSuffix(rhs, ")") {
				return nil, fmt.Errorf("fault rule %q: unbalanced parenthesis", part)
			}
			r.name = strings.TrimSpace(rhs[:i])
			for _, kv := range strings.Split(rhs[i+1:len(rhs)-1], ",") {
				if kv = strings.TrimSpace(kv); kv != "" {
					k, v, _ := strings.Cut(kv, "=")
					r.args[strings.TrimSpace(k)] = strings.TrimSpace(v)
				}
			}
		}
		if code, err := strconv.Atoi(r.name); err == nil {
			if code < 400 || code > 599 {
				return nil, fmt.Errorf("fault rule %q: status %d not in 400-599", part, code)
			}
		} else if !responseFaults[r.name] && !endpointFaults[r.endpoint][r.name] {
			return nil, fmt.Errorf("fault rule %q: fault %q not available on endpoint %q", part, r.name, r.endpoint)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// faultState holds the active rules and the per-key attempt counters.
type faultState struct {
	mu       sync.Mutex
	rules    []faultRule
	counters map[string]int
}

// SetFaults replaces the fault script and resets all attempt counters.
func (s *Server) SetFaults(script string) error {
	rules, err := parseFaults(script)
	if err != nil {
		return err
	}
	s.faults.mu.Lock()
	s.faults.rules = rules
	s.faults.counters = map[string]int{}
	s.faults.mu.Unlock()
	s.log.Info("fault script set", "script", script, "rules", len(rules))
	return nil
}

// faultsFor counts one attempt for (endpoint, key) and returns every rule
// that fires for it, in script order. sel reports whether a rule selector
// matches. Callers apply the first response fault, or else combine the body
// faults (so a global "file=slow" composes with a per-file truncation).
func (s *Server) faultsFor(endpoint, key string, sel func(string) bool) []*faultRule {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	ck := endpoint + "\x00" + key
	s.faults.counters[ck]++
	n := s.faults.counters[ck]
	var out []*faultRule
	for i := range s.faults.rules {
		r := &s.faults.rules[i]
		if r.endpoint != endpoint || r.sel != "" && (sel == nil || !sel(r.sel)) || !r.fires(n) {
			continue
		}
		s.stats.fault(r.text)
		s.log.Info("fault fired", "rule", r.text, "attempt", n, "key", key)
		out = append(out, r)
	}
	return out
}

// applyResponseFault writes the first whole-response fault among rules.
func (s *Server) applyResponseFault(w http.ResponseWriter, rules []*faultRule) bool {
	for _, r := range rules {
		if s.respondFault(w, r) {
			return true
		}
	}
	return false
}

func hasFault(rules []*faultRule, name string) *faultRule {
	for _, r := range rules {
		if r.name == name {
			return r
		}
	}
	return nil
}

// respond writes a whole-response fault; false if r is not one (a body or
// endpoint-specific fault the caller applies itself).
func (s *Server) respondFault(w http.ResponseWriter, r *faultRule) bool {
	code, err := strconv.Atoi(r.name)
	isNumeric := err == nil
	if !isNumeric && !responseFaults[r.name] {
		return false
	}
	if ra, ok := r.args["retry-after"]; ok {
		setRetryAfter(w, ra)
	} else if r.name == "busy" {
		w.Header().Set("Retry-After", "2")
	}
	switch r.name {
	case "drop":
		hijackClose(w, false)
	case "429":
		writeOO(w, 429, "error", "throttled", "Too many requests")
	case "busy":
		// BD2 L281: a server blocking a concurrent export SHOULD send 429 + Retry-After.
		writeOO(w, 429, "error", "throttled", "An export is already in progress for this client; retry later")
	case "transient":
		// BD2 L380: transient IssueType = "retry, the job has not failed"
		writeOO(w, int(r.intArg("code", 503)), "error", "transient", "Temporary failure, please retry")
	case "html":
		c := int(r.intArg("code", 502))
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(c)
		fmt.Fprintf(w, "<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n<center><h1>%d %s</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
			c, http.StatusText(c), c, http.StatusText(c))
	case "text":
		c := int(r.intArg("code", 500))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(c)
		fmt.Fprintf(w, "%d %s\n", c, http.StatusText(c))
	case "expired-token":
		// checklist 3.6: 401 with a plain-text body
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="The access token expired"`)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(401)
		w.Write([]byte("token expired\n"))
	case "gone":
		writeOO(w, 410, "error", "not-found", "The requested file has expired")
	case "notfound":
		writeOO(w, 404, "error", "not-found", "Export job not found (deleted or expired)")
	default:
		ic := "exception"
		switch {
		case code == 401:
			ic = "login"
		case code == 403:
			ic = "forbidden"
		case code == 404 || code == 410:
			ic = "not-found"
		case code == 429:
			ic = "throttled"
		case code < 500:
			ic = "invalid"
		}
		writeOO(w, code, "error", ic, fmt.Sprintf("Injected failure %d", code))
	}
	return true
}

// setRetryAfter: "none" = no header, N = seconds, date:N = HTTP-date N s
// ahead, anything else verbatim (garbage and absurd values are the point).
func setRetryAfter(w http.ResponseWriter, v string) {
	switch {
	case v == "none" || v == "":
	case strings.HasPrefix(v, "date:"):
		n, _ := strconv.Atoi(v[5:])
		w.Header().Set("Retry-After", time.Now().Add(time.Duration(n)*time.Second).UTC().Format(http.TimeFormat))
	default:
		w.Header().Set("Retry-After", v)
	}
}

// bodyFault is how a file fault alters a 200 body.
type bodyFault struct {
	midline    bool  // cut the last line in half, no final newline
	dropLines  int   // omit the last N lines
	resetLines int   // after this many lines, reset the connection (-1 = unset)
	resetBytes int64 // or after this many body bytes
	bps        int64 // bytes/second cap
	forceGzip  bool  // gzip even if the client did not ask (checklist 3.25)
	// regenerate serves a new version of the file: the same resources and
	// count, in another order, under a new ETag (a server that rebuilt the
	// file between two requests of one client).
	regenerate bool
}

// addBodyFault merges rule r into bf; false if r is not a body fault.
func addBodyFault(bf *bodyFault, r *faultRule, lines int) bool {
	switch r.name {
	case "truncate-midline":
		bf.midline = true
	case "truncate-lines":
		bf.dropLines = int(r.intArg("n", 1))
	case "reset":
		if b := r.intArg("bytes", -1); b >= 0 {
			bf.resetBytes = b
		} else {
			bf.resetLines = int(r.intArg("lines", int64(lines/2)))
		}
	case "slow":
		bf.bps = r.intArg("bps", 64<<10)
	case "force-gzip":
		bf.forceGzip = true
	case "regenerate":
		bf.regenerate = true
	default:
		return false
	}
	return true
}
