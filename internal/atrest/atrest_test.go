package atrest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/bulkflow/bulkflow/internal/sink"
)

func newKeyset(t testing.TB) *Keyset {
	t.Helper()
	h, err := NewKeysetHandle()
	if err != nil {
		t.Fatal(err)
	}
	ks, err := FromHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// memSink keeps objects in memory so tests can tamper with the ciphertext.
type memSink struct {
	mu   sync.Mutex
	objs map[string][]byte
}

func newMem() *memSink { return &memSink{objs: map[string][]byte{}} }

type memWriter struct {
	bytes.Buffer
	s    *memSink
	name string
}

func (w *memWriter) Close() error {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	w.s.objs[w.name] = w.Bytes()
	return nil
}
func (w *memWriter) Abort() error { return nil }

func (m *memSink) Create(_ context.Context, run, name string) (sink.Writer, error) {
	return &memWriter{s: m, name: run + "/" + name}, nil
}
func (m *memSink) Open(_ context.Context, run, name string) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.objs[run+"/"+name]
	if !ok {
		return nil, sink.ErrNotFound
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}
func (m *memSink) Commit(context.Context, string, []byte) error                     { return nil }
func (m *memSink) CommitFiles(context.Context, string, []sink.Staged, []byte) error { return nil }
func (m *memSink) Abort(context.Context, string) error                              { return nil }
func (m *memSink) Location(run string) string                                       { return "mem:" + run }
func (m *memSink) ReadState(context.Context, string) ([]byte, error)                { return nil, sink.ErrNotFound }
func (m *memSink) WriteState(context.Context, string, []byte) error                 { return nil }
func (m *memSink) CreateAux(context.Context, string) (sink.Writer, error) {
	return nil, sink.ErrNotFound
}

func put(t testing.TB, s sink.Sink, name string, data []byte) {
	t.Helper()
	w, err := s.Create(context.Background(), "run", name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func get(s sink.Sink, name string) ([]byte, error) {
	rc, err := s.Open(context.Background(), "run", name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

const name = "Patient/Patient-0001.ndjson"

func TestRoundTrip(t *testing.T) {
	ks := newKeyset(t)
	for _, size := range []int{0, 1, 1 << 20, 3 << 20} {
		plain := make([]byte, size)
		rand.Read(plain)
		mem := newMem()
		s := Wrap(mem, ks)
		put(t, s, name, plain)
		got, err := get(s, name)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: round trip differs (%d bytes back)", size, len(got))
		}
		ct := mem.objs["run/"+name]
		// Only a run of 16+ bytes can show plaintext: one byte occurs in any
		// ciphertext by chance.
		if size >= 16 && bytes.Contains(ct, plain[:min(size, 64)]) {
			t.Errorf("%d bytes: plaintext visible in the stored object", size)
		}
	}
}

// Written in many small pieces (as the activity's bufio writer does), the
// result is the same stream.
func TestSmallWrites(t *testing.T) {
	ks := newKeyset(t)
	s := Wrap(newMem(), ks)
	var want bytes.Buffer
	w, _ := s.Create(context.Background(), "run", name)
	line := []byte(`{"resourceType":"Patient","id":"p"}` + "\n")
	for i := 0; i < 40000; i++ {
		w.Write(line)
		want.Write(line)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := get(s, name)
	if err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("round trip: %v (%d of %d bytes)", err, len(got), want.Len())
	}
}

func TestTamperDetected(t *testing.T) {
	ks := newKeyset(t)
	for _, size := range []int{0, 1, 2<<20 + 100} {
		plain := make([]byte, size)
		rand.Read(plain)
		mem := newMem()
		s := Wrap(mem, ks)
		put(t, s, name, plain)
		ct := append([]byte(nil), mem.objs["run/"+name]...)
		// Small files: every byte. Large: the header, both sides of every
		// segment boundary, and a spread of bytes in between.
		var positions []int
		if len(ct) < 4096 {
			for i := range ct {
				positions = append(positions, i)
			}
		} else {
			for i := 0; i < 64; i++ {
				positions = append(positions, i)
			}
			for seg := 1 << 20; seg < len(ct); seg += 1 << 20 {
				for d := -20; d < 20; d++ {
					positions = append(positions, seg+d)
				}
			}
			for i := 0; i < len(ct); i += len(ct)/50 + 1 {
				positions = append(positions, i)
			}
			positions = append(positions, len(ct)-1)
		}
		for _, i := range positions {
			bad := append([]byte(nil), ct...)
			bad[i] ^= 0x40
			mem.objs["run/"+name] = bad
			if _, err := get(s, name); err == nil {
				t.Fatalf("%d bytes: flipped byte %d of %d went unnoticed", size, i, len(ct))
			} else if !errors.Is(err, ErrDecrypt) {
				t.Fatalf("%d bytes: byte %d: error %v is not ErrDecrypt", size, i, err)
			}
		}
		// Truncated or extended.
		for _, bad := range [][]byte{ct[:len(ct)-1], ct[:len(ct)/2], append(append([]byte(nil), ct...), 0)} {
			mem.objs["run/"+name] = bad
			if _, err := get(s, name); err == nil {
				t.Fatalf("%d bytes: a %d-byte ciphertext (of %d) decrypted", size, len(bad), len(ct))
			}
		}
		// Another object's name (the associated data) does not decrypt it.
		mem.objs["run/"+name] = ct
		mem.objs["run/Patient/Patient-0002.ndjson"] = ct
		if _, err := get(s, "Patient/Patient-0002.ndjson"); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("%d bytes: file under another name: %v", size, err)
		}
		// Nor does another keyset.
		if _, err := get(Wrap(mem, newKeyset(t)), name); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("%d bytes: another keyset: %v", size, err)
		}
	}
}

func TestKeysetFileAndLocalSink(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "keyset.json")
	h, err := NewKeysetHandle()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyset(p, h); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("keyset mode %v", fi.Mode().Perm())
	}
	if err := WriteKeyset(p, h); err == nil {
		t.Error("an existing keyset was overwritten")
	}
	ks, err := LoadKeyset(p)
	if err != nil {
		t.Fatal(err)
	}
	local, err := sink.NewLocal(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	s := Wrap(local, ks)
	plain := []byte(`{"resourceType":"Patient","id":"p1"}` + "\n")
	put(t, s, name, plain)
	// Abort discards; Close after Abort publishes nothing.
	w, _ := s.Create(context.Background(), "run", "Patient/Patient-0002.ndjson")
	w.Write(plain)
	w.Abort()
	if _, err := get(s, "Patient/Patient-0002.ndjson"); !errors.Is(err, sink.ErrNotFound) {
		t.Errorf("aborted object: %v", err)
	}
	if err := s.Commit(context.Background(), "run", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(s.Location("run"), filepath.FromSlash(name))
	ct, err := os.ReadFile(final)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, []byte("resourceType")) {
		t.Error("committed file is in clear")
	}
	// The committed file decrypts with its keyset and name.
	got, err := io.ReadAll(ks.DecryptingReader(bytes.NewReader(ct), name))
	if err != nil || !bytes.Equal(got, plain) {
		t.Errorf("committed file: %q %v", got, err)
	}

	for _, bad := range []string{"", "{}", `{"primaryKeyId": 1}`} {
		os.WriteFile(p+".bad", []byte(bad), 0o600)
		if _, err := LoadKeyset(p + ".bad"); err == nil {
			t.Errorf("keyset %q accepted", bad)
		}
		os.Remove(p + ".bad")
	}
}

// Encrypting 50 MB keeps the heap far below 50 MB: the writer holds one
// segment, not the file.
func TestMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 50 MB")
	}
	ks := newKeyset(t)
	s := Wrap(discardSink{}, ks)
	w, err := s.Create(context.Background(), "run", name)
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak uint64
	buf := make([]byte, 64<<10)
	rand.Read(buf)
	const total = 50 << 20
	for written := 0; written < total; written += len(buf) {
		if _, err := w.Write(buf); err != nil {
			t.Fatal(err)
		}
		if written%(4<<20) == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&ms)
	peak = max(peak, ms.HeapInuse)
	growth := int64(peak) - int64(base)
	t.Logf("heap in use: %d KB before, %d KB peak while encrypting 50 MB", base>>10, peak>>10)
	if growth > 10<<20 {
		t.Errorf("heap grew by %d MB while encrypting 50 MB: not streaming", growth>>20)
	}
}

