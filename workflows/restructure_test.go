package workflows

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
)

func jsonPayload(s string) *commonpb.Payload {
	return &commonpb.Payload{Metadata: map[string][]byte{converter.MetadataEncoding: []byte(converter.MetadataEncodingJSON)}, Data: []byte(s)}
}

func newEnv() *testsuite.TestWorkflowEnvironment {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	// The SDK's 1 s deadlock detector fires on a loaded machine when one
	// workflow task handles hundreds of mocked completions; a real
	// deadlock still fails, after 10 s.
	env.SetWorkerOptions(worker.Options{DeadlockDetectionTimeout: 10 * time.Second})
	env.SetTestTimeout(time.Minute)
	env.RegisterWorkflow(BulkExportWorkflow)
	env.RegisterWorkflow(DownloadChunkWorkflow)
	env.RegisterActivity(&activities.Activities{})
	preflightPasses(env)
	return env
}

// Issue 12 §2: a typo in the workflow input JSON fails the export at once,
// non-retryably, naming the key and the nearest known one; nothing is sent
// to the server. The input is plain JSON, as `temporal workflow start
// --input` and Schedules send it.
func TestUnknownInputKeyFailsAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        []string
	}{
		{"top level", `{"server":"x","types":["Patient"],"fromat":"parquet"}`, []string{`unknown key "fromat"`, `did you mean "format"`}},
		{"options", `{"server":"x","options":{"concurency":2}}`, []string{`unknown key "options.concurency"`, `"options.concurrency"`}},
		{"no near key", `{"server":"x","zzzzzzzzzzzz":1}`, []string{`unknown key "zzzzzzzzzzzz"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv()
			// No activity is mocked: any call would fail the test with "unexpected call".
			// A raw JSON payload, decoded by the workflow as Temporal decodes
			// `temporal workflow start --input`.
			env.ExecuteWorkflow("BulkExportWorkflow", converter.NewRawValue(jsonPayload(tc.input)))
			require.True(t, env.IsWorkflowCompleted())
			err := env.GetWorkflowError()
			require.Error(t, err)
			var ae *temporal.ApplicationError
			require.True(t, errors.As(err, &ae), "want an application error, got %v", err)
			require.True(t, ae.NonRetryable(), "an input typo must not be retried")
			require.Equal(t, "InvalidInput", ae.Type())
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

// The decoder accepts what encoding/json accepts (keys match fields
// case-insensitively) and the known keys of a full input.
func TestKnownKeysAreAccepted(t *testing.T) {
	b, err := json.Marshal(ExportInput{Server: "x", Types: []string{"Patient"}, Format: "parquet", Options: Options{Concurrency: 2, MaxHistoryEvents: 100},
		Resume: &ResumeState{Run: "r"}})
	require.NoError(t, err)
	var in ExportInput
	require.NoError(t, json.Unmarshal(b, &in))
	require.NoError(t, in.Validate())
	require.NoError(t, json.Unmarshal([]byte(`{"Server":"x","FORMAT":"parquet"}`), &in))
	require.NoError(t, in.Validate())
	require.Equal(t, "parquet", in.Format)
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"fromat", "format", 2}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"same", "same", 0}} {
		require.Equal(t, tc.d, editDistance(tc.a, tc.b), "%s/%s", tc.a, tc.b)
	}
}

// One set of kick-off rules: whatever the workflow accepts, the protocol
// client accepts, and the other way round. Absolute patient references
// (BD2 L74) used to be rejected by the workflow only.
func TestValidateAgreesWithTheProtocolClient(t *testing.T) {
	for _, in := range []ExportInput{
		{Server: "x", Level: "patient", Method: "POST", Patients: []string{"https://ehr.example/fhir/Patient/123"}},
		{Server: "x", Level: "patient", Patients: []string{"Patient/1"}},
		{Server: "x", Patients: []string{"Patient/1"}}, // system level: the patient parameter is not defined there
		{Server: "x", Level: "group"},
		{Server: "x", Level: "group", Group: "a/b"},
		{Server: "x", Level: "grup"},
		{Server: "x", Types: []string{"Patient", "observation"}},
		{Server: "x", Types: []string{"Observation2"}},
		{Server: "x", Since: "2024-01-01"},
		{Server: "x", Since: "2024-01-02T00:00:00Z", Until: "2024-01-01T00:00:00Z"},
		{Server: "x", TypeFilters: []string{"Observation?status=final"}},
		{Server: "x", TypeFilters: []string{"status=final"}},
		{Server: "x", Method: "PUT"},
		{Server: "x", Elements: []string{"id,meta"}},
	} {
		k := in.kickoff(activities.ServerRef{}, activities.Target{}, in.Since)
		wf, proto := in.Validate(), k.Request().Validate()
		if (wf == nil) != (proto == nil) {
			t.Errorf("%+v: workflow says %v, protocol client says %v", in, wf, proto)
		}
	}
	// The messages name the input's JSON keys.
	err := (&ExportInput{Server: "x", Level: "group", Types: []string{"observation"}, Since: "yesterday"}).Validate()
	require.Error(t, err)
	for _, want := range []string{`"group"`, `"types"`, `"observation"`, `"since"`} {
		require.Contains(t, err.Error(), want)
	}
}

// The continue-as-new threshold comes from the input, so a test (or an
// operator) can force it; the default is 5,000 events.
func TestHistoryThresholdFromInput(t *testing.T) {
	run := func(maxEvents int) error {
		env := newEnv()
		env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
		polls := 0
		env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(context.Context, activities.PollInput) (activities.PollResult, error) {
			polls++
			if polls > 30 {
				return activities.PollResult{}, temporal.NewNonRetryableApplicationError("stop", "Stop", nil)
			}
			return activities.PollResult{Wait: time.Minute}, nil
		})
		env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Maybe()
		env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Maybe()
		in := input
		in.Options.MaxHistoryEvents = maxEvents
		// The test environment keeps no real history: say it is 100 events long.
		env.SetCurrentHistoryLength(100)
		env.ExecuteWorkflow(BulkExportWorkflow, in)
		return env.GetWorkflowError()
	}
	var can *workflow.ContinueAsNewError
	err := run(40)
	require.True(t, errors.As(err, &can), "a 40-event threshold must continue as new at 100 events, got %v", err)
	var next ExportInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	require.NotNil(t, next.Resume.Settings)
	require.Equal(t, 40, next.Resume.Settings.MaxHistoryEvents)
	require.Equal(t, 1, next.Resume.Polls)

	err = run(0)
	require.False(t, errors.As(err, &can), "100 events are far below the default threshold")
	require.True(t, strings.Contains(err.Error(), "stop"), "%v", err)
}
