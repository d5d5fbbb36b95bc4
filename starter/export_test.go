package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/workflows"
)

func cmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// Two starts in the same millisecond still get different IDs.
func TestDefaultWorkflowIDIsUnique(t *testing.T) {
	in := workflows.ExportInput{Server: "epic-prod"}
	now := time.Date(2026, 11, 26, 2, 0, 0, 123e6, time.UTC)
	a, b := defaultWorkflowID(in, now), defaultWorkflowID(in, now)
	if a == b {
		t.Fatalf("two starts at the same instant share the ID %s", a)
	}
	if !strings.HasPrefix(a, "bulk-export-epic-prod-20261126T020000.123Z-") {
		t.Errorf("ID %s lacks the server and the millisecond time", a)
	}
	if workflows.RunName(a) != a {
		t.Errorf("ID %s does not name a folder as is (%s)", a, workflows.RunName(a))
	}
}

// §2: what the user cannot have meant is refused before anything starts:
// exit 2, one line that says what to write instead, then a hint.
func TestExportRefusesWhatItDoesNotUnderstand(t *testing.T) {
	base := []string{"export", "--temporal-address", "127.0.0.1:1"} // never dialled
	badView := filepath.Join(t.TempDir(), "bp.json")
	os.WriteFile(badView, []byte(`{"resourceType":"ViewDefinition","name":"bp","resource":"Observation","status":"active","select":[{"column":[{"name":"_id","path":"id"}]}]}`), 0o644)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"server and url", []string{"--server", "epic-prod", "--fhir-url", "https://other.example.org/fhir"}, "give --server epic-prod or --fhir-url https://other.example.org/fhir, not both"},
		{"since yesterday", []string{"--server", "s", "--since", "yesterday"}, `--since "yesterday" is not a FHIR instant; write a UTC time such as --since 20`},
		{"until not an instant", []string{"--server", "s", "--until", "2024-13-01"}, `--until "2024-13-01" is not a FHIR instant`},
		{"type in lower case", []string{"--server", "s", "--types", "Patient,observation"}, `--types: "observation" is not a FHIR resource type; did you mean Observation?`},
		{"type misspelt", []string{"--server", "s", "--types", "Obsevation"}, "did you mean Observation?"},
		{"type unknown", []string{"--server", "s", "--types", "Spaceship"}, `"Spaceship" is not a FHIR resource type; write names such as Patient,Observation`},
		{"type filter of an unknown type", []string{"--server", "s", "--type-filter", "Labs?code=1"}, `--type-filter "Labs?code=1"`},
		{"group level without group", []string{"--server", "s", "--level", "group"}, "--level group needs the Group's id: add --group ID"},
		{"group without group level", []string{"--server", "s", "--group", "42"}, "write --level group --group 42"},
		{"positional", []string{"--server", "s", "extra"}, `unexpected argument "extra"`},
		{"unknown flag", []string{"--server", "s", "--fromat", "parquet"}, "flag provided but not defined: -fromat"},
		{"invalid view file", []string{"--server", "s", "--view", badView}, "--view " + badView + `: view "bp": select[0].column[0].name: sql-name: Name is limited to letters`},
		{"missing view file", []string{"--server", "s", "--view", "nope/bp.json"}, "--view nope/bp.json: open nope/bp.json"},
		{"format none without views", []string{"--server", "s", "--format", "none"}, `format "none" keeps only view tables`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := cmd(append(append([]string{}, base...), c.args...)...)
			if code != exitUsage {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr, c.want) {
				t.Errorf("stderr lacks %q:\n%s", c.want, stderr)
			}
			// One line per problem and a hint: no usage dump, nothing twice.
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 2 || !strings.Contains(lines[1], "starter export --help") {
				t.Errorf("want the error and a --help hint, got %d lines:\n%s", len(lines), stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q", stdout)
			}
		})
	}
}

