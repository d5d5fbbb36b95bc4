package testsuite

import (
	"encoding/base64"
	"sort"
	"strconv"
)

// rtype indexes the resource types the server exports.
type rtype uint8

const (
	tPatient rtype = iota
	tEncounter
	tObservation
	tCondition
	tMedicationRequest
	tProcedure
	tImmunization
	tAllergyIntolerance
	tDocumentReference
	tPractitioner
	tOrganization
	tGroup
	numTypes
)

// numCompartment is the number of patient-compartment types: they come first
// in the enum so "t < numCompartment" is the compartment test.
const numCompartment = int(tDocumentReference) + 1

var typeNames = [numTypes]string{
	"Patient", "Encounter", "Observation", "Condition", "MedicationRequest", "Procedure",
	"Immunization", "AllergyIntolerance", "DocumentReference", "Practitioner", "Organization", "Group",
}

// idPrefix makes ids readable and lets the server map an id back to its index.
var idPrefix = [numTypes]string{
	"pat-", "enc-", "obs-", "cond-", "medrx-", "proc-", "imm-", "alg-", "doc-", "prac-", "org-", "grp-",
}

// Per-patient resource count ranges (inclusive); Patient is always 1.
var perPatient = [numCompartment][2]int{
	{1, 1}, {2, 8}, {5, 30}, {1, 6}, {0, 8}, {0, 5}, {1, 6}, {0, 3}, {0, 3},
}

func typeByName(name string) (rtype, bool) {
	for i, n := range typeNames {
		if n == name {
			return rtype(i), true
		}
	}
	return 0, false
}

func isCompartment(t rtype) bool { return int(t) < numCompartment }

// numGroups is fixed: a few overlapping cohorts are enough for Group-level tests.
const numGroups = 3

var groupNames = [numGroups]string{"Diabetes registry", "Cardiology cohort", "Research study ABC"}

// mix is splitmix64's finaliser: a cheap, well-distributed hash so every
// field of every resource derives from (seed, type, index) without state.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

const (
	msPerDay  = int64(86400_000)
	spreadMs  = 5 * 365 * msPerDay // base lastUpdated spread: five years before the epoch
	attachLen = 5<<20 + 128        // large attachment base64 length: > 4 MB lines
)

// dataset is the immutable synthetic population. Only prefix sums are kept
// (one uint32 per patient and type); resources are generated on demand.
type dataset struct {
	seed        uint64
	n           int
	prefix      [numCompartment][]uint32
	total       [numTypes]int
	epoch       int64       // initial data clock, unix ms
	large       map[int]int // DocumentReference index -> attachment base64 length
	attach      []byte      // base64 block repeated to build large attachments
	members     [numGroups]int
	attachState // attachments.go (Options.Attachments)
}

func newDataset(seed int64, patients, largeAttachments int, epoch int64) *dataset {
	d := &dataset{seed: mix(uint64(seed) + 0x9E3779B97F4A7C15), n: patients, epoch: epoch}
	for t := 0; t < numCompartment; t++ {
		pre := make([]uint32, patients+1)
		lo, hi := perPatient[t][0], perPatient[t][1]
		var sum uint32
		for p := 0; p < patients; p++ {
			pre[p] = sum
			sum += uint32(lo + int(d.h(rtype(t)|0x40, p)%uint64(hi-lo+1)))
		}
		pre[patients] = sum
		d.prefix[t] = pre
		d.total[t] = int(sum)
	}
	d.total[tPractitioner] = max(5, patients/10)
	d.total[tOrganization] = max(3, patients/50)
	d.total[tGroup] = numGroups
	for p := 0; p < patients; p++ {
		for g := 0; g < numGroups; g++ {
			if d.isMember(g, p) {
				d.members[g]++
			}
		}
	}
	d.large = map[int]int{}
	if nd := d.total[tDocumentReference]; nd > 0 {
		for i := 0; i < largeAttachments && i < nd; i++ {
			d.large[i*nd/max(largeAttachments, 1)] = attachLen + i*4096
		}
	}
	// 48 KiB of pseudo-random bytes -> 64 KiB of base64 (a multiple of 4, so
	// repeating it stays valid base64).
	raw := make([]byte, 48<<10)
	for i := 0; i < len(raw); i += 8 {
		v := mix(d.seed + uint64(i))
		for k := 0; k < 8; k++ {
			raw[i+k] = byte(v >> (8 * k))
		}
	}
	d.attach = base64.StdEncoding.AppendEncode(nil, raw)
	return d
}

