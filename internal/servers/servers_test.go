package servers

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulkflow/bulkflow/internal/auth"
	"github.com/bulkflow/bulkflow/testsuite/authserver"
	"github.com/go-jose/go-jose/v4"
)

func TestLoadValidates(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"ok", `{"servers":[{"name":"a","baseURL":"https://x/fhir","auth":{"type":"bearer","tokenEnv":"T"}}]}`, ""},
		{"unknown key", `{"servers":[{"name":"a","baseURL":"https://x/fhir","password":"p"}]}`, "unknown field"},
		{"relative url", `{"servers":[{"name":"a","baseURL":"/fhir"}]}`, "absolute http(s) URL"},
		{"dup", `{"servers":[{"name":"a","baseURL":"https://x"},{"name":"a","baseURL":"https://y"}]}`, "defined twice"},
		{"cert without key", `{"servers":[{"name":"a","baseURL":"https://x","tls":{"certFile":"c"}}]}`, "go together"},
		{"bad duration", `{"servers":[{"name":"a","baseURL":"https://x","retryAfterMax":"ten"}]}`, "Go durations"},
		{"bad auth", `{"servers":[{"name":"a","baseURL":"https://x","auth":{"type":"bearer"}}]}`, "exactly one"},
		{"smart without key", `{"servers":[{"name":"a","baseURL":"https://x","auth":{"type":"smart","clientID":"c"}}]}`, "privateKeyFile"},
		{"allowed origins", `{"servers":[{"name":"a","baseURL":"https://x","allowedOrigins":["https://cdn.example.org","http://127.0.0.1:9000"]}]}`, ""},
		{"allowed origin with path", `{"servers":[{"name":"a","baseURL":"https://x","allowedOrigins":["https://cdn.example.org/files"]}]}`, "allowedOrigins[0]"},
		{"allowed origin wildcard", `{"servers":[{"name":"a","baseURL":"https://x","allowedOrigins":["https://*.example.org"]}]}`, "wildcards"},
		{"allowed origin not a URL", `{"servers":[{"name":"a","baseURL":"https://x","allowedOrigins":["cdn.example.org"]}]}`, "must be an origin"},
		{"allowed origins not a list", `{"servers":[{"name":"a","baseURL":"https://x","allowedOrigins":"https://cdn.example.org"}]}`, "cannot unmarshal"},
		{"smart unreadable key", `{"servers":[{"name":"a","baseURL":"https://x","auth":{"type":"smart","clientID":"c","privateKeyFile":"/nonexistent.pem","kid":"k"}}]}`, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "servers.json")
			os.WriteFile(p, []byte(tc.body), 0o600)
			_, err := Load(p)
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Load = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestClientResolution(t *testing.T) {
	r, _ := Load("")
	if err := r.Add(Server{Name: "ehr", BaseURL: "https://ehr.example/fhir/", RetryAfterMax: "2m"}); err != nil {
		t.Fatal(err)
	}
	c1, err := r.Client("ehr", "")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := r.Client("", "https://ehr.example/fhir")
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c2 {
		t.Fatal("the same server must share one client (and token source)")
	}
	if c1.BaseURL != "https://ehr.example/fhir" || c1.MaxRetryAfter.Minutes() != 2 {
		t.Fatalf("client = %+v", c1)
	}
	if _, err := r.Client("nope", ""); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("unknown name: %v", err)
	}
	if _, err := r.Client("ehr", "https://other/fhir"); err == nil {
		t.Fatal("conflicting name and URL accepted")
	}
	if _, err := r.Client("", ""); err == nil {
		t.Fatal("no server accepted")
	}
	r.AllowUnconfigured = false
	if _, err := r.Client("", "https://unknown/fhir"); err == nil {
		t.Fatal("unconfigured URL accepted")
	}
}

// A smart server from a servers file: the client discovers the token
// endpoint from its base URL, gets a token and shares one token source.
func TestSmartAuthWiring(t *testing.T) {
	key, pub, err := authserver.NewClientKey("ES384", "k1")
	if err != nil {
		t.Fatal(err)
	}
	as, err := authserver.New(authserver.Config{Mode: authserver.ModeSMART, Clients: []authserver.Client{{ID: "bulkflow", JWKS: &pub}}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	defer srv.Close()
	mux.HandleFunc("/fhir/.well-known/smart-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(as.SmartConfiguration(srv.URL+"/fhir", "/auth/token"))
	})
	mux.Handle("/auth/token", as.TokenHandler())
	mux.Handle("/fhir/", as.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))

	dir := t.TempDir()
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{key}})
	os.WriteFile(filepath.Join(dir, "client.jwks"), jwks, 0o600)
	cfg := fmt.Sprintf(`{"servers":[{"name":"ehr","baseURL":%q,"auth":{"type":"smart","clientID":"bulkflow","jwksFile":%q}}]}`,
		srv.URL+"/fhir/", filepath.Join(dir, "client.jwks"))
	p := filepath.Join(dir, "servers.json")
	os.WriteFile(p, []byte(cfg), 0o600)
	r, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Client("ehr", "")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		resp, err := c.HTTP.Get(c.BaseURL + "/Patient")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET = %d", resp.StatusCode)
		}
	}
	if c2, _ := r.Client("", srv.URL+"/fhir"); c2 != c {
		t.Fatal("second lookup built another client (and token source)")
	}
	if st := as.Stats(); st.TokensIssued != 1 || st.AuthorizeOK != 3 {
		t.Fatalf("stats = %+v, want one token for three requests", st)
	}
	if _, ok := c.FileHTTP.Transport.(*auth.Transport); ok {
		t.Fatal("file client must not add tokens")
	}
}
