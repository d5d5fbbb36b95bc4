// Package verify re-reads a committed run from local disk and checks it
// against its own _manifest.json: every file present, with the recorded
// line count, byte size and SHA-256, and every line a resource of the file's
// type. The demo and the end-to-end tests use it; so can users.
package verify

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// Report is what a verified run holds.
type Report struct {
	Manifest activities.RunManifest
	// IDs lists output resource ids by type (only when collected).
	IDs map[string]map[string]struct{}
	// Duplicates counts (type, id) pairs seen more than once in output files.
	Duplicates int
}

// Run verifies the run in dir. With collectIDs it also gathers every output
// resource's id, which costs memory proportional to the resource count.
func Run(dir string, collectIDs bool) (*Report, error) {
	b, err := os.ReadFile(filepath.Join(dir, sink.ManifestName))
	if err != nil {
		return nil, fmt.Errorf("%s is not a complete run: %w", dir, err)
	}
	r := &Report{}
	if err := json.Unmarshal(b, &r.Manifest); err != nil {
		return nil, fmt.Errorf("%s: %w", sink.ManifestName, err)
	}
	if collectIDs {
		r.IDs = map[string]map[string]struct{}{}
	}
	for _, f := range r.Manifest.Files {
		if err := r.file(dir, f, collectIDs); err != nil {
			return r, err
		}
	}
	return r, nil
}

func (r *Report) file(dir string, f activities.ManifestFile, collectIDs bool) error {
	fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(f.Path)))
	if err != nil {
		return fmt.Errorf("file %s listed in the manifest: %w", f.Path, err)
	}
	defer fh.Close()
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(fh, h)}
	rd := ndjson.NewReader(cr)
	v := ndjson.Validator{WantType: f.Type}
	var n int64
	for {
		line, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		m, err := v.Check(line)
		if err != nil {
			return fmt.Errorf("%s line %d: %w", f.Path, rd.Line(), err)
		}
		n++
		if collectIDs && f.Kind == activities.KindOutput {
			ids := r.IDs[f.Type]
			if ids == nil {
				ids = map[string]struct{}{}
				r.IDs[f.Type] = ids
			}
			if _, dup := ids[m.ID]; dup {
				r.Duplicates++
			}
			ids[m.ID] = struct{}{}
		}
	}
	if n != f.Resources {
		return fmt.Errorf("%s: %d lines, the manifest says %d", f.Path, n, f.Resources)
	}
	if cr.n != f.Bytes {
		return fmt.Errorf("%s: %d bytes, the manifest says %d", f.Path, cr.n, f.Bytes)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != f.SHA256 {
		return fmt.Errorf("%s: sha256 %s, the manifest says %s", f.Path, sum, f.SHA256)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
