// Package codec encrypts Temporal payloads with AES-256-GCM so that workflow
// histories (inputs, results, activity arguments, failure messages and stack
// traces) never hold PHI in clear: the Temporal server, its database and its
// UI only ever see ciphertext. Workers and the starter load the same keys; the
// codec server (starter codec-server) lets the Temporal UI show clear text to
// people who may see it.
//
// Several keys may be loaded so that keys can be rotated: the first one
// encrypts, every one decrypts. Each encrypted payload names its key's id.
package codec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/proto"
)

const (
	// EncodingEncrypted is the metadata "encoding" of an encrypted payload.
	EncodingEncrypted = "binary/encrypted"
	// MetadataKeyID names the key that encrypted a payload.
	MetadataKeyID = "encryption-key-id"
	// EnvKey holds keys inline (same format as a key file), for containers
	// that get secrets as environment variables.
	EnvKey = "BULKFLOW_CODEC_KEY"
	// EnvKeyFile names a key file.
	EnvKeyFile = "BULKFLOW_CODEC_KEY_FILE"
	// DefaultKeyID is the id of a key given without one.
	DefaultKeyID = "default"

	keySize   = 32 // AES-256
	nonceSize = 12 // GCM standard nonce
)

// Key is one AES-256 key and its id. Its String never shows the key bytes, so
// it is safe to log or to put in an error by mistake.
type Key struct {
	ID  string
	raw []byte
}

func (k Key) String() string { return fmt.Sprintf("codec key %q", k.ID) }

// NewKey checks and wraps raw key bytes.
func NewKey(id string, raw []byte) (Key, error) {
	if err := checkID(id); err != nil {
		return Key{}, err
	}
	if len(raw) != keySize {
		return Key{}, fmt.Errorf("key %q is %d bytes, want %d (AES-256)", id, len(raw), keySize)
	}
	return Key{ID: id, raw: append([]byte(nil), raw...)}, nil
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func checkID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("key id %q: use 1-64 letters, digits, '.', '_' or '-'", id)
	}
	return nil
}

// ParseKeys reads the key file format: one or more lines "id:KEY" where KEY is
// 32 bytes in base64 (standard or URL alphabet, padding optional) or hex;
// or a single line "KEY" (id "default"); or exactly 32 raw bytes (id
// "default", e.g. `head -c 32 /dev/urandom > key`). Blank lines and lines
// starting with '#' are ignored. Errors name lines and ids, never key bytes.
func ParseKeys(data []byte) ([]Key, error) {
	// Exactly 32 bytes can only be a raw key: any text form is longer.
	if len(data) == keySize {
		k, err := NewKey(DefaultKeyID, data)
		return []Key{k}, err
	}
	var keys []Key
	seen := map[string]int{}
	lines := strings.Split(string(data), "\n")
	var content []int
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			content = append(content, i)
		}
	}
	if len(content) == 0 {
		return nil, errors.New("no key found")
	}
	for _, i := range content {
		l := strings.TrimSpace(lines[i])
		id, val, hasID := strings.Cut(l, ":")
		if !hasID {
			if len(content) > 1 {
				return nil, fmt.Errorf("line %d: with several keys each line must be id:KEY", i+1)
			}
			id, val = DefaultKeyID, l
		}
		id, val = strings.TrimSpace(id), strings.TrimSpace(val)
		if err := checkID(id); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if prev, dup := seen[id]; dup {
			return nil, fmt.Errorf("line %d: duplicate key id %q (also on line %d)", i+1, id, prev)
		}
		seen[id] = i + 1
		raw, err := decodeKey(val)
		if err != nil {
			return nil, fmt.Errorf("line %d: key %q: %w", i+1, id, err)
		}
		k, err := NewKey(id, raw)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// decodeKey accepts hex (64 digits) or base64. Its errors say nothing of the
// value: a half-pasted key is still a secret.
func decodeKey(s string) ([]byte, error) {
	if len(s) == 2*keySize {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != keySize {
				return nil, fmt.Errorf("decodes to %d bytes, want %d (AES-256)", len(b), keySize)
			}
			return b, nil
		}
	}
	return nil, fmt.Errorf("is neither base64 nor 64 hex digits (%d characters)", len(s))
}

// Codec is a converter.PayloadCodec doing AES-256-GCM.
type Codec struct {
	encID string
	aeads map[string]cipher.AEAD
	ids   []string
}

var _ converter.PayloadCodec = (*Codec)(nil)

