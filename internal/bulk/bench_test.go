package bulk

import (
	"bytes"
	stdgzip "compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	kpgzip "github.com/klauspost/compress/gzip"
)

// benchNDJSON is about size bytes of distinct ~1 KB Observation lines with
// random ids, so compression is not flattered by repetition.
func benchNDJSON(size int) []byte {
	rng := rand.New(rand.NewPCG(7, 9))
	uuid := func() string {
		var b [16]byte
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	}
	var buf bytes.Buffer
	for i := 0; buf.Len() < size; i++ {
		lu := time.Date(2024, time.Month(1+i%12), 1+i%28, i%24, i%60, i%60, (i%1000)*1e6, time.UTC)
		fmt.Fprintf(&buf, `{"resourceType":"Observation","id":"%s","meta":{"versionId":"%d","lastUpdated":"%s"},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"85354-9","display":"Blood pressure panel with all children optional"}],"text":"Blood pressure panel"},"subject":{"reference":"Patient/%s"},"encounter":{"reference":"Encounter/%s"},"effectiveDateTime":"%s","component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4","display":"Diastolic Blood Pressure"}]},"valueQuantity":{"value":%d,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic Blood Pressure"}]},"valueQuantity":{"value":%d,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}`+"\n",
			uuid(), 1+i%3, lu.Format(time.RFC3339Nano), uuid(), uuid(), lu.Add(-time.Hour).Format(time.RFC3339), 60+i%40, 100+i%60)
	}
	return buf.Bytes()
}

func gzipAt(b []byte, level int) []byte {
	var out bytes.Buffer
	w, _ := stdgzip.NewWriterLevel(&out, level)
	w.Write(b)
	w.Close()
	return out.Bytes()
}

// BenchmarkGzipDecode decodes a gzip NDJSON body. "client" is the path
// OpenFile uses (decodeBody behind wireReader and fileBody, read in 256 KiB
// slices like ndjson.Reader's bufio); "stdlib" and "klauspost" are the bare
// decoders for comparison. SetBytes is the decoded size.
func BenchmarkGzipDecode(b *testing.B) {
	plain := benchNDJSON(16 << 20)
	for _, lv := range []struct {
		name  string
		level int
	}{{"level1", stdgzip.BestSpeed}, {"level6", stdgzip.DefaultCompression}} {
		comp := gzipAt(plain, lv.level)
		buf := make([]byte, 256<<10)
		run := func(b *testing.B, open func(io.Reader) (io.Reader, error)) {
			b.SetBytes(int64(len(plain)))
			b.ReportAllocs()
			b.ReportMetric(float64(len(comp))/float64(len(plain)), "wire/plain")
			for b.Loop() {
				r, err := open(bytes.NewReader(comp))
				if err != nil {
					b.Fatal(err)
				}
				var n int
				for {
					k, err := r.Read(buf)
					n += k
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				if n != len(plain) {
					b.Fatalf("decoded %d bytes, want %d", n, len(plain))
				}
			}
		}
		b.Run(lv.name+"/client", func(b *testing.B) {
			run(b, func(r io.Reader) (io.Reader, error) {
				wire := &wireReader{rc: io.NopCloser(r), want: int64(len(comp)), op: opDownload}
				body, err := decodeBody("gzip", wire)
				if err != nil {
					return nil, err
				}
				return &fileBody{r: body, wire: wire}, nil
			})
		})
		b.Run(lv.name+"/stdlib", func(b *testing.B) {
			run(b, func(r io.Reader) (io.Reader, error) { return stdgzip.NewReader(r) })
		})
		b.Run(lv.name+"/klauspost", func(b *testing.B) {
			run(b, func(r io.Reader) (io.Reader, error) { return kpgzip.NewReader(r) })
		})
	}
}
