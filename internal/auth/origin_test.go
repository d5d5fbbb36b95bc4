package auth

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/oauth2"
)

// TestOriginRule is the one table for where credentials (the bearer token
// and the mTLS client certificate) may go (issue 16 §2): the FHIR base's
// origin, the token endpoint's, the servers file's allowedOrigins; nothing
// else, however the server spells it.
func TestOriginRule(t *testing.T) {
	o, err := NewOrigins("https://ehr.example.org/fhir/R4", "https://auth.example.org/oauth/token", []string{"https://cdn.example.org", "http://files.example.org:8080/"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		url  string
		want bool
	}{
		{"https://ehr.example.org/fhir/R4/$export", true},
		{"https://ehr.example.org/other/path?x=1", true}, // origin, not path
		{"https://EHR.example.org./status/1", true},      // case and trailing dot
		{"https://ehr.example.org:443/status/1", true},   // default port spelled out
		{"https://auth.example.org/anything", true},      // token endpoint's origin
		{"https://cdn.example.org/job/1.ndjson", true},   // allowedOrigins
		{"http://files.example.org:8080/x", true},
		{"http://ehr.example.org/fhir/R4/$export", false},  // scheme differs
		{"https://ehr.example.org:8443/fhir", false},       // port differs
		{"https://evil.example.org/status", false},         // another host
		{"https://ehr.example.org.evil.org/status", false}, // suffix trick
		{"https://evil.org/https://ehr.example.org/", false},
		{"https://ehr.example.org@evil.org/", false}, // user info trick: host is evil.org
		{"http://files.example.org/x", false},        // allowed origin's port only
		{"https://files.example.org:8080/x", false},
		{"ftp://ehr.example.org/x", false},
		{"file:///etc/passwd", false},
		{"/relative/status", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := o.AllowsString(tt.url); got != tt.want {
			t.Errorf("Allows(%q) = %v, want %v", tt.url, got, tt.want)
		}
	}
	var none *Origins
	if none.AllowsString("https://ehr.example.org/") {
		t.Error("a nil rule allows nothing")
	}
}

func TestCheckOrigin(t *testing.T) {
	for _, s := range []string{"https://cdn.example.org", "https://cdn.example.org/", "http://127.0.0.1:8080"} {
		if err := CheckOrigin(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"cdn.example.org", "https://cdn.example.org/files", "https://cdn.example.org?x", "https://u@cdn.example.org",
		"https://*.example.org", "ftp://cdn.example.org", "https://", "https://cdn.example.org:0", "https://cdn.example.org#f"} {
		if err := CheckOrigin(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// The token transport sends the token only to allowed origins, on every
// hop of a redirect chain.
func TestTransportTokenOnlyToAllowedOrigins(t *testing.T) {
	seen := map[string]string{}
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen["foreign"+r.URL.Path] = r.Header.Get("Authorization")
	}))
	defer foreign.Close()
	home := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen["home"+r.URL.Path] = r.Header.Get("Authorization")
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, foreign.URL+"/target", http.StatusFound)
		}
	}))
	defer home.Close()
	o, err := NewOrigins(home.URL+"/fhir", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := ClientFor(&http.Client{}, staticSource("sekrit"), o)
	for _, u := range []string{home.URL + "/direct", home.URL + "/redirect", foreign.URL + "/direct"} {
		resp, err := c.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if seen["home/direct"] != "Bearer sekrit" || seen["home/redirect"] != "Bearer sekrit" {
		t.Errorf("home did not get the token: %v", seen)
	}
	for k, v := range seen {
		if strings.HasPrefix(k, "foreign") && v != "" {
			t.Errorf("%s got Authorization %q", k, v)
		}
	}
	if _, ok := seen["foreign/direct"]; !ok {
		t.Errorf("requests: %v", seen)
	}
}

func staticSource(tok string) oauth2.TokenSource {
	return oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok, TokenType: "Bearer"})
}