// h hashes (seed, type/salt, index).
func (d *dataset) h(t rtype, j int) uint64 {
	return mix(d.seed ^ uint64(t)<<56 ^ uint64(j)*0x9E3779B97F4A7C15)
}

// isMember: group g holds roughly 1/(g+2) of the patients, overlapping.
func (d *dataset) isMember(g, p int) bool {
	return d.h(0x30, p)%uint64(g+2) == 0
}

// patientOf returns the patient index owning compartment resource j.
func (d *dataset) patientOf(t rtype, j int) int {
	if t == tPatient {
		return j
	}
	pre := d.prefix[t]
	return sort.Search(d.n, func(p int) bool { return int(pre[p+1]) > j })
}

// baseLU is the original meta.lastUpdated of a resource (version 1).
func (d *dataset) baseLU(t rtype, j int) int64 {
	return d.epoch - msPerDay - int64(d.h(t, j)>>20)%spreadMs
}

func (d *dataset) id(t rtype, j int) string {
	return idPrefix[t] + strconv.Itoa(j)
}

// parseID maps an id back to its index.
func (d *dataset) parseID(t rtype, id string) (int, bool) {
	p := idPrefix[t]
	if len(id) <= len(p) || id[:len(p)] != p {
		return 0, false
	}
	j, err := strconv.Atoi(id[len(p):])
	if err != nil || j < 0 || j >= d.total[t] || strconv.Itoa(j) != id[len(p):] {
		return 0, false
	}
	return j, true
}

// ---- code tables (realistic R4 codings) ----

type coding struct{ system, code, display string }

type obsCode struct {
	coding
	cat         int // index into obsCats
	kind        valueKind
	unit        string
	lo, range10 int // value in tenths: lo + r%range10
}

var obsCats = []coding{
	{"http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory"},
	{"http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs"},
}

const loinc = "http://loinc.org"
const snomed = "http://snomed.info/sct"

// valueKind is how an Observation carries its result.
type valueKind uint8

const (
	vQuantity        valueKind = iota // valueQuantity (1/16 absent, with dataAbsentReason)
	vCodeableConcept                  // valueCodeableConcept
	vString                           // valueString
	vComponents                       // no value[x]; systolic and diastolic components
)

