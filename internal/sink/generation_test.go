package sink

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// staged records what a download wrote, as the activity's chunk records do.
func staged(name string, gen int, body string) Staged {
	return Staged{Name: name, Generation: gen, Bytes: int64(len(body)), SHA256: sha(body)}
}

// TestCommitFilesPromotesOnlyListedGenerations: a restarted plan (generation
// 2) stages beside the abandoned one (generation 0 and a late writer of
// generation 1); the commit promotes exactly the listed objects from their
// generation, and drops every generation's staging.
func TestCommitFilesPromotesOnlyListedGenerations(t *testing.T) {
	for _, tc := range sinks(t) {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, read := tc.s, tc.read
			const current = "{\"resourceType\":\"Patient\",\"id\":\"new\"}\n"
			write(t, s, "r", "Patient.ndjson", "{\"old\":0}\n")                        // generation 0, abandoned
			write(t, AtGeneration(s, 2), "r", "Patient.ndjson", current)               // the current plan
			write(t, AtGeneration(s, 2), "r", WorkPrefix+"chunks/000000.json", "[]\n") // bookkeeping is shared
			// Late writers of the abandoned generation 1 finish after the current plan's.
			write(t, AtGeneration(s, 1), "r", "Patient.ndjson", "{\"late\":1}\n")
			write(t, AtGeneration(s, 1), "r", "Stray.ndjson", "{\"stray\":1}\n")
			if _, err := s.Open(ctx, "r", WorkPrefix+"chunks/000000.json"); err != nil {
				t.Fatalf("work objects must not depend on the generation: %v", err)
			}
			if err := s.CommitFiles(ctx, "r", []Staged{staged("Patient.ndjson", 2, current)}, []byte("m")); err != nil {
				t.Fatal(err)
			}
			got := read(t, "r")
			want := map[string]string{"Patient.ndjson": current, ManifestName: "m"}
			if len(got) != len(want) {
				t.Fatalf("committed %v, want exactly %v (no strays of older generations)", got, want)
			}
			for n, b := range want {
				if got[n] != b {
					t.Errorf("committed %s = %q, want %q", n, got[n], b)
				}
			}
			if left := tc.staging(t, "r"); len(left) != 0 {
				t.Fatalf("staging left after commit: %v", left)
			}
			// A retry of the finished commit is a no-op.
			if err := s.CommitFiles(ctx, "r", []Staged{staged("Patient.ndjson", 2, current)}, []byte("m")); err != nil {
				t.Fatalf("retried commit: %v", err)
			}
		})
	}
}

// TestCommitFilesRefusesChangedStagedFile: a staged object that is not the
// one recorded fails the commit, naming it, and nothing becomes visible.
func TestCommitFilesRefusesChangedStagedFile(t *testing.T) {
	const body = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n"
	cases := []struct {
		name  string
		stage func(t *testing.T, s Sink) string // stages, returns the recorded StoredOf
		local bool                              // only a local file can be altered in place
	}{
		{"overwritten by a late writer, same size", func(t *testing.T, s Sink) string {
			stored := writeStored(t, AtGeneration(s, 1), "r", "P.ndjson", body)
			write(t, AtGeneration(s, 1), "r", "P.ndjson", strings.Replace(body, `"a"`, `"b"`, 1))
			return stored
		}, false},
		{"replaced by a shorter one", func(t *testing.T, s Sink) string {
			stored := writeStored(t, AtGeneration(s, 1), "r", "P.ndjson", body)
			write(t, AtGeneration(s, 1), "r", "P.ndjson", body[:10])
			return stored
		}, false},
		{"missing", func(t *testing.T, s Sink) string { return "" }, false},
		{"altered in place, same size, checked against the stored CRC32C", func(t *testing.T, s Sink) string {
			stored := writeStored(t, AtGeneration(s, 1), "r", "P.ndjson", body)
			if stored == "" {
				t.Fatal("the local writer stored no checksum")
			}
			p := filepath.Join(s.(*Local).Root, ".staging", "r", "g1", "P.ndjson")
			if err := os.WriteFile(p, []byte(strings.Replace(body, `"a"`, `"b"`, 1)), 0o640); err != nil {
				t.Fatal(err)
			}
			return stored
		}, true},
		{"cut on disk after staging", func(t *testing.T, s Sink) string {
			write(t, AtGeneration(s, 1), "r", "P.ndjson", body)
			if err := os.Truncate(filepath.Join(s.(*Local).Root, ".staging", "r", "g1", "P.ndjson"), 5); err != nil {
				t.Fatal(err)
			}
			return ""
		}, true},
	}
	for _, sk := range sinks(t) {
		for _, tc := range cases {
			if tc.local && sk.name != "local" {
				continue
			}
			t.Run(sk.name+"/"+tc.name, func(t *testing.T) {
				s := sk.fresh(t)
				rec := staged("P.ndjson", 1, body)
				rec.Stored = tc.stage(t, s)
				err := s.CommitFiles(context.Background(), "r", []Staged{rec}, []byte("m"))
				if !errors.Is(err, ErrStagedChanged) || !strings.Contains(err.Error(), "P.ndjson") {
					t.Fatalf("commit = %v, want ErrStagedChanged naming P.ndjson", err)
				}
				if err := s.CommitFiles(context.Background(), "r", nil, nil); !errors.Is(err, ErrNotFound) {
					t.Fatalf("run is committed after a refused commit: %v", err)
				}
			})
		}
	}
}