// New builds a codec: keys[0] encrypts, all decrypt.
func New(keys ...Key) (*Codec, error) {
	if len(keys) == 0 {
		return nil, errors.New("codec: no keys")
	}
	c := &Codec{encID: keys[0].ID, aeads: map[string]cipher.AEAD{}}
	for _, k := range keys {
		if _, dup := c.aeads[k.ID]; dup {
			return nil, fmt.Errorf("codec: duplicate key id %q", k.ID)
		}
		if len(k.raw) != keySize {
			return nil, fmt.Errorf("codec: key %q is %d bytes, want %d", k.ID, len(k.raw), keySize)
		}
		block, err := aes.NewCipher(k.raw)
		if err != nil {
			return nil, fmt.Errorf("codec: key %q: %w", k.ID, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("codec: key %q: %w", k.ID, err)
		}
		c.aeads[k.ID] = aead
		c.ids = append(c.ids, k.ID)
	}
	return c, nil
}

// KeyIDs lists the loaded key ids, the encrypting one first.
func (c *Codec) KeyIDs() []string { return append([]string(nil), c.ids...) }

// LoadFile reads a key file (see ParseKeys).
func LoadFile(path string) (*Codec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("codec key file: %w", err)
	}
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("codec key file %s: %w", path, err)
	}
	return New(keys...)
}

// Load returns the codec configured by a key file path (a flag, which may
// default to $BULKFLOW_CODEC_KEY_FILE) or, when that is empty, by
// $BULKFLOW_CODEC_KEY. With neither it returns nil, nil: no encryption.
func Load(path string) (*Codec, error) {
	if path != "" {
		return LoadFile(path)
	}
	v, ok := os.LookupEnv(EnvKey)
	if !ok || v == "" {
		return nil, nil
	}
	keys, err := ParseKeys([]byte(v))
	if err != nil {
		return nil, fmt.Errorf("codec key from %s: %w", EnvKey, err)
	}
	return New(keys...)
}

// associatedData binds a ciphertext to its key id, so relabelling a payload
// with another loaded key's id fails authentication rather than decrypting
// under the wrong key.
func associatedData(id string) []byte { return []byte("bulkflow-codec-v1:" + id) }

// Encode encrypts each payload whole (metadata and data) under the first key.
func (c *Codec) Encode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	aead := c.aeads[c.encID]
	out := make([]*commonpb.Payload, len(payloads))
	for i, p := range payloads {
		plain, err := proto.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("codec: marshal payload: %w", err)
		}
		buf := make([]byte, nonceSize, nonceSize+len(plain)+aead.Overhead())
		if _, err := rand.Read(buf); err != nil {
			return nil, fmt.Errorf("codec: nonce: %w", err)
		}
		out[i] = &commonpb.Payload{
			Metadata: map[string][]byte{
				converter.MetadataEncoding: []byte(EncodingEncrypted),
				MetadataKeyID:              []byte(c.encID),
			},
			Data: aead.Seal(buf, buf, plain, associatedData(c.encID)),
		}
	}
	return out, nil
}

// Decode decrypts payloads marked binary/encrypted and passes others through
// unchanged (histories written before the codec was turned on stay readable).
func (c *Codec) Decode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	out := make([]*commonpb.Payload, len(payloads))
	for i, p := range payloads {
		if string(p.GetMetadata()[converter.MetadataEncoding]) != EncodingEncrypted {
			out[i] = p
			continue
		}
		id := string(p.Metadata[MetadataKeyID])
		aead, ok := c.aeads[id]
		if !ok {
			return nil, fmt.Errorf("codec: payload encrypted with key id %q, which is not loaded (loaded: %s)", id, strings.Join(c.ids, ", "))
		}
		if len(p.Data) < nonceSize+aead.Overhead() {
			return nil, fmt.Errorf("codec: encrypted payload (key %q) is truncated", id)
		}
		plain, err := aead.Open(nil, p.Data[:nonceSize], p.Data[nonceSize:], associatedData(id))
		if err != nil {
			return nil, fmt.Errorf("codec: payload (key %q) failed authentication: tampered, corrupted, or another key with the same id", id)
		}
		dec := &commonpb.Payload{}
		if err := proto.Unmarshal(plain, dec); err != nil {
			return nil, fmt.Errorf("codec: decrypted payload (key %q) is not a payload: %w", id, err)
		}
		out[i] = dec
	}
	return out, nil
}

// DataConverter wraps the default data converter with c.
func DataConverter(c converter.PayloadCodec) converter.DataConverter {
	return converter.NewCodecDataConverter(converter.GetDefaultDataConverter(), c)
}

// FailureConverter makes failures' messages and stack traces go through dc:
// by default Temporal stores them in clear, and error texts can quote PHI
// (URLs, OperationOutcome diagnostics).
func FailureConverter(dc converter.DataConverter) converter.FailureConverter {
	return temporal.NewDefaultFailureConverter(temporal.DefaultFailureConverterOptions{DataConverter: dc, EncodeCommonAttributes: true})
}

// Apply sets o's data and failure converters to encrypt with c; a nil c
// leaves o alone.
func Apply(o *client.Options, c *Codec) {
	if c == nil {
		return
	}
	o.DataConverter = DataConverter(c)
	o.FailureConverter = FailureConverter(o.DataConverter)
}
