// Package views runs SQL on FHIR v2 ViewDefinitions: it validates a view,
// compiles its FHIRPath once, and flattens each resource into rows.
//
// Shape for streaming: Compile once per view, decode each resource once
// and hand the same tree to every view of its type: Runner for a set of
// views (it decodes only the elements its views reach, into reused memory),
// or fhirpath.ParseJSON and View.Rows.
package views

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/bulkflow/bulkflow/internal/fhirpath"
)

// Column is one output column, in the order the spec gives: a select's own
// columns, then its nested selects', then its unionAll's.
type Column struct {
	Name        string
	Path        string
	Type        string // FHIR type as declared ("" when the view gives none)
	Collection  bool   // a list of values rather than one
	Description string
	Tags        []Tag
}

// Tag is a column tag (for example ansi/type).
type Tag struct{ Name, Value string }

// View is a compiled ViewDefinition. It is safe for concurrent use.
type View struct {
	Name     string // the view's name ("" if the definition has none)
	Resource string // the resource type it flattens
	Columns  []Column

	sel       *selection // the view's select list, as one selection without forEach
	where     []*fhirpath.Expr
	constants map[string][]fhirpath.Item
	// elements: the names the view's expressions navigate by; a Runner
	// decodes only the top-level elements they can reach, unless
	// allElements (fhirpath.Expr.Elements).
	elements    []string
	allElements bool
}

type selection struct {
	path     string // where it is in the definition, for errors
	forEach  *fhirpath.Expr
	orNull   bool
	repeat   []*fhirpath.Expr
	columns  []compiledColumn
	selects  []*selection
	unionAll []*selection
	allCols  []int // every column this selection binds, nested ones included
}

type compiledColumn struct {
	idx        int
	name       string
	expr       *fhirpath.Expr
	typ        string
	collection bool
}

// Error is a ViewDefinition that fails validation. Msg uses the spec's
// wording where the spec has one.
type Error struct {
	View string // the view's name, if known
	Path string // where in the definition, e.g. select[0].column[1].name
	Msg  string
}

func (e *Error) Error() string {
	where := e.Path
	if where == "" {
		where = "ViewDefinition"
	}
	if e.View != "" {
		return fmt.Sprintf("view %q: %s: %s", e.View, where, e.Msg)
	}
	return fmt.Sprintf("view: %s: %s", where, e.Msg)
}

// IsInvalid reports whether err is a validation error of a ViewDefinition.
func IsInvalid(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

var (
	sqlName      = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)
	resourceName = regexp.MustCompile(`^[A-Z][A-Za-z]{1,63}$`)
)

const sqlNameMsg = "sql-name: Name is limited to letters, numbers, or underscores and cannot start with an underscore -- i.e. with a regular expression of: ^[A-Za-z][A-Za-z0-9_]*$"

// Compile parses, validates and compiles a ViewDefinition in JSON.
func Compile(data []byte) (*View, error) {
	n, err := fhirpath.ParseJSON(data)
	if err != nil {
		return nil, &Error{Msg: "not valid JSON: " + err.Error()}
	}
	return CompileNode(n)
}

// CompileNode is Compile for an already decoded definition.
func CompileNode(def *fhirpath.Node) (*View, error) {
	c := &compiler{}
	v, err := c.view(def)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.View == "" {
			e.View = c.name
		}
		return nil, err
	}
	return v, nil
}

type compiler struct {
	name      string
	colIndex  map[string]int
	columns   []Column
	constants map[string][]fhirpath.Item
	// elements the view's expressions navigate by (allElements: it may
	// need the whole resource), for decoding only those.
	elements    []string
	allElements bool
	// unionSlots maps column names to slots while a later unionAll branch
	// is compiled (innermost union last).
	unionSlots []map[string]int
}

func errAt(path, format string, a ...any) error {
	return &Error{Path: path, Msg: fmt.Sprintf(format, a...)}
}

