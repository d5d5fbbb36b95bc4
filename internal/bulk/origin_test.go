package bulk

import (
	"testing"

	"github.com/bulkflow/bulkflow/internal/auth"
)

// allow is the origin rule for a test server plus extra origins.
func allow(t *testing.T, base string, extra ...string) *auth.Origins {
	t.Helper()
	o, err := auth.NewOrigins(base, "", extra)
	if err != nil {
		t.Fatal(err)
	}
	return o
}
