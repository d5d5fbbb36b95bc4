package workflows

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"github.com/stretchr/testify/suite"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/bulkflow/bulkflow/activities"
)

type exportSuite struct {
	suite.Suite
	testsuite.WorkflowTestSuite
	env *testsuite.TestWorkflowEnvironment
}

func TestExportWorkflow(t *testing.T) { suite.Run(t, new(exportSuite)) }

func (s *exportSuite) SetupTest() {
	s.env = s.NewTestWorkflowEnvironment()
	s.env.RegisterWorkflow(BulkExportWorkflow)
	s.env.RegisterWorkflow(DownloadChunkWorkflow)
	s.env.RegisterActivity(&activities.Activities{})
	preflightPasses(s.env)
}

func (s *exportSuite) AfterTest(_, _ string) { s.env.AssertExpectations(s.T()) }

// preflightPasses lets CheckTarget succeed: these tests are about what
// follows it (TestCheckTargetRefusesBeforeTheKickoff covers a refusal).
func preflightPasses(env *testsuite.TestWorkflowEnvironment) {
	env.OnActivity(a.CheckTarget, mock.Anything, mock.Anything).Return(nil).Maybe()
	// No size hints: every file has its own DownloadFile, as these tests expect.
	env.OnActivity(a.ChunkHints, mock.Anything, mock.Anything).Return(activities.ChunkHints{}, nil).Maybe()
}

var input = ExportInput{BaseURL: "https://ehr.example/fhir", Types: []string{"Patient", "Observation"}}

func plan(outputs map[string]int, errorFiles, deletedFiles int) *activities.Plan {
	p := &activities.Plan{TransactionTime: "2026-11-26T00:00:00Z", RequiresAccessToken: true}
	for _, typ := range []string{"Observation", "Patient"} {
		if n := outputs[typ]; n > 0 {
			p.Groups = append(p.Groups, activities.Group{Kind: activities.KindOutput, Type: typ, First: p.Files, Count: n})
			p.Files += n
			p.ExpectedResources += int64(n) * 10
		}
	}
	if errorFiles > 0 {
		p.Groups = append(p.Groups, activities.Group{Kind: activities.KindError, Type: "OperationOutcome", First: p.Files, Count: errorFiles})
		p.Files += errorFiles
	}
	if deletedFiles > 0 {
		p.Groups = append(p.Groups, activities.Group{Kind: activities.KindDeleted, Type: "Bundle", First: p.Files, Count: deletedFiles})
		p.Files += deletedFiles
	}
	return p
}

// fileFor fakes a download from the plan's groups: 10 resources per file.
func fileFor(p *activities.Plan) func(context.Context, activities.DownloadInput) (activities.FileResult, error) {
	return func(_ context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		for _, g := range p.Groups {
			if in.Index >= g.First && in.Index < g.First+g.Count {
				r := activities.FileResult{Index: in.Index, Kind: g.Kind, Type: g.Type, Path: fmt.Sprintf("%s/%d", g.Type, in.Index), Resources: 10, Bytes: 1000, Attempt: 1}
				switch g.Kind {
				case activities.KindError:
					r.Severity = map[string]int64{"error": 1, "warning": 2}
				case activities.KindDeleted:
					r.Deleted = map[string]int64{"Patient": 3}
				}
				return r, nil
			}
		}
		return activities.FileResult{}, fmt.Errorf("index %d outside plan", in.Index)
	}
}

func (s *exportSuite) expectHappyEnd(p *activities.Plan) {
	s.env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	s.env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CommitInput) (activities.CommitResult, error) {
		s.Equal(p.Files, in.Plan.Files)
		return activities.CommitResult{Location: "/out/" + in.Run, Manifest: "/out/" + in.Run + "/_manifest.json", Files: in.Plan.Files}, nil
	}).Once()
	s.env.OnActivity(a.DeleteJob, mock.Anything, mock.MatchedBy(func(in activities.DeleteJobInput) bool {
		return in.StatusURL == "https://ehr.example/status/1" && in.BaseURL == input.BaseURL && in.Run != ""
	})).Return(nil).Once()
}

func (s *exportSuite) result() ExportResult {
	s.True(s.env.IsWorkflowCompleted())
	s.NoError(s.env.GetWorkflowError())
	var r ExportResult
	s.NoError(s.env.GetWorkflowResult(&r))
	return r
}

func (s *exportSuite) TestNormalRun() {
	p := plan(map[string]int{"Patient": 2, "Observation": 3}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p)).Times(5)
	s.expectHappyEnd(p)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal("committed", r.Status)
	s.Equal(map[string]int64{"Patient": 20, "Observation": 30}, r.Totals.Resources)
	s.Equal(5, r.Totals.Files)
	s.True(r.JobDeleted)
	s.Equal("2026-11-26T00:00:00Z", r.TransactionTime)
}

