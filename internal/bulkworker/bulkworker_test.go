package bulkworker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulkflow/bulkflow/internal/servers"
)

// §3: the worker refuses to start on what would fail an export hours in: an
// unset tokenEnv, a missing secret or TLS file, an unwritable output root.
func TestPreflight(t *testing.T) {
	dir := t.TempDir()
	notADir := filepath.Join(dir, "file")
	os.WriteFile(notADir, []byte("x"), 0o600)
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, []byte("s3cret"), 0o600)
	t.Setenv("BULKFLOW_TEST_TOKEN_SET", "tok")
	t.Setenv("BULKFLOW_TEST_TOKEN_UNSET", "")
	cases := []struct {
		name, server, output, want string
	}{
		{"all good", `{"name":"ok","baseURL":"https://ehr.example.org/fhir","auth":{"type":"bearer","tokenEnv":"BULKFLOW_TEST_TOKEN_SET"}}`, dir, ""},
		{"secret file", `{"name":"ok","baseURL":"https://ehr.example.org/fhir","auth":{"type":"client-secret","tokenURL":"https://ehr.example.org/token","clientID":"c","clientSecretFile":"` + secretFile + `"}}`, dir, ""},
		{"unset tokenEnv", `{"name":"epic","baseURL":"https://ehr.example.org/fhir","auth":{"type":"bearer","tokenEnv":"BULKFLOW_TEST_TOKEN_UNSET"}}`, dir,
			`server "epic": bearer token: environment variable BULKFLOW_TEST_TOKEN_UNSET is empty or unset: set it in the worker's environment`},
		{"missing secret file", `{"name":"cs","baseURL":"https://ehr.example.org/fhir","auth":{"type":"client-secret","tokenURL":"https://ehr.example.org/token","clientID":"c","clientSecretFile":"` + filepath.Join(dir, "nope") + `"}}`, dir,
			`server "cs": client secret: read secret file`},
		{"missing CA file", `{"name":"tls","baseURL":"https://ehr.example.org/fhir","tls":{"caFile":"` + filepath.Join(dir, "ca.pem") + `"}}`, dir,
			`server "tls": CA bundle`},
		{"missing client certificate", `{"name":"mtls","baseURL":"https://ehr.example.org/fhir","tls":{"certFile":"` + filepath.Join(dir, "c.pem") + `","keyFile":"` + filepath.Join(dir, "k.pem") + `"}}`, dir,
			`server "mtls": client certificate`},
		{"output root not there yet", `{"name":"ok","baseURL":"https://ehr.example.org/fhir"}`, filepath.Join(dir, "new", "out"), ""},
		{"output root under a file", `{"name":"ok","baseURL":"https://ehr.example.org/fhir"}`, filepath.Join(notADir, "out"),
			"output root " + filepath.Join(notADir, "out") + " cannot be created"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "servers.json")
			os.WriteFile(path, []byte(`{"servers":[`+c.server+`]}`), 0o600)
			reg, err := servers.Load(path)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			err = Preflight(reg, path, c.output)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("refused a good configuration: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	// The write check leaves nothing behind, and creates no directory.
	if _, err := os.Stat(filepath.Join(dir, "new")); err == nil {
		t.Error("the check created the output root")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".bulkflow-write-check-*")); len(left) > 0 {
		t.Errorf("left %v", left)
	}
}
