package workflows

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/activities"
)

// store is an in-memory stand-in for the watermark objects in the output
// location: ReadWatermark reads it, Commit advances it, as the real
// activities do.
type store struct {
	wm    map[string]*activities.Watermark
	since []string // the _since of each kick-off, in order
}

// runIncremental runs one incremental export in a fresh time-skipping
// environment; transactionTime is what the server reports; fail makes a
// download fail permanently.
func (st *store) run(t *testing.T, in ExportInput, transactionTime string, fail bool) (ExportResult, error) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(BulkExportWorkflow)
	env.RegisterWorkflow(DownloadChunkWorkflow)
	env.RegisterActivity(&activities.Activities{})
	preflightPasses(env)
	p := &activities.Plan{TransactionTime: transactionTime, Files: 1, Groups: []activities.Group{{Kind: activities.KindOutput, Type: "Patient", First: 0, Count: 1}}}
	env.OnActivity(a.ReadWatermark, mock.Anything, mock.Anything).Return(func(_ context.Context, r activities.ReadWatermarkInput) (*activities.Watermark, error) {
		return st.wm[r.Key.Name()], nil
	})
	env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(_ context.Context, k activities.KickoffInput) (activities.KickoffResult, error) {
		st.since = append(st.since, k.Since)
		return activities.KickoffResult{StatusURL: "https://ehr.example/status/" + transactionTime}, nil
	})
	env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil)
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(context.Context, activities.DownloadInput) (activities.FileResult, error) {
		if fail {
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("bad line", activities.ErrInvalidContent, nil)
		}
		return activities.FileResult{Kind: activities.KindOutput, Type: "Patient", Resources: 1, Attempt: 1}, nil
	})
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(func(_ context.Context, c activities.CommitInput) (activities.CommitResult, error) {
		res := activities.CommitResult{Location: "/out/" + c.Run}
		if u := c.Watermark; u != nil {
			cur := st.wm[u.Key.Name()]
			// the real rule (activities.advanceWatermark) is tested in activities
			if cur == nil || (u.Since == "" || u.Since <= cur.TransactionTime) && cur.TransactionTime < c.Plan.TransactionTime {
				st.wm[u.Key.Name()] = &activities.Watermark{Key: u.Key, TransactionTime: c.Plan.TransactionTime}
				res.Watermark = u.Key.Name()
			}
		}
		return res, nil
	})
	env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil)
	env.ExecuteWorkflow(BulkExportWorkflow, in)
	require.True(t, env.IsWorkflowCompleted())
	var r ExportResult
	if err := env.GetWorkflowError(); err != nil {
		return r, err
	}
	require.NoError(t, env.GetWorkflowResult(&r))
	return r, nil
}

// The sequence a schedule drives: a first full run, incremental runs from
// the committed watermark, a failed run that leaves it alone, and the next
// run picking up from the last run that really landed.
func TestIncrementalRunsFollowTheCommittedWatermark(t *testing.T) {
	st := &store{wm: map[string]*activities.Watermark{}}
	in := ExportInput{Server: "ehr", Types: []string{"Patient"}, Incremental: true}

	r1, err := st.run(t, in, "2026-01-01T00:00:00Z", false)
	require.NoError(t, err)
	require.Equal(t, "", r1.Since, "no watermark: a full export")
	require.NotEmpty(t, r1.Watermark)

	r2, err := st.run(t, in, "2026-01-02T00:00:00Z", false)
	require.NoError(t, err)
	require.Equal(t, "2026-01-01T00:00:00Z", r2.Since)
	require.Equal(t, "watermark", r2.SinceFrom)

	_, err = st.run(t, in, "2026-01-03T00:00:00Z", true)
	require.Error(t, err, "run 3 fails")

	r4, err := st.run(t, in, "2026-01-04T00:00:00Z", false)
	require.NoError(t, err)
	require.Equal(t, "2026-01-02T00:00:00Z", r4.Since, "the failed run must not have moved the watermark")
	require.Equal(t, []string{"", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z"}, st.since)

	// Another key (other types) has its own watermark: a full first run.
	other := in
	other.Types = []string{"Observation"}
	r5, err := st.run(t, other, "2026-01-05T00:00:00Z", false)
	require.NoError(t, err)
	require.Equal(t, "", r5.Since)
}

func TestIncrementalSeedAndValidation(t *testing.T) {
	st := &store{wm: map[string]*activities.Watermark{}}
	r, err := st.run(t, ExportInput{Server: "ehr", Incremental: true, Since: "2025-06-01T00:00:00Z"}, "2026-01-01T00:00:00Z", false)
	require.NoError(t, err)
	require.Equal(t, "2025-06-01T00:00:00Z", r.Since, "with no watermark, since seeds the first run")
	require.Equal(t, "input", r.SinceFrom)
	// Once a watermark exists it wins over the seed.
	r, err = st.run(t, ExportInput{Server: "ehr", Incremental: true, Since: "2025-06-01T00:00:00Z"}, "2026-01-02T00:00:00Z", false)
	require.NoError(t, err)
	require.Equal(t, "2026-01-01T00:00:00Z", r.Since)

	for _, bad := range []ExportInput{
		{Server: "ehr", Incremental: true, Until: "2026-01-01T00:00:00Z"},
		{Server: "ehr", WatermarkPerType: true},
	} {
		require.Error(t, bad.Validate(), fmt.Sprintf("%+v", bad))
	}
}

func TestMinimisationWarnings(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   ExportInput
		tot  Totals
		want []string
	}{
		{"as asked", ExportInput{Types: []string{"Patient"}}, Totals{Resources: map[string]int64{"Patient": 3}}, nil},
		{"extra type", ExportInput{Types: []string{"Patient"}}, Totals{Resources: map[string]int64{"Patient": 3, "Observation": 2}}, []string{"not requested (_type): Observation"}},
		{"no _type asks for all", ExportInput{}, Totals{Resources: map[string]int64{"Observation": 2}}, nil},
		{"elements ignored", ExportInput{Elements: []string{"id"}}, Totals{Unsubsetted: 7}, []string{"7 resources lack the SUBSETTED tag"}},
		{"elements honoured", ExportInput{Elements: []string{"id"}}, Totals{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := minimisationWarnings(tc.in, &ResumeState{Totals: tc.tot})
			require.Len(t, got, len(tc.want))
			for i, w := range tc.want {
				require.Contains(t, got[i], w)
			}
		})
	}
}

func TestServerLabel(t *testing.T) {
	for _, tc := range []struct {
		in   ExportInput
		want string
	}{
		{ExportInput{Server: "epic-prod", BaseURL: "https://x/fhir"}, "epic-prod"},
		{ExportInput{BaseURL: "https://user:pw@ehr.example.org/fhir/R4/?a=b"}, "ehr.example.org/fhir/R4"},
		{ExportInput{BaseURL: "http://127.0.0.1:9090/fhir"}, "127.0.0.1:9090/fhir"},
		{ExportInput{}, "server"},
	} {
		require.Equal(t, tc.want, ServerLabel(tc.in))
	}
}