func (s *exportSuite) TestLongPollingHonoursRetryAfter() {
	p := plan(map[string]int{"Patient": 1}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	// Three days at 202 with Retry-After of an hour.
	polls := 0
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		s.Equal("https://ehr.example/status/1", in.StatusURL, "polling must keep the same status URL")
		polls++
		if polls <= 72 {
			return activities.PollResult{Progress: fmt.Sprintf("%d%%", polls), Wait: time.Hour}, nil
		}
		return activities.PollResult{Done: true, Plan: p}, nil
	})
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	s.expectHappyEnd(p)
	start := s.env.Now()
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal(73, r.Polls)
	s.GreaterOrEqual(s.env.Now().Sub(start), 72*time.Hour, "each wait must last the Retry-After")
}

func (s *exportSuite) TestKickoff429IsWaitedOut() {
	p := plan(map[string]int{"Patient": 1}, 0, 0)
	var calls atomic.Int32
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		if calls.Add(1) <= 2 {
			return activities.KickoffResult{}, temporal.NewApplicationErrorWithOptions("429: export already running", activities.ErrRateLimited,
				temporal.ApplicationErrorOptions{NextRetryDelay: 30 * time.Minute})
		}
		return activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil
	})
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil)
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	s.expectHappyEnd(p)
	start := s.env.Now()
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	s.Equal("committed", s.result().Status)
	s.EqualValues(3, calls.Load())
	s.GreaterOrEqual(s.env.Now().Sub(start), time.Hour, "NextRetryDelay from Retry-After must be honoured")
}

func (s *exportSuite) TestTransientStatusErrorsAreRetried() {
	p := plan(map[string]int{"Patient": 1}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	var calls atomic.Int32
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(context.Context, activities.PollInput) (activities.PollResult, error) {
		if calls.Add(1) <= 3 {
			return activities.PollResult{}, temporal.NewApplicationError("503: transient OperationOutcome", activities.ErrTransient)
		}
		return activities.PollResult{Done: true, Plan: p}, nil
	})
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	s.expectHappyEnd(p)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal("committed", r.Status)
	s.Equal(1, r.Polls, "activity retries are not extra polls")
}

func (s *exportSuite) TestJobGoneIsRunAgain() {
	p := plan(map[string]int{"Patient": 2}, 0, 0)
	var kicks atomic.Int32
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		return activities.KickoffResult{StatusURL: fmt.Sprintf("https://ehr.example/status/%d", kicks.Add(1))}, nil
	})
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		if in.StatusURL == "https://ehr.example/status/1" {
			return activities.PollResult{}, temporal.NewNonRetryableApplicationError("404 Not Found", activities.ErrJobGone, nil)
		}
		return activities.PollResult{Done: true, Plan: p}, nil
	})
	s.env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	s.env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	s.env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/x"}, nil).Once()
	s.env.OnActivity(a.DeleteJob, mock.Anything, mock.MatchedBy(func(in activities.DeleteJobInput) bool {
		return in.StatusURL == "https://ehr.example/status/2" && in.BaseURL == input.BaseURL && in.Run != ""
	})).Return(nil).Once()
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal(1, r.Restarts)
	s.EqualValues(2, kicks.Load())
	s.Require().NotEmpty(r.Warnings)
	s.Contains(strings.Join(r.Warnings, "\n"), "run again")
}

func (s *exportSuite) TestJobAlwaysGoneFailsClearly() {
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Times(3)
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{},
		temporal.NewNonRetryableApplicationError("404 Not Found", activities.ErrJobGone, nil))
	s.env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil)
	s.env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	err := s.env.GetWorkflowError()
	s.Require().Error(err)
	s.Contains(err.Error(), "lost the export job")
	s.Contains(err.Error(), "giving up")
}

// A file link expires mid-run: fresh links from the same job's manifest,
// the chunk runs again, and the run completes without a second export.
func (s *exportSuite) TestExpiredFileRefreshesManifest() {
	p := plan(map[string]int{"Observation": 3}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	var versions []int
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		versions = append(versions, in.PlanVersion)
		return activities.PollResult{Done: true, Plan: p}, nil
	})
	var mu sync.Mutex
	gone := true
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		mu.Lock()
		defer mu.Unlock()
		if in.Index == 1 && gone {
			gone = false
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("410 Gone", activities.ErrFileGone, nil)
		}
		if in.Index == 1 {
			s.Equal(1, in.PlanVersion, "the retry must use the refreshed plan")
		}
		return fileFor(p)(ctx, in)
	})
	s.expectHappyEnd(p)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal([]int{0, 1}, versions)
	s.Equal(0, r.Restarts)
	s.Equal(int64(30), r.Totals.ResourceCount(), "a chunk run twice counts its files once")
	s.Contains(strings.Join(r.Warnings, "\n"), "fresh links")
}

