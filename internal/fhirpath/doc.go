// Package fhirpath evaluates FHIRPath expressions over FHIR resources in
// JSON, as SQL on FHIR ViewDefinitions need them.
//
// Resources are decoded once (ParseJSON) into a tree of Nodes that keeps key
// order and number text; an expression is parsed once (Parse) and evaluated
// on any number of resources (Expr.Evaluate). No Go FHIRPath library is
// served by the module proxy (github.com/verily-src/fhirpath-go, which works
// on google/fhir protos, and github.com/gofhir/fhirpath are refused), hence
// this package.
//
// For a stream of resources, a Decoder reuses its node arenas from one
// document to the next, and DecodeProjected/DecodeInPlace build only the
// top-level elements a set of expressions can reach (Expr.Elements),
// checking and skipping the rest; a Context is Reset per resource and keeps
// its scratch memory. That is what makes flattening cheap next to the
// download (views.Runner, internal/views BenchmarkRunner3Views).
//
// Types without a FHIR model: there are no StructureDefinitions here, so an
// item's FHIR type comes from a choice element's suffix (value resolves to
// valueQuantity typed Quantity), a constant's declared type, or a function's
// result; otherwise it is what the JSON implies (string, boolean, integer or
// decimal, a resource's resourceType). ofType()/is/as honour FHIR's
// specialisations (code is a string, url is a uri, positiveInt an integer);
// an untyped JSON string also passes ofType of any string-like type, and of
// date/dateTime/time when it has that form. ofType(Reference) on an element
// that is not a choice finds nothing: use the element directly.
//
// Supported: paths, indexers, the operators (= != ~ !~ < <= > >= + - * /
// div mod & | and or xor implies not in contains is as) with three-valued
// logic, %constants (%resource, %rootResource, %context, %rowIndex and the
// caller's), $this and $index, date/time literals, and the functions
// empty exists all allTrue anyTrue allFalse anyFalse count distinct
// isDistinct where select repeat ofType is as first last tail skip take
// single intersect exclude union combine iif not hasValue trace toString
// toInteger toDecimal toBoolean convertsTo{String,Integer,Decimal,Boolean}
// length upper lower trim toChars startsWith endsWith contains indexOf
// substring replace split join matches replaceMatches abs ceiling floor
// truncate round children descendants extension getResourceKey
// getReferenceKey lowBoundary highBoundary. A primitive's id and
// extensions are read from its _name sibling (birthDate.extension(url)).
// Quantity literals, date arithmetic, resolve() and memberOf() are not
// supported: Parse refuses them. A primitive that has only extensions (a
// null value) is not in a collection.
//
// Keys: getResourceKey() is "Type/id" ("Patient/123"); getReferenceKey()
// is the same text for a relative or absolute literal reference
// ("Patient/123", "https://x/fhir/Patient/123/_history/2"), and empty for
// contained (#id), urn:uuid and logical (identifier-only) references, so
// keys from different views join and never collide across types.
//
// Untrusted input: a document nested deeper than MaxDepth, an expression
// longer than MaxExprLen or nested deeper than MaxExprDepth, and an
// evaluation producing more than MaxItems items end in an error, never a
// panic or unbounded work. Errors name types and positions, never values of
// the resource.
package fhirpath
