package auth

import (
	"context"
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
		{"secret style", Config{Type: "client-secret", TokenURL: "u", ClientID: "c", ClientSecretEnv: "S", AuthStyle: "x"}, "authStyle"},
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
	ts, err := cfg.TokenSource(context.Background(), http.DefaultClient)
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
	_, err := cfg.TokenSource(context.Background(), http.DefaultClient)
	if err == nil || !strings.Contains(err.Error(), "BULKFLOW_TEST_UNSET_TOKEN") {
		t.Fatalf("err = %v", err)
	}
}
