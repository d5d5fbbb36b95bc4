package testsuite

import (
	"encoding/base64"
	"io"
	"strconv"
)

// version is the state of one resource as of some instant. ver 1 with at 0
// is the generated original; Mutate adds later versions.
type version struct {
	at      int64 // unix ms of this version (0 = original, see baseLU)
	ver     int32
	deleted bool
}

const flushSize = 64 << 10

// gen appends resources as JSON into b with hand-written templates (no
// encoding/json, no reflection: that is what makes >300 MB/s possible) and
// streams b to w in flushSize chunks, so memory stays flat whatever the file size.
type gen struct {
	d  *dataset
	b  []byte
	w  io.Writer
	el *elemFilter
	t  rtype
	// line accounting for truncation faults
	line      int
	lineStart int
	stopAt    int // stop after this many complete lines (0 = never)
	cutAt     int // cut this line (1-based) in half and stop (0 = never)
	err       error
	written   int64
}

func (g *gen) flush() {
	if len(g.b) == 0 || g.err != nil {
		g.b = g.b[:0]
		return
	}
	n, err := g.w.Write(g.b)
	g.written += int64(n)
	g.err = err
	g.b = g.b[:0]
}

// endLine finishes one NDJSON line; false means stop generating.
func (g *gen) endLine() bool {
	g.line++
	if g.line == g.cutAt {
		// mid-line truncation: keep half of this line, no newline (a 200 that lies)
		g.b = g.b[:g.lineStart+(len(g.b)-g.lineStart)/2]
		g.flush()
		return false
	}
	g.b = append(g.b, '\n')
	if g.line == g.stopAt {
		g.flush()
		return false
	}
	if len(g.b) >= flushSize {
		g.flush()
	}
	g.lineStart = len(g.b)
	return g.err == nil
}

func (g *gen) s(x string) { g.b = append(g.b, x...) }
func (g *gen) i(x int)    { g.b = strconv.AppendInt(g.b, int64(x), 10) }

// k reports whether element name is kept under _elements (always true without it).
func (g *gen) k(name string) bool { return g.el == nil || g.el.has(g.t, name) }

// ref appends {"reference":"Type/prefix-idx"}.
func (g *gen) ref(t rtype, j int) {
	g.s(`{"reference":"`)
	g.s(typeNames[t])
	g.b = append(g.b, '/')
	g.s(idPrefix[t])
	g.i(j)
	g.s(`"}`)
}

func (g *gen) coding(c *coding) {
	g.s(`{"system":"`)
	g.s(c.system)
	g.s(`","code":"`)
	g.s(c.code)
	g.s(`","display":"`)
	g.s(c.display)
	g.s(`"}`)
}

func (g *gen) cc(c *coding) {
	g.s(`{"coding":[`)
	g.coding(c)
	g.s(`],"text":"`)
	g.s(c.display)
	g.s(`"}`)
}

func (g *gen) time(ms int64) {
	g.b = append(g.b, '"')
	g.b = appendInstant(g.b, ms)
	g.b = append(g.b, '"')
}

func (g *gen) date(ms int64) {
	g.b = append(g.b, '"')
	g.b = appendInstant(g.b, ms)[:len(g.b)+10]
	g.b = append(g.b, '"')
}

// tenth appends x/10 with one decimal.
func (g *gen) tenth(x int) {
	g.i(x / 10)
	g.b = append(g.b, '.', byte('0'+x%10))
}

// head writes resourceType, id and meta (always kept: mandatory under _elements).
func (g *gen) head(t rtype, j int, v version, lu int64) {
	g.t = t
	g.s(`{"resourceType":"`)
	g.s(typeNames[t])
	g.s(`","id":"`)
	g.s(idPrefix[t])
	g.i(j)
	g.s(`","meta":{"versionId":"`)
	g.i(int(v.ver))
	g.s(`","lastUpdated":`)
	g.time(lu)
	if g.el != nil && g.el.subsets(t) {
		// BD2 _elements: "SHOULD mark the resources with the tag SUBSETTED"
		g.s(`,"tag":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED","display":"Resource encoded in summary mode"}]`)
	}
	g.b = append(g.b, '}')
}

