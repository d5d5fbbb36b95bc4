package metrics

// fhirTypes are the resource type names a bulkflow_*{type} label may carry:
// FHIR R4 (4.0.1), R4B and R5 resource types. Anything else a server puts in
// a manifest's "type" (a typo, a custom type, a path) is counted as "other",
// so one odd server cannot blow up the number of series.
var fhirTypes = setOf(
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
