package workflows

import (
	"net/url"
	"strings"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// Search attributes that make exports findable in the Temporal UI and CLI
// (e.g. `ExportPhase="downloading" AND FhirServer="epic-prod"`). They must be
// registered on the namespace first (README, "Temporal UI"); `make demo` and
// the tests do it on their dev servers.
var (
	FhirServerKey    = temporal.NewSearchAttributeKeyKeyword("FhirServer")
	ExportLevelKey   = temporal.NewSearchAttributeKeyKeyword("ExportLevel")
	ExportPhaseKey   = temporal.NewSearchAttributeKeyKeyword("ExportPhase")
	ResourceTypesKey = temporal.NewSearchAttributeKeyKeywordList("ResourceTypes")
)

// SearchAttributeTypes lists the attributes for registration.
func SearchAttributeTypes() []temporal.SearchAttributeKey {
	return []temporal.SearchAttributeKey{FhirServerKey, ExportLevelKey, ExportPhaseKey, ResourceTypesKey}
}

// SearchAttributesToRegister lists bulkflow's attributes with their types,
// in the form the Temporal dev server options take.
func SearchAttributesToRegister() temporal.SearchAttributes {
	return StartSearchAttributes(ExportInput{Server: "-"})
}

// StartSearchAttributes are the attributes a starter sets on a new export.
func StartSearchAttributes(in ExportInput) temporal.SearchAttributes {
	types := in.Types
	if len(types) == 0 {
		types = []string{"*"}
	}
	return temporal.NewSearchAttributes(
		FhirServerKey.ValueSet(ServerLabel(in)),
		ExportLevelKey.ValueSet(orDefault(in.Level, "system")),
		ExportPhaseKey.ValueSet(PhaseKickoff),
		ResourceTypesKey.ValueSet(types),
	)
}

// ServerLabel names an export's server for people: the configured name, or
// the base URL's host and path (no scheme, query or credentials).
func ServerLabel(in ExportInput) string {
	if in.Server != "" {
		return in.Server
	}
	if u, err := url.Parse(in.BaseURL); err == nil && u.Host != "" {
		return strings.TrimRight(u.Host+u.Path, "/")
	}
	return "server"
}

// setPhase shows the phase in the UI: current details always, and the
// ExportPhase search attribute when the export was started with bulkflow's
// search attributes (so they are registered; upserting an unregistered one
// would fail the workflow task).
func setPhase(ctx workflow.Context, phase, details string) {
	workflow.SetCurrentDetails(ctx, details)
	if _, ok := workflow.GetTypedSearchAttributes(ctx).GetKeyword(FhirServerKey); !ok {
		return
	}
	if cur, _ := workflow.GetTypedSearchAttributes(ctx).GetKeyword(ExportPhaseKey); cur == phase {
		return
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, ExportPhaseKey.ValueSet(phase)); err != nil {
		workflow.GetLogger(ctx).Warn("could not update ExportPhase", "error", err)
	}
}
