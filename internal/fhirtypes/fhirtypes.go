// Package fhirtypes knows the names of FHIR's resource types, for checking
// what users and servers write (the CLI's --types, metric labels).
package fhirtypes

import "strings"

// Known reports whether name is a FHIR R4 (4.0.1), R4B or R5 resource type.
// Case matters, as in FHIR.
func Known(name string) bool { return names[name] }

// Suggest returns the known type nearest to name (a case slip or a typo of
// one or two letters), or "" when none is close.
func Suggest(name string) string {
	best, bestD := "", 3
	for n := range names {
		if strings.EqualFold(n, name) {
			return n
		}
		if d := distance(strings.ToLower(n), strings.ToLower(name)); d < bestD || d == bestD && n < best {
			best, bestD = n, d
		}
	}
	if bestD > 2 {
		return ""
	}
	return best
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// names are FHIR R4 (4.0.1), R4B and R5 resource types.
var names = setOf(
	// R4
	"Account", "ActivityDefinition", "AdverseEvent", "AllergyIntolerance",
	"Appointment", "AppointmentResponse", "AuditEvent", "Basic", "Binary",
	"BiologicallyDerivedProduct", "BodyStructure", "Bundle",
	"CapabilityStatement", "CarePlan", "CareTeam", "CatalogEntry",
	"ChargeItem", "ChargeItemDefinition", "Claim", "ClaimResponse",
	"ClinicalImpression", "CodeSystem", "Communication",
	"CommunicationRequest", "CompartmentDefinition", "Composition",
	"ConceptMap", "Condition", "Consent", "Contract", "Coverage",
	"CoverageEligibilityRequest", "CoverageEligibilityResponse",
	"DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric",
	"DeviceRequest", "DeviceUseStatement", "DiagnosticReport",
	"DocumentManifest", "DocumentReference", "EffectEvidenceSynthesis",
	"Encounter", "Endpoint", "EnrollmentRequest", "EnrollmentResponse",
	"EpisodeOfCare", "EventDefinition", "Evidence", "EvidenceVariable",
	"ExampleScenario", "ExplanationOfBenefit", "FamilyMemberHistory", "Flag",
	"Goal", "GraphDefinition", "Group", "GuidanceResponse",
	"HealthcareService", "ImagingStudy", "Immunization",
	"ImmunizationEvaluation", "ImmunizationRecommendation",
	"ImplementationGuide", "InsurancePlan", "Invoice", "Library", "Linkage",
	"List", "Location", "Measure", "MeasureReport", "Media", "Medication",
	"MedicationAdministration", "MedicationDispense", "MedicationKnowledge",
	"MedicationRequest", "MedicationStatement", "MedicinalProduct",
	"MedicinalProductAuthorization", "MedicinalProductContraindication",
	"MedicinalProductIndication", "MedicinalProductIngredient",
	"MedicinalProductInteraction", "MedicinalProductManufactured",
	"MedicinalProductPackaged", "MedicinalProductPharmaceutical",
	"MedicinalProductUndesirableEffect", "MessageDefinition",
	"MessageHeader", "MolecularSequence", "NamingSystem", "NutritionOrder",
	"Observation", "ObservationDefinition", "OperationDefinition",
	"OperationOutcome", "Organization", "OrganizationAffiliation",
	"Parameters", "Patient", "PaymentNotice", "PaymentReconciliation",
	"Person", "PlanDefinition", "Practitioner", "PractitionerRole",
	"Procedure", "Provenance", "Questionnaire", "QuestionnaireResponse",
	"RelatedPerson", "RequestGroup", "ResearchDefinition",
	"ResearchElementDefinition", "ResearchStudy", "ResearchSubject",
	"RiskAssessment", "RiskEvidenceSynthesis", "Schedule", "SearchParameter",
	"ServiceRequest", "Slot", "Specimen", "SpecimenDefinition",
	"StructureDefinition", "StructureMap", "Subscription", "Substance",
	"SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein",
	"SubstanceReferenceInformation", "SubstanceSourceMaterial",
	"SubstanceSpecification", "SupplyDelivery", "SupplyRequest", "Task",
	"TerminologyCapabilities", "TestReport", "TestScript", "ValueSet",
	"VerificationResult", "VisionPrescription",
	// R4B and R5 additions
	"ActorDefinition", "AdministrableProductDefinition", "ArtifactAssessment",
	"BiologicallyDerivedProductDispense", "Citation", "ClinicalUseDefinition",
	"ConditionDefinition", "DeviceDispense", "DeviceUsage",
	"EncounterHistory", "EvidenceReport", "FormularyItem", "GenomicStudy",
	"ImagingSelection", "Ingredient", "InventoryItem", "InventoryReport",
	"ManufacturedItemDefinition", "MedicinalProductDefinition",
	"NutritionIntake", "NutritionProduct", "PackagedProductDefinition",
	"Permission", "RegulatedAuthorization", "RequestOrchestration",
	"Requirements", "SubscriptionStatus", "SubscriptionTopic",
	"SubstanceDefinition", "TestPlan", "Transport",
)

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}
