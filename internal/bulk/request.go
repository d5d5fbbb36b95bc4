package bulk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Level is the kick-off scope (BD2 L76-102).
type Level string

const (
	LevelSystem  Level = "system"
	LevelPatient Level = "patient"
	LevelGroup   Level = "group"
)

// DefaultOutputFormat is the spec default for _outputFormat (BD2 L118). It
// is not sent when OutputFormat is empty: the server applies it anyway.
const DefaultOutputFormat = "application/fhir+ndjson"

// KickoffRequest describes one $export kick-off.
type KickoffRequest struct {
	Level                 Level
	GroupID               string
	Types                 []string
	Since, Until          string // FHIR instants, passed through verbatim (validated as RFC 3339)
	Elements              []string
	TypeFilters           []string
	Patients              []string // "Patient/123" references; forces POST (spec: patient is POST only)
	OutputFormat          string   // default application/fhir+ndjson
	IncludeAssociatedData []string
	OrganizeOutputBy      string
	AllowPartialManifests bool
	Method                string // "", "GET" or "POST"; "" = GET unless Patients given
	Lenient               bool   // Prefer: handling=lenient
}

// Validate reports every problem at once, each saying what is wrong and how
// to fix it.
func (r KickoffRequest) Validate() error {
	var p []string
	add := func(format string, a ...any) { p = append(p, fmt.Sprintf(format, a...)) }

	switch r.Level {
	case LevelSystem, LevelPatient:
		if r.GroupID != "" {
			add("GroupID %q is only used with Level %q: clear it or use Level group", clip(r.GroupID), LevelGroup)
		}
	case LevelGroup:
		if strings.TrimSpace(r.GroupID) == "" {
			add("Level group needs a GroupID (the id of the Group resource, e.g. \"diabetics\")")
		} else if strings.ContainsAny(r.GroupID, "/?#") || hasControl(r.GroupID) {
			add("GroupID %q must be a bare Group id (no '/', '?', '#' or control characters), not a reference or URL", clip(r.GroupID))
		}
	case "":
		add("Level is required: one of %q, %q or %q", LevelSystem, LevelPatient, LevelGroup)
	default:
		add("Level %q is unknown: use %q, %q or %q", clip(string(r.Level)), LevelSystem, LevelPatient, LevelGroup)
	}

	for i, t := range r.Types {
		if !isResourceType(t) {
			add("Types[%d] %q is not a resource type name (like \"Patient\"); give one type per element, no commas", i, clip(t))
		}
	}
	since, sinceOK := checkInstant("Since", r.Since, add)
	until, untilOK := checkInstant("Until", r.Until, add)
	if sinceOK && untilOK && r.Since != "" && r.Until != "" && !since.Before(until) {
		add("Since %q must be before Until %q", r.Since, r.Until)
	}
	for i, e := range r.Elements {
		if e == "" || strings.ContainsAny(e, ", ") || hasControl(e) {
			add("Elements[%d] %q must be one element path like \"Patient.id\" or \"id\", no commas or spaces", i, clip(e))
		}
	}
	for i, f := range r.TypeFilters {
		// BD3 L299-301: each _typeFilter is "a single resource type followed
		// by a search query", e.g. MedicationRequest?status=active.
		q := strings.IndexByte(f, '?')
		if q <= 0 || !isResourceType(f[:q]) || q == len(f)-1 || hasControl(f) {
			add("TypeFilters[%d] %q must be ResourceType?search-params, e.g. \"MedicationRequest?status=active\"", i, clip(f))
		}
	}
	if len(r.Patients) > 0 {
		if r.Level == LevelSystem {
			add("Patients can only be used with Level patient or group (the spec defines the patient parameter there)")
		}
		if strings.EqualFold(r.Method, "GET") {
			add("Patients need Method POST (the patient parameter is POST only); clear Method or set it to POST")
		}
	}
	for i, ref := range r.Patients {
		id, ok := strings.CutPrefix(ref, "Patient/")
		if !ok || id == "" || strings.ContainsAny(id, "/?# ") || hasControl(id) {
			// BD2 L74 allows absolute references too.
			if !(isAbsHTTP(ref) && strings.Contains(ref, "/Patient/")) {
				add("Patients[%d] %q must be a reference like \"Patient/123\"", i, clip(ref))
			}
		}
	}
	if hasControl(r.OutputFormat) || strings.TrimSpace(r.OutputFormat) != r.OutputFormat {
		add("OutputFormat %q contains spaces or control characters; use e.g. %q", clip(r.OutputFormat), DefaultOutputFormat)
	}
	for i, v := range r.IncludeAssociatedData {
		if v == "" || strings.ContainsAny(v, ", ") || hasControl(v) {
			add("IncludeAssociatedData[%d] %q must be one code like \"LatestProvenanceResources\", no commas", i, clip(v))
		}
	}
	if r.OrganizeOutputBy != "" && !isResourceType(r.OrganizeOutputBy) {
		add("OrganizeOutputBy %q must be a resource type name like \"Patient\"", clip(r.OrganizeOutputBy))
	}
	switch strings.ToUpper(r.Method) {
	case "", "GET", "POST":
	default:
		add("Method %q is not supported: use \"\" (automatic), \"GET\" or \"POST\"", clip(r.Method))
	}
	if len(p) == 0 {
		return nil
	}
	return errors.New("invalid kick-off request: " + strings.Join(p, "; "))
}

