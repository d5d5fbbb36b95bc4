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

// absBase spells absolute references: a fixed base (not the server's own URL)
// keeps the output identical across servers with the same seed, and a reader
// must find "Patient/pat-1" in "https://.../Patient/pat-1" as it would in
// "Patient/pat-1".
const absBase = "https://ehr.example.org/fhir/"

// refv appends a reference spelled as form picks: mostly relative as before,
// 1/8 absolute, 1/16 versioned ("/_history/1", which always exists).
func (g *gen) refv(t rtype, j int, form uint64) {
	g.s(`{"reference":"`)
	if form%8 == 3 {
		g.s(absBase)
	}
	g.s(typeNames[t])
	g.b = append(g.b, '/')
	g.s(idPrefix[t])
	g.i(j)
	if form%16 == 5 {
		g.s(`/_history/1`)
	}
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

// cc2 is cc with a second coding from another system (a translation).
func (g *gen) cc2(c, alt *coding) {
	g.s(`{"coding":[`)
	g.coding(c)
	g.b = append(g.b, ',')
	g.coding(alt)
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
			g.refv(tPatient, p, rv>>8)
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
			o := int(r>>32) % d.total[tOrganization]
			if rv>>20%8 == 0 {
				// identifier-only (logical) reference: no literal reference to resolve
				g.s(`{"identifier":{"system":"urn:ietf:rfc:3986","value":"urn:oid:2.16.840.1.113883.3.`)
				g.i(o)
				g.s(`"},"display":"`)
				g.s(cities[int(d.h(tOrganization, o)%uint64(len(cities)))].city)
				g.s(` General Hospital `)
				g.i(o)
				g.s(`"}`)
			} else {
				g.ref(tOrganization, o)
			}
		}
	case tObservation:
		g.observation(j, p, r, rv, eff, &a)
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
			g.cc2(a.code, a.alt)
		}
		g.s(`,"subject":`)
		g.refv(tPatient, p, rv>>16)
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
		if g.writeAttachment(j, a.code.display) { // attachments.go
			break
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

func (g *gen) observation(j, p int, r, rv uint64, eff int64, a *attrs) {
	d := g.d
	c := &obsCodes[r%uint64(len(obsCodes))]
	// 1/8 of observations name their performer as a contained Practitioner
	// ("#performer"), as records copied from another system do.
	contained := (rv>>44)%8 == 0 && g.k("performer") && g.k("contained")
	if contained {
		g.s(`,"contained":[{"resourceType":"Practitioner","id":"performer","name":[{"family":"`)
		g.s(familyNames[(rv>>48)%uint64(len(familyNames))])
		g.s(`","given":["`)
		g.s(givenNames[(rv>>52)%uint64(len(givenNames))])
		g.s(`"]}]}]`)
	}
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
		g.refv(tPatient, p, rv>>12)
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
		if contained {
			g.s(`{"reference":"#performer"}`)
		} else {
			g.ref(tPractitioner, int(r>>28)%d.total[tPractitioner])
		}
		g.b = append(g.b, ']')
	}
	switch c.kind {
	case vQuantity:
		if (rv>>36)%16 == 0 {
			// value absent, with the reason (R4 obs-6: dataAbsentReason only without value[x])
			if g.k("dataAbsentReason") {
				g.s(`,"dataAbsentReason":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/data-absent-reason","code":"not-performed","display":"Not Performed"}]}`)
			}
		} else if g.k("valueQuantity") {
			g.s(`,"valueQuantity":`)
			g.quantity(c.lo+int(rv%uint64(c.range10)), c.unit)
		}
	case vCodeableConcept:
		if g.k("valueCodeableConcept") {
			g.s(`,"valueCodeableConcept":`)
			g.cc(&qualAnswers[rv%uint64(len(qualAnswers))])
		}
	case vString:
		if g.k("valueString") {
			g.s(`,"valueString":"`)
			g.s(appearances[rv%uint64(len(appearances))])
			g.b = append(g.b, '"')
		}
	case vComponents:
		// a panel: no value[x] of its own, the values are in component
		if g.k("component") {
			g.s(`,"component":[{"code":`)
			g.cc(&bpSystolic)
			g.s(`,"valueQuantity":`)
			g.quantity(c.lo+int(rv%uint64(c.range10)), c.unit)
			g.s(`},{"code":`)
			g.cc(&bpDiastolic)
			g.s(`,"valueQuantity":`)
			g.quantity(c.lo*6/10+int((rv>>16)%uint64(c.range10/2)), c.unit)
			g.s(`}]`)
		}
	}
	if g.k("referenceRange") && c.cat == 0 && c.kind == vQuantity {
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
}

// quantity appends a UCUM Quantity of x tenths.
func (g *gen) quantity(x int, unit string) {
	g.s(`{"value":`)
	g.tenth(x)
	g.s(`,"unit":"`)
	g.s(unit)
	g.s(`","system":"http://unitsofmeasure.org","code":"`)
	g.s(unit)
	g.s(`"}`)
}

// patient varies as real records do: 0-3 names of different use with one to
// three given names, 0-3 telecoms, 0-2 addresses, US Core race and ethnicity
// (nested extensions) on most, deceased[x] in both forms on some. Every
// choice comes from r (stable per patient) or rv (per version).
func (g *gen) patient(j int, r, rv uint64) {
	ci := &cities[(r>>12)%uint64(len(cities))]
	if g.k("extension") {
		race := (r >> 44) % 8 // 0: none, 1-6: one category, 7: two categories
		eth := (r >> 47) % 4  // 0: none, 1: Hispanic or Latino, 2-3: not
		if race > 0 || eth > 0 {
			g.s(`,"extension":[`)
			if race > 0 {
				g.s(`{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race","extension":[`)
				rc := &raceCodes[(race-1)%uint64(len(raceCodes))]
				g.s(`{"url":"ombCategory","valueCoding":`)
				g.coding(rc)
				g.b = append(g.b, '}')
				text := rc.display
				if race == 7 {
					rc2 := &raceCodes[(r>>50)%uint64(len(raceCodes)-1)]
					if rc2 == rc {
						rc2 = &raceCodes[len(raceCodes)-1]
					}
					g.s(`,{"url":"ombCategory","valueCoding":`)
					g.coding(rc2)
					g.b = append(g.b, '}')
					text = "Mixed"
				}
				g.s(`,{"url":"text","valueString":"`)
				g.s(text)
				g.s(`"}]}`)
			}
			if eth > 0 {
				if race > 0 {
					g.b = append(g.b, ',')
				}
				ec := &ethnicityCodes[min(eth-1, 1)]
				g.s(`{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity","extension":[{"url":"ombCategory","valueCoding":`)
				g.coding(ec)
				g.s(`},{"url":"text","valueString":"`)
				g.s(ec.display)
				g.s(`"}]}`)
			}
			g.b = append(g.b, ']')
		}
	}
	if g.k("identifier") {
		g.s(`,"identifier":[{"use":"usual","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR","display":"Medical Record Number"}]},"system":"urn:oid:2.16.840.1.113883.19.5","value":"MRN`)
		g.i(10000000 + j)
		g.b = append(g.b, '"', '}')
		if (r>>52)%4 == 0 {
			g.s(`,{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"SS","display":"Social Security number"}]},"system":"http://hl7.org/fhir/sid/us-ssn","value":"999-`)
			g.i(10 + j%90)
			g.b = append(g.b, '-')
			g.i(1000 + j%9000)
			g.b = append(g.b, '"', '}')
		}
		g.b = append(g.b, ']')
	}
	if g.k("active") {
		g.s(`,"active":true`)
	}
	if g.k("name") {
		// 0 names 1/8, 1 name 4/8, 2 names 2/8, 3 names 1/8; the first is official
		n := [8]int{0, 1, 1, 1, 1, 2, 2, 3}[(r>>36)%8]
		if n > 0 {
			g.s(`,"name":[`)
			for k := 0; k < n; k++ {
				if k > 0 {
					g.b = append(g.b, ',')
				}
				h := mix(r + uint64(k))
				g.s(`{"use":"`)
				g.s(nameUses[k][h%uint64(len(nameUses[k]))])
				g.s(`","family":"`)
				if k == 0 {
					g.s(familyNames[r%uint64(len(familyNames))])
				} else {
					g.s(familyNames[(h>>8)%uint64(len(familyNames))])
				}
				g.s(`","given":["`)
				if k == 0 {
					g.s(givenNames[(r>>8)%uint64(len(givenNames))])
				} else {
					g.s(givenNames[(h>>16)%uint64(len(givenNames))])
				}
				for m := uint64(0); m < (h>>24)%3; m++ { // up to two middle names
					g.s(`","`)
					g.s(givenNames[(h>>(32+8*m))%uint64(len(givenNames))])
				}
				g.s(`"]}`)
			}
			g.b = append(g.b, ']')
		}
	}
	if g.k("telecom") {
		// 0-3 telecoms: home phone (most), mobile, e-mail
		t := (rv >> 32) % 8
		if t != 0 {
			g.s(`,"telecom":[`)
			sep := false
			if t&1 != 0 || t == 6 {
				g.s(`{"system":"phone","value":"555-`)
				g.i(1000 + int(rv%9000))
				g.s(`","use":"home"}`)
				sep = true
			}
			if t&2 != 0 {
				if sep {
					g.b = append(g.b, ',')
				}
				g.s(`{"system":"phone","value":"555-`)
				g.i(1000 + int((rv>>14)%9000))
				g.s(`","use":"mobile","rank":1}`)
				sep = true
			}
			if t&4 != 0 {
				if sep {
					g.b = append(g.b, ',')
				}
				g.s(`{"system":"email","value":"patient`)
				g.i(j)
				g.s(`@example.org","use":"home"}`)
			}
			g.b = append(g.b, ']')
		}
	}
	if g.k("gender") {
		if r&(1<<20) == 0 {
			g.s(`,"gender":"female"`)
		} else {
			g.s(`,"gender":"male"`)
		}
	}
	birth := g.d.epoch - int64(r>>24)%(90*365*msPerDay) - 365*msPerDay
	if g.k("birthDate") {
		g.s(`,"birthDate":`)
		g.date(birth)
	}
	// deceased[x]: 1/16 dateTime, 1/16 true, 1/8 an explicit false, else absent
	switch (r >> 40) % 16 {
	case 0:
		if g.k("deceasedDateTime") {
			g.s(`,"deceasedDateTime":`)
			g.time(birth + (g.d.epoch-birth)*int64(8+(r>>56)%8)/16)
		}
	case 1:
		if g.k("deceasedBoolean") {
			g.s(`,"deceasedBoolean":true`)
		}
	case 2, 3:
		if g.k("deceasedBoolean") {
			g.s(`,"deceasedBoolean":false`)
		}
	}
	if g.k("address") {
		// 0-2 addresses: none 1/8, home 5/8, home + an old one 2/8
		na := [8]int{0, 1, 1, 1, 1, 1, 2, 2}[(r>>28)%8]
		if na > 0 {
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
			g.s(`","country":"US"}`)
			if na == 2 {
				old := &cities[(r>>16)%uint64(len(cities))]
				g.s(`,{"use":"old","type":"physical","line":["`)
				g.i(1 + int((r>>4)%999))
				g.b = append(g.b, ' ')
				g.s(streets[(r>>6)%uint64(len(streets))])
				g.s(`","Apt `)
				g.i(1 + int((r>>9)%40))
				g.s(`"],"city":"`)
				g.s(old.city)
				g.s(`","state":"`)
				g.s(old.state)
				g.s(`","postalCode":"`)
				g.s(old.zip)
				g.s(`","period":{"end":`)
				g.date(birth + (g.d.epoch-birth)/2)
				g.s(`}}`)
			}
			g.b = append(g.b, ']')
		}
	}
	if g.k("managingOrganization") {
		g.s(`,"managingOrganization":`)
		g.refv(tOrganization, int(r>>32)%g.d.total[tOrganization], rv>>20)
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
