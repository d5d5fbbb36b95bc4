package e2e

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/atrest"
	"github.com/bulkflow/bulkflow/internal/verify"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// With a keyset, every output object is encrypted at rest (no resource is
// readable on disk), the run still verifies through decryption against
// _manifest.json, and `starter decrypt` gives the plaintext back.
func TestEncryptionAtRest(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	h, err := atrest.NewKeysetHandle()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "keyset.json")
	if err := atrest.WriteKeyset(keyFile, h); err != nil {
		t.Fatal(err)
	}
	ks, err := atrest.LoadKeyset(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := fhirServer(t, testsuite.Options{Patients: 15, LargeAttachments: -1})
	out := t.TempDir()
	queue := startWorkerWith(t, out, func(a *activities.Activities) { a.Keyset = ks })
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL(), Format: "both"})

	open := verify.OpenFunc(func(name string) (io.ReadCloser, error) {
		f, err := os.Open(filepath.Join(res.Location, filepath.FromSlash(name)))
		if err != nil || name == "_manifest.json" {
			return f, err
		}
		return struct {
			io.Reader
			io.Closer
		}{ks.DecryptingReader(f, name), f}, nil
	})
	rep, err := verify.FS(open, true)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Expected(testsuite.Query{Level: "system"})
	for typ, n := range want.Counts {
		if len(rep.IDs[typ]) != n {
			t.Errorf("%s: %d decrypted, %d expected", typ, len(rep.IDs[typ]), n)
		}
	}
	// On disk: ciphertext only.
	for _, f := range rep.Manifest.Files {
		b, _ := os.ReadFile(filepath.Join(res.Location, filepath.FromSlash(f.Path)))
		if bytes.Contains(b, []byte(`"resourceType"`)) {
			t.Fatalf("%s holds plaintext", f.Path)
		}
	}
	// The CLI round trip.
	starter := buildBinary(t, "./starter")
	f := rep.Manifest.Files[0]
	plain := filepath.Join(dir, "plain.ndjson")
	cmd := exec.Command(starter, "decrypt", "-keyset", keyFile, "-name", f.Path, filepath.Join(res.Location, filepath.FromSlash(f.Path)), plain)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("starter decrypt: %v\n%s", err, out)
	}
	if st, err := os.Stat(plain); err != nil || st.Size() != f.Bytes {
		t.Fatalf("decrypted %v, manifest says %d bytes", err, f.Bytes)
	}
}