// resource appends one resource (no newline). p is the owning patient for
// compartment types.
func (g *gen) resource(t rtype, j, p int, v version) {
	d := g.d
	r := d.h(t, j)
	lu := v.at
	if v.ver <= 1 {
		lu = d.baseLU(t, j)
	}
	// rv changes with each version: mutated resources get new values.
	rv := mix(r + uint64(v.ver))
	// clinical time: before lastUpdated
	eff := lu - int64(rv>>40)%(30*msPerDay)
	a := d.attrs(t, j, v.ver)
	g.head(t, j, v, lu)
	switch t {
	case tPatient:
		g.patient(j, r, rv)
	case tEncounter:
		enc := &encTypes[r%uint64(len(encTypes))]
		if g.k("identifier") {
			g.s(`,"identifier":[{"system":"urn:oid:1.2.36.146.595.217.0.1","value":"V`)
			g.i(j)
			g.s(`"}]`)
		}
		g.s(`,"status":"`)
		g.s(a.status)
		g.s(`","class":`)
		g.coding(&enc.class)
		if g.k("type") {
			g.s(`,"type":[`)
			g.cc(&enc.typ)
			g.b = append(g.b, ']')
		}
		if g.k("subject") {
			g.s(`,"subject":`)
			g.ref(tPatient, p)
		}
		if g.k("participant") {
			g.s(`,"participant":[{"type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PPRF","display":"primary performer"}]}],"individual":`)
			g.ref(tPractitioner, int(r>>24)%d.total[tPractitioner])
			g.s(`}]`)
		}
		if g.k("period") {
			g.s(`,"period":{"start":`)
			g.time(eff)
			g.s(`,"end":`)
			g.time(eff + int64(20+rv%240)*60000)
			g.b = append(g.b, '}')
		}
		if g.k("serviceProvider") {
			g.s(`,"serviceProvider":`)
			g.ref(tOrganization, int(r>>32)%d.total[tOrganization])
		}
	case tObservation:
		c := &obsCodes[r%uint64(len(obsCodes))]
		g.s(`,"status":"`)
		g.s(a.status)
		g.b = append(g.b, '"')
		if g.k("category") {
			g.s(`,"category":[{"coding":[`)
			g.coding(&obsCats[c.cat])
			g.s(`]}]`)
		}
		g.s(`,"code":`)
		g.cc(&c.coding)
		if g.k("subject") {
			g.s(`,"subject":`)
			g.ref(tPatient, p)
		}
		if ne := d.prefix[tEncounter][p+1] - d.prefix[tEncounter][p]; ne > 0 && g.k("encounter") {
			g.s(`,"encounter":`)
			g.ref(tEncounter, int(d.prefix[tEncounter][p])+int(r>>24)%int(ne))
		}
		if g.k("effectiveDateTime") {
			g.s(`,"effectiveDateTime":`)
			g.time(eff)
		}
		if g.k("issued") {
			g.s(`,"issued":`)
			g.time(eff + 3600000)
		}
		if g.k("performer") {
			g.s(`,"performer":[`)
			g.ref(tPractitioner, int(r>>28)%d.total[tPractitioner])
			g.b = append(g.b, ']')
		}
		if g.k("valueQuantity") {
			g.s(`,"valueQuantity":{"value":`)
			g.tenth(c.lo + int(rv%uint64(c.range10)))
			g.s(`,"unit":"`)
			g.s(c.unit)
			g.s(`","system":"http://unitsofmeasure.org","code":"`)
			g.s(c.unit)
			g.s(`"}`)
		}
		if g.k("referenceRange") && c.cat == 0 {
			g.s(`,"referenceRange":[{"low":{"value":`)
			g.tenth(c.lo)
			g.s(`,"unit":"`)
			g.s(c.unit)
			g.s(`"},"high":{"value":`)
			g.tenth(c.lo + c.range10*3/4)
			g.s(`,"unit":"`)
			g.s(c.unit)
			g.s(`"}}]`)
		}
	case tCondition:
		if g.k("clinicalStatus") {
			g.s(`,"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"`)
			g.s(a.status)
			g.s(`"}]}`)
		}
		if g.k("verificationStatus") {
			g.s(`,"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}]}`)
		}
		if g.k("category") {
			g.s(`,"category":[{"coding":[`)
			g.coding(&condCats[(r>>16)%2])
			g.s(`]}]`)
		}
		if g.k("code") {
			g.s(`,"code":`)
			g.cc(a.code)
		}
		g.s(`,"subject":`)
		g.ref(tPatient, p)
		if g.k("onsetDateTime") {
			g.s(`,"onsetDateTime":`)
			g.time(eff - int64(r>>36)%(400*msPerDay))
		}
		if g.k("recordedDate") {
			g.s(`,"recordedDate":`)
			g.time(eff)
		}
	case tMedicationRequest:
		g.s(`,"status":"`)
		g.s(a.status)
		g.s(`","intent":"order","medicationCodeableConcept":`)
		g.cc(a.code)
		g.s(`,"subject":`)
		g.ref(tPatient, p)
		if g.k("authoredOn") {
			g.s(`,"authoredOn":`)
			g.time(eff)
		}
		if g.k("requester") {
			g.s(`,"requester":`)
			g.ref(tPractitioner, int(r>>28)%d.total[tPractitioner])
		}
		if g.k("dosageInstruction") {
			g.s(`,"dosageInstruction":[{"sequence":1,"text":"Take `)
			g.i(1 + int(rv%3))
			g.s(` tablet(s) by mouth daily","timing":{"repeat":{"frequency":`)
			g.i(1 + int(rv%3))
			g.s(`,"period":1,"periodUnit":"d"}}}]`)
		}
	case tProcedure:
		g.s(`,"status":"`)
		g.s(a.status)
		g.b = append(g.b, '"')
		if g.k("code") {
			g.s(`,"code":`)
			g.cc(a.code)
		}
		g.s(`,"subject":`)
		g.ref(tPatient, p)
		if g.k("performedPeriod") {
			g.s(`,"performedPeriod":{"start":`)
			g.time(eff)
			g.s(`,"end":`)
			g.time(eff + int64(15+rv%120)*60000)
			g.b = append(g.b, '}')
		}
	case tImmunization:
		g.s(`,"status":"`)
		g.s(a.status)
		g.s(`","vaccineCode":`)
		g.cc(a.code)
		g.s(`,"patient":`)
		g.ref(tPatient, p)
		g.s(`,"occurrenceDateTime":`)
		g.time(eff)
		if g.k("primarySource") {
			g.s(`,"primarySource":true`)
		}
		if g.k("lotNumber") {
			g.s(`,"lotNumber":"LOT`)
			g.i(int(rv % 100000))
			g.b = append(g.b, '"')
		}
	case tAllergyIntolerance:
		if g.k("clinicalStatus") {
			g.s(`,"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical","code":"`)
			g.s(a.status)
			g.s(`"}]}`)
		}
		if g.k("type") {
			g.s(`,"type":"allergy"`)
		}
		if g.k("category") {
			g.s(`,"category":["`)
			g.s(a.cat)
			g.s(`"]`)
		}
		if g.k("criticality") {
			if rv&1 == 0 {
				g.s(`,"criticality":"low"`)
			} else {
				g.s(`,"criticality":"high"`)
			}
		}
		if g.k("code") {
			g.s(`,"code":`)
			g.cc(a.code)
		}
		g.s(`,"patient":`)
		g.ref(tPatient, p)
		if g.k("recordedDate") {
			g.s(`,"recordedDate":`)
			g.time(eff)
		}
	case tDocumentReference:
		g.s(`,"status":"`)
		g.s(a.status)
		g.b = append(g.b, '"')
		if g.k("type") {
			g.s(`,"type":`)
			g.cc(a.code)
		}
		if g.k("subject") {
			g.s(`,"subject":`)
			g.ref(tPatient, p)
		}
		if g.k("date") {
			g.s(`,"date":`)
			g.time(eff)
		}
		if g.k("author") {
			g.s(`,"author":[`)
			g.ref(tPractitioner, int(r>>28)%d.total[tPractitioner])
			g.b = append(g.b, ']')
		}
		g.s(`,"content":[{"attachment":{"contentType":"text/plain","data":"`)
		if n, ok := d.large[j]; ok {
			// multi-MB inline attachment: the line exceeds 4 MB
			for n > 0 {
				c := min(n, len(d.attach))
				g.b = append(g.b, d.attach[:c]...)
				n -= c
			}
		} else {
			var note [96]byte
			txt := append(note[:0], a.code.display...)
			txt = append(txt, " for patient "...)
			txt = strconv.AppendInt(txt, int64(p), 10)
			txt = append(txt, ", version "...)
			txt = strconv.AppendInt(txt, int64(v.ver), 10)
			g.b = base64.StdEncoding.AppendEncode(g.b, txt)
		}
		g.s(`","title":"`)
		g.s(a.code.display)
		g.s(`"}}]`)
	case tPractitioner:
		if g.k("identifier") {
			g.s(`,"identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"`)
			g.i(1000000000 + j)
			g.s(`"}]`)
		}
		if g.k("active") {
			g.s(`,"active":true`)
		}
		if g.k("name") {
			g.s(`,"name":[{"family":"`)
			g.s(familyNames[r%uint64(len(familyNames))])
			g.s(`","given":["`)
			g.s(givenNames[(r>>8)%uint64(len(givenNames))])
			g.s(`"],"prefix":["Dr."]}]`)
		}
		if g.k("qualification") {
			g.s(`,"qualification":[{"code":`)
			g.cc(&specialties[(r>>16)%uint64(len(specialties))])
			g.s(`}]`)
		}
	case tOrganization:
		ci := &cities[r%uint64(len(cities))]
		if g.k("identifier") {
			g.s(`,"identifier":[{"system":"urn:ietf:rfc:3986","value":"urn:oid:2.16.840.1.113883.3.`)
			g.i(j)
			g.s(`"}]`)
		}
		if g.k("active") {
			g.s(`,"active":true`)
		}
		if g.k("name") {
			g.s(`,"name":"`)
			g.s(ci.city)
			g.s(` General Hospital `)
			g.i(j)
			g.b = append(g.b, '"')
		}
		if g.k("address") {
			g.s(`,"address":[{"city":"`)
			g.s(ci.city)
			g.s(`","state":"`)
			g.s(ci.state)
			g.s(`","postalCode":"`)
			g.s(ci.zip)
			g.s(`","country":"US"}]`)
		}
	case tGroup:
		g.s(`,"type":"person","actual":true`)
		if g.k("name") {
			g.s(`,"name":"`)
			g.s(groupNames[j])
			g.b = append(g.b, '"')
		}
		if g.k("quantity") {
			g.s(`,"quantity":`)
			g.i(d.members[j])
		}
		if g.k("member") {
			g.s(`,"member":[`)
			first := true
			for q := 0; q < d.n; q++ {
				if !d.isMember(j, q) {
					continue
				}
				if !first {
					g.b = append(g.b, ',')
				}
				first = false
				g.s(`{"entity":`)
				g.ref(tPatient, q)
				g.b = append(g.b, '}')
				if len(g.b) >= flushSize && g.cutAt == 0 {
					g.flush() // huge groups: keep the buffer bounded
					g.lineStart = 0
				}
			}
			g.b = append(g.b, ']')
		}
	}
	g.b = append(g.b, '}')
}

