package workflows

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/activities"
)

// Issue 15: with attachments "fetch", FetchAttachments runs once per chunk
// after the downloads, with the run's remaining byte budget; Commit is told
// to merge the index; references not stored are a warning, or with strict
// a non-retryable failure. Without the option the activity never runs
// (no mock: a call would fail the test).
func TestAttachmentsPhase(t *testing.T) {
	for _, tc := range []struct {
		name        string
		attachments string
		strict      bool
		wantErr     string
	}{
		{"fetch", "fetch", false, ""},
		{"strict", "fetch", true, "AttachmentsIncomplete"},
		{"none", "", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv()
			p := plan(map[string]int{"Observation": 2, "Patient": 1}, 0, 0)
			env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
			env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
			env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
			env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
			env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Maybe()
			env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Maybe()
			var budgets []int64
			var chunks []int
			if tc.attachments != "" {
				env.OnActivity(a.FetchAttachments, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.FetchAttachmentsInput) (activities.FetchAttachmentsResult, error) {
					budgets, chunks = append(budgets, in.Budget), append(chunks, in.Chunk)
					return activities.FetchAttachmentsResult{Counts: activities.AttachmentCounts{ByStatus: map[string]int64{"stored": 2, "missing": 1}, Bytes: 30}}, nil
				})
			}
			var commit activities.CommitInput
			env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CommitInput) (activities.CommitResult, error) {
				commit = in
				return activities.CommitResult{Location: "/lake/run"}, nil
			}).Maybe()
			in := ExportInput{BaseURL: "https://ehr.example/fhir", Attachments: tc.attachments, Strict: tc.strict, Options: Options{FilesPerChunk: 1}}
			if tc.attachments != "" {
				in.MaxAttachmentsBytes = 100
			}
			env.ExecuteWorkflow(BulkExportWorkflow, in)
			err := env.GetWorkflowError()
			if tc.wantErr != "" {
				var ae *temporal.ApplicationError
				require.True(t, errors.As(err, &ae) && ae.Type() == tc.wantErr, "want %s, got %v", tc.wantErr, err)
				require.Len(t, chunks, 3)
				return
			}
			require.NoError(t, err)
			var res ExportResult
			require.NoError(t, env.GetWorkflowResult(&res))
			require.Equal(t, tc.attachments != "", commit.Attachments)
			if tc.attachments == "" {
				require.Empty(t, chunks)
				return
			}
			require.Equal(t, []int{0, 1, 2}, chunks, "one FetchAttachments per chunk, in order")
			require.Equal(t, []int64{100, 70, 40}, budgets, "the budget shrinks by what earlier chunks stored")
			require.True(t, strings.Contains(strings.Join(res.Warnings, "\n"), "3 attachment(s) were not stored"), "%q", res.Warnings)
			require.NotNil(t, res.Attachments)
			require.Equal(t, int64(6), res.Attachments.ByStatus["stored"])
			require.Equal(t, int64(90), res.Attachments.Bytes)
		})
	}
}

// The attachment options are checked before anything starts.
func TestAttachmentsInputValidation(t *testing.T) {
	for _, tc := range []struct {
		in   ExportInput
		want string
	}{
		{ExportInput{BaseURL: "https://x/fhir", Attachments: "inline", MaxAttachmentBytes: 64 << 20}, `at most 16777216`},
		{ExportInput{BaseURL: "https://x/fhir", Attachments: "fetch", AttachmentTypes: []string{"text/plain"}}, `applies to attachments "inline" only`},
		{ExportInput{BaseURL: "https://x/fhir", Attachments: "inline", AttachmentTypes: []string{"plain"}}, `not a MIME type`},
		{ExportInput{BaseURL: "https://x/fhir", Attachments: "all"}, `attachments "all"`},
		{ExportInput{BaseURL: "https://x/fhir", Attachments: "inline", MaxAttachmentsBytes: 10}, `applies to attachments "fetch"`},
		{ExportInput{BaseURL: "https://x/fhir", MaxAttachmentBytes: 5}, `need "attachments": "fetch" or "inline"`},
		{ExportInput{BaseURL: "https://x/fhir", Attachments: "fetch", MaxAttachmentBytes: -1}, "must not be negative"},
	} {
		err := tc.in.Validate()
		require.Error(t, err, tc.want)
		require.Contains(t, err.Error(), tc.want)
	}
	require.NoError(t, (&ExportInput{BaseURL: "https://x/fhir", Attachments: "none"}).Validate())
	require.NoError(t, (&ExportInput{BaseURL: "https://x/fhir", Attachments: "inline", AttachmentTypes: []string{"text/plain"}}).Validate())
	require.NoError(t, (&ExportInput{BaseURL: "https://x/fhir", Attachments: "fetch", MaxAttachmentBytes: 10, MaxAttachmentsBytes: 100}).Validate())
}
