package activities

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/internal/sink"
)

func TestCheckTarget(t *testing.T) {
	reg, _ := servers.Load("")
	ref := ServerRef{BaseURL: "https://ehr.example.org/fhir"}
	committedRoot := t.TempDir()
	s, err := sink.Open(committedRoot)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), "done", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// A root under a regular file cannot be created, even by root.
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		root     string
		ref      ServerRef
		run      string
		wantType string // "" = passes
	}{
		{"fresh run", t.TempDir(), ref, "r1", ""},
		{"committed run folder", committedRoot, ref, "done", "RunCommitted"},
		{"unknown server name", t.TempDir(), ServerRef{Server: "nope"}, "r1", "Config"},
		{"output root under a file", filepath.Join(notADir, "lake"), ref, "r1", "Config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acts := New(reg, tc.root, nil)
			err := acts.CheckTarget(context.Background(), CheckTargetInput{ServerRef: tc.ref, Target: Target{Run: tc.run}})
			if tc.wantType == "" {
				if err != nil {
					t.Fatalf("want no error, got %v", err)
				}
				return
			}
			var ae *temporal.ApplicationError
			if !errors.As(err, &ae) || ae.Type() != tc.wantType || !ae.NonRetryable() {
				t.Fatalf("want a non-retryable %s error, got %v", tc.wantType, err)
			}
		})
	}
}
