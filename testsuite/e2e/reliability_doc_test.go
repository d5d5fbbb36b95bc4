package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docs/reliability.md is the one reliability table (README.md links to it).
// Every row must name a test that exists; a row proven only by time-skipping
// tests must say "unit test"; any other row must name an end-to-end test of
// this package; a row naming a test that skips itself must say "skipped",
// and only then.
// Runs without the Temporal dev server (also with -short).
func TestReliabilityTableNamesRealTests(t *testing.T) {
	const root = "../.."
	doc, err := os.ReadFile(filepath.Join(root, "docs", "reliability.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "(docs/reliability.md)") {
		t.Error("README.md does not link to docs/reliability.md")
	}
	if strings.Contains(string(readme), "| fault | what bulkflow does |") {
		t.Error("README.md has its own copy of the reliability table: keep only docs/reliability.md's")
	}

	// Test functions (plain and suite methods) and their bodies, by name.
	bodies := map[string]string{}
	e2e := map[string]bool{}
	decl := regexp.MustCompile(`(?m)^func (?:\([^)]*\) )?(Test\w+)\(`)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		src := string(b)
		locs := decl.FindAllStringSubmatchIndex(src, -1)
		for i, l := range locs {
			end := len(src)
			if i+1 < len(locs) {
				end = locs[i+1][0]
			}
			name := src[l[2]:l[3]]
			bodies[name] = src[l[0]:end]
			if filepath.Base(filepath.Dir(p)) == "e2e" {
				e2e[name] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	name := regexp.MustCompile("`(Test\\w+)(?:/[^`]*)?`")
	rows := 0
	for _, line := range strings.Split(string(doc), "\n") {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "| ") || len(cells) < 5 || strings.HasPrefix(line, "| fault ") {
			continue
		}
		rows++
		row, tests := strings.TrimSpace(cells[1]), cells[len(cells)-2]
		names := name.FindAllStringSubmatch(tests, -1)
		if len(names) == 0 {
			t.Errorf("row %q names no test", row)
			continue
		}
		hasE2E, skipped := false, false
		for _, n := range names {
			body, ok := bodies[n[1]]
			if !ok {
				t.Errorf("row %q names %s: no such test", row, n[1])
				continue
			}
			hasE2E = hasE2E || e2e[n[1]]
			if e2e[n[1]] && strings.Contains(body, "\tt.Skip(") {
				skipped = true
				if !strings.Contains(tests, "skipped") {
					t.Errorf("row %q names %s, which is skipped, without saying so", row, n[1])
				}
			}
		}
		if !skipped && strings.Contains(tests, "skipped") {
			t.Errorf("row %q says a test is skipped; none of its tests is: update the row", row)
		}
		if !hasE2E && !strings.Contains(tests, "unit test") {
			t.Errorf("row %q names no end-to-end test and does not say it is a unit test", row)
		}
	}
	if rows < 10 {
		t.Fatalf("found %d rows in docs/reliability.md: the table was not parsed", rows)
	}
}
