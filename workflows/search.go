package workflows

import (
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

// StartSearchAttributes are the attributes a starter sets on a new export.
func StartSearchAttributes(in ExportInput) temporal.SearchAttributes {
	types := in.Types
	if len(types) == 0 {
		types = []string{"*"}
	}
	return temporal.NewSearchAttributes(
		FhirServerKey.ValueSet(serverLabel(in)),
		ExportLevelKey.ValueSet(orDefault(in.Level, "system")),
		ExportPhaseKey.ValueSet(PhaseKickoff),
		ResourceTypesKey.ValueSet(types),
	)
}

func serverLabel(in ExportInput) string {
	if in.Server != "" {
		return in.Server
	}
	s := strings.TrimPrefix(strings.TrimPrefix(in.BaseURL, "https://"), "http://")
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	return s
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
