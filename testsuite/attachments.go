package testsuite

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Attachments (Options.Attachments): a share of DocumentReferences carry
// content[0].attachment.url instead of inline data, pointing at a Binary
// resource of this server (relative "Binary/att-<n>" or absolute), or at
// the second listener (another 127.0.0.1 port: a foreign origin). The
// Binary's bytes derive from (Seed, n), so Expected can list every one with
// its SHA-256. Kinds, by a hash of the DocumentReference's index:
//
//	relative, size+hash   relative, no size/hash (PDF)   absolute, same origin
//	second origin         missing (404)                  wrong hash declared
//	large (1 MiB+)        returned as a Binary JSON resource whatever the Accept
//	inline data (as without the option)
//
// GET [base]/Binary/att-<n> needs the token like any FHIR read (when auth
// is on). The second origin serves /_attach/att-<n> and counts the
// Authorization headers that reach it (Stats.AuthHeaderOnSecondOrigin).
// Faults: endpoint "binary", selector the id ("att-12") or the kind
// ("large", "second", ...), attempts counted per id; whole-response faults
// and slow(bps=N) apply.

type attKind uint8

const (
	attInline attKind = iota
	attRelative
	attRelativeNoHash
	attAbsolute
	attSecondOrigin
	attMissing
	attWrongHash
	attLarge
	attBinaryJSON
)

var attKindNames = [...]string{"inline", "relative", "nohash", "absolute", "second", "missing", "wronghash", "large", "binaryjson"}

// attKindOf spreads the kinds over DocumentReference j (0 = inline).
func (d *dataset) attKindOf(j int) attKind {
	if !d.attachOn {
		return attInline
	}
	if _, ok := d.large[j]; ok {
		return attInline // the multi-MB inline attachments stay inline
	}
	switch d.h(tDocumentReference|0x60, j) % 20 {
	case 0, 1, 2, 3:
		return attRelative
	case 4, 5:
		return attRelativeNoHash
	case 6, 7:
		return attAbsolute
	case 8, 9:
		return attSecondOrigin
	case 10:
		return attMissing
	case 11:
		return attWrongHash
	case 12:
		return attLarge
	case 13, 14:
		return attBinaryJSON
	}
	return attInline
}

func (k attKind) contentType() string {
	if k == attRelativeNoHash {
		return "application/pdf"
	}
	return "text/plain"
}

// attContent is the Binary's bytes for DocumentReference j.
func (d *dataset) attContent(j int, k attKind) []byte {
	h := d.h(tDocumentReference|0x70, j)
	n := 200 + int(h%1800)
	if k == attLarge {
		n = 1<<20 + int(h%4096)
	}
	b := make([]byte, 0, n)
	if k == attRelativeNoHash {
		b = append(b, "%PDF-1.4\n"...)
	}
	line := "Clinical note " + strconv.Itoa(j) + ": "
	for len(b) < n {
		b = append(b, line...)
		v := mix(h + uint64(len(b)))
		for i := 0; i < 48 && len(b) < n; i++ {
			b = append(b, 'a'+byte(v%26))
			v = v/26 + uint64(i)*0x9E37
		}
		b = append(b, '\n')
	}
	return b[:n]
}

type attDigest struct {
	size   int
	sha1   string // base64, as in attachment.hash
	sha256 string // hex
}

func (d *dataset) attDigestOf(j int, k attKind) attDigest {
	if v, ok := d.attDigests.Load(j); ok {
		return v.(attDigest)
	}
	b := d.attContent(j, k)
	s1 := sha1.Sum(b)
	s2 := sha256.Sum256(b)
	dg := attDigest{size: len(b), sha1: base64.StdEncoding.EncodeToString(s1[:]), sha256: hex.EncodeToString(s2[:])}
	d.attDigests.Store(j, dg)
	return dg
}

// attURL is the url written into DocumentReference j.
func (d *dataset) attURL(j int, k attKind) string {
	id := "att-" + strconv.Itoa(j)
	switch k {
	case attAbsolute:
		if d.attBase != "" {
			return d.attBase + "/Binary/" + id
		}
	case attSecondOrigin:
		if d.attSecond != "" {
			return d.attSecond + "/_attach/" + id
		}
	}
	return "Binary/" + id
}

// writeAttachment writes the content element of DocumentReference j when
// it points at a Binary; false leaves the inline attachment to the caller.
func (g *gen) writeAttachment(j int, title string) bool {
	d := g.d
	k := d.attKindOf(j)
	if k == attInline {
		return false
	}
	g.s(`,"content":[{"attachment":{"contentType":"`)
	g.s(k.contentType())
	g.s(`","url":"`)
	g.s(d.attURL(j, k))
	g.b = append(g.b, '"')
	if k != attRelativeNoHash && k != attMissing {
		dg := d.attDigestOf(j, k)
		hash := dg.sha1
		if k == attWrongHash {
			s := sha1.Sum([]byte("not the content of " + strconv.Itoa(j)))
			hash = base64.StdEncoding.EncodeToString(s[:])
		}
		g.s(`,"size":`)
		g.i(dg.size)
		g.s(`,"hash":"`)
		g.s(hash)
		g.b = append(g.b, '"')
	}
	g.s(`,"title":"`)
	g.s(title)
	g.s(`"}}]`)
	return true
}

