// Package testsuite is a test FHIR Bulk Data ($export) server: spec-faithful
// endpoints, deterministic synthetic data streamed on the fly, and scripted
// fault injection. It is written from ../shared/spec/bulk-data-checklist.md
// (BD2/BD3 = Bulk Data STU2/STU3 export.md line numbers in comments) and
// shares no code with the client under internal/.
//
// # Data
//
// Patients (Options.Patients) each own a deterministic number of Encounter,
// Observation, Condition, MedicationRequest, Procedure, Immunization,
// AllergyIntolerance and DocumentReference resources; Practitioner,
// Organization and 3 Group resources complete the set. Every field derives
// from (Seed, type, index) by hashing, so a file is generated while it is
// served and the same seed gives byte-identical files. Ids are "<prefix>-<n>"
// (pat-, enc-, obs-, cond-, medrx-, proc-, imm-, alg-, doc-, prac-, org-, grp-).
// meta.lastUpdated spreads over the five years before the data clock (Now,
// initially 2025-01-01T00:00:00Z). Mutate advances the clock and creates new
// versions and deletions; _since exports return exactly those, with
// deletions in deleted[] (BD2 L474-496). Expected says what any export yields.
//
// # Export levels
//
// System level exports all 12 types. Patient and Group level export the
// patient compartment types only (Patient … DocumentReference); Group level
// does NOT include the Group resource itself, only its members' compartments.
//
// # _typeFilter subset
//
// One "Type?param=value[&param=value]" query per repeat (BD3 L299-301;
// comma-joined BD2 style also works). Params AND, comma values OR, queries
// for one type OR. Supported: Observation status/category/code,
// Condition clinical-status/category/code, MedicationRequest status/code,
// Procedure status/code, Immunization status/vaccine-code, AllergyIntolerance
// clinical-status/category/code, Encounter status, DocumentReference
// status/type. code values are "code" or "system|code". Anything else is a
// 400 OperationOutcome, or with Prefer: handling=lenient an informational
// OperationOutcome in error[] and the filter is ignored.
//
// # Fault scripts
//
// Options.Faults, SetFaults, POST /_admin/faults and the -faults flag take:
//
//	script   = rule { ";" | newline rule }        ("#" starts a comment rule)
//	rule     = endpoint [":" selector] "=" fault ["(" args ")"] ["@" attempts]
//	attempts = N | N-M | N- | * {"," …}           (omitted = every attempt)
//
// Endpoints: kickoff (selector: system|patient|group), status, manifest (a
// status poll once the export is complete), file (selector: a type such as
// "Observation", a file such as "Observation.2", "deleted" or "error"),
// delete, token, metadata, wellknown, binary (attachments: selector a
// Binary id such as "att-12" or a kind such as "large"; see attachments.go). Attempts count per server for kickoff,
// token, metadata and wellknown; per job for status, manifest and delete; per
// job and file for file. Every matching rule fires; the first whole-response
// fault wins, body faults combine (so "file=slow(bps=1e5)" as a global rule
// composes with per-file truncations). SetFaults resets the counters.
//
// Whole-response faults (any endpoint; all accept retry-after=N | date:N |
// none | any-literal):
//
//	429                       429 OperationOutcome "throttled", no Retry-After unless given
//	busy                      429 "export already in progress", Retry-After 2 unless given
//	transient(code=503)       5xx OperationOutcome with issue code "transient"
//	html(code=502)            an nginx-style HTML error page
//	text(code=500)            a text/plain error
//	expired-token             401 text/plain "token expired" + WWW-Authenticate
//	gone / notfound           410 / 404 OperationOutcome
//	NNN (400-599)             that status with an OperationOutcome
//	drop                      close the connection without any response
//
// kickoff: no-content-location, relative-content-location.
// manifest: errors(n=3) (error[] file of n OperationOutcomes, severity
// fatal/error/warning/information), capability-urls (requiresAccessToken
// false, unguessable /_cap/ URLs; Authorization headers on them are counted),
// truncated (half a JSON manifest). The first two are frozen into the
// manifest when it is first built.
// file: truncate-midline (200, last line cut in half, no final newline),
// truncate-lines(n=1) (200, last n lines missing), reset(lines=K | bytes=N)
// (send part of the body then TCP RST; default half the lines),
// slow(bps=65536), redirect (307 to the second "object storage" listener,
// which counts Authorization headers reaching it), force-gzip, regenerate
// (a new version: same resources, other order, new ETag). Files carry a
// strong ETag (per version and content coding) and honour If-Range.
// binary: slow(bps=65536) (with Options.Attachments).
//
// Examples:
//
//	kickoff=429(retry-after=2)@1; file:Observation.1=truncate-midline@1-2; status=transient@2,3
//	file=slow(bps=200000)
//	manifest=errors(n=4); file=redirect
package testsuite
