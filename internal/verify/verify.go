// Package verify re-reads a committed run from local disk and checks it
// against its own _manifest.json: every object present, with the recorded
// row count, byte size and SHA-256, and every NDJSON line or Parquet row a
// resource of the object's type. The demo and the end-to-end tests use it;
// so can users.
package verify

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/parquet-go/parquet-go"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/lake"
	"github.com/bulkflow/bulkflow/internal/ndjson"
	"github.com/bulkflow/bulkflow/internal/sink"
)

// Report is what a verified run holds.
type Report struct {
	Manifest activities.RunManifest
	// IDs lists output resource ids by type (only when collected), from the
	// NDJSON objects, or the Parquet ones when the run has no NDJSON.
	IDs map[string]map[string]struct{}
	// Duplicates counts (type, id) pairs seen more than once in one format.
	Duplicates int
	// Deleted lists tombstoned ids by type (only when collected).
	Deleted map[string]map[string]struct{}
	// Attachments are the lines of attachments/index.ndjson, each stored
	// document checked (attachments.go).
	Attachments []activities.AttachmentRecord
}

// Run verifies the run in dir. With collectIDs it also gathers every output
// resource's id, which costs memory proportional to the resource count.
func Run(dir string, collectIDs bool) (*Report, error) {
	return FS(dirFS{os.DirFS(dir)}, collectIDs)
}

// FS verifies a run laid out in fsys (a directory, or objects fetched from
// object storage into one).
func FS(fsys fsReader, collectIDs bool) (*Report, error) {
	b, err := readAll(fsys, sink.ManifestName)
	if err != nil {
		return nil, fmt.Errorf("not a complete run: %w", err)
	}
	r := &Report{}
	if err := json.Unmarshal(b, &r.Manifest); err != nil {
		return nil, fmt.Errorf("%s: %w", sink.ManifestName, err)
	}
	byFormat := map[string]map[string]map[string]struct{}{}
	if collectIDs {
		r.Deleted = map[string]map[string]struct{}{}
	}
	for _, f := range r.Manifest.Files {
		var ids map[string]map[string]struct{}
		switch {
		case !collectIDs:
		case f.Kind == activities.KindOutput:
			format := formatOf(f)
			if byFormat[format] == nil {
				byFormat[format] = map[string]map[string]struct{}{}
			}
			ids = byFormat[format]
		case f.Kind == activities.KindTombstone:
			ids = r.Deleted
		}
		if err := r.object(fsys, f, ids); err != nil {
			return r, err
		}
	}
	if err := r.attachments(fsys); err != nil {
		return r, err
	}
	if collectIDs {
		r.IDs = byFormat["ndjson"]
		if r.IDs == nil {
			r.IDs = byFormat["parquet"]
		}
		if r.IDs == nil {
			r.IDs = map[string]map[string]struct{}{}
		}
		if nd, pq := byFormat["ndjson"], byFormat["parquet"]; nd != nil && pq != nil {
			if err := sameIDs(nd, pq); err != nil {
				return r, fmt.Errorf("NDJSON and Parquet output differ: %w", err)
			}
		}
	}
	return r, nil
}

type fsReader interface {
	Open(name string) (fsFile, error)
}

func formatOf(f activities.ManifestFile) string {
	if f.Format == "" {
		return "ndjson"
	}
	return f.Format
}

