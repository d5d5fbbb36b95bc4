package codec

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/encoding/protojson"
)

func randKey(t testing.TB, id string) (Key, []byte) {
	t.Helper()
	raw := make([]byte, 32)
	rand.Read(raw)
	k, err := NewKey(id, raw)
	if err != nil {
		t.Fatal(err)
	}
	return k, raw
}

func mustCodec(t testing.TB, keys ...Key) *Codec {
	t.Helper()
	c, err := New(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const secret = `{"resourceType":"Patient","id":"p1","name":"Jane Doe"} https://fhir.example.org:8443/Patient/p1`

func payloads(t testing.TB) []*commonpb.Payload {
	t.Helper()
	p, err := converter.GetDefaultDataConverter().ToPayloads(secret, 42, map[string]string{"url": "https://fhir.example.org:8443"})
	if err != nil {
		t.Fatal(err)
	}
	return p.Payloads
}

func TestRoundTrip(t *testing.T) {
	k, _ := randKey(t, "k1")
	c := mustCodec(t, k)
	in := payloads(t)
	enc, err := c.Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range enc {
		if got := string(p.Metadata[converter.MetadataEncoding]); got != EncodingEncrypted {
			t.Errorf("encoding %q", got)
		}
		if got := string(p.Metadata[MetadataKeyID]); got != "k1" {
			t.Errorf("key id %q", got)
		}
		if bytes.Contains(p.Data, []byte("Patient")) || bytes.Contains(p.Data, []byte("fhir.example.org")) || bytes.Contains(p.Data, []byte("json/plain")) {
			t.Error("clear text in an encrypted payload")
		}
	}
	// Random nonces: the same value never encrypts to the same bytes.
	enc2, _ := c.Encode(in)
	if bytes.Equal(enc[0].Data, enc2[0].Data) {
		t.Error("two encryptions are identical: nonce reused")
	}
	dec, err := c.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	var s string
	var n int
	var m map[string]string
	if err := converter.GetDefaultDataConverter().FromPayloads(&commonpb.Payloads{Payloads: dec}, &s, &n, &m); err != nil {
		t.Fatal(err)
	}
	if s != secret || n != 42 || m["url"] != "https://fhir.example.org:8443" {
		t.Errorf("round trip gave %q %d %v", s, n, m)
	}
}

func TestDataAndFailureConverter(t *testing.T) {
	k, _ := randKey(t, "k1")
	dc := DataConverter(mustCodec(t, k))
	p, err := dc.ToPayload(secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(p.Data, []byte("Patient")) {
		t.Fatal("data converter did not encrypt")
	}
	var s string
	if err := dc.FromPayload(p, &s); err != nil || s != secret {
		t.Fatalf("%q %v", s, err)
	}
	fc := FailureConverter(dc)
	f := fc.ErrorToFailure(temporal.NewApplicationError("GET https://fhir.example.org:8443/Patient/p1: 404", "HTTPError"))
	b, _ := protojson.Marshal(f)
	if bytes.Contains(b, []byte("fhir.example.org")) || bytes.Contains(b, []byte("Patient/")) {
		t.Errorf("failure holds clear text: %s", b)
	}
	back := fc.FailureToError(f)
	if !strings.Contains(back.Error(), "fhir.example.org:8443/Patient/p1") {
		t.Errorf("decoded failure %q", back)
	}
}

func TestKeyRotation(t *testing.T) {
	old, _ := randKey(t, "2024")
	nu, _ := randKey(t, "2025")
	before := mustCodec(t, old)
	oldEnc, err := before.Encode(payloads(t))
	if err != nil {
		t.Fatal(err)
	}
	after := mustCodec(t, nu, old)
	newEnc, _ := after.Encode(payloads(t))
	if id := string(newEnc[0].Metadata[MetadataKeyID]); id != "2025" {
		t.Errorf("new payloads encrypted with %q, want the first key", id)
	}
	for name, enc := range map[string][]*commonpb.Payload{"old": oldEnc, "new": newEnc} {
		if _, err := after.Decode(enc); err != nil {
			t.Errorf("%s payloads: %v", name, err)
		}
	}
	// The old codec alone cannot read the new key's payloads, and says why.
	_, err = before.Decode(newEnc)
	if err == nil || !strings.Contains(err.Error(), `"2025"`) || !strings.Contains(err.Error(), "not loaded") {
		t.Errorf("unknown key id: %v", err)
	}
}

func TestTamperedAndRelabelled(t *testing.T) {
	k1, _ := randKey(t, "a")
	k2, _ := randKey(t, "b")
	c := mustCodec(t, k1, k2)
	enc, _ := c.Encode(payloads(t))
	for i := range enc[0].Data {
		p := &commonpb.Payload{Metadata: enc[0].Metadata, Data: append([]byte(nil), enc[0].Data...)}
		p.Data[i] ^= 0x01
		if _, err := c.Decode([]*commonpb.Payload{p}); err == nil {
			t.Fatalf("flipped byte %d decoded", i)
		}
	}
	short := &commonpb.Payload{Metadata: enc[0].Metadata, Data: enc[0].Data[:10]}
	if _, err := c.Decode([]*commonpb.Payload{short}); err == nil {
		t.Error("truncated payload decoded")
	}
	relabelled := &commonpb.Payload{Metadata: map[string][]byte{converter.MetadataEncoding: []byte(EncodingEncrypted), MetadataKeyID: []byte("b")}, Data: enc[0].Data}
	if _, err := c.Decode([]*commonpb.Payload{relabelled}); err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Errorf("relabelled payload: %v", err)
	}
}

func TestDecodePassesClearPayloads(t *testing.T) {
	k, _ := randKey(t, "k")
	c := mustCodec(t, k)
	in := payloads(t)
	out, err := c.Decode(in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if out[i] != in[i] {
			t.Errorf("payload %d changed", i)
		}
	}
}

func TestParseKeys(t *testing.T) {
	raw := make([]byte, 32)
	rand.Read(raw)
	b64 := base64.StdEncoding.EncodeToString(raw)
	hx := hex.EncodeToString(raw)
	ok := map[string]struct {
		data string
		ids  []string
	}{
		"raw":          {string(raw), []string{"default"}},
		"base64 alone": {b64 + "\n", []string{"default"}},
		"hex alone":    {hx, []string{"default"}},
		"url base64":   {"k:" + base64.RawURLEncoding.EncodeToString(raw), []string{"k"}},
		"several": {"# rotated 2025-01\n2025:" + b64 + "\n\n2024 : " + hx + "\n",
			[]string{"2025", "2024"}},
	}
	for name, tc := range ok {
		keys, err := ParseKeys([]byte(tc.data))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var ids []string
		for _, k := range keys {
			ids = append(ids, k.ID)
			if !bytes.Equal(k.raw, raw) {
				t.Errorf("%s: key %s bytes differ", name, k.ID)
			}
		}
		if strings.Join(ids, ",") != strings.Join(tc.ids, ",") {
			t.Errorf("%s: ids %v, want %v", name, ids, tc.ids)
		}
	}
	short := base64.StdEncoding.EncodeToString(raw[:16])
	bad := map[string]struct{ data, want string }{
		"empty":        {"\n# nothing\n", "no key"},
		"short":        {"k:" + short, "16 bytes, want 32"},
		"bad encoding": {"k:" + b64[:20] + "!!" + b64[22:], "neither base64 nor"},
		"duplicate":    {"k:" + b64 + "\nk:" + hx, `duplicate key id "k"`},
		"bad id":       {"k y:" + b64, "key id"},
		"mixed":        {b64 + "\nk:" + b64, "id:KEY"},
	}
	for name, tc := range bad {
		_, err := ParseKeys([]byte(tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
			continue
		}
		// Errors never show key material in any form.
		for _, s := range []string{b64, b64[:20], short, hx, hx[:16]} {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: error shows key bytes: %v", name, err)
			}
		}
	}
	k, _ := NewKey("x", raw)
	if strings.Contains(k.String(), b64[:8]) || strings.Contains(k.String(), hx[:8]) {
		t.Error("Key.String shows key bytes")
	}
}

func TestLoad(t *testing.T) {
	raw := make([]byte, 32)
	rand.Read(raw)
	t.Setenv(EnvKey, "")
	if c, err := Load(""); c != nil || err != nil {
		t.Fatalf("no configuration: %v %v", c, err)
	}
	t.Setenv(EnvKey, "env:"+base64.StdEncoding.EncodeToString(raw))
	c, err := Load("")
	if err != nil || c.KeyIDs()[0] != "env" {
		t.Fatalf("from env: %v", err)
	}
	p := filepath.Join(t.TempDir(), "key")
	os.WriteFile(p, raw, 0o600)
	c, err = Load(p) // the file wins over the env
	if err != nil || c.KeyIDs()[0] != "default" {
		t.Fatalf("from file: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file accepted")
	}
	t.Setenv(EnvKey, "abc")
	if _, err := Load(""); err == nil || !strings.Contains(err.Error(), EnvKey) {
		t.Errorf("bad env key: %v", err)
	}
}

func TestHTTPHandler(t *testing.T) {
	k, _ := randKey(t, "k")
	c := mustCodec(t, k)
	srv := httptest.NewServer(Handler(c, HandlerOptions{UIOrigins: []string{"http://localhost:8233"}, AuthToken: "s3cret"}))
	defer srv.Close()

	post := func(path string, ps []*commonpb.Payload, auth, origin string) (*http.Response, []*commonpb.Payload) {
		t.Helper()
		body, _ := protojson.Marshal(&commonpb.Payloads{Payloads: ps})
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Namespace", "default")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var out commonpb.Payloads
		if resp.StatusCode == http.StatusOK {
			if err := protojson.Unmarshal(b, &out); err != nil {
				t.Fatalf("%s: %v: %s", path, err, b)
			}
		}
		return resp, out.Payloads
	}

	resp, enc := post("/encode", payloads(t), "Bearer s3cret", "http://localhost:8233")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("encode: %s", resp.Status)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "http://localhost:8233" {
		t.Errorf("allow-origin %q", got)
	}
	if resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Error("no allow-credentials")
	}
	if string(enc[0].Metadata[converter.MetadataEncoding]) != EncodingEncrypted {
		t.Fatalf("encode did not encrypt: %v", enc[0].Metadata)
	}
	// The server's output decodes with the library codec and vice versa.
	if _, err := c.Decode(enc); err != nil {
		t.Fatal(err)
	}
	resp, dec := post("/decode", enc, "Bearer s3cret", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("decode: %s", resp.Status)
	}
	var s string
	if err := converter.GetDefaultDataConverter().FromPayload(dec[0], &s); err != nil || s != secret {
		t.Errorf("decode gave %q %v", s, err)
	}

	for _, auth := range []string{"", "Bearer wrong", "Basic s3cret", "s3cret"} {
		if resp, _ := post("/decode", enc, auth, ""); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("auth %q: %s", auth, resp.Status)
		}
	}
	// Another origin gets no CORS grant (the browser then refuses the response).
	if resp, _ := post("/decode", enc, "Bearer s3cret", "http://evil.example"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("CORS granted to a foreign origin")
	}
	tampered := []*commonpb.Payload{{Metadata: enc[0].Metadata, Data: append(append([]byte(nil), enc[0].Data[:len(enc[0].Data)-1]...), enc[0].Data[len(enc[0].Data)-1]^1)}}
	if resp, _ := post("/decode", tampered, "Bearer s3cret", ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("tampered: %s", resp.Status)
	}

	// Preflight: no credentials, answered with the allowed methods and headers.
	req, _ := http.NewRequest(http.MethodOptions, srv.URL+"/decode", nil)
	req.Header.Set("Origin", "http://localhost:8233")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "content-type,x-namespace,authorization")
	pre, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pre.Body.Close()
	if pre.StatusCode/100 != 2 {
		t.Errorf("preflight %s", pre.Status)
	}
	h := pre.Header
	if h.Get("Access-Control-Allow-Origin") != "http://localhost:8233" || h.Get("Access-Control-Allow-Credentials") != "true" ||
		!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight headers %v", h)
	}
	for _, want := range []string{"content-type", "x-namespace", "authorization"} {
		if !strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), want) {
			t.Errorf("preflight does not allow %s: %v", want, h)
		}
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(); err == nil {
		t.Error("no keys accepted")
	}
	k, _ := randKey(t, "k")
	if _, err := New(k, k); err == nil {
		t.Error("duplicate ids accepted")
	}
	if _, err := NewKey("k", make([]byte, 16)); err == nil {
		t.Error("16-byte key accepted")
	}
	var zero Key
	if _, err := New(zero); err == nil {
		t.Error("zero key accepted")
	}
}
