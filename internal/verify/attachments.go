package verify

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	"github.com/bulkflow/bulkflow/activities"
)

// attachments checks a run's attachments/index.ndjson against the
// manifest's attachments section, and every stored document against its
// index line (size and SHA-256); the index lines land in r.Attachments.
func (r *Report) attachments(fsys fsReader) error {
	sum := r.Manifest.Attachments
	if sum == nil {
		return nil
	}
	size, digest, err := hashObject(fsys, sum.Index)
	if err != nil {
		return err
	}
	if size != sum.IndexBytes || digest != sum.IndexSHA256 {
		return fmt.Errorf("%s: %d bytes, sha256 %s; the manifest says %d bytes, %s", sum.Index, size, digest, sum.IndexBytes, sum.IndexSHA256)
	}
	fh, err := fsys.Open(sum.Index)
	if err != nil {
		return err
	}
	defer fh.Close()
	dec := json.NewDecoder(bufio.NewReader(fh))
	var entries int64
	for {
		var rec activities.AttachmentRecord
		if err := dec.Decode(&rec); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("%s line %d: %w", sum.Index, entries+1, err)
		}
		entries++
		if rec.Status == activities.AttachmentStored {
			n, d, err := hashObject(fsys, rec.Path)
			if err != nil {
				return err
			}
			if n != rec.Size || d != rec.SHA256 {
				return fmt.Errorf("attachment %s: %d bytes, sha256 %s; the index says %d bytes, %s", rec.Path, n, d, rec.Size, rec.SHA256)
			}
		}
		r.Attachments = append(r.Attachments, rec)
	}
	if entries != sum.Entries {
		return fmt.Errorf("%s: %d entries, the manifest says %d", sum.Index, entries, sum.Entries)
	}
	return nil
}

func hashObject(fsys fsReader, name string) (int64, string, error) {
	fh, err := fsys.Open(name)
	if err != nil {
		return 0, "", fmt.Errorf("object %s listed in the run: %w", name, err)
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return 0, "", fmt.Errorf("read %s: %w", name, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}