var obsCodes = []obsCode{
	{coding{loinc, "2345-7", "Glucose [Mass/volume] in Serum or Plasma"}, 0, vQuantity, "mg/dL", 700, 700},
	{coding{loinc, "718-7", "Hemoglobin [Mass/volume] in Blood"}, 0, vQuantity, "g/dL", 110, 60},
	{coding{loinc, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma"}, 0, vQuantity, "mg/dL", 6, 8},
	{coding{loinc, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma"}, 0, vQuantity, "mg/dL", 1500, 1300},
	{coding{loinc, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"}, 0, vQuantity, "%", 45, 45},
	{coding{loinc, "8867-4", "Heart rate"}, 1, vQuantity, "/min", 550, 550},
	{coding{loinc, "8310-5", "Body temperature"}, 1, vQuantity, "Cel", 360, 30},
	{coding{loinc, "29463-7", "Body weight"}, 1, vQuantity, "kg", 450, 750},
	{coding{loinc, "8302-2", "Body height"}, 1, vQuantity, "cm", 1500, 450},
	{coding{loinc, "9279-1", "Respiratory rate"}, 1, vQuantity, "/min", 120, 120},
	{coding{loinc, "85354-9", "Blood pressure panel with all children optional"}, 1, vComponents, "mm[Hg]", 1000, 800},
	{coding{loinc, "5196-1", "Hepatitis B virus surface Ag [Presence] in Serum"}, 0, vCodeableConcept, "", 0, 0},
	{coding{loinc, "5767-9", "Appearance of Urine"}, 0, vString, "", 0, 0},
}

var bpSystolic = coding{loinc, "8480-6", "Systolic blood pressure"}
var bpDiastolic = coding{loinc, "8462-4", "Diastolic blood pressure"}

var qualAnswers = []coding{
	{snomed, "260385009", "Negative"}, {snomed, "260385009", "Negative"}, {snomed, "10828004", "Positive"},
}
var appearances = []string{"Clear", "Clear", "Cloudy", "Hazy", "Turbid"}

// US Core race and ethnicity (CDC Race & Ethnicity code system).
const cdcRace = "urn:oid:2.16.840.1.113883.6.238"

var raceCodes = []coding{
	{cdcRace, "2106-3", "White"}, {cdcRace, "2054-5", "Black or African American"}, {cdcRace, "2028-9", "Asian"},
	{cdcRace, "1002-5", "American Indian or Alaska Native"}, {cdcRace, "2076-8", "Native Hawaiian or Other Pacific Islander"},
	{cdcRace, "2131-1", "Other Race"},
}
var ethnicityCodes = []coding{
	{cdcRace, "2135-2", "Hispanic or Latino"}, {cdcRace, "2186-5", "Not Hispanic or Latino"},
}

// nameUses by position: the first name is official, later ones vary.
var nameUses = [3][]string{{"official"}, {"usual", "nickname", "maiden"}, {"old", "anonymous", "usual"}}

var condCodes = []coding{
	{snomed, "44054006", "Diabetes mellitus type 2"},
	{snomed, "38341003", "Hypertensive disorder"},
	{snomed, "195967001", "Asthma"},
	{snomed, "13645005", "Chronic obstructive lung disease"},
	{snomed, "35489007", "Depressive disorder"},
	{snomed, "40055000", "Chronic sinusitis"},
	{snomed, "10509002", "Acute bronchitis"},
	{snomed, "444814009", "Viral sinusitis"},
}

const icd10cm = "http://hl7.org/fhir/sid/icd-10-cm"

// condICD10 translates condCodes index by index (a second code system on Condition.code).
var condICD10 = []coding{
	{icd10cm, "E11.9", "Type 2 diabetes mellitus without complications"},
	{icd10cm, "I10", "Essential (primary) hypertension"},
	{icd10cm, "J45.909", "Unspecified asthma, uncomplicated"},
	{icd10cm, "J44.9", "Chronic obstructive pulmonary disease, unspecified"},
	{icd10cm, "F32.9", "Major depressive disorder, single episode, unspecified"},
	{icd10cm, "J32.9", "Chronic sinusitis, unspecified"},
	{icd10cm, "J20.9", "Acute bronchitis, unspecified"},
	{icd10cm, "J01.90", "Acute sinusitis, unspecified"},
}

var condCats = []coding{
	{"http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item"},
	{"http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", "Encounter Diagnosis"},
}

const rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"

var medCodes = []coding{
	{rxnorm, "860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"},
	{rxnorm, "314076", "lisinopril 10 MG Oral Tablet"},
	{rxnorm, "197361", "amlodipine 5 MG Oral Tablet"},
	{rxnorm, "617312", "atorvastatin 10 MG Oral Tablet"},
	{rxnorm, "745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"},
	{rxnorm, "310965", "ibuprofen 200 MG Oral Tablet"},
}

var procCodes = []coding{
	{snomed, "73761001", "Colonoscopy"},
	{snomed, "71651007", "Mammography"},
	{snomed, "430193006", "Medication reconciliation"},
	{snomed, "76601001", "Intramuscular injection"},
	{snomed, "168594001", "Plain X-ray of clavicle"},
	{snomed, "387713003", "Surgical procedure"},
}

const cvx = "http://hl7.org/fhir/sid/cvx"

var immCodes = []coding{
	{cvx, "140", "Influenza, seasonal, injectable, preservative free"},
	{cvx, "207", "COVID-19, mRNA, LNP-S, PF, 100 mcg/0.5mL dose"},
	{cvx, "113", "Td (adult) preservative free"},
	{cvx, "08", "Hep B, adolescent or pediatric"},
	{cvx, "133", "Pneumococcal conjugate PCV 13"},
}

var algCodes = []coding{
	{snomed, "91936005", "Allergy to penicillin"},
	{snomed, "300913006", "Shellfish allergy"},
	{snomed, "419474003", "Allergy to mould"},
	{snomed, "232347008", "Dander (animal) allergy"},
	{snomed, "417532002", "Allergy to fish"},
}

var algCats = []string{"medication", "food", "environment", "environment", "food"}

var encTypes = []struct {
	class coding
	typ   coding
}{
	{coding{"http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory"}, coding{snomed, "185349003", "Encounter for check up"}},
	{coding{"http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory"}, coding{snomed, "390906007", "Follow-up encounter"}},
	{coding{"http://terminology.hl7.org/CodeSystem/v3-ActCode", "EMER", "emergency"}, coding{snomed, "50849002", "Emergency room admission"}},
	{coding{"http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP", "inpatient encounter"}, coding{snomed, "32485007", "Hospital admission"}},
}

var docTypes = []coding{
	{loinc, "34133-9", "Summary of episode note"},
	{loinc, "11506-3", "Progress note"},
	{loinc, "18842-5", "Discharge summary"},
}

var familyNames = []string{"Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin"}
var givenNames = []string{"James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen"}
var cities = []struct{ city, state, zip string }{
	{"Boston", "MA", "02115"}, {"Springfield", "IL", "62701"}, {"Portland", "OR", "97201"}, {"Austin", "TX", "73301"},
	{"Denver", "CO", "80202"}, {"Madison", "WI", "53703"}, {"Columbus", "OH", "43215"}, {"Raleigh", "NC", "27601"},
}
var streets = []string{"Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Elm St", "Washington Blvd", "Lake Rd", "Hill St"}
var specialties = []coding{
	{snomed, "394814009", "General practice"},
	{snomed, "394579002", "Cardiology"},
	{snomed, "394583002", "Endocrinology"},
	{snomed, "394537008", "Pediatric specialty"},
}

// statuses per type; index 0 is the usual one, a mutation may move it.
var statuses = [numCompartment][]string{
	tEncounter:          {"finished", "finished", "in-progress", "cancelled"},
	tObservation:        {"final", "final", "preliminary", "amended"},
	tMedicationRequest:  {"active", "completed", "stopped", "on-hold"},
	tProcedure:          {"completed", "completed", "in-progress", "not-done"},
	tImmunization:       {"completed", "completed", "completed", "not-done"},
	tDocumentReference:  {"current", "current", "current", "superseded"},
	tCondition:          {"active", "active", "resolved", "inactive"}, // clinicalStatus
	tAllergyIntolerance: {"active", "active", "inactive", "resolved"}, // clinicalStatus
}

// attrs are the searchable facts of one resource version, shared by the
// generator and the _typeFilter matcher so both agree exactly.
type attrs struct {
	status string
	cat    string
	code   *coding
	alt    *coding // a second coding of the same concept (token search matches either)
}

func (d *dataset) attrs(t rtype, j int, ver int32) attrs {
	r := d.h(t, j)
	var a attrs
	if int(t) < numCompartment && statuses[t] != nil {
		a.status = statuses[t][(r>>8+uint64(ver)-1)%uint64(len(statuses[t]))]
	}
	switch t {
	case tObservation:
		c := &obsCodes[r%uint64(len(obsCodes))]
		a.code = &c.coding
		a.cat = obsCats[c.cat].code
	case tCondition:
		a.code = &condCodes[r%uint64(len(condCodes))]
		a.alt = &condICD10[r%uint64(len(condCodes))]
		a.cat = condCats[(r>>16)%2].code
	case tMedicationRequest:
		a.code = &medCodes[r%uint64(len(medCodes))]
	case tProcedure:
		a.code = &procCodes[r%uint64(len(procCodes))]
	case tImmunization:
		a.code = &immCodes[r%uint64(len(immCodes))]
	case tAllergyIntolerance:
		i := r % uint64(len(algCodes))
		a.code = &algCodes[i]
		a.cat = algCats[i]
	case tDocumentReference:
		a.code = &docTypes[r%uint64(len(docTypes))]
	}
	return a
}
