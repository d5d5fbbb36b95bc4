package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"none", Config{}, ""},
		{"bearer env", Config{Type: "bearer", TokenEnv: "X"}, ""},
		{"bearer both", Config{Type: "bearer", TokenEnv: "X", TokenFile: "f"}, "exactly one"},
		{"bearer none", Config{Type: "bearer"}, "exactly one"},
		{"secret missing url", Config{Type: "client-secret", ClientID: "c", ClientSecretEnv: "S"}, "tokenURL"},
		{"secret style", Config{Type: "client-secret", TokenURL: "https://as/token", ClientID: "c", ClientSecretEnv: "S", AuthStyle: "x"}, "authStyle"},
		{"unknown", Config{Type: "kerberos"}, "not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

// The token reaches the FHIR origin but never a redirect target elsewhere.
func TestTransportDropsTokenOnCrossOriginRedirect(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]string{}
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen["storage"] = r.Header.Get("Authorization")
		mu.Unlock()
		w.Write([]byte("ok"))
	}))
	defer storage.Close()
	fhir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen["fhir"+r.URL.Path] = r.Header.Get("Authorization")
		mu.Unlock()
		if r.URL.Path == "/file" {
			http.Redirect(w, r, storage.URL+"/blob", http.StatusTemporaryRedirect)
			return
		}
		if r.URL.Path == "/same" {
			http.Redirect(w, r, "/final", http.StatusTemporaryRedirect)
			return
		}
	}))
	defer fhir.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tok"), []byte("s3cret\n"), 0o600)
	cfg := Config{Type: "bearer", TokenFile: filepath.Join(dir, "tok")}
	ts, err := cfg.TokenSource(context.Background(), http.DefaultClient, "")
	if err != nil {
		t.Fatal(err)
	}
	c := Client(&http.Client{}, ts)
	for _, p := range []string{"/file", "/same"} {
		resp, err := c.Get(fhir.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if seen["fhir/file"] != "Bearer s3cret" || seen["fhir/final"] != "Bearer s3cret" {
		t.Fatalf("FHIR origin did not get the token: %v", seen)
	}
	if seen["storage"] != "" {
		t.Fatalf("token forwarded to another origin: %q", seen["storage"])
	}
}

func TestMissingSecretIsAClearError(t *testing.T) {
	cfg := Config{Type: "bearer", TokenEnv: "BULKFLOW_TEST_UNSET_TOKEN"}
	_, err := cfg.TokenSource(context.Background(), http.DefaultClient, "")
	if err == nil || !strings.Contains(err.Error(), "BULKFLOW_TEST_UNSET_TOKEN") {
		t.Fatalf("err = %v", err)
	}
}

func TestValidateSmart(t *testing.T) {
	testKeys(t)
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := writeFile(t, "ec.pem", pkcs8PEM(t, ecKey.Key))
	// A PEM block whose payload is not a key: its bytes must not be echoed.
	junk := "QkFES0VZTUFURVJJQUxCQURLRVlNQVRFUklBTA=="
	junkPEM := writeFile(t, "junk.pem", []byte("-----BEGIN PRIVATE KEY-----\n"+junk+"\n-----END PRIVATE KEY-----\n"))
	pubOnly := writeFile(t, "pub.jwks", jwksJSON(t, ecPub.Keys[0]))
	two := writeFile(t, "two.jwks", jwksJSON(t, ecKey, rsaKey))
	noKid := ecKey
	noKid.KeyID = ""
	smart := func(mod func(*Config)) Config {
		c := Config{Type: "smart", ClientID: "c", PrivateKeyFile: ecPEM, Kid: "ec-1"}
		mod(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"ok PEM", smart(func(c *Config) {}), ""},
		{"ok JWKS kid", Config{Type: "smart", ClientID: "c", JWKSFile: two, Kid: "rsa-1"}, ""},
		{"missing clientID", smart(func(c *Config) { c.ClientID = "" }), "needs clientID"},
		{"no key", smart(func(c *Config) { c.PrivateKeyFile = "" }), "exactly one of privateKeyFile"},
		{"two keys", smart(func(c *Config) { c.JWKSFile = two }), "exactly one of privateKeyFile"},
		{"PEM without kid", smart(func(c *Config) { c.Kid = "" }), "needs kid"},
		{"alg mismatch", smart(func(c *Config) { c.Alg = "RS384" }), "does not match the key"},
		{"alg unsupported", smart(func(c *Config) { c.Alg = "RS256" }), `alg "RS256" is not supported`},
		{"unreadable file", smart(func(c *Config) { c.PrivateKeyFile = "/nonexistent/key.pem" }), "no such file"},
		{"not a key", smart(func(c *Config) { c.PrivateKeyFile = junkPEM }), "is not a valid private key"},
		{"no PEM at all", smart(func(c *Config) { c.PrivateKeyFile = writeFile(t, "x.pem", []byte(junk)) }), "holds no PEM private key"},
		{"P-256 key", smart(func(c *Config) { c.PrivateKeyFile = writeFile(t, "p256.pem", pkcs8PEM(t, p256)) }), "ES384 needs P-384"},
		{"JWKS public only", Config{Type: "smart", ClientID: "c", JWKSFile: pubOnly}, "holds no private key"},
		{"JWKS ambiguous", Config{Type: "smart", ClientID: "c", JWKSFile: two}, "set kid"},
		{"JWKS unknown kid", Config{Type: "smart", ClientID: "c", JWKSFile: two, Kid: "nope"}, `no private key with kid "nope"`},
		{"JWKS key without kid", Config{Type: "smart", ClientID: "c", JWKSFile: writeFile(t, "nokid.jwks", jwksJSON(t, noKid))}, "has no kid"},
		{"JWKS not JSON", Config{Type: "smart", ClientID: "c", JWKSFile: junkPEM}, "not a valid JWK Set"},
		{"relative tokenURL", smart(func(c *Config) { c.TokenURL = "/token" }), "absolute http(s) URL"},
		{"secret given", smart(func(c *Config) { c.ClientSecretEnv = "S" }), "takes no client secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
			if err != nil && (strings.Contains(err.Error(), junk[:12]) || strings.Contains(err.Error(), "MII")) {
				t.Fatalf("error quotes key material: %v", err)
			}
		})
	}
}