func checkInstant(name, v string, add func(string, ...any)) (time.Time, bool) {
	if v == "" {
		return time.Time{}, true
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil || strings.TrimSpace(v) != v {
		// A FHIR instant needs a time zone: a bare date is not accepted.
		add("%s %q is not an RFC 3339 instant with a time zone, e.g. \"2024-01-02T03:04:05Z\" or \"2024-01-02T03:04:05.123+01:00\"", name, clip(v))
		return time.Time{}, false
	}
	return t, true
}

func isResourceType(s string) bool {
	if len(s) == 0 || len(s) > 64 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

func isAbsHTTP(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// clip keeps user-supplied values short in messages.
func clip(s string) string {
	if len(s) > 60 {
		cut := 57
		for cut > 0 && !isRuneStart(s[cut]) {
			cut--
		}
		return s[:cut] + "..."
	}
	return s
}

// method resolves "" to GET unless the patient parameter forces POST
// (BD2 L156: patient is POST only).
func (r KickoffRequest) method() string {
	m := strings.ToUpper(r.Method)
	if m == "" {
		if len(r.Patients) > 0 {
			return "POST"
		}
		return "GET"
	}
	return m
}

// endpoint builds the kick-off URL (BD2 L76-102).
func (r KickoffRequest) endpoint(base string) string {
	base = strings.TrimRight(base, "/")
	switch r.Level {
	case LevelPatient:
		return base + "/Patient/$export"
	case LevelGroup:
		return base + "/Group/" + url.PathEscape(r.GroupID) + "/$export"
	}
	return base + "/$export"
}

// query is the GET form: comma lists for _type/_elements/includeAssociatedData
// (BD2 L68), one _typeFilter per repeat (BD3 L299).
func (r KickoffRequest) query() url.Values {
	q := url.Values{}
	if len(r.Types) > 0 {
		q.Set("_type", strings.Join(r.Types, ","))
	}
	if len(r.Elements) > 0 {
		q.Set("_elements", strings.Join(r.Elements, ","))
	}
	for _, f := range r.TypeFilters {
		q.Add("_typeFilter", f)
	}
	if r.OutputFormat != "" {
		q.Set("_outputFormat", r.OutputFormat)
	}
	if r.Since != "" {
		q.Set("_since", r.Since)
	}
	if r.Until != "" {
		q.Set("_until", r.Until)
	}
	if len(r.IncludeAssociatedData) > 0 {
		q.Set("includeAssociatedData", strings.Join(r.IncludeAssociatedData, ","))
	}
	if r.OrganizeOutputBy != "" {
		q.Set("organizeOutputBy", r.OrganizeOutputBy)
	}
	if r.AllowPartialManifests {
		q.Set("allowPartialManifests", "true")
	}
	return q
}

type parameter struct {
	Name           string     `json:"name"`
	ValueString    *string    `json:"valueString,omitempty"`
	ValueInstant   *string    `json:"valueInstant,omitempty"`
	ValueCode      *string    `json:"valueCode,omitempty"`
	ValueBoolean   *bool      `json:"valueBoolean,omitempty"`
	ValueReference *reference `json:"valueReference,omitempty"`
}

type reference struct {
	Reference string `json:"reference"`
}

// parametersBody is the POST form: a FHIR Parameters resource with one
// parameter per value (BD2 L66, BD4 requires POST and no comma lists).
func (r KickoffRequest) parametersBody() []byte {
	var ps []parameter
	str := func(name, v string) { ps = append(ps, parameter{Name: name, ValueString: &v}) }
	if r.OutputFormat != "" {
		str("_outputFormat", r.OutputFormat)
	}
	if r.Since != "" {
		v := r.Since
		ps = append(ps, parameter{Name: "_since", ValueInstant: &v})
	}
	if r.Until != "" {
		v := r.Until
		ps = append(ps, parameter{Name: "_until", ValueInstant: &v})
	}
	for _, t := range r.Types {
		str("_type", t)
	}
	for _, e := range r.Elements {
		str("_elements", e)
	}
	for _, p := range r.Patients {
		ps = append(ps, parameter{Name: "patient", ValueReference: &reference{Reference: p}})
	}
	for _, f := range r.TypeFilters {
		str("_typeFilter", f)
	}
	for _, v := range r.IncludeAssociatedData {
		// The OperationDefinition types includeAssociatedData as code.
		v := v
		ps = append(ps, parameter{Name: "includeAssociatedData", ValueCode: &v})
	}
	if r.OrganizeOutputBy != "" {
		str("organizeOutputBy", r.OrganizeOutputBy)
	}
	if r.AllowPartialManifests {
		t := true
		ps = append(ps, parameter{Name: "allowPartialManifests", ValueBoolean: &t})
	}
	body := struct {
		ResourceType string      `json:"resourceType"`
		Parameter    []parameter `json:"parameter,omitempty"`
	}{"Parameters", ps}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(body) // cannot fail: only strings and bools
	return bytes.TrimRight(buf.Bytes(), "\n")
}
