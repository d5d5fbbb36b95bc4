package servers

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
