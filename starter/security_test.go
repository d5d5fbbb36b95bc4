package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulkflow/bulkflow/internal/atrest"
	"github.com/bulkflow/bulkflow/internal/codec"
	"github.com/bulkflow/bulkflow/internal/sink"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestKeygenAndDecrypt(t *testing.T) {
	dir := t.TempDir()
	ks := filepath.Join(dir, "keyset.json")
	if code, _, stderr := runCmd("keygen", "-keyset", ks); code != exitOK {
		t.Fatalf("keygen: %d %s", code, stderr)
	}
	if code, _, _ := runCmd("keygen", "-keyset", ks); code == exitOK {
		t.Error("keygen overwrote a keyset")
	}
	k, err := atrest.LoadKeyset(ks)
	if err != nil {
		t.Fatal(err)
	}
	local, _ := sink.NewLocal(filepath.Join(dir, "out"))
	s := atrest.Wrap(local, k)
	plain := bytes.Repeat([]byte(`{"resourceType":"Patient","id":"p1"}`+"\n"), 50000) // > 1 segment
	w, _ := s.Create(context.Background(), "run1", "Patient/Patient-0001.ndjson")
	w.Write(plain)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), "run1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(s.Location("run1"), "Patient", "Patient-0001.ndjson")

	// To stdout, the name taken from the path.
	code, stdout, stderr := runCmd("decrypt", "-keyset", ks, in)
	if code != exitOK || stdout != string(plain) {
		t.Fatalf("decrypt to stdout: %d, %d bytes, %s", code, len(stdout), stderr)
	}
	// To a file.
	outFile := filepath.Join(dir, "plain.ndjson")
	if code, _, stderr := runCmd("decrypt", "-keyset", ks, in, outFile); code != exitOK {
		t.Fatalf("decrypt to file: %d %s", code, stderr)
	}
	if got, _ := os.ReadFile(outFile); !bytes.Equal(got, plain) {
		t.Error("decrypted file differs")
	}
	// Moved elsewhere: -name gives the original name.
	moved := filepath.Join(dir, "x.bin")
	ct, _ := os.ReadFile(in)
	os.WriteFile(moved, ct, 0o600)
	if code, _, stderr := runCmd("decrypt", "-keyset", ks, "-name", "Patient/Patient-0001.ndjson", moved); code != exitOK {
		t.Errorf("decrypt with -name: %d %s", code, stderr)
	}
	if code, _, stderr := runCmd("decrypt", "-keyset", ks, moved); code != exitFailed || !strings.Contains(stderr, "cannot decrypt") {
		t.Errorf("decrypt under the wrong name: %d %s", code, stderr)
	}
	// Tampered: exit 1, a clear error, and no OUT file.
	bad := append([]byte(nil), ct...)
	bad[len(bad)/2] ^= 1
	tampered := filepath.Join(dir, "Patient", "Patient-0001.ndjson")
	os.MkdirAll(filepath.Dir(tampered), 0o700)
	os.WriteFile(tampered, bad, 0o600)
	badOut := filepath.Join(dir, "bad.ndjson")
	code, _, stderr = runCmd("decrypt", "-keyset", ks, tampered, badOut)
	if code != exitFailed || !strings.Contains(stderr, "modified or truncated") {
		t.Errorf("tampered: %d %s", code, stderr)
	}
	if _, err := os.Stat(badOut); !os.IsNotExist(err) {
		t.Error("a tampered file left an output file")
	}
	if _, err := os.Stat(badOut + ".part"); !os.IsNotExist(err) {
		t.Error("a tampered file left a .part file")
	}
	if code, _, _ := runCmd("decrypt", in); code != exitUsage {
		t.Errorf("no keyset: %d", code)
	}
	if code, _, _ := runCmd("decrypt", "-keyset", ks, "--help"); code != exitOK {
		t.Errorf("--help: %d", code)
	}
}

func TestDefaultObjectName(t *testing.T) {
	for in, want := range map[string]string{
		"/out/run1/Patient/Patient-0001.ndjson": "Patient/Patient-0001.ndjson",
		"_errors/OperationOutcome-0001.ndjson":  "_errors/OperationOutcome-0001.ndjson",
		"./Patient-0001.ndjson":                 "Patient-0001.ndjson",
	} {
		if got := defaultObjectName(in); got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
	}
}

func TestCodecServerCommand(t *testing.T) {
	code, _, stderr := runCmd("codec-server", "--help")
	if code != exitOK || !strings.Contains(stderr, "TEMPORAL_CODEC_ENDPOINT") || !strings.Contains(stderr, "Codec Server endpoint") {
		t.Errorf("--help: %d %s", code, stderr)
	}
	t.Setenv(codec.EnvKey, "")
	t.Setenv(codec.EnvKeyFile, "")
	if code, _, stderr := runCmd("codec-server"); code != exitUsage || !strings.Contains(stderr, "needs keys") {
		t.Errorf("no keys: %d %s", code, stderr)
	}
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("k:"+base64.StdEncoding.EncodeToString(make([]byte, 16))), 0o600)
	if code, _, stderr := runCmd("codec-server", "-codec-key-file", short); code != exitUsage || !strings.Contains(stderr, "16 bytes") {
		t.Errorf("short key: %d %s", code, stderr)
	}
}

// serveCodec answers the UI's requests, then stops when its context ends.
func TestServeCodec(t *testing.T) {
	raw := make([]byte, 32)
	rand.Read(raw)
	k, _ := codec.NewKey("k", raw)
	c, _ := codec.New(k)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serveCodec(ctx, ln, codec.Handler(c, codec.HandlerOptions{UIOrigins: []string{"http://localhost:8233"}}))
	}()
	p, _ := converter.GetDefaultDataConverter().ToPayload("Patient/p1")
	enc, _ := c.Encode([]*commonpb.Payload{p})
	body, _ := protojson.Marshal(&commonpb.Payloads{Payloads: enc})
	resp, err := http.Post("http://"+ln.Addr().String()+"/decode", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), base64.StdEncoding.EncodeToString([]byte(`"Patient/p1"`))) {
		t.Errorf("decode: %s %s", resp.Status, b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
}