func (r *Report) object(fsys fsReader, f activities.ManifestFile, ids map[string]map[string]struct{}) error {
	fh, err := fsys.Open(filepath.ToSlash(f.Path))
	if err != nil {
		return fmt.Errorf("object %s listed in the manifest: %w", f.Path, err)
	}
	defer fh.Close()
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(fh, h)}
	add := func(typ, id string) {
		if ids == nil {
			return
		}
		set := ids[typ]
		if set == nil {
			set = map[string]struct{}{}
			ids[typ] = set
		}
		if _, dup := set[id]; dup {
			r.Duplicates++
		}
		set[id] = struct{}{}
	}
	var n int64
	switch {
	case f.Kind == activities.KindView:
		n, err = viewRows(cr, f)
	case formatOf(f) == "parquet":
		n, err = parquetRows(cr, f, add)
	default:
		n, err = ndjsonRows(cr, f, add)
	}
	if err != nil {
		return err
	}
	io.Copy(io.Discard, cr) // hash and size cover the whole object
	if n != f.Resources {
		return fmt.Errorf("%s: %d rows, the manifest says %d", f.Path, n, f.Resources)
	}
	if cr.n != f.Bytes {
		return fmt.Errorf("%s: %d bytes, the manifest says %d", f.Path, cr.n, f.Bytes)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != f.SHA256 {
		return fmt.Errorf("%s: sha256 %s, the manifest says %s", f.Path, sum, f.SHA256)
	}
	return nil
}

func ndjsonRows(src io.Reader, f activities.ManifestFile, add func(typ, id string)) (int64, error) {
	if f.Gzip {
		zr, err := gzip.NewReader(src)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", f.Path, err)
		}
		defer zr.Close()
		src = zr
	}
	rd := ndjson.NewReader(src)
	v := ndjson.Validator{WantType: f.Type}
	var n int64
	for {
		line, err := rd.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("%s: %w", f.Path, err)
		}
		m, err := v.Check(line)
		if err != nil {
			return n, fmt.Errorf("%s line %d: %w", f.Path, rd.Line(), err)
		}
		n++
		add(m.ResourceType, m.ID)
	}
}

// parquetRows needs random access (the footer comes last), so the object is
// read into memory; verification of very large Parquet objects belongs to a
// query engine, this is for tests and the demo.
func parquetRows(src io.Reader, f activities.ManifestFile, add func(typ, id string)) (int64, error) {
	b, err := io.ReadAll(src)
	if err != nil {
		return 0, err
	}
	rows, err := parquet.Read[lake.Row](bytesReaderAt(b), int64(len(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", f.Path, err)
	}
	for i, row := range rows {
		if row.ResourceType != f.Type {
			return 0, fmt.Errorf("%s row %d: resource_type %q in a %s object", f.Path, i, row.ResourceType, f.Type)
		}
		m, err := ndjson.Inspect(row.Resource)
		if err != nil || m.ID != row.ID || m.ResourceType != row.ResourceType {
			return 0, fmt.Errorf("%s row %d: the resource column does not match id %q (%v)", f.Path, i, row.ID, err)
		}
		add(row.ResourceType, row.ID)
	}
	return int64(len(rows)), nil
}

// viewRows counts the rows of a view table (its columns are the view's,
// docs/views.md) and checks the file says which view it holds.
func viewRows(src io.Reader, f activities.ManifestFile) (int64, error) {
	b, err := io.ReadAll(src)
	if err != nil {
		return 0, err
	}
	pf, err := parquet.OpenFile(bytesReaderAt(b), int64(len(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", f.Path, err)
	}
	var meta struct {
		View     string `json:"view"`
		Resource string `json:"resource"`
	}
	if v, ok := pf.Lookup("bulkflow.view"); !ok || json.Unmarshal([]byte(v), &meta) != nil || meta.View != f.View || meta.Resource != f.Type {
		return 0, fmt.Errorf("%s: not the table of view %q over %s (its metadata says %q over %q)", f.Path, f.View, f.Type, meta.View, meta.Resource)
	}
	return pf.NumRows(), nil
}

func sameIDs(a, b map[string]map[string]struct{}) error {
	for typ, as := range a {
		bs := b[typ]
		if len(as) != len(bs) {
			return fmt.Errorf("%s: %d vs %d resources", typ, len(as), len(bs))
		}
		for id := range as {
			if _, ok := bs[id]; !ok {
				return fmt.Errorf("%s/%s missing from Parquet", typ, id)
			}
		}
	}
	if len(a) != len(b) {
		return errors.New("different resource types")
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
