package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/bulkflow/bulkflow/activities"
)

// runWatermark shows or repairs the incremental watermarks of an output
// location (<output>/_state/watermark-*.json), through the same code the
// worker uses, so a watermark is never edited by hand
// (docs/operations.md, "Repairing a watermark").
func runWatermark(args []string, stdout, stderr io.Writer) int {
	const synopsis = "watermark show|set --out <output> [--name <watermark-....json> | key flags] [--transaction-time <instant>] [--type <Type>]"
	if len(args) == 0 || (args[0] != "show" && args[0] != "set") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintf(stderr, "Usage: starter %s\n", synopsis)
			return exitOK
		}
		fmt.Fprintf(stderr, "Usage: starter %s\n", synopsis)
		return exitUsage
	}
	sub := args[0]
	fs := newFS("watermark "+sub, stderr)
	out := fs.String("out", "", "output location: a directory, file:///path or gs://bucket/prefix (required)")
	name := fs.String("name", "", "the watermark's state object, e.g. watermark-epic-prod_system_-0123456789ab.json (or give the key flags)")
	server := fs.String("server", "", "key: server name from the servers file")
	fhirURL := fs.String("fhir-url", "", "key: FHIR base URL (when the export used one instead of a server name)")
	level := fs.String("level", "system", "key: system, patient or group")
	group := fs.String("group", "", "key: Group id")
	var types, elements listFlag
	var typeFilters rawListFlag
	fs.Var(&types, "types", "key: the export's _type list (comma-separated or repeated)")
	fs.Var(&typeFilters, "type-filter", "key: a _typeFilter of the export (repeatable)")
	fs.Var(&elements, "elements", "key: the export's _elements")
	perType := fs.Bool("per-type", false, "key: the export keeps one watermark per type (watermarkPerType)")
	tt := fs.String("transaction-time", "", "set: the new watermark, a FHIR instant not in the future, e.g. 2026-01-02T03:04:05Z")
	typ := fs.String("type", "", "set, per-type watermarks: the resource type to set (default: every type it has)")
	asJSON := fs.Bool("json", false, "show: print the watermark objects as JSON")
	pos, err := parse(fs, args[1:], synopsis)
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q: every value is given with a flag", pos[0])
	}
	if err != nil {
		return usageError(stderr, "watermark "+sub, err)
	}
	if *out == "" {
		fmt.Fprintln(stderr, "starter: --out is required (the export's output location)")
		return exitUsage
	}
	var key *activities.WatermarkKey
	if *server != "" || *fhirURL != "" {
		k := activities.NewWatermarkKey(*server, *fhirURL, *level, *group, types, typeFilters, elements, nil, *perType)
		key = &k
		if *name != "" && *name != k.Name() {
			fmt.Fprintf(stderr, "starter: --name %s and the key flags (which name %s) disagree; give one of them\n", *name, k.Name())
			return exitUsage
		}
		*name = k.Name()
	}
	if *name != "" && (strings.ContainsAny(*name, `/\`) || !strings.HasPrefix(*name, "watermark-") || !strings.HasSuffix(*name, ".json")) {
		fmt.Fprintf(stderr, "starter: --name %q: want a file name like watermark-....json, as `starter watermark show` lists\n", *name)
		return exitUsage
	}
	if parseOnly {
		return exitOK
	}
	ctx := context.Background()
	now := time.Now()

	if sub == "set" {
		if *name == "" || *tt == "" {
			fmt.Fprintln(stderr, "starter: set needs --transaction-time and the watermark (--name, or --server/--fhir-url with the key flags)")
			return exitUsage
		}
		w, err := activities.SetWatermark(ctx, *out, *name, key, *tt, *typ, now)
		if err != nil {
			fmt.Fprintln(stderr, "starter: watermark not changed:", err)
			return exitUsage
		}
		fmt.Fprintf(stdout, "%s set:\n", *name)
		printWatermark(stdout, *name, w, now)
		return exitOK
	}

	names := []string{*name}
	if *name == "" {
		var err error
		if names, err = localWatermarks(*out); err != nil {
			fmt.Fprintln(stderr, "starter:", err)
			return exitUsage
		}
		if len(names) == 0 {
			fmt.Fprintf(stderr, "no watermarks in %s (an incremental export writes one when it commits)\n", *out)
			return exitFailed
		}
	}
	all := map[string]*activities.Watermark{}
	status := exitOK
	for _, n := range names {
		w, err := activities.LoadWatermark(ctx, *out, n)
		if err != nil {
			fmt.Fprintf(stderr, "starter: %s: %v\n", n, err)
			status = exitFailed
			continue
		}
		if w == nil {
			fmt.Fprintf(stderr, "no watermark %s in %s: the next incremental run is a full export\n", n, *out)
			status = exitFailed
			continue
		}
		all[n] = w
		if !*asJSON {
			printWatermark(stdout, n, w, now)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(all)
	}
	return status
}

func printWatermark(w io.Writer, name string, wm *activities.Watermark, now time.Time) {
	k := wm.Key
	who := k.Server
	if who == "" {
		who = k.BaseURL
	}
	fmt.Fprintf(w, "%s\n  server %s, level %s", name, who, k.Level)
	if k.Group != "" {
		fmt.Fprintf(w, ", group %s", k.Group)
	}
	if len(k.Types) > 0 {
		fmt.Fprintf(w, ", types %s", strings.Join(k.Types, ","))
	}
	if len(k.TypeFilters) > 0 {
		fmt.Fprintf(w, ", %d type filter(s)", len(k.TypeFilters))
	}
	if k.PerType {
		fmt.Fprint(w, ", per type")
	}
	fmt.Fprintln(w)
	if wm.TransactionTime != "" {
		fmt.Fprintf(w, "  transactionTime %s\n", wm.TransactionTime)
	}
	types := make([]string, 0, len(wm.Types))
	for t := range wm.Types {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		fmt.Fprintf(w, "  %-24s %s\n", t, wm.Types[t])
	}
	fmt.Fprintf(w, "  run %s, written %s\n", wm.Run, wm.CommittedAt.UTC().Format(time.RFC3339))
	if err := wm.Validate(now); err != nil {
		fmt.Fprintf(w, "  INVALID: %v: incremental runs refuse it; repair with `starter watermark set`\n", err)
	}
}

// localWatermarks lists the watermarks of a local output location; object
// storage needs --name or the key flags.
func localWatermarks(out string) ([]string, error) {
	if strings.Contains(out, "://") && !strings.HasPrefix(out, "file://") {
		return nil, fmt.Errorf("listing %s is not supported: give --name or the key flags (--server/--fhir-url, --level, --types, ...)", out)
	}
	dir := filepath.Join(strings.TrimPrefix(out, "file://"), "_state")
	if _, err := os.Stat(dir); err != nil {
		return nil, nil
	}
	paths, err := filepath.Glob(filepath.Join(dir, "watermark-*.json"))
	if err != nil {
		return nil, err
	}
	names := make([]string, len(paths))
	for i, p := range paths {
		names[i] = filepath.Base(p)
	}
	sort.Strings(names)
	return names, nil
}
