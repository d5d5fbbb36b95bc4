package authserver

import (
	"fmt"
	"strings"
)

// scope is one system-level read scope: v2 "system/<T>.rs" or v1
// "system/<T>.read" (checklist §2 "Scopes"; scopes-and-launch-context.md
// L80-84 maps v1 .read to v2 .rs, so both grant read+search here).
type scope struct {
	typ string // "*" or a FHIR resource type
	v2  bool
}

func (s scope) String() string {
	if s.v2 {
		return "system/" + s.typ + ".rs"
	}
	return "system/" + s.typ + ".read"
}

func (s scope) covers(typ string) bool { return s.typ == "*" || s.typ == typ }

// parseScope accepts system/*.rs, system/<Type>.rs, system/*.read and
// system/<Type>.read. Anything else is "unknown" to this server.
func parseScope(s string) (scope, error) {
	rest, ok := strings.CutPrefix(s, "system/")
	if !ok {
		return scope{}, fmt.Errorf("unsupported scope %q: only system/<Type>.rs and system/<Type>.read are known", s)
	}
	if strings.Contains(rest, "?") {
		// v2 allows "?param=" restrictions, but this server cannot filter data by
		// them, so granting one would be a lie.
		return scope{}, fmt.Errorf("unsupported scope %q: fine-grained (?param=) scopes are not supported", s)
	}
	typ, perm, ok := strings.Cut(rest, ".")
	if !ok || !validType(typ) {
		return scope{}, fmt.Errorf("malformed scope %q", s)
	}
	switch perm {
	case "rs":
		return scope{typ: typ, v2: true}, nil
	case "read":
		return scope{typ: typ}, nil
	}
	return scope{}, fmt.Errorf("unsupported scope %q: only .rs (v2) and .read (v1) permissions are granted", s)
}

// validType: "*" or a FHIR resource type name (an upper-case ASCII letter then
// letters).
func validType(t string) bool {
	if t == "*" {
		return true
	}
	if t == "" || t[0] < 'A' || t[0] > 'Z' {
		return false
	}
	for _, c := range t {
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}

// grant decides the granted scopes for a requested scope string. It returns
// a non-nil *oauthError (invalid_scope) when nothing can be granted or a
// scope is unknown. The granted scope "can be different from the scopes
// requested" (backend-services.md L192-229): a wildcard request against a
// server configured with only per-type scopes gets those narrower scopes.
func (a *Server) grant(requested string) ([]scope, *oauthError) {
	fields := strings.Fields(requested)
	if len(fields) == 0 {
		return nil, newOAuthError(errInvalidScope, "scope is empty")
	}
	var granted []scope
	seen := map[scope]bool{}
	add := func(s scope) {
		if !seen[s] {
			seen[s] = true
			granted = append(granted, s)
		}
	}
	for _, f := range fields {
		req, err := parseScope(f)
		if err != nil {
			return nil, newOAuthError(errInvalidScope, err.Error())
		}
		if req.v2 && a.rejectV2 {
			return nil, newOAuthError(errInvalidScope, fmt.Sprintf("v2 scope %q is not supported by this server; request v1 (.read) scopes", f))
		}
		covered := false
		for _, c := range a.scopes {
			if c.v2 == req.v2 && c.covers(req.typ) {
				covered = true
				break
			}
		}
		if covered {
			add(req)
			continue
		}
		if req.typ == "*" {
			for _, c := range a.scopes {
				if c.v2 == req.v2 {
					add(c)
				}
			}
		}
	}
	if len(granted) == 0 {
		return nil, newOAuthError(errInvalidScope, fmt.Sprintf("none of the requested scopes %q can be granted; supported: %s", requested, joinScopes(a.scopes)))
	}
	return granted, nil
}

func joinScopes(ss []scope) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = s.String()
	}
	return strings.Join(parts, " ")
}
