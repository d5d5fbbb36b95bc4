package authserver

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestAuthorizeRejectionsArePlainText(t *testing.T) {
	f := newFixture(t, Config{})
	tok := f.getToken(t, "system/*.rs")
	for _, tc := range []struct {
		name, header string
		wantStatus   int
		wantBody     string
		wantErrParam bool // WWW-Authenticate carries error="invalid_token"
	}{
		{"valid", "Bearer " + tok, 200, "ok", false},
		{"scheme case-insensitive", "bearer " + tok, 200, "ok", false},
		{"missing", "", 401, "missing bearer token", false},
		{"basic scheme", "Basic Zm9vOmJhcg==", 401, "authorization must be Bearer <token>", true},
		{"unknown token", "Bearer nope", 401, "invalid token", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, f.srv.URL+"/fhir/$export", nil)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			req.RequestURI = ""
			res := do(t, req)
			if res.status != tc.wantStatus || strings.TrimSpace(res.raw) != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", res.status, res.raw, tc.wantStatus, tc.wantBody)
			}
			if tc.wantStatus != 401 {
				return
			}
			if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type = %q, want text/plain", ct)
			}
			wa := res.header.Get("WWW-Authenticate")
			if !strings.HasPrefix(wa, "Bearer ") {
				t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", wa)
			}
			if got := strings.Contains(wa, `error="invalid_token"`); got != tc.wantErrParam {
				t.Errorf("WWW-Authenticate = %q, error=invalid_token present %v, want %v", wa, got, tc.wantErrParam)
			}
		})
	}
	s := f.a.Stats()
	if s.AuthorizeOK != 2 || s.AuthorizeFailureTotal() != 3 || s.AuthorizeFailures[AuthzMissing] != 1 || s.AuthorizeFailures[AuthzUnknown] != 1 {
		t.Errorf("stats = %+v", s)
	}
}

func TestTokenExpiry(t *testing.T) {
	f := newFixture(t, Config{TokenLifetime: 60 * time.Second})
	res := f.post(t, jwtForm(f.assertion(t, rsaPriv, clientA), "system/*.rs"), nil)
	if got, _ := res.body["expires_in"].(float64); got != 60 {
		t.Fatalf("expires_in = %v, want 60 (%s)", res.body["expires_in"], res.raw)
	}
	tok := res.str("access_token")
	f.clk.Advance(59 * time.Second)
	if res := f.fhirGet(t, "/fhir/x", tok); res.status != 200 {
		t.Fatalf("at 59s: %d %s", res.status, res.raw)
	}
	f.clk.Advance(time.Second)
	res = f.fhirGet(t, "/fhir/x", tok)
	if res.status != 401 || strings.TrimSpace(res.raw) != "token expired" {
		t.Fatalf("at 60s: %d %q, want 401 token expired", res.status, res.raw)
	}
	if !strings.Contains(res.header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("WWW-Authenticate = %q", res.header.Get("WWW-Authenticate"))
	}
	if n := f.a.Stats().AuthorizeFailures[AuthzExpired]; n != 1 {
		t.Errorf("expired failures = %d", n)
	}
	// A new assertion (fresh jti) gets a working token again.
	if res := f.fhirGet(t, "/fhir/x", f.getToken(t, "system/*.rs")); res.status != 200 {
		t.Errorf("fresh token: %d %s", res.status, res.raw)
	}
}

func TestExpireAllTokens(t *testing.T) {
	f := newFixture(t, Config{})
	t1, t2 := f.getToken(t, "system/*.rs"), f.getToken(t, "system/*.read")
	f.a.ExpireAllTokens()
	for _, tok := range []string{t1, t2} {
		if res := f.fhirGet(t, "/fhir/x", tok); res.status != 401 || strings.TrimSpace(res.raw) != "token expired" {
			t.Errorf("after ExpireAllTokens: %d %q", res.status, res.raw)
		}
	}
	// Tokens issued afterwards are unaffected, without moving the clock.
	if res := f.fhirGet(t, "/fhir/x", f.getToken(t, "system/*.rs")); res.status != 200 {
		t.Errorf("token issued after ExpireAllTokens: %d %s", res.status, res.raw)
	}
	if f.a.Stats().ExpireAllCalls != 1 {
		t.Errorf("ExpireAllCalls = %d", f.a.Stats().ExpireAllCalls)
	}
}

