package testsuite

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestDataVariety: the generated records have the variety real ones have
// (issue 17 §4), every line is valid JSON, and each variant actually occurs
// in a small population, so views tested on this data meet every shape.
func TestDataVariety(t *testing.T) {
	s := startServer(t, Options{Patients: 300, LargeAttachments: -1})
	m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=Patient,Observation,Condition,Encounter", nil, kickHeaders...)))
	seen := map[string]int{}
	see := func(k string, args ...any) { seen[fmt.Sprintf(k, args...)]++ }
	refForm := func(what string, ref map[string]any) {
		switch r, _ := ref["reference"].(string); {
		case r == "":
			if ref["identifier"] != nil {
				see("%s ref identifier-only", what)
			}
		case strings.HasPrefix(r, "#"):
			see("%s ref contained", what)
		case strings.HasPrefix(r, "https://"):
			see("%s ref absolute", what)
		case strings.Contains(r, "/_history/"):
			see("%s ref versioned", what)
		default:
			see("%s ref relative", what)
		}
	}
	for _, o := range m.Output {
		for _, l := range fetchLines(t, o.URL) {
			var r map[string]any
			if err := json.Unmarshal(l, &r); err != nil {
				t.Fatalf("%s: invalid JSON %v: %s", o.Type, err, l)
			}
			switch o.Type {
			case "Patient":
				names, _ := r["name"].([]any)
				see("names %d", len(names))
				for _, n := range names {
					nm := n.(map[string]any)
					see("name use %v", nm["use"])
					see("given %d", len(nm["given"].([]any)))
				}
				tel, _ := r["telecom"].([]any)
				see("telecoms %d", len(tel))
				for _, x := range tel {
					see("telecom %v", x.(map[string]any)["system"])
				}
				addr, _ := r["address"].([]any)
				see("addresses %d", len(addr))
				if v, ok := r["deceasedBoolean"]; ok {
					see("deceasedBoolean %v", v)
				}
				if _, ok := r["deceasedDateTime"]; ok {
					see("deceasedDateTime")
				}
				ext, _ := r["extension"].([]any)
				for _, e := range ext {
					em := e.(map[string]any)
					for _, sub := range em["extension"].([]any) {
						sm := sub.(map[string]any)
						if sm["url"] == "ombCategory" {
							see("%s ombCategory %v", em["url"], sm["valueCoding"].(map[string]any)["system"])
						}
					}
				}
				ids, _ := r["identifier"].([]any)
				for _, id := range ids {
					see("patient identifier %v", id.(map[string]any)["system"])
				}
				if mo, ok := r["managingOrganization"].(map[string]any); ok {
					refForm("managingOrganization", mo)
				}
			case "Observation":
				found := false
				for _, k := range []string{"valueQuantity", "valueCodeableConcept", "valueString"} {
					if _, ok := r[k]; ok {
						see("obs %s", k)
						found = true
					}
				}
				if !found {
					see("obs no value")
				}
				if comps, ok := r["component"].([]any); ok {
					for _, c := range comps {
						cm := c.(map[string]any)
						code := cm["code"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"]
						if _, ok := cm["valueQuantity"]; ok {
							see("component %v", code)
						}
					}
				}
				refForm("subject", r["subject"].(map[string]any))
				perf := r["performer"].([]any)[0].(map[string]any)
				refForm("performer", perf)
				if perf["reference"] == "#performer" {
					c := r["contained"].([]any)[0].(map[string]any)
					if c["id"] != "performer" || c["resourceType"] != "Practitioner" {
						t.Errorf("contained reference without its resource: %s", l)
					}
				}
			case "Condition":
				for _, c := range r["code"].(map[string]any)["coding"].([]any) {
					see("condition code %v", c.(map[string]any)["system"])
				}
				refForm("subject", r["subject"].(map[string]any))
			case "Encounter":
				refForm("serviceProvider", r["serviceProvider"].(map[string]any))
			}
		}
	}
	for _, k := range []string{
		"names 0", "names 1", "names 2", "names 3",
		"name use official", "name use usual", "name use maiden", "name use old",
		"given 1", "given 2", "given 3",
		"telecoms 0", "telecoms 1", "telecoms 2", "telecoms 3", "telecom email", "telecom phone",
		"addresses 0", "addresses 1", "addresses 2",
		"deceasedBoolean true", "deceasedBoolean false", "deceasedDateTime",
		"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race ombCategory urn:oid:2.16.840.1.113883.6.238",
		"http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity ombCategory urn:oid:2.16.840.1.113883.6.238",
		"patient identifier urn:oid:2.16.840.1.113883.19.5", "patient identifier http://hl7.org/fhir/sid/us-ssn",
		"managingOrganization ref relative", "managingOrganization ref absolute",
		"obs valueQuantity", "obs valueCodeableConcept", "obs valueString", "obs no value",
		"component 8480-6", "component 8462-4",
		"subject ref relative", "subject ref absolute", "subject ref versioned",
		"performer ref relative", "performer ref contained",
		"condition code http://snomed.info/sct", "condition code http://hl7.org/fhir/sid/icd-10-cm",
		"serviceProvider ref relative", "serviceProvider ref identifier-only",
	} {
		if seen[k] == 0 {
			t.Errorf("no %q in 300 patients' data", k)
		}
	}
	if t.Failed() {
		t.Logf("seen: %v", seen)
	}
}

// TestTypeFilterMatchesEitherCoding: a token search finds a Condition by
// its second coding (ICD-10-CM) as by its first (SNOMED), as a real server does.
func TestTypeFilterMatchesEitherCoding(t *testing.T) {
	s := startServer(t, Options{Patients: 40, LargeAttachments: -1})
	count := func(tf string) int {
		m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=Condition&_typeFilter="+tf, nil, kickHeaders...)))
		n := 0
		for _, o := range m.Output {
			n += len(fetchLines(t, o.URL))
		}
		return n
	}
	sn, icd := count("Condition%3Fcode%3Dhttp://snomed.info/sct%7C38341003"), count("Condition%3Fcode%3Dhttp://hl7.org/fhir/sid/icd-10-cm%7CI10")
	if sn == 0 || sn != icd {
		t.Errorf("hypertension by SNOMED %d, by ICD-10-CM %d: want the same, non-zero", sn, icd)
	}
}
