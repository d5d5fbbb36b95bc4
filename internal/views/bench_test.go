package views

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/internal/fhirpath"
)

// Realistic shapes (US Core style, as bulk exports carry them): a patient
// with extensions, names, telecoms and addresses; a blood pressure
// observation with two components.
const benchPatient = `{"resourceType":"Patient","id":"3f1c2f0e-8a51-4f7e-9a3e-0d9d4b1c7a11","meta":{"lastUpdated":"2024-03-01T10:00:00Z","profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Generated</div>"},"extension":[{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race","extension":[{"url":"ombCategory","valueCoding":{"system":"urn:oid:2.16.840.1.113883.6.238","code":"2106-3","display":"White"}},{"url":"text","valueString":"White"}]},{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity","extension":[{"url":"ombCategory","valueCoding":{"system":"urn:oid:2.16.840.1.113883.6.238","code":"2186-5","display":"Not Hispanic or Latino"}},{"url":"text","valueString":"Not Hispanic or Latino"}]},{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex","valueCode":"F"}],"identifier":[{"system":"https://github.com/synthetichealth/synthea","value":"3f1c2f0e-8a51-4f7e-9a3e-0d9d4b1c7a11"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR","display":"Medical Record Number"}],"text":"Medical Record Number"},"system":"http://hospital.smarthealthit.org","value":"3f1c2f0e"}],"name":[{"use":"official","family":"Rodriguez","given":["Maria","Elena"],"prefix":["Mrs."]},{"use":"maiden","family":"Lopez","given":["Maria"]}],"telecom":[{"system":"phone","value":"555-123-4567","use":"home"},{"system":"email","value":"maria@example.org"}],"gender":"female","birthDate":"1968-04-12","deceasedDateTime":"2021-11-02T08:15:00-05:00","address":[{"use":"home","line":["123 Main St","Apt 4"],"city":"Springfield","state":"MA","postalCode":"01103","country":"US"}],"maritalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"M","display":"Married"}],"text":"Married"},"multipleBirthBoolean":false,"communication":[{"language":{"coding":[{"system":"urn:ietf:bcp:47","code":"es","display":"Spanish"}]}}],"generalPractitioner":[{"reference":"Practitioner/9a8b7c"}],"managingOrganization":{"reference":"Organization/1d2e3f"}}`

const benchObservation = `{"resourceType":"Observation","id":"bp-7c9e6679-7425-40de-944b-e07fc1f90ae7","meta":{"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-blood-pressure"]},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital Signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"85354-9","display":"Blood pressure panel with all children optional"}],"text":"Blood pressure"},"subject":{"reference":"Patient/3f1c2f0e-8a51-4f7e-9a3e-0d9d4b1c7a11"},"encounter":{"reference":"Encounter/e1"},"effectiveDateTime":"2023-06-01T09:30:00-05:00","issued":"2023-06-01T09:30:00.000-05:00","component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic blood pressure"}]},"valueQuantity":{"value":128,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4","display":"Diastolic blood pressure"}]},"valueQuantity":{"value":82.5,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}`

const benchPatientView = `{"name":"patient_demographics","resource":"Patient","select":[{"column":[
 {"name":"id","path":"getResourceKey()","type":"string"},
 {"name":"gender","path":"gender","type":"code"},
 {"name":"birth_date","path":"birthDate","type":"date"},
 {"name":"deceased","path":"deceased.exists()","type":"boolean"},
 {"name":"deceased_at","path":"deceased.ofType(dateTime)","type":"dateTime"},
 {"name":"family","path":"name.where(use = 'official').family.first()","type":"string"},
 {"name":"given","path":"name.where(use = 'official').given.join(' ')","type":"string"},
 {"name":"phone","path":"telecom.where(system = 'phone').value.first()","type":"string"},
 {"name":"city","path":"address.where(use = 'home').city.first()","type":"string"},
 {"name":"postal_code","path":"address.where(use = 'home').postalCode.first()","type":"string"},
 {"name":"race","path":"extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race').extension('ombCategory').value.ofType(Coding).code.first()","type":"code"},
 {"name":"ethnicity","path":"extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity').extension('ombCategory').value.ofType(Coding).code.first()","type":"code"},
 {"name":"marital_status","path":"maritalStatus.coding.first().code","type":"code"},
 {"name":"organization_id","path":"managingOrganization.getReferenceKey(Organization)","type":"string"}]}]}`