var (
	viewKeys = keySet("resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
		"extension", "modifierExtension", "url", "identifier", "version", "versionAlgorithmString",
		"versionAlgorithmCoding", "name", "title", "status", "experimental", "date", "publisher",
		"contact", "description", "useContext", "jurisdiction", "purpose", "copyright",
		"copyrightLabel", "resource", "profile", "fhirVersion", "constant", "select", "where")
	selectKeys = keySet("id", "extension", "modifierExtension", "column", "select", "forEach", "forEachOrNull", "repeat", "unionAll")
	// "tags" as well as the model's "tag": the spec's own type-hint example writes tags.
	columnKeys   = keySet("id", "extension", "modifierExtension", "path", "name", "description", "collection", "type", "tag", "tags")
	whereKeys    = keySet("id", "extension", "modifierExtension", "path", "description")
	constantKeys = keySet("id", "extension", "modifierExtension", "name")
	tagKeys      = keySet("id", "extension", "modifierExtension", "name", "value")
)

func keySet(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// constantTypes are the value[x] types a constant may have.
var constantTypes = map[string]string{
	"valueBase64Binary": "base64Binary", "valueBoolean": "boolean", "valueCanonical": "canonical",
	"valueCode": "code", "valueDate": "date", "valueDateTime": "dateTime", "valueDecimal": "decimal",
	"valueId": "id", "valueInstant": "instant", "valueInteger": "integer", "valueInteger64": "integer64",
	"valueOid": "oid", "valueString": "string", "valuePositiveInt": "positiveInt", "valueTime": "time",
	"valueUnsignedInt": "unsignedInt", "valueUri": "uri", "valueUrl": "url", "valueUuid": "uuid",
}

func checkKeys(n *fhirpath.Node, allowed map[string]bool, path string) error {
	for _, k := range n.Keys {
		if !allowed[k] && !strings.HasPrefix(k, "_") {
			return errAt(path, "unknown element %q", k)
		}
	}
	return nil
}

func getString(n *fhirpath.Node, key, path string, required bool) (string, error) {
	v := n.Get(key)
	if v == nil || v.Kind == fhirpath.Null {
		if required {
			return "", errAt(path+"."+key, "required (1..1), but missing")
		}
		return "", nil
	}
	if v.Kind != fhirpath.String {
		return "", errAt(path+"."+key, "must be a string, got %s", v.Kind)
	}
	if required && strings.TrimSpace(v.Str) == "" {
		return "", errAt(path+"."+key, "required (1..1), but empty")
	}
	return v.Str, nil
}

func getArray(n *fhirpath.Node, key, path string) ([]fhirpath.Node, error) {
	v := n.Get(key)
	if v == nil || v.Kind == fhirpath.Null {
		return nil, nil
	}
	if v.Kind != fhirpath.Array {
		return nil, errAt(path+"."+key, "must be an array, got %s", v.Kind)
	}
	for i := range v.Kids {
		if v.Kids[i].Kind != fhirpath.Object {
			return nil, errAt(fmt.Sprintf("%s.%s[%d]", path, key, i), "must be an object, got %s", v.Kids[i].Kind)
		}
	}
	return v.Kids, nil
}

func (c *compiler) view(def *fhirpath.Node) (*View, error) {
	if def.Kind != fhirpath.Object {
		return nil, errAt("", "a ViewDefinition must be a JSON object, got %s", def.Kind)
	}
	if rt, _ := getString(def, "resourceType", "", false); rt != "" && rt != "ViewDefinition" {
		return nil, errAt("resourceType", "must be ViewDefinition, got %q", rt)
	}
	name, err := getString(def, "name", "", false)
	if err != nil {
		return nil, err
	}
	c.name = name
	if name != "" && !sqlName.MatchString(name) {
		return nil, errAt("name", "%s", sqlNameMsg)
	}
	if err := checkKeys(def, viewKeys, "ViewDefinition"); err != nil {
		return nil, err
	}
	resource, err := getString(def, "resource", "", false)
	if err != nil {
		return nil, err
	}
	if resource == "" {
		return nil, errAt("resource", "required (1..1): the FHIR resource type the view is based upon, e.g. 'Patient' or 'Observation'")
	}
	if !resourceName.MatchString(resource) {
		return nil, errAt("resource", "%q is not a FHIR resource type", resource)
	}
	if err := c.compileConstants(def); err != nil {
		return nil, err
	}
	sels, err := getArray(def, "select", "")
	if err != nil {
		return nil, err
	}
	if len(sels) == 0 {
		return nil, errAt("select", "required (1..*): a view needs at least one select")
	}
	c.colIndex = map[string]int{}
	root := &selection{path: ""}
	for i := range sels {
		s, err := c.selection(&sels[i], fmt.Sprintf("select[%d]", i))
		if err != nil {
			return nil, err
		}
		root.selects = append(root.selects, s)
		root.allCols = append(root.allCols, s.allCols...)
	}
	v := &View{Name: name, Resource: resource, Columns: c.columns, sel: root, constants: c.constants}
	wheres, err := getArray(def, "where", "")
	if err != nil {
		return nil, err
	}
	for i := range wheres {
		p := fmt.Sprintf("where[%d]", i)
		if err := checkKeys(&wheres[i], whereKeys, p); err != nil {
			return nil, err
		}
		src, err := getString(&wheres[i], "path", p, true)
		if err != nil {
			return nil, err
		}
		e, err := c.expr(src, p+".path")
		if err != nil {
			return nil, err
		}
		v.where = append(v.where, e)
	}
	v.elements, v.allElements = c.elements, c.allElements
	return v, nil
}

func (c *compiler) compileConstants(def *fhirpath.Node) error {
	consts, err := getArray(def, "constant", "")
	if err != nil {
		return err
	}
	c.constants = map[string][]fhirpath.Item{}
	for i := range consts {
		k := &consts[i]
		p := fmt.Sprintf("constant[%d]", i)
		name, err := getString(k, "name", p, true)
		if err != nil {
			return err
		}
		if !sqlName.MatchString(name) {
			return errAt(p+".name", "%s", sqlNameMsg)
		}
		switch name {
		case "resource", "rootResource", "context", "rowIndex", "ucum", "sct", "loinc":
			return errAt(p+".name", "%%%s is a FHIRPath environment variable; choose another name", name)
		}
		if _, dup := c.constants[name]; dup {
			return errAt(p+".name", "constant %q is defined twice", name)
		}
		var value *fhirpath.Node
		var typ string
		for j, key := range k.Keys {
			if constantKeys[key] || strings.HasPrefix(key, "_") {
				continue
			}
			t, ok := constantTypes[key]
			if !ok {
				return errAt(p, "unknown element %q (a constant's value[x] is one of base64Binary, boolean, canonical, code, date, dateTime, decimal, id, instant, integer, integer64, oid, string, positiveInt, time, unsignedInt, uri, url, uuid)", key)
			}
			if value != nil {
				return errAt(p, "constant %q has more than one value[x]", name)
			}
			value, typ = &k.Kids[j], t
		}
		if value == nil {
			return errAt(p, "constant %q: value[x] is required (1..1)", name)
		}
		if err := checkConstantValue(value, typ); err != nil {
			return errAt(p, "constant %q: %v", name, err)
		}
		if typ == "integer64" && value.Kind == fhirpath.String {
			value = &fhirpath.Node{Kind: fhirpath.Number, Str: value.Str} // FHIR JSON writes integer64 as a string
		}
		c.constants[name] = []fhirpath.Item{{N: value, T: typ}}
	}
	return nil
}

func checkConstantValue(n *fhirpath.Node, typ string) error {
	want := fhirpath.String
	switch typ {
	case "boolean":
		want = fhirpath.Bool
	case "decimal", "integer", "integer64", "positiveInt", "unsignedInt":
		want = fhirpath.Number
	}
	if typ == "integer64" && n.Kind == fhirpath.String {
		if _, err := strconv.ParseInt(n.Str, 10, 64); err != nil {
			return fmt.Errorf("an integer64 value must be a 64-bit integer")
		}
		return nil
	}
	if n.Kind != want {
		return fmt.Errorf("a %s value must be a JSON %s, got %s", typ, want, n.Kind)
	}
	return nil
}

// expr compiles a FHIRPath expression of the view and checks that every
// %constant it uses is defined.
func (c *compiler) expr(src, path string) (*fhirpath.Expr, error) {
	e, err := fhirpath.Parse(src)
	if err != nil {
		return nil, errAt(path, "%v", err)
	}
	names, all := e.Elements()
	c.allElements = c.allElements || all
	for _, n := range names {
		if !slices.Contains(c.elements, n) {
			c.elements = append(c.elements, n)
		}
	}
	for _, name := range e.Constants() {
		if _, ok := c.constants[name]; !ok {
			return nil, errAt(path, "%%%s is not defined: the view has no constant named %q", name, name)
		}
	}
	return e, nil
}

func (c *compiler) selection(n *fhirpath.Node, path string) (*selection, error) {
	if err := checkKeys(n, selectKeys, path); err != nil {
		return nil, err
	}
	s := &selection{path: path}
	iterators := 0
	for _, key := range []string{"forEach", "forEachOrNull"} {
		src, err := getString(n, key, path, false)
		if err != nil {
			return nil, err
		}
		if n.Get(key) == nil {
			continue
		}
		iterators++
		e, err := c.expr(src, path+"."+key)
		if err != nil {
			return nil, err
		}
		s.forEach, s.orNull = e, key == "forEachOrNull"
	}
	if r := n.Get("repeat"); r != nil {
		iterators++
		if r.Kind != fhirpath.Array || len(r.Kids) == 0 {
			return nil, errAt(path+".repeat", "must be a non-empty array of FHIRPath expressions")
		}
		for i := range r.Kids {
			if r.Kids[i].Kind != fhirpath.String {
				return nil, errAt(fmt.Sprintf("%s.repeat[%d]", path, i), "must be a string, got %s", r.Kids[i].Kind)
			}
			e, err := c.expr(r.Kids[i].Str, fmt.Sprintf("%s.repeat[%d]", path, i))
			if err != nil {
				return nil, err
			}
			s.repeat = append(s.repeat, e)
		}
	}
	if iterators > 1 {
		return nil, errAt(path, "sql-expressions: Can only have at most one of `forEach`, `forEachOrNull` or `repeat`.")
	}
	cols, err := getArray(n, "column", path)
	if err != nil {
		return nil, err
	}
	for i := range cols {
		cc, err := c.column(&cols[i], fmt.Sprintf("%s.column[%d]", path, i))
		if err != nil {
			return nil, err
		}
		s.columns = append(s.columns, cc)
		s.allCols = append(s.allCols, cc.idx)
	}
	subs, err := getArray(n, "select", path)
	if err != nil {
		return nil, err
	}
	for i := range subs {
		sub, err := c.selection(&subs[i], fmt.Sprintf("%s.select[%d]", path, i))
		if err != nil {
			return nil, err
		}
		s.selects = append(s.selects, sub)
		s.allCols = append(s.allCols, sub.allCols...)
	}
	unions, err := getArray(n, "unionAll", path)
	if err != nil {
		return nil, err
	}
	if len(unions) > 0 {
		// The first branch defines the union's columns; every later branch
		// binds the same slots and must name the same columns in the same
		// order.
		var first []string
		for i := range unions {
			bp := fmt.Sprintf("%s.unionAll[%d]", path, i)
			if i > 0 {
				slots := map[string]int{}
				for j, idx := range s.unionAll[0].allCols {
					slots[first[j]] = idx
				}
				c.unionSlots = append(c.unionSlots, slots)
			}
			u, err := c.selection(&unions[i], bp)
			if i > 0 {
				c.unionSlots = c.unionSlots[:len(c.unionSlots)-1]
			}
			if err != nil {
				return nil, err
			}
			names := make([]string, len(u.allCols))
			for j, idx := range u.allCols {
				names[j] = c.columns[idx].Name
			}
			if i == 0 {
				first = names
			} else if !slices.Equal(names, first) {
				return nil, errAt(bp, "Union Branches Inconsistent: every select of a unionAll must produce the same columns (names and order): unionAll[0] has [%s], unionAll[%d] has [%s]",
					strings.Join(first, ", "), i, strings.Join(names, ", "))
			}
			s.unionAll = append(s.unionAll, u)
		}
		s.allCols = append(s.allCols, s.unionAll[0].allCols...)
	}
	return s, nil
}

func typeDesc(t string, collection bool) string {
	if t == "" {
		t = "untyped"
	}
	if collection {
		t += " collection"
	}
	return t
}

func (c *compiler) column(n *fhirpath.Node, path string) (compiledColumn, error) {
	if err := checkKeys(n, columnKeys, path); err != nil {
		return compiledColumn{}, err
	}
	name, err := getString(n, "name", path, true)
	if err != nil {
		return compiledColumn{}, err
	}
	if !sqlName.MatchString(name) {
		return compiledColumn{}, errAt(path+".name", "%s", sqlNameMsg)
	}
	src, err := getString(n, "path", path, true)
	if err != nil {
		return compiledColumn{}, err
	}
	e, err := c.expr(src, path+".path")
	if err != nil {
		return compiledColumn{}, err
	}
	col := Column{Name: name, Path: src}
	if col.Description, err = getString(n, "description", path, false); err != nil {
		return compiledColumn{}, err
	}
	if t, err := getString(n, "type", path, false); err != nil {
		return compiledColumn{}, err
	} else {
		col.Type = strings.TrimPrefix(t, "http://hl7.org/fhir/StructureDefinition/")
	}
	if cv := n.Get("collection"); cv != nil && cv.Kind != fhirpath.Null {
		if cv.Kind != fhirpath.Bool {
			return compiledColumn{}, errAt(path+".collection", "must be a boolean, got %s", cv.Kind)
		}
		col.Collection = cv.Bool
	}
	tags, err := getArray(n, "tag", path)
	if err != nil {
		return compiledColumn{}, err
	}
	alias, err := getArray(n, "tags", path)
	if err != nil {
		return compiledColumn{}, err
	}
	tags = append(tags, alias...)
	for i := range tags {
		tp := fmt.Sprintf("%s.tag[%d]", path, i)
		if err := checkKeys(&tags[i], tagKeys, tp); err != nil {
			return compiledColumn{}, err
		}
		tn, err := getString(&tags[i], "name", tp, true)
		if err != nil {
			return compiledColumn{}, err
		}
		tv, err := getString(&tags[i], "value", tp, true)
		if err != nil {
			return compiledColumn{}, err
		}
		col.Tags = append(col.Tags, Tag{tn, tv})
	}
	cc := compiledColumn{name: name, expr: e, typ: col.Type, collection: col.Collection}
	if len(c.unionSlots) > 0 {
		// A later branch of a unionAll: reuse the first branch's slot.
		idx, ok := c.unionSlots[len(c.unionSlots)-1][name]
		if !ok {
			return compiledColumn{}, errAt(path+".name", "Union Branches Inconsistent: column %q is not in the first select of the unionAll", name)
		}
		first := c.columns[idx]
		if (first.Type != "" && col.Type != "" && first.Type != col.Type) || first.Collection != col.Collection {
			return compiledColumn{}, errAt(path, "Union Branches Inconsistent: column %q is %s here but %s in the first select of the unionAll",
				name, typeDesc(col.Type, col.Collection), typeDesc(first.Type, first.Collection))
		}
		cc.idx = idx
		return cc, nil
	}
	if _, exists := c.colIndex[name]; exists {
		return compiledColumn{}, errAt(path+".name", "Column Already Defined: %q (the column names of a view must be unique)", name)
	}
	cc.idx = len(c.columns)
	c.colIndex[name] = cc.idx
	c.columns = append(c.columns, col)
	return cc, nil
}
