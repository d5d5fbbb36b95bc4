package fhirtypes

import "testing"

func TestKnownAndSuggest(t *testing.T) {
	for name, want := range map[string]bool{"Patient": true, "Observation": true, "DeviceUsage": true, "patient": false, "Spaceship": false, "": false} {
		if Known(name) != want {
			t.Errorf("Known(%q) = %v", name, !want)
		}
	}
	for in, want := range map[string]string{"patient": "Patient", "Obsevation": "Observation", "OBSERVATION": "Observation", "Spaceship": ""} {
		if got := Suggest(in); got != want {
			t.Errorf("Suggest(%q) = %q, want %q", in, got, want)
		}
	}
}