func (s *exportSuite) TestTruncatedFileIsRetried() {
	p := plan(map[string]int{"Patient": 1, "Observation": 1}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	var mu sync.Mutex
	attempts := map[int]int{}
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		mu.Lock()
		attempts[in.Index]++
		n := attempts[in.Index]
		mu.Unlock()
		if in.Index == 0 && n < 3 {
			return activities.FileResult{}, temporal.NewApplicationError("Observation-0001.ndjson: 7 resources received, the manifest says 10", activities.ErrTruncatedFile)
		}
		r, err := fileFor(p)(ctx, in)
		r.Attempt = int32(n)
		return r, err
	})
	s.expectHappyEnd(p)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal(3, attempts[0])
	s.Equal(2, r.Totals.Retries)
	s.Equal(int64(20), r.Totals.ResourceCount(), "a retried file counts once")
}

func (s *exportSuite) TestPermanentFileFailureCommitsNothing() {
	p := plan(map[string]int{"Patient": 1, "Observation": 3}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		if in.Index == 1 {
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("Observation/Observation-0002.ndjson line 7: not a JSON object", activities.ErrInvalidContent, nil)
		}
		return fileFor(p)(ctx, in)
	})
	s.env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	s.env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	err := s.env.GetWorkflowError()
	s.Require().Error(err)
	s.Contains(err.Error(), "Observation file 2 of 3")
	s.Contains(err.Error(), "Observation-0002.ndjson line 7")
	s.env.AssertNotCalled(s.T(), "Commit", mock.Anything, mock.Anything)
}

func (s *exportSuite) TestCancellationDeletesJobAndCleansStaging() {
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Wait: time.Hour}, nil)
	s.env.OnActivity(a.DeleteJob, mock.Anything, mock.MatchedBy(func(in activities.DeleteJobInput) bool {
		return in.StatusURL == "https://ehr.example/status/1" && in.BaseURL == input.BaseURL && in.Run != ""
	})).Return(nil).Once()
	s.env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	s.env.RegisterDelayedCallback(s.env.CancelWorkflow, 3*time.Hour)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	err := s.env.GetWorkflowError()
	s.Require().Error(err)
	var ce *temporal.CanceledError
	s.Require().True(errors.As(err, &ce), "want a cancelled workflow, got %v", err)
	var r ExportResult
	s.NoError(ce.Details(&r))
	s.Equal("cancelled", r.Status)
	s.True(r.JobDeleted)
}

func (s *exportSuite) TestPartialSuccessReportsErrorsAndDeletions() {
	p := plan(map[string]int{"Patient": 2}, 2, 1)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p)).Times(5)
	s.expectHappyEnd(p)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal(map[string]int64{"error": 2, "warning": 4}, r.Totals.Issues)
	s.Equal(map[string]int64{"Patient": 3}, r.Totals.Deleted)
	s.Equal(map[string]int64{"Patient": 20}, r.Totals.Resources, "error and deleted files are not resources")
	s.NotEmpty(r.Warnings)
}

func (s *exportSuite) TestInvalidInputIsRejectedBeforeKickoff() {
	s.env.ExecuteWorkflow(BulkExportWorkflow, ExportInput{Level: "group", Types: []string{"observation"}, Since: "yesterday"})
	err := s.env.GetWorkflowError()
	s.Require().Error(err)
	for _, want := range []string{`"server"`, `"group"`, `"observation"`, `"since"`} {
		s.Contains(err.Error(), want)
	}
}

func (s *exportSuite) TestProgressQuery() {
	p := plan(map[string]int{"Patient": 4}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	polls := 0
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(context.Context, activities.PollInput) (activities.PollResult, error) {
		polls++
		if polls == 1 {
			return activities.PollResult{Progress: "Exporting Observation (40%)", Wait: time.Minute}, nil
		}
		return activities.PollResult{Done: true, Plan: p}, nil
	})
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	s.expectHappyEnd(p)
	s.env.RegisterDelayedCallback(func() {
		v, err := s.env.QueryWorkflow(ProgressQuery)
		s.Require().NoError(err)
		var pr Progress
		s.NoError(v.Get(&pr))
		s.Equal(PhaseWaiting, pr.Phase)
		s.Equal("Exporting Observation (40%)", pr.ServerProgress)
		s.Equal(1, pr.Polls)
	}, 30*time.Second)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	s.result()
	v, err := s.env.QueryWorkflow(ProgressQuery)
	s.Require().NoError(err)
	var pr Progress
	s.NoError(v.Get(&pr))
	s.Equal(PhaseDone, pr.Phase)
	s.Equal(4, pr.FilesDone)
	s.Equal(4, pr.FilesTotal)
	s.Equal(int64(40), pr.Resources)
}

