package views

// Kind is the physical type of a column's values, from its declared FHIR
// type (the spec's column types). A writer fixes its schema from the kinds
// before the first row; a collection column is a list of its kind.
type Kind uint8

const (
	// KindAny: no type declared; values come as the data has them (string,
	// bool, int64, Decimal or JSON). Shareable views declare every type.
	KindAny Kind = iota
	KindString
	KindBool
	KindInt64
	// KindDecimal values are Decimal: exact text, no float rounding.
	KindDecimal
	// KindDate, KindDateTime, KindTime values are strings as written, so a
	// partial date ("1970-06") keeps its precision; lowBoundary() and
	// highBoundary() give full ones.
	KindDate
	KindDateTime
	KindTime
	// KindJSON: a complex type (Coding, Period, a backbone element), as
	// map[string]any or []any.
	KindJSON
)

func (k Kind) String() string {
	return [...]string{"any", "string", "boolean", "int64", "decimal", "date", "dateTime", "time", "json"}[k]
}

// Kind maps the column's FHIR type to the physical type of its values.
func (c Column) Kind() Kind {
	switch c.Type {
	case "":
		return KindAny
	case "boolean":
		return KindBool
	case "integer", "unsignedInt", "positiveInt", "integer64":
		return KindInt64
	case "decimal":
		return KindDecimal
	case "date":
		return KindDate
	case "dateTime", "instant":
		return KindDateTime
	case "time":
		return KindTime
	case "string", "code", "id", "markdown", "uri", "url", "canonical", "oid", "uuid", "base64Binary", "xhtml":
		return KindString
	}
	return KindJSON
}
