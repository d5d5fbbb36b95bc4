// Package atrest encrypts an export's files at rest with Tink streaming AEAD
// (AES256_GCM_HKDF_1MB): files are encrypted as they stream to the sink, in
// 1 MB authenticated segments, so memory stays flat whatever the file size and
// truncation, reordering or any flipped byte is detected on reading.
//
// Each file's associated data is its object name relative to the run (e.g.
// "Patient/Patient-0001.ndjson"): a file copied over another one's name fails
// to decrypt instead of passing for it.
//
// Keys: a JSON keyset file in clear (LoadKeyset, written by `starter keygen`),
// so whoever can read that file can read the data: keep it apart from the
// output (another volume, a secret mount) with mode 0600. A keyset wrapped by a
// KMS key may be supported later; the Keyset type hides the difference.
package atrest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/streamingaead"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/bulkflow/bulkflow/internal/sink"
)

// Keyset is a loaded streaming-AEAD keyset. The primary key encrypts; every
// key in the set decrypts, so a rotated keyset still reads older files.
type Keyset struct {
	aead tink.StreamingAEAD
}

// FromHandle checks that h is a streaming AEAD keyset.
func FromHandle(h *keyset.Handle) (*Keyset, error) {
	a, err := streamingaead.New(h)
	if err != nil {
		return nil, fmt.Errorf("keyset is not a streaming AEAD keyset (make one with `starter keygen`): %w", err)
	}
	return &Keyset{aead: a}, nil
}

// LoadKeyset reads a cleartext JSON keyset file, as `starter keygen` writes.
// Errors never quote the file's content.
func LoadKeyset(path string) (*Keyset, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyset: %w", err)
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		return nil, fmt.Errorf("keyset %s: not a JSON Tink keyset: %w", path, err)
	}
	ks, err := FromHandle(h)
	if err != nil {
		return nil, fmt.Errorf("keyset %s: %w", path, err)
	}
	return ks, nil
}

// NewKeysetHandle makes a fresh keyset with one AES256_GCM_HKDF_1MB key.
func NewKeysetHandle() (*keyset.Handle, error) {
	return keyset.NewHandle(streamingaead.AES256GCMHKDF1MBKeyTemplate())
}

// WriteKeyset writes h as a cleartext JSON keyset to a new file of mode 0600;
// it never overwrites, since losing a keyset loses every file encrypted with it.
func WriteKeyset(path string, h *keyset.Handle) error {
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return fmt.Errorf("keyset: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keyset: %w", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("keyset: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("keyset: %w", err)
	}
	return nil
}

// EncryptingWriter encrypts what is written to it into w, bound to name.
// Close writes the final segment: without it the file does not decrypt.
func (k *Keyset) EncryptingWriter(w io.Writer, name string) (io.WriteCloser, error) {
	return k.aead.NewEncryptingWriter(w, []byte(name))
}

// DecryptingReader reads the plaintext of r, encrypted under name. A read
// error means the data was tampered with, truncated, encrypted under another
// name, or with a key not in the keyset.
func (k *Keyset) DecryptingReader(r io.Reader, name string) io.Reader {
	return &decryptReader{k: k, src: r, name: name}
}

// ErrDecrypt wraps every failure to authenticate ciphertext.
var ErrDecrypt = errors.New("cannot decrypt: the file was modified or truncated, or its name or keyset is not the one it was encrypted with")

type decryptReader struct {
	k    *Keyset
	src  io.Reader
	name string
	r    io.Reader
	err  error
}

func (d *decryptReader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.r == nil {
		r, err := d.k.aead.NewDecryptingReader(d.src, []byte(d.name))
		if err != nil {
			d.err = fmt.Errorf("%w (%v)", ErrDecrypt, err)
			return 0, d.err
		}
		d.r = r
	}
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		d.err = fmt.Errorf("%w (%v)", ErrDecrypt, err)
		return n, d.err
	}
	return n, err
}

// Wrap returns a Sink that stores every object of s encrypted under ks, bound
// to its name, and decrypts on Open. Commit, Abort and Location pass through:
// the run manifest Commit writes is not encrypted (it holds counts, names and
// checksums of the plaintext, no resources).
func Wrap(s sink.Sink, ks *Keyset) sink.Sink { return &encSink{s: s, ks: ks} }

type encSink struct {
	s  sink.Sink
	ks *Keyset
}

