package testsuite

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite/authserver"
)

// TestSMARTAuthFlow: discovery, token, and Authorize on kickoff, status and files.
func TestSMARTAuthFlow(t *testing.T) {
	priv, pub, err := authserver.NewClientKey("ES384", "k1")
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, Options{Patients: 10, LargeAttachments: -1,
		Auth: authserver.Config{Mode: "smart", Clients: []authserver.Client{{ID: "bulk-client", JWKS: &pub}}}})
	resp, body := do(t, req(t, "GET", s.BaseURL()+"/.well-known/smart-configuration", nil))
	var cfg struct {
		TokenEndpoint string   `json:"token_endpoint"`
		Grants        []string `json:"grant_types_supported"`
	}
	if err := json.Unmarshal(body, &cfg); err != nil || resp.StatusCode != 200 || cfg.TokenEndpoint != s.BaseURL()+"/auth/token" {
		t.Fatalf("smart-configuration: %d %s", resp.StatusCode, body)
	}
	assertion, err := authserver.SignAssertion(priv, "bulk-client", cfg.TokenEndpoint, 4*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"system/*.rs"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
	resp, body = do(t, req(t, "POST", cfg.TokenEndpoint, strings.NewReader(form.Encode()), "Content-Type: application/x-www-form-urlencoded"))
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if json.Unmarshal(body, &tok); resp.StatusCode != 200 || tok.AccessToken == "" {
		t.Fatalf("token: %d %s", resp.StatusCode, body)
	}
	bearer := "Authorization: Bearer " + tok.AccessToken

	if resp, _ := do(t, req(t, "GET", s.BaseURL()+"/$export", nil, kickHeaders...)); resp.StatusCode != 401 {
		t.Errorf("kickoff without token: %d", resp.StatusCode)
	}
	loc := kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=Patient", nil, append(kickHeaders, bearer)...))
	if resp, _ := do(t, req(t, "GET", loc, nil)); resp.StatusCode != 401 {
		t.Errorf("status without token: %d", resp.StatusCode)
	}
	m := poll(t, loc, bearer)
	if !m.RequiresAccessToken {
		t.Error("requiresAccessToken false with auth on")
	}
	if resp, _ := do(t, req(t, "GET", m.Output[0].URL, nil)); resp.StatusCode != 401 {
		t.Errorf("file without token: %d", resp.StatusCode)
	}
	if got := downloadAll(t, m, bearer); len(got["Patient"]) != 10 {
		t.Errorf("Patient ids %d", len(got["Patient"]))
	}
	if resp, _ := do(t, req(t, "DELETE", loc, nil)); resp.StatusCode != 401 {
		t.Errorf("delete without token: %d", resp.StatusCode)
	}
	if st := s.Stats(); st.Requests["token"] != 1 || st.Requests["wellknown"] != 1 {
		t.Errorf("stats %+v", st.Requests)
	}
	// tokens expire mid-job: the next poll is 401
	s.Auth().ExpireAllTokens()
	if resp, _ := do(t, req(t, "GET", loc, nil, bearer)); resp.StatusCode != 401 {
		t.Errorf("expired token: %d", resp.StatusCode)
	}
}

func TestTLSAndMTLS(t *testing.T) {
	s := startServer(t, Options{Patients: 5, LargeAttachments: -1, TLS: true, ClientCert: true})
	if !strings.HasPrefix(s.BaseURL(), "https://") {
		t.Fatalf("base %s", s.BaseURL())
	}
	get := func(cfg *tls.Config) (*http.Response, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		return c.Get(s.BaseURL() + "/metadata")
	}
	if _, err := get(s.PKI().ClientTLSConfig(false)); err == nil {
		t.Error("mTLS: request without a client certificate succeeded")
	}
	resp, err := get(s.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("metadata over mTLS: %d", resp.StatusCode)
	}
}