const benchObservationView = `{"name":"blood_pressure","resource":"Observation","select":[{"column":[
 {"name":"id","path":"getResourceKey()","type":"string"},
 {"name":"patient_id","path":"subject.getReferenceKey(Patient)","type":"string"},
 {"name":"status","path":"status","type":"code"},
 {"name":"code","path":"code.coding.where(system = 'http://loinc.org').code.first()","type":"code"},
 {"name":"effective","path":"effective.ofType(dateTime)","type":"dateTime"}]},
 {"forEach":"component","column":[
 {"name":"component_code","path":"code.coding.first().code","type":"code"},
 {"name":"value","path":"value.ofType(Quantity).value","type":"decimal"},
 {"name":"unit","path":"value.ofType(Quantity).unit","type":"string"}]}]}`

func benchView(b *testing.B, viewJSON, line string, wantRows int) {
	v, err := Compile([]byte(viewJSON))
	if err != nil {
		b.Fatal(err)
	}
	data := []byte(line)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	rows := 0
	cpu0 := cpuTime()
	for b.Loop() {
		n, err := fhirpath.ParseJSON(data)
		if err != nil {
			b.Fatal(err)
		}
		r, err := v.Rows(n)
		if err != nil {
			b.Fatal(err)
		}
		if len(r) != wantRows {
			b.Fatalf("%d rows, want %d", len(r), wantRows)
		}
		rows += len(r)
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
	reportCPU(b, cpu0, rows, len(data))
}

// reportCPU adds throughput per CPU-second of the whole process (the
// issue's "MB per worker CPU-second"), robust to a shared, busy machine.
func reportCPU(b *testing.B, cpu0 time.Duration, rows, lineBytes int) {
	cpu := (cpuTime() - cpu0).Seconds()
	if cpu <= 0 {
		return
	}
	b.ReportMetric(float64(b.N)*float64(lineBytes)/1e6/cpu, "MB/cpu-s")
	b.ReportMetric(float64(rows)/cpu, "rows/cpu-s")
}

// BenchmarkPatientView: decode + flatten, one row per patient.
func BenchmarkPatientView(b *testing.B) { benchView(b, benchPatientView, benchPatient, 1) }

// BenchmarkObservationComponents: decode + flatten, forEach over component.
func BenchmarkObservationComponents(b *testing.B) {
	benchView(b, benchObservationView, benchObservation, 2)
}

// BenchmarkDecode is the decoder alone, beside encoding/json into any (what
// the flattening would cost with the standard library's decoder).
func BenchmarkDecode(b *testing.B) {
	data := []byte(benchPatient)
	b.Run("fhirpath.ParseJSON", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		cpu0 := cpuTime()
		for b.Loop() {
			if _, err := fhirpath.ParseJSON(data); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpu0, 0, len(data))
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		cpu0 := cpuTime()
		defer func() { reportCPU(b, cpu0, 0, len(data)) }()
		for b.Loop() {
			d := json.NewDecoder(bytes.NewReader(data))
			d.UseNumber()
			var v any
			if err := d.Decode(&v); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRowsOnly is the flattening alone, on an already decoded
// resource (what each further view of the same type costs).
func BenchmarkRowsOnly(b *testing.B) {
	for _, bc := range []struct{ name, view, res string }{
		{"patient", benchPatientView, benchPatient},
		{"observation", benchObservationView, benchObservation},
	} {
		b.Run(bc.name, func(b *testing.B) {
			v, err := Compile([]byte(bc.view))
			if err != nil {
				b.Fatal(err)
			}
			n, err := fhirpath.ParseJSON([]byte(bc.res))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			rows := 0
			cpu0 := cpuTime()
			for b.Loop() {
				r, err := v.Rows(n)
				if err != nil {
					b.Fatal(err)
				}
				rows += len(r)
			}
			b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
			reportCPU(b, cpu0, rows, len(bc.res))
		})
	}
}