func (e *encSink) Create(ctx context.Context, run, name string) (sink.Writer, error) {
	w, err := e.s.Create(ctx, run, name)
	if err != nil {
		return nil, err
	}
	enc, err := e.ks.EncryptingWriter(w, name)
	if err != nil {
		w.Abort()
		return nil, fmt.Errorf("encrypt %s: %w", name, err)
	}
	return &encWriter{w: w, enc: enc}, nil
}

func (e *encSink) Open(ctx context.Context, run, name string) (io.ReadCloser, error) {
	rc, err := e.s.Open(ctx, run, name)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{e.ks.DecryptingReader(rc, name), rc}, nil
}

func (e *encSink) Commit(ctx context.Context, run string, manifest []byte) error {
	return e.s.Commit(ctx, run, manifest)
}

// AtGeneration implements sink.Generational: objects stay bound to their
// run names (not their generation's staging path), so committed files
// decrypt under the names readers know.
func (e *encSink) AtGeneration(gen int) sink.Sink {
	return &encSink{s: sink.AtGeneration(e.s, gen), ks: e.ks}
}

// CommitFiles implements sink.Sink. The records hold the plaintext's size
// and SHA-256, the staged bytes are ciphertext: each file is decrypted and
// re-hashed here (the AEAD also rejects a cut or altered file), then the
// wrapped sink promotes them without its own checks. This reads the whole
// run once more, even on object storage: the price of at-rest encryption.
func (e *encSink) CommitFiles(ctx context.Context, run string, files []sink.Staged, manifest []byte) error {
	inner := make([]sink.Staged, len(files))
	for i, f := range files {
		if manifest != nil && (f.Bytes >= 0 || f.SHA256 != "") {
			if err := e.verify(ctx, run, f); err != nil {
				return fmt.Errorf("commit run %s: %w", run, err)
			}
		}
		inner[i] = sink.Staged{Name: f.Name, Generation: f.Generation, Bytes: -1}
	}
	return e.s.CommitFiles(ctx, run, inner, manifest)
}

func (e *encSink) verify(ctx context.Context, run string, f sink.Staged) error {
	rc, err := sink.AtGeneration(e, f.Generation).Open(ctx, run, f.Name)
	if errors.Is(err, sink.ErrNotFound) {
		// Promoted by an earlier attempt of this commit: the wrapped sink
		// finds it in place, or reports it missing.
		return nil
	}
	if err != nil {
		return fmt.Errorf("check staged %s: %w", f.Name, err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if errors.Is(err, ErrDecrypt) {
		return fmt.Errorf("staged %s: %w (%v)", f.Name, sink.ErrStagedChanged, err)
	}
	if err != nil {
		return fmt.Errorf("check staged %s: %w", f.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); (f.Bytes >= 0 && n != f.Bytes) || (f.SHA256 != "" && got != f.SHA256) {
		return fmt.Errorf("staged %s decrypts to %d bytes with SHA-256 %s, its record says %d bytes, %s: %w (overwritten by a late writer); nothing was committed: export again",
			f.Name, n, got, f.Bytes, f.SHA256, sink.ErrStagedChanged)
	}
	return nil
}

func (e *encSink) Abort(ctx context.Context, run string) error { return e.s.Abort(ctx, run) }

func (e *encSink) Location(run string) string { return e.s.Location(run) }

// State objects hold watermarks (times and counts, no PHI) and stay in
// clear so operators can read them.
func (e *encSink) ReadState(ctx context.Context, name string) ([]byte, error) {
	return e.s.ReadState(ctx, name)
}

func (e *encSink) WriteState(ctx context.Context, name string, data []byte) error {
	return e.s.WriteState(ctx, name, data)
}

// Aux objects (audit logs) hold URLs without queries, counts and outcomes:
// no PHI, and auditors must read them without the data key.
func (e *encSink) CreateAux(ctx context.Context, name string) (sink.Writer, error) {
	return e.s.CreateAux(ctx, name)
}

type encWriter struct {
	w      sink.Writer
	enc    io.WriteCloser
	closed bool
}

func (e *encWriter) Write(p []byte) (int, error) { return e.enc.Write(p) }

// Close seals the last segment, then publishes the object; a failure to seal
// discards it, since a file without its last segment never decrypts.
func (e *encWriter) Close() error {
	if e.closed {
		return nil // like sink.Local: a second Close is a no-op
	}
	e.closed = true
	if err := e.enc.Close(); err != nil {
		e.w.Abort()
		return err
	}
	return e.w.Close()
}

func (e *encWriter) Abort() error { return e.w.Abort() }
