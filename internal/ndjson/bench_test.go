package ndjson

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

// sampleResource is a realistic ~1 KB Observation line.
func sampleResource() []byte {
	return []byte(`{"resourceType":"Observation","id":"obs-000123","meta":{"versionId":"2","lastUpdated":"2024-03-01T12:34:56.789Z","profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab"]},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory","display":"Laboratory"}],"text":"Laboratory"}],"code":{"coding":[{"system":"http://loinc.org","code":"2345-7","display":"Glucose [Mass/volume] in Serum or Plasma"}],"text":"Glucose"},"subject":{"reference":"Patient/pat-98765","display":"Example Patient"},"encounter":{"reference":"Encounter/enc-4444"},"effectiveDateTime":"2024-02-28T08:15:00-05:00","issued":"2024-02-28T10:00:00.000-05:00","performer":[{"reference":"Organization/lab-1","display":"Acme Laboratory, Inc."}],"valueQuantity":{"value":95.5,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"},"interpretation":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation","code":"N","display":"Normal"}]}],"referenceRange":[{"low":{"value":70,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"},"high":{"value":99,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"},"text":"70-99 mg/dL"}],"note":[{"text":"Fasting sample; \"hemolysed\" flag cleared.\nReviewed."}]}`)
}

func bigLine() []byte {
	return []byte(`{"resourceType":"DocumentReference","id":"doc-1","content":[{"attachment":{"contentType":"application/pdf","data":"` +
		strings.Repeat("JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29kZT4+", 20<<20/80) + `"}}]}`)
}

type repeatReader struct {
	data []byte
	off  int
	left int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data[r.off:])
	r.off += n
	if r.off == len(r.data) {
		r.off = 0
		r.left--
	}
	return n, nil
}

func BenchmarkReader(b *testing.B) {
	small := append(sampleResource(), '\n')
	chunk := bytes.Repeat(small, 4096) // ~4.5 MB per pass
	big := append(bigLine(), '\n')
	for _, bc := range []struct {
		name string
		data []byte
	}{{"1KB-lines", chunk}, {"20MB-line", big}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.data)))
			b.ReportAllocs()
			r := NewReader(&repeatReader{data: bc.data, left: b.N})
			b.ResetTimer()
			for {
				_, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkInspect(b *testing.B) {
	for _, bc := range []struct {
		name string
		line []byte
	}{{"1KB", sampleResource()}, {"20MB", bigLine()}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.line)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := Inspect(bc.line); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// Reference points: the recursive scanner alone (what Inspect ran
	// before fastInspect, and still runs on lines it declines) and
	// encoding/json's validator.
	b.Run("slow-1KB", func(b *testing.B) {
		line := sampleResource()
		b.SetBytes(int64(len(line)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := inspectSlow(line); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Reference point: encoding/json's validator alone.
	b.Run("json.Valid-1KB", func(b *testing.B) {
		line := sampleResource()
		b.SetBytes(int64(len(line)))
		for i := 0; i < b.N; i++ {
			if !json.Valid(line) {
				b.Fatal("invalid")
			}
		}
	})
}