func TestValidateMessages(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   ExportInput
		want string
	}{
		{"ok", ExportInput{Server: "ehr"}, ""},
		{"patients need POST", ExportInput{Server: "ehr", Method: "GET", Patients: []string{"Patient/1"}}, "POST"},
		{"bad patient", ExportInput{Server: "ehr", Patients: []string{"1"}}, "Patient/123"},
		{"bad run", ExportInput{Server: "ehr", Run: "../x"}, `"run"`},
		{"bad concurrency", ExportInput{Server: "ehr", Options: Options{Concurrency: 1000}}, "concurrency"},
		{"ftp", ExportInput{BaseURL: "ftp://x"}, "https://"},
		{"views", ExportInput{Server: "ehr", Views: []string{"patients", `{"name":"bp","resource":"Observation"}`}, Format: "none"}, ""},
		{"none needs views", ExportInput{Server: "ehr", Format: "none"}, `format "none" keeps only view tables`},
		{"view name is a path", ExportInput{Server: "ehr", Views: []string{"../etc/x"}}, `"views": view "../etc/x"`},
		{"inline view without name", ExportInput{Server: "ehr", Views: []string{`{"resource":"Patient"}`}}, `an inline view needs a "name"`},
		{"view twice", ExportInput{Server: "ehr", Views: []string{"a", `{"name":"a"}`}}, `view "a" is named twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.in.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRunName(t *testing.T) {
	for in, want := range map[string]string{
		"bulk-export-ehr-20261126T120000Z": "bulk-export-ehr-20261126T120000Z",
		"sched/../x y":                     "sched_.._x_y",
		"..":                               "run",
	} {
		if got := RunName(in); got != want {
			t.Errorf("RunName(%q) = %q, want %q", in, got, want)
		}
	}
}

// A 20,000-file manifest: every file is downloaded exactly once, in 40 child
// workflows of exactly 500 downloads and one RecordChunk each, so no run's
// history grows with the export. The events those activities cost are
// counted on a real server by testsuite/e2e TestHistoryStaysBoundedOnARealServer
// (about 4.4 events per file); the time-skipping environment keeps no history.
func (s *exportSuite) Test20000Files() {
	const files = 20000
	p := &activities.Plan{TransactionTime: "2026-11-26T00:00:00Z", Files: files,
		Groups: []activities.Group{{Kind: activities.KindOutput, Type: "Observation", First: 0, Count: files}}}
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	var mu sync.Mutex
	perRun := map[string]int{}
	seen := make([]int, files)
	count := func(ctx context.Context) {
		info := activityInfo(ctx)
		mu.Lock()
		perRun[info]++
		mu.Unlock()
	}
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		count(ctx)
		mu.Lock()
		seen[in.Index]++
		mu.Unlock()
		return activities.FileResult{Index: in.Index, Kind: activities.KindOutput, Type: "Observation", Resources: 1, Bytes: 100, Attempt: 1}, nil
	})
	s.env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.RecordChunkInput) error {
		count(ctx)
		return nil
	})
	s.env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/x"}, nil).Once()
	s.env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal(files, r.Totals.Files)
	for i, n := range seen {
		if n != 1 {
			s.Failf("file downloaded the wrong number of times", "file %d: %d", i, n)
			break
		}
	}
	s.Len(perRun, files/500, "one child workflow per 500 files")
	for run, n := range perRun {
		s.Equal(501, n, "run %s: 500 downloads and one RecordChunk", run)
	}
}

func activityInfo(ctx context.Context) string {
	info := activity.GetInfo(ctx)
	return info.WorkflowExecution.ID + "/" + info.WorkflowExecution.RunID
}

// setConcurrency changes the window of the chunk that is running: the first
// eight downloads wait an hour (Retry-After), the update lands meanwhile, and
// every download after it runs at most two at a time. Each download waits
// (real time) for the others of its window, so the mock sees the window
// (with the Update a no-op it sees eight).
func (s *exportSuite) TestSetConcurrencyUpdate() {
	p := plan(map[string]int{"Observation": 40}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	var mu sync.Mutex
	active, firstWave, peakBefore, peakAfter, startedAfter := 0, 0, 0, 0, 0
	updated := false
	// overlap holds a download until n run at once (or a while passed), so
	// the downloads of one window overlap and the mock sees the window.
	overlap := func(n int, limit time.Duration) {
		for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(time.Millisecond) {
			mu.Lock()
			enough := active >= n
			mu.Unlock()
			if enough {
				return
			}
		}
	}
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		attempt := activity.GetInfo(ctx).Attempt
		mu.Lock()
		active++
		if attempt == 1 && updated {
			peakAfter = max(peakAfter, active)
			startedAfter++
		}
		if attempt == 1 && !updated {
			firstWave++
			peakBefore = max(peakBefore, active)
		}
		mu.Unlock()
		defer func() { mu.Lock(); active--; mu.Unlock() }()
		// The first window waits an hour (Retry-After), so the update lands mid-run.
		if attempt == 1 && in.Index < 8 {
			overlap(8, time.Second)
			return activities.FileResult{}, temporal.NewApplicationErrorWithOptions("429", activities.ErrRateLimited, temporal.ApplicationErrorOptions{NextRetryDelay: time.Hour})
		}
		if attempt == 1 {
			// Held a while, so that downloads started together overlap:
			// two with the update, eight were it a no-op.
			overlap(2, 200*time.Millisecond)
			time.Sleep(30 * time.Millisecond)
		}
		return fileFor(p)(ctx, in)
	})
	s.expectHappyEnd(p)
	s.env.RegisterDelayedCallback(func() {
		s.env.UpdateWorkflow(SetConcurrencyUpdate, "bad", &testsuite.TestUpdateCallback{
			OnReject:   func(err error) { s.Contains(err.Error(), "use 1 to 256") },
			OnAccept:   func() { s.Fail("0 must be rejected") },
			OnComplete: func(any, error) {},
		}, 0)
		s.env.UpdateWorkflow(SetConcurrencyUpdate, "good", &testsuite.TestUpdateCallback{
			OnReject:   func(err error) { s.Fail("rejected", err) },
			OnAccept:   func() {},
			OnComplete: func(v any, err error) { s.NoError(err); s.Equal(8, v) },
		}, 2)
		mu.Lock()
		updated = true
		mu.Unlock()
	}, 30*time.Minute)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	s.Equal(int64(400), s.result().Totals.ResourceCount())
	s.Equal(8, firstWave, "the default window starts 8 downloads")
	s.Equal(8, peakBefore, "before the update 8 downloads run at once")
	s.Equal(32, startedAfter, "the other 32 files start after the update")
	s.Equal(2, peakAfter, "after setConcurrency 2 the running chunk downloads 2 files at a time")
}

// A long wait continues as new before history grows: the next run carries
// the status URL and the poll count, so it polls the same job and never
// kicks off a second export.
func (s *exportSuite) TestLongWaitContinuesAsNewWithTheSameJob() {
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Progress: "10%", Wait: time.Hour}, nil).Once()
	s.env.SetContinueAsNewSuggested(true)
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	err := s.env.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	s.Require().True(errors.As(err, &can), "want continue-as-new, got %v", err)
	var next ExportInput
	s.Require().NoError(converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	s.Require().NotNil(next.Resume)
	s.Equal("https://ehr.example/status/1", next.Resume.StatusURL)
	s.Equal(1, next.Resume.Polls)
	s.Equal("10%", next.Resume.Progress)
	s.Equal(input.Types, next.Types, "the request travels unchanged")
}

func (s *exportSuite) TestResumedRunPollsTheSameJob() {
	p := plan(map[string]int{"Patient": 1}, 0, 0)
	in := input
	in.Resume = &ResumeState{StatusURL: "https://ehr.example/status/1", Polls: 500, Run: "r1"}
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.MatchedBy(func(pi activities.PollInput) bool {
		return pi.StatusURL == "https://ehr.example/status/1" && pi.Run == "r1"
	})).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(fileFor(p))
	s.expectHappyEnd(p)
	s.env.ExecuteWorkflow(BulkExportWorkflow, in)
	r := s.result()
	s.Equal(501, r.Polls)
	s.env.AssertNotCalled(s.T(), "Kickoff", mock.Anything, mock.Anything)
}

// Continue-as-new happens where the workflow's history grows: while polling
// and between chunks, when the server suggests it or when the run's own
// event threshold (5,000 by default) is passed, and only then. Each case
// runs with the history length the server would report.
func TestContinueAsNewThreshold(t *testing.T) {
	for _, tc := range []struct {
		name      string
		length    int  // current history length the server reports
		suggested bool // the server's ContinueAsNewSuggested
		polls     int  // 202s before the manifest
		files     int  // files of the plan, one per chunk
		parallel  int  // options.parallelChunks (0: one chunk at a time)
		// want: nil = the run completes; else the state the next run gets
		want *ResumeState
	}{
		{name: "polling/threshold", length: 6000, polls: 3, files: 1,
			want: &ResumeState{StatusURL: "https://ehr.example/status/1", Polls: 1}},
		{name: "polling/suggested", length: 10, suggested: true, polls: 3, files: 1,
			want: &ResumeState{StatusURL: "https://ehr.example/status/1", Polls: 1}},
		{name: "polling/below-threshold", length: 4000, polls: 3, files: 1},
		{name: "between-chunks/threshold", length: 6000, files: 3,
			want: &ResumeState{StatusURL: "https://ehr.example/status/1", Polls: 1, NextChunk: 1}},
		{name: "between-chunks/suggested", length: 10, suggested: true, files: 3,
			want: &ResumeState{StatusURL: "https://ehr.example/status/1", Polls: 1, NextChunk: 1}},
		{name: "between-chunks/below-threshold", length: 4000, files: 3},
		// Two chunks in flight when the history is found long: no third
		// starts, and both finish before the run continues as new.
		{name: "mid-window/threshold", length: 6000, files: 5, parallel: 2,
			want: &ResumeState{StatusURL: "https://ehr.example/status/1", Polls: 1, NextChunk: 2}},
		{name: "mid-window/suggested", length: 10, suggested: true, files: 5, parallel: 3,
			want: &ResumeState{StatusURL: "https://ehr.example/status/1", Polls: 1, NextChunk: 3}},
		{name: "mid-window/below-threshold", length: 4000, files: 5, parallel: 2},
		{name: "after-the-last-chunk-commits", length: 6000, files: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ts testsuite.WorkflowTestSuite
			env := ts.NewTestWorkflowEnvironment()
			env.RegisterWorkflow(BulkExportWorkflow)
			env.RegisterWorkflow(DownloadChunkWorkflow)
			env.RegisterActivity(&activities.Activities{})
			preflightPasses(env)
			env.SetCurrentHistoryLength(tc.length)
			env.SetContinueAsNewSuggested(tc.suggested)
			p := plan(map[string]int{"Observation": tc.files}, 0, 0)
			env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
			polls := 0
			env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(context.Context, activities.PollInput) (activities.PollResult, error) {
				polls++
				if polls <= tc.polls {
					return activities.PollResult{Progress: "busy", Wait: time.Hour}, nil
				}
				return activities.PollResult{Done: true, Plan: p}, nil
			})
			var downloads atomic.Int32
			env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
				downloads.Add(1)
				return fileFor(p)(ctx, in)
			})
			env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
			env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(activities.CommitResult{Location: "/out/x"}, nil)
			env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil)
			in := input
			in.Options.FilesPerChunk = 1
			in.Options.ParallelChunks = max(1, tc.parallel)
			env.ExecuteWorkflow(BulkExportWorkflow, in)
			require.True(t, env.IsWorkflowCompleted())
			err := env.GetWorkflowError()
			if tc.want == nil {
				require.NoError(t, err, "the run must go on without continue-as-new")
				var r ExportResult
				require.NoError(t, env.GetWorkflowResult(&r))
				require.Equal(t, "committed", r.Status)
				require.Equal(t, tc.files, r.Totals.Files)
				require.Equal(t, tc.polls+1, r.Polls)
				return
			}
			var can *workflow.ContinueAsNewError
			require.True(t, errors.As(err, &can), "want continue-as-new, got %v", err)
			require.Equal(t, "BulkExportWorkflow", can.WorkflowType.Name)
			var next ExportInput
			require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
			r := next.Resume
			require.NotNil(t, r)
			require.Equal(t, tc.want.StatusURL, r.StatusURL, "the next run polls the same job, never a second kick-off")
			require.Equal(t, tc.want.Polls, r.Polls)
			require.Equal(t, tc.want.NextChunk, r.NextChunk)
			require.NotEmpty(t, r.Run)
			require.Equal(t, input.Types, next.Types, "the request travels unchanged")
			if tc.want.NextChunk > 0 {
				require.NotNil(t, r.Plan, "the plan travels to the next run")
				require.Equal(t, tc.files, r.Plan.Files)
				require.Equal(t, tc.want.NextChunk, r.Totals.Files, "the finished chunks' totals travel")
				require.EqualValues(t, tc.want.NextChunk, downloads.Load(), "the chunks in flight downloaded before continuing, and no more")
				require.Empty(t, r.ChunksDone, "every chunk started had finished")
			} else {
				require.Nil(t, r.Plan)
				require.Zero(t, downloads.Load())
				require.Equal(t, "busy", r.Progress)
			}
		})
	}
}

// The run after a continue-as-new between chunks downloads only the chunks
// left and adds their totals to those it was handed.
func (s *exportSuite) TestResumedRunDownloadsOnlyTheRemainingChunks() {
	p := plan(map[string]int{"Observation": 3}, 0, 0)
	in := input
	in.Options.FilesPerChunk = 1
	in.Resume = &ResumeState{StatusURL: "https://ehr.example/status/1", Polls: 4, Run: "r1", Plan: p, NextChunk: 1,
		Totals: Totals{Files: 1, Bytes: 1000, Resources: map[string]int64{"Observation": 10}}}
	var mu sync.Mutex
	var indices []int
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, di activities.DownloadInput) (activities.FileResult, error) {
		mu.Lock()
		indices = append(indices, di.Index)
		mu.Unlock()
		return fileFor(p)(ctx, di)
	})
	s.expectHappyEnd(p)
	s.env.ExecuteWorkflow(BulkExportWorkflow, in)
	r := s.result()
	s.ElementsMatch([]int{1, 2}, indices, "chunk 0 was done by the previous run")
	s.Equal(3, r.Totals.Files)
	s.Equal(int64(30), r.Totals.ResourceCount())
	s.Equal(4, r.Polls)
	s.env.AssertNotCalled(s.T(), "Kickoff", mock.Anything, mock.Anything)
	s.env.AssertNotCalled(s.T(), "PollStatus", mock.Anything, mock.Anything)
}

// Data the request did not ask for is flagged in the result: a type outside
// _type, and resources without the SUBSETTED tag although _elements was sent.
func (s *exportSuite) TestDataMinimisationWarnings() {
	p := plan(map[string]int{"Patient": 1}, 0, 0)
	p.Groups = append(p.Groups, activities.Group{Kind: activities.KindOutput, Type: "Condition", First: p.Files, Count: 1})
	p.Files++
	in := input
	in.Elements = []string{"status"}
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, di activities.DownloadInput) (activities.FileResult, error) {
		r, err := fileFor(p)(ctx, di)
		r.Unsubsetted = 4
		return r, err
	})
	s.expectHappyEnd(p)
	s.env.ExecuteWorkflow(BulkExportWorkflow, in)
	r := s.result()
	s.Equal(int64(8), r.Totals.Unsubsetted)
	w := strings.Join(r.Warnings, "\n")
	s.Contains(w, "resource types that were not requested (_type): Condition")
	s.Contains(w, "8 resources lack the SUBSETTED tag although _elements was sent")
	s.NotContains(w, "Patient", "Patient was requested")
}

// A file link expires, and the manifest fetched again for fresh links lists
// other files: that is another job (BD3 L485), so the export is run again
// from a new kick-off instead of mixing files of two jobs.
func (s *exportSuite) TestRefetchedManifestThatDiffersRestarts() {
	first := plan(map[string]int{"Observation": 3}, 0, 0)
	other := plan(map[string]int{"Observation": 4}, 0, 0)
	var kicks atomic.Int32
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(func(context.Context, activities.KickoffInput) (activities.KickoffResult, error) {
		return activities.KickoffResult{StatusURL: fmt.Sprintf("https://ehr.example/status/%d", kicks.Add(1))}, nil
	})
	var mu sync.Mutex
	var polls []string
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PollInput) (activities.PollResult, error) {
		mu.Lock()
		polls = append(polls, fmt.Sprintf("%s v%d", in.StatusURL, in.PlanVersion))
		mu.Unlock()
		if in.StatusURL == "https://ehr.example/status/1" && in.PlanVersion == 0 {
			return activities.PollResult{Done: true, Plan: first}, nil
		}
		return activities.PollResult{Done: true, Plan: other}, nil
	})
	var downloads []string
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		mu.Lock()
		downloads = append(downloads, fmt.Sprintf("%d v%d", in.Index, in.PlanVersion))
		n := kicks.Load()
		mu.Unlock()
		if n == 1 && in.Index == 1 {
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("410 Gone", activities.ErrFileGone, nil)
		}
		return fileFor(other)(ctx, in)
	})
	s.env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	s.env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(nil)
	s.env.OnActivity(a.Commit, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CommitInput) (activities.CommitResult, error) {
		s.Equal(4, in.Plan.Files, "the commit lists the new job's files")
		return activities.CommitResult{Location: "/out/x"}, nil
	}).Once()
	s.env.OnActivity(a.DeleteJob, mock.Anything, mock.MatchedBy(func(in activities.DeleteJobInput) bool {
		return in.StatusURL == "https://ehr.example/status/2"
	})).Return(nil).Once()
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	r := s.result()
	s.Equal(1, r.Restarts)
	s.EqualValues(2, kicks.Load(), "a second kick-off")
	s.Equal([]string{"https://ehr.example/status/1 v0", "https://ehr.example/status/1 v1", "https://ehr.example/status/2 v0"}, polls)
	s.Equal(4, r.Totals.Files)
	s.Equal(int64(40), r.Totals.ResourceCount(), "only the new job's files count")
	s.Contains(strings.Join(r.Warnings, "\n"), "the re-fetched manifest lists different files")
}

// When one file of a chunk fails for good, the chunk's other downloads are
// cancelled at once (the run cannot commit) instead of running to their end.
func (s *exportSuite) TestFailedFileCancelsTheChunksOtherDownloads() {
	p := plan(map[string]int{"Observation": 8}, 0, 0)
	s.env.OnActivity(a.Kickoff, mock.Anything, mock.Anything).Return(activities.KickoffResult{StatusURL: "https://ehr.example/status/1"}, nil).Once()
	s.env.OnActivity(a.PollStatus, mock.Anything, mock.Anything).Return(activities.PollResult{Done: true, Plan: p}, nil).Once()
	release := make(chan struct{})
	defer close(release)
	var started atomic.Int32
	s.env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		if in.Index == 0 {
			// Let the other seven start first.
			for started.Load() < 7 {
				time.Sleep(time.Millisecond)
			}
			return activities.FileResult{}, temporal.NewNonRetryableApplicationError("Observation-0001.ndjson line 3: not a JSON object", activities.ErrInvalidContent, nil)
		}
		started.Add(1)
		select { // a long download: ends when cancelled, or after 2 s
		case <-ctx.Done():
		case <-release:
		case <-time.After(2 * time.Second):
		}
		return fileFor(p)(ctx, in)
	})
	var mu sync.Mutex
	var cancelled []string
	s.env.SetOnActivityCanceledListener(func(info *activity.Info) {
		mu.Lock()
		defer mu.Unlock()
		cancelled = append(cancelled, info.ActivityType.Name)
	})
	s.env.OnActivity(a.DeleteJob, mock.Anything, mock.Anything).Return(nil).Once()
	s.env.OnActivity(a.Abort, mock.Anything, mock.Anything).Return(nil).Once()
	s.env.ExecuteWorkflow(BulkExportWorkflow, input)
	err := s.env.GetWorkflowError()
	s.Require().Error(err)
	s.Contains(err.Error(), "Observation-0001.ndjson line 3")
	mu.Lock()
	s.Equal([]string{"DownloadFile", "DownloadFile", "DownloadFile", "DownloadFile", "DownloadFile", "DownloadFile", "DownloadFile"}, cancelled,
		"the seven downloads running when file 1 failed are cancelled")
	mu.Unlock()
	s.env.AssertNotCalled(s.T(), "RecordChunk", mock.Anything, mock.Anything)
	s.env.AssertNotCalled(s.T(), "Commit", mock.Anything, mock.Anything)
}

// Issue 13 §5: a worst-case 500-file chunk — every file of another
// resource type, deleted files naming every type, error files with every
// severity, lake output whose objects are staged by reference (see
// activities.TestWorstCasePayloadsStaySmall for DownloadFile's side) —
// sends RecordChunk an input and its parent a result far below Temporal's
// 2 MB payload limit.
func TestWorstCaseChunkPayloads(t *testing.T) {
	const files, budget = 500, 512 << 10
	var ts testsuite.WorkflowTestSuite
	env := ts.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(DownloadChunkWorkflow)
	env.RegisterActivity(&activities.Activities{})
	env.SetTestTimeout(time.Minute) // a payload over budget is slow to encode: fail on size, not time
	types := make([]string, 150)    // about as many as FHIR R4 has
	for i := range types {
		types[i] = fmt.Sprintf("ResourceType%03d", i)
	}
	allTypes := map[string]int64{}
	for _, typ := range types {
		allTypes[typ] = 1_000_000
	}
	env.OnActivity(a.DownloadFile, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.DownloadInput) (activities.FileResult, error) {
		typ := types[in.Index%len(types)]
		r := activities.FileResult{Index: in.Index, Kind: activities.KindOutput, Type: typ, Resources: 1_000_000, Bytes: 1 << 40, Attempt: 10,
			Path:        fmt.Sprintf("%s/%s-%04d.ndjson", typ, typ, in.Index),
			SHA256:      strings.Repeat("f", 64),
			Unsubsetted: 1_000_000,
			Record:      fmt.Sprintf(".work/files/%06d-0195d2a4-7c1e-7b3a-9f00-123456789abc-10.json", in.Index)}
		switch in.Index % 10 {
		case 1:
			r.Kind, r.Type, r.Deleted = activities.KindDeleted, "Bundle", allTypes
		case 2:
			r.Kind, r.Type, r.Severity = activities.KindError, "OperationOutcome", map[string]int64{"fatal": 9, "error": 9, "warning": 9, "information": 9}
		}
		return r, nil
	})
	var recordSize int
	env.OnActivity(a.RecordChunk, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.RecordChunkInput) error {
		p, err := converter.GetDefaultDataConverter().ToPayload(in)
		if err != nil {
			return err
		}
		recordSize = p.Size()
		if len(in.Files) != files {
			return fmt.Errorf("%d files recorded", len(in.Files))
		}
		return nil
	})
	env.ExecuteWorkflow(DownloadChunkWorkflow, ChunkInput{ServerRef: activities.ServerRef{BaseURL: "https://ehr.example/fhir"},
		Target: activities.Target{Run: "r"}, First: 0, Count: files, Concurrency: 64, MaxAttempts: 10})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res ChunkResult
	require.NoError(t, env.GetWorkflowResult(&res))
	require.Equal(t, files, res.Totals.Files)
	p, err := converter.GetDefaultDataConverter().ToPayload(res)
	require.NoError(t, err)
	t.Logf("RecordChunk input %d KiB, chunk result %d KiB", recordSize>>10, p.Size()>>10)
	require.NotZero(t, recordSize, "RecordChunk was not called")
	require.LessOrEqual(t, recordSize, budget, "RecordChunk's input for a worst-case chunk")
	require.LessOrEqual(t, p.Size(), budget, "the chunk's result")
}
