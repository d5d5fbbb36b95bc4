package bulk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
)

// Manifest is the complete-status response body (BD2 L412-551, BD3 L506-690).
type Manifest struct {
	TransactionTime     string // verbatim from the server (it is the next _since)
	Request             string
	RequiresAccessToken bool
	Output              []FileItem
	Error               []FileItem // STU2/3 "error" or BD4 "outcome"
	Deleted             []FileItem
	Next                string // link relation "next" url, "" if none
	OutputOrganizedBy   string
}

// FileItem is one entry of output, error or deleted.
type FileItem struct {
	Type     string
	URL      string
	Count    int64
	HasCount bool
	// FileSize is the entry's fileSize in bytes, when the server gives a
	// valid one: only a hint (bulkflow groups small files with it), never
	// checked against the body.
	FileSize    int64
	HasFileSize bool
}

type rawItem struct {
	Type  string          `json:"type"`
	URL   string          `json:"url"`
	Count json.RawMessage `json:"count"`
	// FileSize: a hint some servers add; an invalid one is ignored.
	FileSize json.RawMessage `json:"fileSize"`
}

type rawManifest struct {
	TransactionTime     *string   `json:"transactionTime"`
	Request             string    `json:"request"`
	RequiresAccessToken *bool     `json:"requiresAccessToken"`
	Output              []rawItem `json:"output"`
	Error               []rawItem `json:"error"`
	Outcome             []rawItem `json:"outcome"` // BD4-draft name for error
	Deleted             []rawItem `json:"deleted"`
	Link                []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	OutputOrganizedBy string `json:"outputOrganizedBy"`
	ResourceType      string `json:"resourceType"`
	// "extension" (object in BD2/3, array in BD4) and any other key are
	// ignored: BD2 L420 reserves extension; clients ignore unknown keys.
}

// ParseManifest parses a manifest in the BD2, BD3 or BD4-draft shape. File
// URLs must be absolute ("the absolute path to the file", BD2 L451); the
// Client methods resolve relative ones against the manifest URL instead.
func ParseManifest(data []byte) (*Manifest, error) {
	return parseManifest(data, nil)
}

func parseManifest(data []byte, base *url.URL) (*Manifest, error) {
	b := trimSpace(data)
	if len(b) == 0 {
		return nil, errors.New("manifest: empty body")
	}
	if b[0] != '{' {
		return nil, fmt.Errorf("manifest: body is not a JSON object (starts with %s)", quoteByte(b[0]))
	}
	var raw rawManifest
	if err := json.Unmarshal(b, &raw); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("manifest: bad JSON at byte %d of %d (truncated or malformed): %v", se.Offset, len(b), err)
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("manifest: field %q has a JSON %s, want %s", te.Field, te.Value, te.Type)
		}
		return nil, fmt.Errorf("manifest: bad JSON: %w", err)
	}
	if raw.ResourceType == "OperationOutcome" {
		msg := "no diagnostics"
		if oo, ok := parseOperationOutcome(b); ok {
			msg = oo.diagnostics()
		}
		return nil, fmt.Errorf("manifest: server sent an OperationOutcome instead of a manifest: %s", msg)
	}
	if raw.TransactionTime == nil || strings.TrimSpace(*raw.TransactionTime) == "" {
		return nil, errors.New("manifest: transactionTime is missing or empty (it is required: BD2 L417); cannot know the next _since")
	}
	m := &Manifest{
		TransactionTime:     *raw.TransactionTime,
		Request:             raw.Request,
		RequiresAccessToken: true, // absent (non-conformant): assume the file server wants the token
		OutputOrganizedBy:   raw.OutputOrganizedBy,
	}
	if raw.RequiresAccessToken != nil {
		m.RequiresAccessToken = *raw.RequiresAccessToken
	}
	var err error
	if m.Output, err = convertItems("output", raw.Output, base); err != nil {
		return nil, err
	}
	if m.Error, err = convertItems("error", raw.Error, base); err != nil {
		return nil, err
	}
	outcome, err := convertItems("outcome", raw.Outcome, base)
	if err != nil {
		return nil, err
	}
	m.Error = dedupItems(append(m.Error, outcome...))
	if m.Deleted, err = convertItems("deleted", raw.Deleted, base); err != nil {
		return nil, err
	}
	for i, l := range raw.Link {
		if !strings.EqualFold(l.Relation, "next") {
			continue
		}
		u, err := resolveURL(l.URL, base)
		if err != nil {
			return nil, fmt.Errorf("manifest: link[%d] (next): %w", i, err)
		}
		m.Next = u
		break
	}
	return m, nil
}

func convertItems(field string, raw []rawItem, base *url.URL) ([]FileItem, error) {
	out := make([]FileItem, 0, len(raw))
	for i, r := range raw {
		u, err := resolveURL(r.URL, base)
		if err != nil {
			return nil, fmt.Errorf("manifest: %s[%d].url: %w", field, i, err)
		}
		it := FileItem{Type: r.Type, URL: u}
		if c := bytes.TrimSpace(r.Count); len(c) > 0 && string(c) != "null" {
			n, ok := parseCount(c)
			if !ok {
				return nil, fmt.Errorf("manifest: %s[%d].count %s is not a non-negative integer", field, i, clip(string(c)))
			}
			it.Count, it.HasCount = n, true
		}
		if c := bytes.TrimSpace(r.FileSize); len(c) > 0 {
			if n, ok := parseCount(c); ok {
				it.FileSize, it.HasFileSize = n, true
			}
		}
		out = append(out, it)
	}
	return dedupItems(out), nil
}

// parseCount accepts integral JSON numbers, including 1e3 or 12.0.
func parseCount(c []byte) (int64, bool) {
	if n, err := strconv.ParseInt(string(c), 10, 64); err == nil {
		return n, n >= 0
	}
	f, err := strconv.ParseFloat(string(c), 64)
	if err != nil || f < 0 || f != math.Trunc(f) || f > 1<<62 {
		return 0, false
	}
	return int64(f), true
}

// resolveURL requires an absolute http(s) URL, or resolves a relative one
// against base when base is given.
func resolveURL(s string, base *url.URL) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("missing URL")
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("unparseable URL %q", clip(redactURL(s)))
	}
	if !u.IsAbs() {
		if base == nil {
			return "", fmt.Errorf("relative URL %q: file URLs must be absolute (BD2 L451)", clip(redactURL(s)))
		}
		u = base.ResolveReference(u)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("URL %q is not an http(s) URL", clip(redactURL(u.String())))
	}
	return u.String(), nil
}

func dedupItems(items []FileItem) []FileItem {
	if len(items) < 2 {
		return items
	}
	seen := make(map[string]bool, len(items))
	out := items[:0]
	for _, it := range items {
		if seen[it.URL] {
			continue
		}
		seen[it.URL] = true
		out = append(out, it)
	}
	return out
}

func quoteByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