func TestAuthorizeScopeCoverage(t *testing.T) {
	f := newFixture(t, Config{})
	narrow := f.getToken(t, "system/Patient.rs system/Observation.read")
	wide := f.getToken(t, "system/*.read")
	for _, tc := range []struct {
		name, tok, method, path, ct, body string
		want                              int
	}{
		{"covered types", narrow, "GET", "/fhir/$export?_type=Patient,Observation", "", "", 200},
		{"repeated _type", narrow, "GET", "/fhir/$export?_type=Patient&_type=Observation", "", "", 200},
		{"uncovered type", narrow, "GET", "/fhir/$export?_type=Patient,Condition", "", "", 403},
		{"no _type", narrow, "GET", "/fhir/status/1", "", "", 200},
		{"wildcard covers all", wide, "GET", "/fhir/$export?_type=Condition", "", "", 200},
		{"POST Parameters uncovered", narrow, "POST", "/fhir/$export", "application/fhir+json",
			`{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient,Encounter"}]}`, 403},
		{"POST Parameters covered", narrow, "POST", "/fhir/$export", "application/fhir+json",
			`{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"},{"name":"_type","valueString":"Observation"}]}`, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := mustReq(t, tc.method, f.srv.URL+tc.path, tc.ct, tc.body)
			req.Header.Set("Authorization", "Bearer "+tc.tok)
			res := do(t, req)
			if res.status != tc.want {
				t.Fatalf("got %d %q, want %d", res.status, res.raw, tc.want)
			}
			if tc.want == 403 {
				if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("Content-Type = %q", ct)
				}
				if wa := res.header.Get("WWW-Authenticate"); !strings.Contains(wa, `error="insufficient_scope"`) {
					t.Errorf("WWW-Authenticate = %q", wa)
				}
			}
		})
	}
	// The POST body must still reach the handler after Authorize read it.
	req := mustReq(t, "POST", "http://x/fhir/$export", "application/fhir+json", `{"resourceType":"Parameters"}`)
	req.Header.Set("Authorization", "Bearer "+wide)
	if e := f.a.Authorize(req); e != nil {
		t.Fatal(e)
	}
	var sb strings.Builder
	buf := make([]byte, 64)
	for {
		n, err := req.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if sb.String() != `{"resourceType":"Parameters"}` {
		t.Errorf("body after Authorize = %q", sb.String())
	}
	// AuthorizeTypes for callers that know the type (file downloads).
	req = mustReq(t, "GET", "http://x/files/1.ndjson", "", "")
	req.Header.Set("Authorization", "Bearer "+narrow)
	if e := f.a.AuthorizeTypes(req, "Condition"); e == nil || e.Status != 403 {
		t.Errorf("AuthorizeTypes(Condition) = %v, want 403", e)
	}
	if e := f.a.AuthorizeTypes(req, "Patient"); e != nil {
		t.Errorf("AuthorizeTypes(Patient) = %v", e)
	}
}

func TestTokenClient(t *testing.T) {
	f := newFixture(t, Config{})
	res := f.post(t, jwtForm(f.assertion(t, c2Priv, clientB), "system/*.rs"), nil)
	req := httptest.NewRequest("GET", "/fhir/status/1", nil)
	req.Header.Set("Authorization", "Bearer "+res.str("access_token"))
	if id, ok := f.a.TokenClient(req); !ok || id != clientB {
		t.Errorf("TokenClient = %q, %v; want %s", id, ok, clientB)
	}
	f.a.ExpireAllTokens()
	if id, ok := f.a.TokenClient(req); ok {
		t.Errorf("expired token still maps to %q", id)
	}
	req.Header.Set("Authorization", "Bearer nope")
	if _, ok := f.a.TokenClient(req); ok {
		t.Error("unknown token maps to a client")
	}
}

func TestModeNoneAndBearer(t *testing.T) {
	none, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/fhir/$export", nil)
	if none.Enabled() || none.Authorize(req) != nil || none.SmartConfiguration("http://x/fhir", "http://x/token") != nil {
		t.Error("mode none must be disabled, allow everything and advertise nothing")
	}

	b, err := New(Config{Mode: ModeBearer, StaticToken: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	if !b.Enabled() {
		t.Error("bearer mode must be enabled")
	}
	for _, tc := range []struct {
		header string
		want   int
	}{{"Bearer s3cret", 0}, {"Bearer other", 401}, {"", 401}} {
		req := httptest.NewRequest("GET", "/fhir/$export?_type=Patient", nil)
		if tc.header != "" {
			req.Header.Set("Authorization", tc.header)
		}
		e := b.Authorize(req)
		if (e == nil && tc.want != 0) || (e != nil && e.Status != tc.want) {
			t.Errorf("%q: got %v, want %d", tc.header, e, tc.want)
		}
	}
	rec := httptest.NewRecorder()
	b.TokenHandler().ServeHTTP(rec, mustReq(t, "POST", "http://x/token", "application/x-www-form-urlencoded", "grant_type=client_credentials"))
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), CodeUnsupportedGrantType) {
		t.Errorf("bearer token endpoint: %d %s", rec.Code, rec.Body)
	}
	if b.SmartConfiguration("http://x/fhir", "http://x/token") != nil {
		t.Error("bearer mode advertises no SMART configuration")
	}
}
