package sink

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// cpuTime is this process's user+system CPU time: on a shared machine,
// MB per CPU-second is steadier than wall-clock MB/s, which follows the
// disk and the neighbours.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLocalWriter stages one 64 MiB object the way a download does
// (1 MiB bufio in front of the writer and a SHA-256 of every byte), then
// closes it: fsync and rename included.
func BenchmarkLocalWriter(b *testing.B) {
	const size = 64 << 20
	chunk := make([]byte, 16<<10) // about one bufio refill of NDJSON lines
	for i := range chunk {
		chunk[i] = byte('a' + i%26)
	}
	for _, withHash := range []bool{false, true} {
		name := "raw"
		if withHash {
			name = "sha256"
		}
		b.Run(name, func(b *testing.B) {
			l, err := NewLocal(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.SetBytes(size)
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				w, err := l.Create(ctx, "bench", "Observation/Observation-0001.ndjson")
				if err != nil {
					b.Fatal(err)
				}
				var dst io.Writer = w
				if withHash {
					dst = io.MultiWriter(w, sha256.New())
				}
				bw := bufio.NewWriterSize(dst, 1<<20)
				for n := 0; n < size; n += len(chunk) {
					bw.Write(chunk)
				}
				if err := bw.Flush(); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size)*float64(b.N)/(cpuTime()-cpu0).Seconds()/1e6, "MB/cpu-s")
		})
	}
}

// BenchmarkVerifyStaged is the commit's check of one staged 64 MiB file
// (stat + streamed checksum, verifyLocal): on a big run, the commit's cost.
// The file is in the page cache, so this is the hashing (CPU) bound; a
// cold disk adds its read time. The commit checks up to GOMAXPROCS files
// at once. crc32c: a file written in one go, against its writer's stored
// CRC32C; sha256: a resumed file, against its record's SHA-256.
func BenchmarkVerifyStaged(b *testing.B) {
	const size = 64 << 20
	body := make([]byte, size)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	p := filepath.Join(b.TempDir(), "Observation-0001.ndjson")
	if err := os.WriteFile(p, body, 0o640); err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(body)
	for _, bc := range []struct {
		name string
		f    Staged
	}{
		{"crc32c", Staged{Name: "Observation-0001.ndjson", Bytes: size, SHA256: hex.EncodeToString(sum[:]), Stored: crc32cToken(crc32.Checksum(body, castagnoli))}},
		{"sha256", Staged{Name: "Observation-0001.ndjson", Bytes: size, SHA256: hex.EncodeToString(sum[:])}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(size)
			cpu0 := cpuTime()
			for b.Loop() {
				if err := verifyLocal(p, bc.f); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size)*float64(b.N)/(cpuTime()-cpu0).Seconds()/1e6, "MB/cpu-s")
		})
	}
}

// BenchmarkCommitSmallFiles is the local commit of the bench's small-files
// run (2,000 staged files of 82 KB, in the page cache): a rename per file
// into out/ and the stat and CRC32C of each there (assemble), then out/
// becomes the run, _manifest.json is written and synced and the staging
// removed (a few ms of the total). The staging itself (create, write,
// group fsync) is not timed.
func BenchmarkCommitSmallFiles(b *testing.B) {
	const files, size = 2000, 82_000
	body := make([]byte, size)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	body[size-1] = '\n'
	ctx := context.Background()
	l, err := NewLocal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		run := fmt.Sprintf("r%d", i)
		staged := make([]Staged, 0, files)
		var names []string
		for f := range files {
			name := fmt.Sprintf("Observation/Observation-%04d.ndjson", f)
			w, err := l.CreateUnsynced(ctx, run, name)
			if err != nil {
				b.Fatal(err)
			}
			w.Write(body)
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
			names = append(names, name)
			staged = append(staged, Staged{Name: name, Bytes: size, Stored: w.(Checksummed).Stored()})
		}
		if err := l.SyncStaged(ctx, run, names); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := l.CommitFiles(ctx, run, staged, []byte("{}")); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(l.Location(run))
		b.StartTimer()
	}
}
