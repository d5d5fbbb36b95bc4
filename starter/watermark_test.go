package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// starter watermark set writes through the worker's watermark code and
// refuses what would break incremental runs; show lists and flags.
func TestWatermarkCommand(t *testing.T) {
	out := t.TempDir()
	cmd := func(args ...string) (int, string, string) {
		var o, e bytes.Buffer
		code := run(append([]string{"watermark"}, args...), &o, &e)
		return code, o.String(), e.String()
	}
	if code, _, _ := cmd("show", "--out", out); code != exitFailed {
		t.Errorf("show on an empty location: exit %d", code)
	}
	key := []string{"--out", out, "--server", "epic", "--types", "Patient,Observation"}
	for _, bad := range []string{"2999-01-01T00:00:00Z", "2026-01-01", "yesterday"} {
		if code, _, e := cmd(append([]string{"set", "--transaction-time", bad}, key...)...); code != exitUsage || !strings.Contains(e, "not changed") {
			t.Errorf("set %q: exit %d, %s", bad, code, e)
		}
	}
	code, o, e := cmd(append([]string{"set", "--transaction-time", "2026-01-02T03:04:05Z"}, key...)...)
	if code != exitOK || !strings.Contains(o, "transactionTime 2026-01-02T03:04:05Z") {
		t.Fatalf("set: exit %d\n%s%s", code, o, e)
	}
	names, _ := filepath.Glob(filepath.Join(out, "_state", "watermark-*.json"))
	if len(names) != 1 {
		t.Fatalf("state objects %v", names)
	}
	name := filepath.Base(names[0])
	// A broken one (as a bad server once wrote) shows as invalid, and set by
	// --name alone repairs it, keeping its key.
	b, _ := os.ReadFile(names[0])
	os.WriteFile(names[0], bytes.Replace(b, []byte("2026-01-02T03:04:05Z"), []byte("2999-01-01T00:00:00Z"), 1), 0o644)
	if code, o, _ := cmd("show", "--out", out); code != exitOK || !strings.Contains(o, "INVALID") || !strings.Contains(o, name) {
		t.Errorf("show: exit %d\n%s", code, o)
	}
	if code, o, e := cmd("set", "--out", out, "--name", name, "--transaction-time", "2026-01-01T00:00:00Z"); code != exitOK || strings.Contains(o, "INVALID") || !strings.Contains(o, "types Observation,Patient") {
		t.Errorf("repair: exit %d\n%s%s", code, o, e)
	}
	if code, _, e := cmd("set", "--out", out, "--name", "../x.json", "--transaction-time", "2026-01-01T00:00:00Z"); code != exitUsage {
		t.Errorf("a path as --name: exit %d %s", code, e)
	}
}
