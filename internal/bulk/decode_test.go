package bulk

import (
	"bytes"
	"io"
	"testing"
)

// A corrupt compressed body is KindTruncated (download the whole file
// again), whichever decoder library produces the error.
func TestCorruptGzipIsTruncated(t *testing.T) {
	plain := benchNDJSON(64 << 10)
	good := gzipAt(plain, 6)
	badCRC := append([]byte(nil), good...)
	badCRC[len(badCRC)-8] ^= 0xff // CRC-32 in the trailer
	badData := append([]byte(nil), good...)
	for i := 100; i < 140; i++ {
		badData[i] ^= 0x5a
	}
	for name, body := range map[string][]byte{"checksum": badCRC, "data": badData, "cut": good[:len(good)/2]} {
		t.Run(name, func(t *testing.T) {
			wire := &wireReader{rc: io.NopCloser(bytes.NewReader(body)), want: -1, op: opDownload}
			r, err := decodeBody("gzip", wire)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.ReadAll(&fileBody{r: r, wire: wire})
			if KindOf(err) != KindTruncated {
				t.Fatalf("error %v (kind %v), want KindTruncated", err, KindOf(err))
			}
		})
	}
}