// §4: every field of the workflow input has a flag on export and on
// schedule create, under the same name.
func TestEveryInputFieldHasAFlag(t *testing.T) {
	args := []string{
		"--fhir-url", "https://ehr.example.org/fhir", "--level", "group", "--group", "g", "--types", "Patient",
		"--since", "2024-01-01T00:00:00Z", "--until", "2024-02-01T00:00:00Z", "--elements", "id",
		"--type-filter", "Patient?active=true", "--patient", "Patient/1", "--output-format", "application/fhir+ndjson",
		"--include-associated-data", "LatestProvenanceResources", "--incremental", "--watermark-per-type", "--method", "POST",
		"--lenient", "--strict", "--out", "/data/lake", "--format", "parquet", "--gzip", "--partition-by", "lastUpdated", "--run", "r1",
		"--attachments", "inline", "--attachment-type", "text/plain", "--max-attachment-bytes", "1000", "--max-attachments-bytes", "100000",
		"--concurrency", "3", "--files-per-chunk", "100", "--parallel-chunks", "3", "--max-file-attempts", "4", "--keep-job", "--heartbeat-timeout", "90s", "--retry-deadline", "2h", "--max-history-events", "1000",
		"--server", "s", "--view", "patient_demographics",
	}
	for _, schedule := range []bool{false, true} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		ef := addExportFlags(fs, schedule)
		if _, err := parseFlags(fs, args); err != nil {
			t.Fatalf("schedule=%v: %v", schedule, err)
		}
		b, _ := json.Marshal(ef.input(fs))
		var got map[string]any
		json.Unmarshal(b, &got)
		for _, key := range jsonFields(reflect.TypeOf(workflows.ExportInput{}), "") {
			if key == "resume" || strings.HasPrefix(key, "resume.") {
				continue // state of continue-as-new, not for callers
			}
			if !hasPath(got, key) {
				t.Errorf("schedule=%v: input field %q has no flag (or the flag does not set it)", schedule, key)
			}
		}
	}
}

// jsonFields lists the JSON names of t's fields, nested ones as a.b.
func jsonFields(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == t.PkgPath() {
			out = append(out, jsonFields(f.Type, prefix+name+".")...)
			continue
		}
		out = append(out, prefix+name)
	}
	return out
}

func hasPath(m map[string]any, path string) bool {
	head, rest, nested := strings.Cut(path, ".")
	v, ok := m[head]
	if !ok || !nested {
		return ok
	}
	sub, _ := v.(map[string]any)
	return sub != nil && hasPath(sub, rest)
}

// Flags after the positional ID work on every subcommand that takes one.
func TestFlagsAfterTheID(t *testing.T) {
	parseOnly = true
	defer func() { parseOnly = false }()
	for _, args := range [][]string{
		{"status", "ID", "--json"},
		{"status", "ID", "--follow", "--namespace", "n"},
		{"cancel", "ID", "--temporal-address", "h:1"},
		{"schedule", "describe", "ID", "--json"},
		{"schedule", "pause", "ID", "--note", "x"},
		{"decrypt", "in.ndjson", "out.ndjson", "-keyset", "k.json"},
	} {
		if code, _, stderr := cmd(args...); code != exitOK {
			t.Errorf("%v: exit %d\n%s", args, code, stderr)
		}
	}
}

// A usage error is one line and a hint, not the error twice around the
// whole usage.
func TestUsageErrorIsShort(t *testing.T) {
	for _, args := range [][]string{
		{"status"},
		{"status", "a", "b"},
		{"status", "--jsn", "ID"},
		{"cancel"},
		{"export", "--concurrency", "many", "--server", "s"},
		{"demo", "--patients", "x"},
		{"keygen"},
		{"schedule", "create", "--bogus"},
	} {
		code, _, stderr := cmd(args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != exitUsage || len(lines) > 3 || !strings.Contains(stderr, "--help' for usage") || strings.Contains(stderr, "Usage:") {
			t.Errorf("%v: exit %d, %d lines:\n%s", args, code, len(lines), stderr)
		}
	}
	// --help still prints the usage, and exits 0.
	if code, _, stderr := cmd("export", "--help"); code != exitOK || !strings.Contains(stderr, "Usage: starter export") || !strings.Contains(stderr, "-partition-by") {
		t.Errorf("export --help: exit %d\n%s", code, stderr)
	}
}
