package workflows

import (
	"testing"

	"github.com/bulkflow/bulkflow/activities"
)

// The UI names a download by its place in the manifest's lists.
func TestDownloadSummaries(t *testing.T) {
	groups := []activities.Group{
		{Kind: activities.KindOutput, Type: "Patient", First: 0, Count: 3},
		{Kind: activities.KindOutput, Type: "Observation", First: 3, Count: 300},
		{Kind: activities.KindError, First: 303, Count: 2},
		{Kind: activities.KindDeleted, Type: "Patient", First: 305, Count: 1},
	}
	for _, tc := range []struct {
		got, want string
	}{
		{fileSummary(groups, 0), "Patient file 1 of 3"},
		{fileSummary(groups, 14), "Observation file 12 of 300"},
		{fileSummary(groups, 304), "error file 2 of 2"},
		{fileSummary(groups, 305), "deleted file 1 of 1"},
		{fileSummary(groups, 400), "file 401"},
		{batchSummary(groups, 3, 40), "Observation files 1–40 of 300"},
		{batchSummary(groups, 1, 4), "Patient file 2 of 3 to Observation file 2 of 300"},
		{batchSummary(groups, 303, 2), "error files 1–2 of 2"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