type discardSink struct{}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) Close() error                { return nil }
func (discardWriter) Abort() error                { return nil }

func (discardSink) Create(context.Context, string, string) (sink.Writer, error) {
	return discardWriter{}, nil
}
func (discardSink) Open(context.Context, string, string) (io.ReadCloser, error) {
	return nil, sink.ErrNotFound
}
func (discardSink) Commit(context.Context, string, []byte) error                     { return nil }
func (discardSink) CommitFiles(context.Context, string, []sink.Staged, []byte) error { return nil }
func (discardSink) Abort(context.Context, string) error                              { return nil }
func (discardSink) Location(string) string                                           { return "" }
func (discardSink) ReadState(context.Context, string) ([]byte, error)                { return nil, sink.ErrNotFound }
func (discardSink) WriteState(context.Context, string, []byte) error                 { return nil }
func (discardSink) CreateAux(context.Context, string) (sink.Writer, error) {
	return nil, sink.ErrNotFound
}

func BenchmarkEncryptStream(b *testing.B) {
	ks := newKeyset(b)
	buf := make([]byte, 64<<10)
	rand.Read(buf)
	const size = 16 << 20
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w, err := ks.EncryptingWriter(io.Discard, name)
		if err != nil {
			b.Fatal(err)
		}
		for n := 0; n < size; n += len(buf) {
			w.Write(buf)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecryptStream(b *testing.B) {
	ks := newKeyset(b)
	plain := make([]byte, 16<<20)
	rand.Read(plain)
	var ct bytes.Buffer
	w, _ := ks.EncryptingWriter(&ct, name)
	w.Write(plain)
	w.Close()
	b.SetBytes(int64(len(plain)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := io.Copy(io.Discard, ks.DecryptingReader(bytes.NewReader(ct.Bytes()), name)); err != nil {
			b.Fatal(err)
		}
	}
}
