package workflows

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/bulkflow/bulkflow/activities"
)

// Unknown keys in the workflow input (a typo such as "fromat") must fail the
// export at once rather than run a different one. The decoder records them
// and Validate reports them: failing the decode itself would fail the
// workflow task, which Temporal retries forever instead of failing the run.

// UnmarshalJSON decodes the input as usual and records keys it does not know.
func (in *ExportInput) UnmarshalJSON(b []byte) error {
	type plain ExportInput // no methods: no recursion
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*in = ExportInput(p)
	in.unknown = unknownKeys(b, reflect.TypeOf(p), "")
	return nil
}

// UnmarshalJSON decodes the options and records keys it does not know.
func (o *Options) UnmarshalJSON(b []byte) error {
	type plain Options
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*o = Options(p)
	o.unknown = unknownKeys(b, reflect.TypeOf(p), "options.")
	return nil
}

// unknownKeys lists the object keys of b that name no field of t, each with
// the nearest known key. encoding/json matches keys case-insensitively, so
// a key it accepts counts as known.
func unknownKeys(b []byte, t reflect.Type, prefix string) []string {
	var raw map[string]json.RawMessage
	if json.Unmarshal(b, &raw) != nil {
		return nil
	}
	known := jsonKeys(t)
	var out []string
	for k := range raw {
		found := false
		for _, kk := range known {
			if strings.EqualFold(k, kk) {
				found = true
				break
			}
		}
		if found {
			continue
		}
		msg := fmt.Sprintf("unknown key %q", prefix+k)
		if near := nearest(k, known); near != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", prefix+near)
		}
		out = append(out, msg)
	}
	sort.Strings(out)
	return out
}

// jsonKeys lists the JSON names of t's exported fields (embedded structs'
// fields included).
func jsonKeys(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			keys = append(keys, jsonKeys(f.Type)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		keys = append(keys, name)
	}
	return keys
}

// nearest returns the known key closest to k by edit distance, or "" when
// none is close enough to be a plausible typo.
func nearest(k string, known []string) string {
	best, bestD := "", 1<<30
	for _, c := range known {
		if d := editDistance(strings.ToLower(k), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD > max(2, len(k)/2) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// kickoff is the request the input makes of the server, with the _since
// this run resolved. The same value is validated here and sent by the
// Kickoff activity, so the two can never disagree on what is valid.
func (in *ExportInput) kickoff(ref activities.ServerRef, target activities.Target, since string) activities.KickoffInput {
	return activities.KickoffInput{ServerRef: ref, Target: target, Level: orDefault(in.Level, "system"), Group: in.Group, Types: in.Types,
		Since: since, Until: in.Until, Elements: in.Elements, TypeFilters: in.TypeFilters, Patients: in.Patients,
		OutputFormat: in.OutputFormat, IncludeAssociatedData: in.IncludeAssociatedData, Method: in.Method, Lenient: in.Lenient}
}

// inputNames translates the protocol client's field names in its messages
// into the workflow input's JSON keys, so a user reads the key they wrote.
var inputNames = regexp.MustCompile(`\b(Level|GroupID|Types|Since|Until|Elements|TypeFilters|Patients|OutputFormat|IncludeAssociatedData|Method)\b`)

var jsonName = map[string]string{"Level": "level", "GroupID": "group", "Types": "types", "Since": "since", "Until": "until",
	"Elements": "elements", "TypeFilters": "typeFilters", "Patients": "patients", "OutputFormat": "outputFormat",
	"IncludeAssociatedData": "includeAssociatedData", "Method": "method"}

// kickoffProblems runs the protocol client's validator on the request and
// returns its findings (one message, problems separated by "; ") in the
// input's terms.
func kickoffProblems(k activities.KickoffInput) []string {
	err := k.Request().Validate()
	if err == nil {
		return nil
	}
	msg := strings.TrimPrefix(err.Error(), "invalid kick-off request: ")
	return []string{inputNames.ReplaceAllStringFunc(msg, func(s string) string { return `"` + jsonName[s] + `"` })}
}
