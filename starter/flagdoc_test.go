package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// commandFlags builds the flag set of a command without running it.
func commandFlags(name string) *flag.FlagSet {
	fs := newFS(name, io.Discard)
	switch name {
	case "export":
		addTemporalFlags(fs)
		addExportFlags(fs, false)
		fs.String("id", "", "")
		fs.Bool("wait", false, "")
		fs.Bool("json", false, "")
	case "status":
		addTemporalFlags(fs)
		fs.Bool("json", false, "")
		fs.Bool("follow", false, "")
	case "cancel":
		addTemporalFlags(fs)
	}
	return fs
}

// flagRow renders a flag as docs/configuration.md's tables do.
func flagRow(f *flag.Flag) string {
	typ, usage := flag.UnquoteUsage(f)
	env := ""
	if m := regexp.MustCompile(` \(env ([A-Z_]+)\)$`).FindStringSubmatch(usage); m != nil {
		env, usage = "`"+m[1]+"`", strings.TrimSuffix(usage, m[0])
	}
	name := "`-" + f.Name
	switch {
	case typ == "value":
		name += "` (repeatable)"
	case typ != "":
		name += " " + typ + "`"
	default:
		name += "`"
	}
	def := ""
	if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
		def = "`" + f.DefValue + "`"
		if typ == "string" {
			def = fmt.Sprintf("`%q`", f.DefValue)
		}
	}
	return fmt.Sprintf("| %s | %s | %s | %s |", name, env, def, usage)
}

// docs/configuration.md lists every flag of export, status and cancel, so
// a new flag cannot go undocumented. BULKFLOW_PRINT_FLAG_ROWS=1 prints the
// rows to paste.
func TestConfigurationDocListsEveryFlag(t *testing.T) {
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, cmd := range []string{"export", "status", "cancel"} {
		start := strings.Index(doc, "### `starter "+cmd+"`")
		if start < 0 {
			t.Errorf("docs/configuration.md has no section for starter %s", cmd)
			continue
		}
		section := doc[start:]
		if end := strings.Index(section[4:], "\n### "); end >= 0 {
			section = section[:end+4]
		}
		var rows []string
		commandFlags(cmd).VisitAll(func(f *flag.Flag) {
			rows = append(rows, flagRow(f))
			if !strings.Contains(section, "| `-"+f.Name+"`") && !strings.Contains(section, "| `-"+f.Name+" ") {
				t.Errorf("docs/configuration.md, starter %s: flag -%s is not in the table", cmd, f.Name)
			}
		})
		sort.Strings(rows)
		if os.Getenv("BULKFLOW_PRINT_FLAG_ROWS") != "" {
			t.Logf("starter %s:\n%s", cmd, strings.Join(rows, "\n"))
		}
	}
}