// ExpectedAttachment is one url attachment an export's DocumentReferences hold.
type ExpectedAttachment struct {
	ResourceType string
	ID           string
	Index        int    // position in content[]
	URL          string // as written in the resource
	Kind         string // relative, nohash, absolute, second, missing, wronghash, large, binaryjson
	// SecondOrigin: on the second listener (another origin than the FHIR base).
	SecondOrigin bool
	// Servable: the server answers 200 with the bytes (all but "missing").
	Servable bool
	// HashMatches: the declared hash (if any) is the content's.
	HashMatches bool
	ContentType string
	Size        int
	SHA256      string // hex of the bytes served
}

// expectedAttachments lists the url attachments of DocumentReferences j.
func (s *Server) expectedAttachment(j int) (ExpectedAttachment, bool) {
	d := s.data
	k := d.attKindOf(j)
	if k == attInline {
		return ExpectedAttachment{}, false
	}
	dg := d.attDigestOf(j, k)
	return ExpectedAttachment{ResourceType: "DocumentReference", ID: d.id(tDocumentReference, j), URL: d.attURL(j, k), Kind: attKindNames[k],
		SecondOrigin: k == attSecondOrigin, Servable: k != attMissing, HashMatches: k != attWrongHash, ContentType: k.contentType(),
		Size: dg.size, SHA256: dg.sha256}, true
}

// AttachmentBytes returns the bytes the server serves for a Binary id
// ("att-12"), or false.
func (s *Server) AttachmentBytes(id string) ([]byte, bool) {
	j, k, ok := s.parseAttID(id)
	if !ok || k == attMissing {
		return nil, false
	}
	return s.data.attContent(j, k), true
}

// SecondOrigin is the second listener's origin (after Start), e.g. for a
// servers file's allowedOrigins.
func (s *Server) SecondOrigin() string { return s.stoBase }

func (s *Server) parseAttID(id string) (int, attKind, bool) {
	n, ok := strings.CutPrefix(id, "att-")
	if !ok {
		return 0, 0, false
	}
	j, err := strconv.Atoi(n)
	if err != nil || j < 0 || j >= s.data.total[tDocumentReference] || strconv.Itoa(j) != n {
		return 0, 0, false
	}
	k := s.data.attKindOf(j)
	return j, k, k != attInline
}

// serveBinary answers GET [base]/Binary/<id> (second=false) and the second
// origin's /_attach/<id> (second=true).
func (s *Server) serveBinary(w http.ResponseWriter, r *http.Request, id string, second bool) {
	if second && r.Header.Get("Authorization") != "" {
		s.stats.add(func(st *Stats) { st.AuthHeaderOnSecondOrigin++ })
	}
	j, k, ok := s.parseAttID(id)
	rules := s.faultsFor("binary", id, func(sel string) bool { return sel == id || ok && sel == attKindNames[k] })
	if s.applyResponseFault(w, rules) {
		return
	}
	if r.Method != http.MethodGet {
		writeOO(w, 405, "error", "not-supported", "Binary accepts GET")
		return
	}
	if !second && !s.authorize(w, r) {
		return
	}
	if !ok || k == attMissing || (k == attSecondOrigin) != second {
		writeOO(w, 404, "error", "not-found", "no Binary "+id)
		return
	}
	body := s.data.attContent(j, k)
	ctype := k.contentType()
	if k == attBinaryJSON {
		// A server may answer a Binary read with the resource itself.
		body, _ = json.Marshal(map[string]string{"resourceType": "Binary", "id": id, "contentType": ctype, "data": base64.StdEncoding.EncodeToString(body)})
		ctype = "application/fhir+json"
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	var out interface{ Write([]byte) (int, error) } = w
	if sl := hasFault(rules, "slow"); sl != nil {
		out = &slowWriter{ctx: r.Context(), w: w, bps: max(sl.intArg("bps", 65536), 1), start: time.Now()}
	}
	if _, err := out.Write(body); err == nil {
		s.stats.add(func(st *Stats) { st.AttachmentsServed++ })
		s.data.servedMu.Lock()
		if s.data.served == nil {
			s.data.served = map[string]int{}
		}
		s.data.served[id]++
		s.data.servedMu.Unlock()
	}
}

// attachState is the part of the dataset the attachment option adds.
type attachState struct {
	attachOn           bool
	attBase, attSecond string   // absolute URL bases (set by Start)
	attDigests         sync.Map // j -> attDigest
	servedMu           sync.Mutex
	served             map[string]int // Binary id -> bodies sent whole
}

// AttachmentBodiesServed counts the bodies of Binary id ("att-12") sent
// whole (a body cut by a dropped connection does not count).
func (s *Server) AttachmentBodiesServed(id string) int {
	s.data.servedMu.Lock()
	defer s.data.servedMu.Unlock()
	return s.data.served[id]
}