// TestAbortDropsEveryGeneration: no generation's staging survives Abort.
func TestAbortDropsEveryGeneration(t *testing.T) {
	for _, tc := range sinks(t) {
		t.Run(tc.name, func(t *testing.T) {
			write(t, tc.s, "r", "a.ndjson", "{}\n")
			write(t, AtGeneration(tc.s, 3), "r", "a.ndjson", "{}\n")
			if err := tc.s.Abort(context.Background(), "r"); err != nil {
				t.Fatal(err)
			}
			if left := tc.staging(t, "r"); len(left) != 0 {
				t.Fatalf("staging left after abort: %v", left)
			}
		})
	}
}

// writeStored stages body like write and returns the storage's checksum.
func writeStored(t *testing.T, s Sink, run, name, body string) string {
	t.Helper()
	w, err := s.Create(context.Background(), run, name)
	if err == nil {
		_, err = w.Write([]byte(body))
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	return StoredOf(w)
}

type sinkCase struct {
	name    string
	s       Sink
	fresh   func(t *testing.T) Sink
	read    func(t *testing.T, run string) map[string]string // committed objects by name
	staging func(t *testing.T, run string) []string          // what is left in staging
}

func sinks(t *testing.T) []sinkCase {
	local := func(t *testing.T) Sink {
		l, err := NewLocal(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	walk := func(t *testing.T, dir string) map[string]string {
		out := map[string]string{}
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				b, _ := os.ReadFile(p)
				rel, _ := filepath.Rel(dir, p)
				out[filepath.ToSlash(rel)] = string(b)
			}
			return nil
		})
		return out
	}
	l := local(t).(*Local)
	f := newGCSFixture(t, GCSOptions{})
	under := func(t *testing.T, prefix string) map[string]string {
		out := map[string]string{}
		for n, b := range f.objects(t) {
			if rest, ok := strings.CutPrefix(n, prefix); ok {
				out[rest] = b
			}
		}
		return out
	}
	return []sinkCase{
		{name: "local", s: l, fresh: local,
			read: func(t *testing.T, run string) map[string]string { return walk(t, filepath.Join(l.Root, run)) },
			staging: func(t *testing.T, run string) []string {
				return keys(walk(t, filepath.Join(l.Root, ".staging", run)))
			}},
		{name: "gcs", s: f.s, fresh: func(t *testing.T) Sink { return newGCSFixture(t, GCSOptions{}).s },
			read:    func(t *testing.T, run string) map[string]string { return under(t, "exports/fhir/"+run+"/") },
			staging: func(t *testing.T, run string) []string { return keys(under(t, "exports/fhir/.staging/"+run+"/")) }},
	}
}
