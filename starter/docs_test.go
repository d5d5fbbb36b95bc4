package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// docCommand is a `starter` command line from a fenced block of the docs.
type docCommand struct {
	file string
	line int
	args []string
	// wantErr: the block shows the command's error output after it.
	wantErr bool
}

// docCommands extracts every `starter ...` and `go run ./starter ...`
// command from the fenced code blocks of README.md and docs/*.md, with
// backslash continuations joined and a leading "$ " prompt dropped.
// Synopses (with [optional], (a | b) or <placeholder>) are not commands.
func docCommands(t *testing.T) []docCommand {
	t.Helper()
	files, _ := filepath.Glob("../docs/*.md")
	files = append([]string{"../README.md"}, files...)
	var out []docCommand
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		inFence := false
		for i := 0; i < len(lines); i++ {
			l := strings.TrimSpace(lines[i])
			if strings.HasPrefix(l, "```") {
				inFence = !inFence
				continue
			}
			if !inFence {
				continue
			}
			start := i
			l = strings.TrimPrefix(l, "$ ")
			for strings.HasSuffix(l, `\`) && i+1 < len(lines) {
				i++
				l = strings.TrimSuffix(l, `\`) + " " + strings.TrimSpace(lines[i])
			}
			var rest string
			switch {
			case strings.HasPrefix(l, "starter "):
				rest = strings.TrimPrefix(l, "starter ")
			case strings.HasPrefix(l, "go run ./starter "):
				rest = strings.TrimPrefix(l, "go run ./starter ")
			default:
				continue
			}
			rest = cutShell(rest)
			if strings.ContainsAny(rest, "[<(") || strings.Contains(rest, "...") || strings.Contains(rest, " / ") {
				continue // a synopsis
			}
			args, ok := shellSplit(rest)
			if !ok || len(args) == 0 {
				t.Errorf("%s:%d: cannot split %q", f, start+1, rest)
				continue
			}
			if strings.HasSuffix(args[0], ":") || len(args) > 1 && strings.HasSuffix(args[1], ":") {
				continue // an error message shown as output
			}
			wantErr := false
			if i+1 < len(lines) {
				next := strings.TrimSpace(lines[i+1])
				wantErr = strings.HasPrefix(next, "starter "+args[0]) && strings.Contains(next, ":") && !strings.HasPrefix(next, "starter "+args[0]+" ")
				if len(args) > 1 {
					wantErr = wantErr || strings.HasPrefix(next, "starter "+args[0]+" "+args[1]+":")
				}
			}
			out = append(out, docCommand{file: f, line: start + 1, args: args, wantErr: wantErr})
		}
	}
	return out
}

// cutShell drops a trailing comment, pipe or redirection outside quotes.
func cutShell(s string) string {
	var q rune
	for i, r := range s {
		switch {
		case q != 0:
			if r == q {
				q = 0
			}
		case r == '\'' || r == '"':
			q = r
		case r == '#' && (i == 0 || s[i-1] == ' '), r == '|' && i+1 < len(s) && s[i+1] == ' ', r == ';', r == '>', r == '&':
			return strings.TrimSpace(s[:i])
		}
	}
	return strings.TrimSpace(s)
}

// shellSplit splits words as a POSIX shell does for quotes (no expansion).
func shellSplit(s string) ([]string, bool) {
	var args []string
	var cur strings.Builder
	var q rune
	in := false
	for _, r := range s {
		switch {
		case q != 0:
			if r == q {
				q = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			q, in = r, true
		case r == ' ' || r == '\t':
			if in {
				args = append(args, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		args = append(args, cur.String())
	}
	return args, q == 0
}

// §4: README's and docs' example commands parse against the real flag sets,
// so renaming or dropping a flag breaks this test, not the reader.
func TestDocsCommandsParse(t *testing.T) {
	for _, env := range []string{"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "BULKFLOW_TASK_QUEUE", "BULKFLOW_CODEC_KEY_FILE", "BULKFLOW_KEYSET"} {
		t.Setenv(env, "")
	}
	parseOnly = true
	defer func() { parseOnly = false }()
	cmds := docCommands(t)
	t.Chdir("..") // the examples run from the repository's root (--view docs/views/x.json)
	if len(cmds) < 10 {
		t.Fatalf("found only %d starter commands in README.md and docs/: is the extraction broken?", len(cmds))
	}
	seen := map[string]bool{}
	for _, c := range cmds {
		seen[c.args[0]] = true
		code, _, stderr := cmd(c.args...)
		switch {
		case c.wantErr && code == exitOK:
			t.Errorf("%s:%d: starter %s: the docs show an error, but it parses", c.file, c.line, strings.Join(c.args, " "))
		case !c.wantErr && code != exitOK:
			t.Errorf("%s:%d: starter %s: exit %d\n%s", c.file, c.line, strings.Join(c.args, " "), code, stderr)
		}
	}
	for _, want := range []string{"export", "status", "schedule"} {
		if !seen[want] {
			t.Errorf("no %q example found in the docs", want)
		}
	}
}

func TestShellSplit(t *testing.T) {
	got, ok := shellSplit(`export --cron "0 3 * * Sun" --type-filter 'Observation?category=laboratory' --x=1`)
	want := []string{"export", "--cron", "0 3 * * Sun", "--type-filter", "Observation?category=laboratory", "--x=1"}
	if !ok || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q", got)
	}
	if c := cutShell(`status ID --json | jq .result # done`); c != "status ID --json" {
		t.Errorf("cutShell = %q", c)
	}
}