func (g *gen) patient(j int, r, rv uint64) {
	ci := &cities[(r>>12)%uint64(len(cities))]
	if g.k("identifier") {
		g.s(`,"identifier":[{"use":"usual","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR","display":"Medical Record Number"}]},"system":"urn:oid:2.16.840.1.113883.19.5","value":"MRN`)
		g.i(10000000 + j)
		g.s(`"}]`)
	}
	if g.k("active") {
		g.s(`,"active":true`)
	}
	if g.k("name") {
		g.s(`,"name":[{"use":"official","family":"`)
		g.s(familyNames[r%uint64(len(familyNames))])
		g.s(`","given":["`)
		g.s(givenNames[(r>>8)%uint64(len(givenNames))])
		g.s(`"]}]`)
	}
	if g.k("telecom") {
		g.s(`,"telecom":[{"system":"phone","value":"555-`)
		g.i(1000 + int(rv%9000))
		g.s(`","use":"home"}]`)
	}
	if g.k("gender") {
		if r&(1<<20) == 0 {
			g.s(`,"gender":"female"`)
		} else {
			g.s(`,"gender":"male"`)
		}
	}
	if g.k("birthDate") {
		g.s(`,"birthDate":`)
		g.date(g.d.epoch - int64(r>>24)%(90*365*msPerDay) - 365*msPerDay)
	}
	if g.k("address") {
		g.s(`,"address":[{"use":"home","line":["`)
		g.i(1 + int(rv%999))
		g.b = append(g.b, ' ')
		g.s(streets[(rv>>10)%uint64(len(streets))])
		g.s(`"],"city":"`)
		g.s(ci.city)
		g.s(`","state":"`)
		g.s(ci.state)
		g.s(`","postalCode":"`)
		g.s(ci.zip)
		g.s(`","country":"US"}]`)
	}
	if g.k("managingOrganization") {
		g.s(`,"managingOrganization":`)
		g.ref(tOrganization, int(r>>32)%g.d.total[tOrganization])
	}
}

// appendInstant formats unix ms as YYYY-MM-DDThh:mm:ss.sssZ without the time
// package (civil-from-days, Howard Hinnant), ~10x faster than AppendFormat.
func appendInstant(b []byte, ms int64) []byte {
	days := ms / msPerDay
	rem := ms % msPerDay
	if rem < 0 {
		rem += msPerDay
		days--
	}
	z := days + 719468
	era := z / 146097
	if z < 0 && z%146097 != 0 {
		era = (z - 146096) / 146097
	}
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y := yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	dd := doy - (153*mp+2)/5 + 1
	mm := mp + 3
	if mp >= 10 {
		mm = mp - 9
	}
	if mm <= 2 {
		y++
	}
	b = append(b, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10), '-',
		byte('0'+mm/10), byte('0'+mm%10), '-', byte('0'+dd/10), byte('0'+dd%10), 'T')
	s := rem / 1000
	h, mi, se, f := s/3600, s/60%60, s%60, rem%1000
	return append(b, byte('0'+h/10), byte('0'+h%10), ':', byte('0'+mi/10), byte('0'+mi%10), ':',
		byte('0'+se/10), byte('0'+se%10), '.', byte('0'+f/100), byte('0'+f/10%10), byte('0'+f%10), 'Z')
}
