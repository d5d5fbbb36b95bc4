package main

import (
	"errors"
	"fmt"
	"testing"

	"go.temporal.io/sdk/temporal"
)

func TestRootCauseShowsTheInnermostMessage(t *testing.T) {
	inner := temporal.NewNonRetryableApplicationError("Observation/Observation-0001.ndjson line 7: not JSON", "InvalidContent", nil)
	outer := temporal.NewApplicationErrorWithCause("download: "+inner.Error(), "wrapError", inner)
	if got := rootCause(fmt.Errorf("workflow: %w", outer)); got != "Observation/Observation-0001.ndjson line 7: not JSON" {
		t.Fatalf("rootCause = %q", got)
	}
	if got := rootCause(errors.New("plain")); got != "plain" {
		t.Fatalf("rootCause = %q", got)
	}
}
