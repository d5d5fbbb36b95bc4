package testsuite

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/bulkflow/bulkflow/testsuite/authserver"
)

// Every attachment Expected lists is served as described: bytes with the
// listed SHA-256 (Binary JSON decoded), 404 for the missing ones, the
// second origin's only there, and a token needed on the FHIR base.
func TestAttachmentsServed(t *testing.T) {
	srv, err := NewServer(Options{Patients: 60, LargeAttachments: -1, Attachments: true, Auth: authserver.Config{Mode: "bearer", StaticToken: "tok"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	want, err := srv.Expected(Query{Level: "system", Types: []string{"DocumentReference"}})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	get := func(u string, token bool) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", u, nil)
		if token {
			req.Header.Set("Authorization", "Bearer tok")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	for _, e := range want.Attachments {
		kinds[e.Kind]++
		u := e.URL
		if !strings.HasPrefix(u, "http") {
			u = srv.BaseURL() + "/" + u
		}
		if e.SecondOrigin != strings.HasPrefix(u, srv.SecondOrigin()) {
			t.Errorf("%s: url %s, second origin %v", e.ID, u, e.SecondOrigin)
		}
		resp, b := get(u, true)
		if !e.Servable {
			if resp.StatusCode != 404 {
				t.Errorf("%s (%s): %d, want 404", e.ID, e.Kind, resp.StatusCode)
			}
			continue
		}
		if resp.StatusCode != 200 {
			t.Errorf("%s (%s): %d", e.ID, e.Kind, resp.StatusCode)
			continue
		}
		if e.Kind == "binaryjson" {
			var bin struct{ ResourceType, Data string }
			json.Unmarshal(b, &bin)
			b, _ = base64.StdEncoding.DecodeString(bin.Data)
			if bin.ResourceType != "Binary" {
				t.Errorf("%s: %q is not a Binary resource", e.ID, bin.ResourceType)
			}
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.SHA256 || len(b) != e.Size {
			t.Errorf("%s (%s): %d bytes, sha256 differs from Expected", e.ID, e.Kind, len(b))
		}
		if !e.SecondOrigin {
			if resp, _ := get(u, false); resp.StatusCode != 401 {
				t.Errorf("%s: without the token %d, want 401", e.ID, resp.StatusCode)
			}
		}
	}
	for _, k := range attKindNames[1:] {
		if kinds[k] == 0 {
			t.Errorf("no attachment of kind %s among %d", k, len(want.Attachments))
		}
	}
	if st := srv.Stats(); st.AuthHeaderOnSecondOrigin == 0 {
		t.Error("the second origin did not count the Authorization headers sent to it")
	}
}
