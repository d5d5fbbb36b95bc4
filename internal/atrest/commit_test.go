package atrest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulkflow/bulkflow/internal/sink"
)

// TestCommitFilesChecksPlaintext: staged bytes are ciphertext, the records
// hold the plaintext's size and SHA-256. The commit decrypts and re-hashes:
// a file a late writer (same keyset) replaced, or one cut on disk, fails
// the commit; the right one is committed under the name it decrypts with.
func TestCommitFilesChecksPlaintext(t *testing.T) {
	plain := []byte("{\"resourceType\":\"Patient\",\"id\":\"a\"}\n")
	sum := sha256.Sum256(plain)
	rec := []sink.Staged{{Name: name, Generation: 2, Bytes: int64(len(plain)), SHA256: hex.EncodeToString(sum[:])}}
	cases := []struct {
		name    string
		tamper  func(t *testing.T, s sink.Sink, root string)
		wantErr bool
	}{
		{"as staged", func(*testing.T, sink.Sink, string) {}, false},
		{"replaced by a late writer", func(t *testing.T, s sink.Sink, _ string) {
			put(t, sink.AtGeneration(s, 2), name, bytes.Replace(plain, []byte(`"a"`), []byte(`"b"`), 1))
		}, true},
		{"cut on disk", func(t *testing.T, _ sink.Sink, root string) {
			p := filepath.Join(root, ".staging", "run", "g2", filepath.FromSlash(name))
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, st.Size()-1); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := sink.NewLocal(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			s := Wrap(l, newKeyset(t))
			put(t, sink.AtGeneration(s, 2), name, plain)
			tc.tamper(t, s, l.Root)
			err = s.CommitFiles(context.Background(), "run", rec, []byte("{}"))
			if tc.wantErr {
				if !errors.Is(err, sink.ErrStagedChanged) || !strings.Contains(err.Error(), name) {
					t.Fatalf("commit = %v, want ErrStagedChanged naming %s", err, name)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ct, err := os.ReadFile(filepath.Join(l.Location("run"), filepath.FromSlash(name)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(s.(*encSink).ks.DecryptingReader(bytes.NewReader(ct), name))
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("committed file decrypts under its name to %q, %v", got, err)
			}
		})
	}
}
