package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/internal/codec"
	"github.com/bulkflow/bulkflow/workflows"
)

// scheduleWorkflowType is the name workers register BulkExportWorkflow under
// (internal/bulkworker); schedules refer to workflows by name.
const scheduleWorkflowType = "BulkExportWorkflow"

// scheduleRPCTimeout bounds each call, so a stuck frontend fails the command
// instead of hanging a cron job that runs the CLI.
const scheduleRPCTimeout = 30 * time.Second

// allowAllNote is repeated in --help and docs/schedules.md: users reading
// Temporal's docs may expect runs to chain through the last completion result.
const allowAllNote = `Runs started with overlap allow-all get no last completion result from Temporal.
bulkflow does not use it: the watermark committed with the data in the output
location is the source of truth for the next incremental run's _since.`

var scheduleCommands = []struct {
	name, summary string
	run           func(args []string, stdout, stderr io.Writer) int
}{
	{"create", "create a schedule that runs an export (incremental by default)", runScheduleCreate},
	{"list", "list bulkflow schedules", runScheduleList},
	{"describe", "show a schedule: spec, policies, next and recent runs, input", runScheduleDescribe},
	{"pause", "pause a schedule", runSchedulePause},
	{"unpause", "unpause a schedule", runScheduleUnpause},
	{"trigger", "start a run of a schedule now", runScheduleTrigger},
	{"delete", "delete a schedule (runs already started go on)", runScheduleDelete},
}

func runSchedule(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		scheduleUsage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range scheduleCommands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "starter schedule: unknown subcommand %q\nRun 'starter schedule --help' for the subcommands.\n", args[0])
	return exitUsage
}

func scheduleUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: starter schedule <subcommand> [flags]\n\nRun exports on Temporal Schedules (see docs/schedules.md).\n\nSubcommands:")
	for _, c := range scheduleCommands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'starter schedule <subcommand> --help' for its flags.")
	fmt.Fprintln(w, "Exit codes: 0 success, 1 Temporal refused (e.g. no such schedule), 2 usage error, 4 Temporal unreachable.")
}

// overlapPolicies maps --overlap names to Temporal's policies.
var overlapPolicies = []struct {
	name   string
	policy enumspb.ScheduleOverlapPolicy
}{
	{"skip", enumspb.SCHEDULE_OVERLAP_POLICY_SKIP},
	{"buffer-one", enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ONE},
	{"buffer-all", enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ALL},
	{"cancel-other", enumspb.SCHEDULE_OVERLAP_POLICY_CANCEL_OTHER},
	{"terminate-other", enumspb.SCHEDULE_OVERLAP_POLICY_TERMINATE_OTHER},
	{"allow-all", enumspb.SCHEDULE_OVERLAP_POLICY_ALLOW_ALL},
}

const overlapNames = "skip, buffer-one, buffer-all, cancel-other, terminate-other or allow-all"

// parseOverlap also takes Temporal's spellings (BufferOne,
// SCHEDULE_OVERLAP_POLICY_BUFFER_ONE) so copy-paste from its docs works.
func parseOverlap(s string) (enumspb.ScheduleOverlapPolicy, error) {
	norm := func(s string) string {
		s = strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s))
		return strings.TrimPrefix(s, "scheduleoverlappolicy")
	}
	for _, o := range overlapPolicies {
		if norm(s) == norm(o.name) {
			return o.policy, nil
		}
	}
	return 0, fmt.Errorf("--overlap %q: use %s", s, overlapNames)
}

func overlapName(p enumspb.ScheduleOverlapPolicy) string {
	for _, o := range overlapPolicies {
		if o.policy == p {
			return o.name
		}
	}
	if p == enumspb.SCHEDULE_OVERLAP_POLICY_UNSPECIFIED {
		return "skip" // the server's default
	}
	return p.String()
}

// parseDuration is time.ParseDuration plus whole days ("7d"), the unit
// people write for schedules.
func parseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if d, err := strconv.Atoi(n); err == nil {
			return time.Duration(d) * 24 * time.Hour, nil
		}
	}
	return time.ParseDuration(s)
}

// parseEvery reads "24h" or "24h/2h" (every 24h, offset 2h): intervals count
// from the Unix epoch, so "24h" alone fires at 00:00 UTC.
func parseEvery(s string) (client.ScheduleIntervalSpec, error) {
	every, offset, hasOffset := strings.Cut(s, "/")
	var spec client.ScheduleIntervalSpec
	var err error
	if spec.Every, err = parseDuration(every); err != nil || spec.Every <= 0 {
		return spec, fmt.Errorf("--every %q: use a positive duration such as 1h, 24h or 7d, optionally with an offset: 24h/2h", s)
	}
	if hasOffset {
		if spec.Offset, err = parseDuration(offset); err != nil || spec.Offset < 0 || spec.Offset >= spec.Every {
			return spec, fmt.Errorf("--every %q: the offset after '/' must be a duration shorter than the interval, e.g. 24h/2h", s)
		}
	}
	return spec, nil
}

// checkCron catches typos before the server does, with a message that says
// what a cron expression looks like; the server still has the last word.
func checkCron(expr string) error {
	s := strings.TrimSpace(expr)
	if i := strings.Index(s, "#"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	if strings.HasPrefix(s, "CRON_TZ=") || strings.HasPrefix(s, "TZ=") {
		_, s, _ = strings.Cut(s, " ")
		s = strings.TrimSpace(s)
	}
	if strings.HasPrefix(s, "@") {
		return nil
	}
	if n := len(strings.Fields(s)); n < 5 || n > 7 {
		return fmt.Errorf(`--cron %q: give 5 fields (minute hour day-of-month month day-of-week), e.g. "0 2 * * *", or @daily, @hourly, @weekly`, expr)
	}
	return nil
}

const createSynopsis = `schedule create --id ID (--every DURATION | --cron "EXPR") (--fhir-url URL | --server NAME) [flags]

Creates a Temporal Schedule that starts BulkExportWorkflow. Each run's workflow
ID is the schedule ID plus the scheduled time; its output folder is named
after that ID.

  starter schedule create --id nightly-epic --every 24h/2h --server epic-prod --types Patient,Observation
  starter schedule create --id weekly-labs --cron "0 3 * * Sun" --time-zone America/Chicago \
      --fhir-url https://ehr.example.org/fhir --type-filter 'Observation?category=laboratory'

--incremental (default true) sets "incremental": true in the input: each run
takes _since from the watermark committed with the previous run's data;
--since seeds the first run. --incremental=false runs the same query each time.

Overlap skip (the default) never runs two exports of a schedule at once: some
EHRs allow one export per client. The catch-up window is how late a run missed
while Temporal was down may still start; later ones are skipped, which loses
no data for incremental runs (the next run starts from the watermark).

` + allowAllNote

// parseScheduleCreate maps flags to ScheduleOptions; code is exitOK with nil
// options after --help.
func parseScheduleCreate(args []string, stderr io.Writer) (*client.ScheduleOptions, temporalFlags, int) {
	fs := newFS("schedule create", stderr)
	tf := addTemporalFlags(fs)
	ef := addExportFlags(fs, true)
	id := fs.String("id", "", "schedule ID (required); also the prefix of each run's workflow ID")
	every := fs.String("every", "", "run every DURATION, e.g. 1h, 24h, 7d; 24h/2h adds an offset (intervals count from 00:00 UTC)")
	cron := fs.String("cron", "", `run at the times of a cron expression, e.g. "0 2 * * *" or @daily`)
	tz := fs.String("time-zone", "", "IANA time zone for --cron, e.g. America/New_York (default UTC)")
	overlap := fs.String("overlap", "skip", "when a run is due while the last one still runs: "+overlapNames)
	catchup := fs.String("catchup-window", "1h", "how late a run missed while Temporal was unavailable may still start (at least 10s)")
	pauseOnFailure := fs.Bool("pause-on-failure", false, "pause the schedule when a run fails, until starter schedule unpause")
	note := fs.String("note", "", "a note shown with the schedule")
	paused := fs.Bool("paused", false, "create the schedule paused")
	pos, err := parse(fs, args, createSynopsis)
	if err != nil {
		return nil, tf, scheduleUsageErr("create", err, stderr)
	}
	var errs []error
	if len(pos) > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q (flags only; the ID goes in --id)", pos[0]))
	}
	if strings.TrimSpace(*id) == "" {
		errs = append(errs, errors.New("give the schedule an --id, e.g. --id nightly-epic"))
	}
	var spec client.ScheduleSpec
	switch {
	case *every == "" && *cron == "":
		errs = append(errs, errors.New(`say when to run: --every 24h or --cron "0 2 * * *"`))
	case *every != "" && *cron != "":
		errs = append(errs, errors.New("give --every or --cron, not both"))
	case *every != "":
		iv, err := parseEvery(*every)
		if err != nil {
			errs = append(errs, err)
		}
		spec.Intervals = []client.ScheduleIntervalSpec{iv}
		if *tz != "" {
			errs = append(errs, errors.New("--time-zone goes with --cron (intervals count from the Unix epoch)"))
		}
	default:
		if err := checkCron(*cron); err != nil {
			errs = append(errs, err)
		}
		spec.CronExpressions = []string{strings.TrimSpace(*cron)}
		spec.TimeZoneName = *tz
	}
	policy, err := parseOverlap(*overlap)
	if err != nil {
		errs = append(errs, err)
	}
	cw, err := parseDuration(*catchup)
	if err != nil || cw < 10*time.Second {
		// Temporal raises shorter windows to 10s; refuse rather than surprise.
		errs = append(errs, fmt.Errorf("--catchup-window %q: use a duration of at least 10s, e.g. 1h or 1d", *catchup))
	}
	in := ef.input(fs)
	if err := ef.check(in); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		// One line per problem, so all of them can be fixed in one go.
		return nil, tf, usageError(stderr, "schedule create", err)
	}
	return &client.ScheduleOptions{
		ID:   *id,
		Spec: spec,
		Action: &client.ScheduleWorkflowAction{
			ID:            *id,
			Workflow:      scheduleWorkflowType,
			Args:          []any{in},
			TaskQueue:     *tf.taskQueue,
			StaticSummary: fmt.Sprintf("FHIR %s export from %s (schedule %s)", orSystem(in.Level), workflows.ServerLabel(in), *id),
		},
		Overlap:        policy,
		CatchupWindow:  cw,
		PauseOnFailure: *pauseOnFailure,
		Note:           *note,
		Paused:         *paused,
	}, tf, exitOK
}

func orSystem(level string) string {
	if level == "" {
		return "system"
	}
	return level
}

func scheduleUsageErr(sub string, err error, stderr io.Writer) int {
	return usageError(stderr, "schedule "+sub, err)
}

// scheduleErr reports a failed Temporal call with the exit code it deserves.
func scheduleErr(sub, id string, tf temporalFlags, err error, stderr io.Writer) int {
	var notFound *serviceerror.NotFound
	var invalid *serviceerror.InvalidArgument
	switch {
	case errors.As(err, &notFound):
		fmt.Fprintf(stderr, "starter schedule %s: no schedule %q in namespace %q\n", sub, id, *tf.namespace)
		return exitFailed
	case errors.Is(err, temporal.ErrScheduleAlreadyRunning):
		fmt.Fprintf(stderr, "starter schedule %s: schedule %q already exists; pick another --id or `starter schedule delete %s` first\n", sub, id, id)
		return exitFailed
	case errors.As(err, &invalid):
		fmt.Fprintf(stderr, "starter schedule %s: Temporal rejected it: %v\n", sub, err)
		return exitUsage
	}
	fmt.Fprintf(stderr, "starter schedule %s: %v\n", sub, err)
	return exitFailed
}

func runScheduleCreate(args []string, stdout, stderr io.Writer) int {
	opts, tf, code := parseScheduleCreate(args, stderr)
	if opts == nil || parseOnly {
		return code
	}
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scheduleRPCTimeout)
	defer cancel()
	h, err := c.ScheduleClient().Create(ctx, *opts)
	if err != nil {
		return scheduleErr("create", opts.ID, tf, err, stderr)
	}
	fmt.Fprintf(stdout, "Created schedule %s\n", h.GetID())
	d, err := h.Describe(ctx)
	if err != nil {
		// Created all the same; say so rather than fail.
		fmt.Fprintf(stdout, "  Spec:        %s\n  (describe failed: %v)\n", specWords(&opts.Spec), err)
	} else {
		fmt.Fprintf(stdout, "  Spec:        %s\n", specWords(d.Schedule.Spec))
		if d.Schedule.Policy != nil {
			fmt.Fprintf(stdout, "  Overlap:     %s\n", overlapName(d.Schedule.Policy.Overlap))
		}
		paused := d.Schedule.State != nil && d.Schedule.State.Paused
		if paused {
			fmt.Fprintf(stdout, "  Paused:      yes%s\n", noteSuffix(d.Schedule.State.Note))
		}
		printNextRuns(stdout, d.Info.NextActionTimes, 3, paused)
	}
	fmt.Fprintf(stdout, "  Temporal UI: %s\n", scheduleLink(tf, h.GetID()))
	return exitOK
}

func noteSuffix(note string) string {
	if note == "" {
		return ""
	}
	return fmt.Sprintf(" (%s)", note)
}

func printNextRuns(w io.Writer, times []time.Time, n int, paused bool) {
	if len(times) == 0 {
		fmt.Fprintln(w, "  Next runs:   none scheduled")
		return
	}
	label := "Next runs:"
	if paused {
		// Temporal lists the times of a paused schedule all the same.
		fmt.Fprintln(w, "  (paused: no run starts until unpaused; these are the times after that)")
	}
	for i, t := range times {
		if i == n {
			break
		}
		fmt.Fprintf(w, "  %-12s %s\n", label, fmtTime(t))
		label = ""
	}
}

func fmtTime(t time.Time) string {
	s := t.UTC().Format(time.RFC3339)
	if d := time.Until(t).Round(time.Minute); d > 0 {
		s += " (in " + humanDuration(d) + ")"
	} else if d < 0 {
		s += " (" + humanDuration(-d) + " ago)"
	}
	return s
}

// humanDuration writes 3d4h rather than 76h0m.
func humanDuration(d time.Duration) string {
	if d < 48*time.Hour {
		return shortDuration(d)
	}
	days, rest := d/(24*time.Hour), (d % (24 * time.Hour)).Round(time.Hour)
	if rest == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%dh", days, rest/time.Hour)
}

func scheduleLink(tf temporalFlags, id string) string {
	return fmt.Sprintf("%s/namespaces/%s/schedules/%s", strings.TrimRight(*tf.uiURL, "/"), *tf.namespace, id)
}

// shortDuration writes 24h rather than 24h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// specWords says when a spec fires. Temporal turns cron expressions into
// calendars on the server, so described schedules show calendars.
func specWords(s *client.ScheduleSpec) string {
	if s == nil {
		return "never"
	}
	var parts []string
	for _, iv := range s.Intervals {
		p := "every " + shortDuration(iv.Every)
		if iv.Offset != 0 {
			p += ", offset " + shortDuration(iv.Offset)
		}
		parts = append(parts, p)
	}
	tz := s.TimeZoneName
	if tz == "" {
		tz = "UTC"
	}
	for _, cal := range s.Calendars {
		parts = append(parts, calendarWords(cal, tz))
	}
	for _, cr := range s.CronExpressions {
		parts = append(parts, fmt.Sprintf("cron %q (%s)", cr, tz))
	}
	if len(parts) == 0 {
		return "never (no times: trigger only)"
	}
	return strings.Join(parts, "; ")
}

var weekdays = []string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}

// rangesText renders ranges cron-style; "*" when they cover lo..hi.
func rangesText(rs []client.ScheduleRange, lo, hi int, def string, names []string) string {
	if len(rs) == 0 {
		return def
	}
	name := func(v int) string {
		if names != nil && v >= 0 && v < len(names) {
			return names[v]
		}
		return strconv.Itoa(v)
	}
	var out []string
	for _, r := range rs {
		end, step := r.End, r.Step
		if end < r.Start {
			end = r.Start
		}
		if step <= 0 {
			step = 1
		}
		switch {
		case r.Start <= lo && end >= hi && step == 1:
			return "*"
		case end == r.Start:
			out = append(out, name(r.Start))
		case step == 1:
			out = append(out, name(r.Start)+"-"+name(end))
		default:
			out = append(out, fmt.Sprintf("%s-%s/%d", name(r.Start), name(end), step))
		}
	}
	return strings.Join(out, ",")
}

func single(rs []client.ScheduleRange) (int, bool) {
	if len(rs) == 0 {
		return 0, true // the field's default: 0 for second, minute, hour
	}
	if len(rs) == 1 && rs[0].End <= rs[0].Start {
		return rs[0].Start, true
	}
	return 0, false
}

func calendarWords(c client.ScheduleCalendarSpec, tz string) string {
	dom := rangesText(c.DayOfMonth, 1, 31, "*", nil)
	month := rangesText(c.Month, 1, 12, "*", nil)
	dow := rangesText(c.DayOfWeek, 0, 6, "*", weekdays)
	year := rangesText(c.Year, 0, 1<<30, "*", nil)
	sec, ok1 := single(c.Second)
	min, ok2 := single(c.Minute)
	hour, ok3 := single(c.Hour)
	var s string
	if ok1 && ok2 && ok3 && month == "*" && year == "*" {
		at := fmt.Sprintf("%02d:%02d", hour, min)
		if sec != 0 {
			at += fmt.Sprintf(":%02d", sec)
		}
		switch {
		case dom == "*" && dow == "*":
			s = fmt.Sprintf("daily at %s %s", at, tz)
		case dom == "*":
			s = fmt.Sprintf("at %s %s on %s", at, tz, dow)
		case dow == "*":
			s = fmt.Sprintf("at %s %s on day %s of the month", at, tz, dom)
		}
	}
	if s == "" {
		s = fmt.Sprintf("calendar sec=%s min=%s hour=%s day=%s month=%s weekday=%s (%s)",
			rangesText(c.Second, 0, 59, "0", nil), rangesText(c.Minute, 0, 59, "0", nil), rangesText(c.Hour, 0, 23, "0", nil),
			dom, month, dow, tz)
		if year != "*" {
			s += " year=" + year
		}
	}
	if c.Comment != "" {
		s += " # " + c.Comment
	}
	return s
}

// parseWithID parses flags before or after the one schedule ID, so both
// `describe --json ID` and `describe ID --json` work.
func parseWithID(fs *flag.FlagSet, args []string, synopsis string) (string, error) {
	pos, err := parse(fs, args, synopsis)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 || pos[0] == "" {
		return "", errors.New("give exactly one schedule ID")
	}
	return pos[0], nil
}

// actionView is one run a schedule started.
type actionView struct {
	ScheduledAt time.Time `json:"scheduledAt"`
	StartedAt   time.Time `json:"startedAt"`
	WorkflowID  string    `json:"workflowId,omitempty"`
	RunID       string    `json:"runId,omitempty"`
	// Status is the workflow's: Running, Completed, Failed, ...
	Status string `json:"status,omitempty"`
}

func actionViews(ctx context.Context, c client.Client, rs []client.ScheduleActionResult) []actionView {
	out := make([]actionView, 0, len(rs))
	for _, r := range rs {
		a := actionView{ScheduledAt: r.ScheduleTime.UTC(), StartedAt: r.ActualTime.UTC()}
		if wf := r.StartWorkflowResult; wf != nil {
			a.WorkflowID, a.RunID = wf.WorkflowID, wf.FirstExecutionRunID
			a.Status = workflowStatus(ctx, c, wf.WorkflowID, wf.FirstExecutionRunID)
		}
		out = append(out, a)
	}
	return out
}

func workflowStatus(ctx context.Context, c client.Client, id, runID string) string {
	d, err := c.DescribeWorkflowExecution(ctx, id, runID)
	if err != nil {
		return "unknown"
	}
	return d.GetWorkflowExecutionInfo().GetStatus().String()
}

// scheduleView is what describe --json prints.
type scheduleView struct {
	ID             string          `json:"id"`
	Spec           string          `json:"spec"`
	TimeZone       string          `json:"timeZone,omitempty"`
	Overlap        string          `json:"overlap"`
	CatchupWindow  string          `json:"catchupWindow"`
	PauseOnFailure bool            `json:"pauseOnFailure"`
	Paused         bool            `json:"paused"`
	Note           string          `json:"note,omitempty"`
	WorkflowType   string          `json:"workflowType,omitempty"`
	WorkflowID     string          `json:"workflowId,omitempty"`
	TaskQueue      string          `json:"taskQueue,omitempty"`
	Input          json.RawMessage `json:"input,omitempty"`
	// Incremental runs: where the watermark stands, after the last run
	// that committed (its transactionTime), and that run.
	Incremental    bool         `json:"incremental"`
	Watermark      string       `json:"watermark,omitempty"`
	WatermarkFrom  string       `json:"watermarkFrom,omitempty"`
	NextRuns       []time.Time  `json:"nextRuns"`
	RecentActions  []actionView `json:"recentActions"`
	Running        []string     `json:"runningWorkflows,omitempty"`
	Actions        int          `json:"actions"`
	SkippedOverlap int          `json:"skippedOverlap"`
	MissedCatchup  int          `json:"missedCatchupWindow"`
	CreatedAt      time.Time    `json:"createdAt"`
	UI             string       `json:"ui"`
}

// payloadConverter decodes the action's input as the workers do: with the
// payload codec when one is configured.
func payloadConverter(tf temporalFlags) (converter.DataConverter, error) {
	cdc, err := codec.Load(*tf.codecKeyFile)
	if err != nil || cdc == nil {
		return converter.GetDefaultDataConverter(), err
	}
	return codec.DataConverter(cdc), nil
}

func describeView(ctx context.Context, c client.Client, tf temporalFlags, id string, d *client.ScheduleDescription) scheduleView {
	v := scheduleView{
		ID: id, Spec: specWords(d.Schedule.Spec), UI: scheduleLink(tf, id),
		NextRuns: []time.Time{}, CreatedAt: d.Info.CreatedAt.UTC(),
		Actions: d.Info.NumActions, SkippedOverlap: d.Info.NumActionsSkippedOverlap, MissedCatchup: d.Info.NumActionsMissedCatchupWindow,
	}
	if d.Schedule.Spec != nil {
		v.TimeZone = d.Schedule.Spec.TimeZoneName
	}
	if p := d.Schedule.Policy; p != nil {
		v.Overlap, v.CatchupWindow, v.PauseOnFailure = overlapName(p.Overlap), shortDuration(p.CatchupWindow), p.PauseOnFailure
	}
	if s := d.Schedule.State; s != nil {
		v.Paused, v.Note = s.Paused, s.Note
	}
	if a, ok := d.Schedule.Action.(*client.ScheduleWorkflowAction); ok {
		v.WorkflowID, v.TaskQueue = a.ID, a.TaskQueue
		if name, ok := a.Workflow.(string); ok {
			v.WorkflowType = name
		}
		if len(a.Args) > 0 {
			v.Input = decodeInput(tf, a.Args[0])
			var in struct {
				Incremental bool `json:"incremental"`
			}
			v.Incremental = json.Unmarshal(v.Input, &in) == nil && in.Incremental
		}
	}
	for _, t := range d.Info.NextActionTimes {
		v.NextRuns = append(v.NextRuns, t.UTC())
	}
	v.RecentActions = actionViews(ctx, c, d.Info.RecentActions)
	if v.Incremental {
		for i := len(v.RecentActions) - 1; i >= 0; i-- {
			a := v.RecentActions[i]
			if a.Status != "Completed" {
				continue
			}
			var res workflows.ExportResult
			if c.GetWorkflow(ctx, a.WorkflowID, a.RunID).Get(ctx, &res) == nil && res.TransactionTime != "" {
				v.Watermark, v.WatermarkFrom = res.TransactionTime, a.WorkflowID
			}
			break
		}
	}
	for _, r := range d.Info.RunningWorkflows {
		v.Running = append(v.Running, r.WorkflowID)
	}
	return v
}

// decodeInput returns the input as JSON, or a JSON string saying why not
// (e.g. encrypted and no key given), so describe still shows the rest.
func decodeInput(tf temporalFlags, arg any) json.RawMessage {
	p, ok := arg.(*commonpb.Payload)
	if !ok {
		b, _ := json.Marshal(arg)
		return b
	}
	dc, err := payloadConverter(tf)
	var raw json.RawMessage
	if err == nil {
		err = dc.FromPayload(p, &raw)
	}
	if err != nil || !json.Valid(raw) {
		b, _ := json.Marshal(fmt.Sprintf("<cannot decode the input: %v; encrypted inputs need --codec-key-file>", err))
		return b
	}
	return raw
}

func describeSynopsis(sub, extra string) string {
	return fmt.Sprintf("schedule %s [flags] SCHEDULE_ID%s", sub, extra)
}

func runScheduleDescribe(args []string, stdout, stderr io.Writer) int {
	fs := newFS("schedule describe", stderr)
	tf := addTemporalFlags(fs)
	asJSON := fs.Bool("json", false, "print machine-readable JSON")
	id, err := parseWithID(fs, args, describeSynopsis("describe", "\n\nShows the spec, overlap policy, catch-up window, paused state and note,\nthe next runs, recent runs with their workflow IDs and status, and the\nexport input as JSON."))
	if err != nil {
		return scheduleUsageErr("describe", err, stderr)
	}
	if parseOnly {
		return exitOK
	}
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scheduleRPCTimeout)
	defer cancel()
	d, err := c.ScheduleClient().GetHandle(ctx, id).Describe(ctx)
	if err != nil {
		return scheduleErr("describe", id, tf, err, stderr)
	}
	v := describeView(ctx, c, tf, id, d)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(v)
		return exitOK
	}
	printView(stdout, v)
	return exitOK
}

func printView(w io.Writer, v scheduleView) {
	yes := map[bool]string{true: "yes", false: "no"}
	fmt.Fprintf(w, "Schedule %s\n", v.ID)
	fmt.Fprintf(w, "  Spec:             %s\n", v.Spec)
	fmt.Fprintf(w, "  Overlap:          %s\n", v.Overlap)
	fmt.Fprintf(w, "  Catch-up window:  %s\n", v.CatchupWindow)
	fmt.Fprintf(w, "  Pause on failure: %s\n", yes[v.PauseOnFailure])
	fmt.Fprintf(w, "  Paused:           %s%s\n", yes[v.Paused], noteSuffix(v.Note))
	fmt.Fprintf(w, "  Workflow:         %s on task queue %s, workflow IDs %s-<scheduled time>\n", v.WorkflowType, v.TaskQueue, v.WorkflowID)
	fmt.Fprintf(w, "  Runs started:     %d (skipped for overlap: %d, missed the catch-up window: %d)\n", v.Actions, v.SkippedOverlap, v.MissedCatchup)
	switch {
	case v.Incremental && v.Watermark != "":
		fmt.Fprintf(w, "  Incremental:      yes; the watermark stands at %s (committed by %s): the next run exports what changed since\n", v.Watermark, v.WatermarkFrom)
	case v.Incremental:
		fmt.Fprintln(w, "  Incremental:      yes; no recent run committed: the next run starts from the watermark in the output location (or the input's since)")
	default:
		fmt.Fprintln(w, "  Incremental:      no; every run exports the same query")
	}
	for i, t := range v.NextRuns {
		if i == 3 {
			break
		}
		label := ""
		if i == 0 {
			label = "Next runs:"
		}
		fmt.Fprintf(w, "  %-17s %s\n", label, fmtTime(t))
	}
	if len(v.RecentActions) == 0 {
		fmt.Fprintln(w, "  Recent runs:      none")
	} else {
		fmt.Fprintln(w, "  Recent runs:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, a := range v.RecentActions {
			fmt.Fprintf(tw, "    %s\t%s\t%s\n", a.StartedAt.Format(time.RFC3339), a.WorkflowID, a.Status)
		}
		tw.Flush()
	}
	if len(v.Input) > 0 {
		var buf strings.Builder
		enc := json.NewEncoder(&buf)
		enc.SetIndent("    ", "  ")
		var x any
		if json.Unmarshal(v.Input, &x) == nil {
			enc.Encode(x)
		}
		fmt.Fprintf(w, "  Input:\n    %s", buf.String())
	}
	fmt.Fprintf(w, "  Temporal UI:      %s\n", v.UI)
}

// listView is one row of list --json.
type listView struct {
	ID           string      `json:"id"`
	Spec         string      `json:"spec"`
	Paused       bool        `json:"paused"`
	Note         string      `json:"note,omitempty"`
	WorkflowType string      `json:"workflowType"`
	NextRun      *time.Time  `json:"nextRun,omitempty"`
	LastAction   *actionView `json:"lastAction,omitempty"`
}

func runScheduleList(args []string, stdout, stderr io.Writer) int {
	fs := newFS("schedule list", stderr)
	tf := addTemporalFlags(fs)
	asJSON := fs.Bool("json", false, "print machine-readable JSON")
	all := fs.Bool("all", false, "list every schedule in the namespace, not only those running "+scheduleWorkflowType)
	pos, err := parse(fs, args, "schedule list [flags]\n\nThe list comes from Temporal's visibility store: a schedule created a moment\nago may take a second or two to appear.")
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q", pos[0])
	}
	if err != nil {
		return scheduleUsageErr("list", err, stderr)
	}
	if parseOnly {
		return exitOK
	}
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scheduleRPCTimeout)
	defer cancel()
	it, err := c.ScheduleClient().List(ctx, client.ScheduleListOptions{})
	if err != nil {
		return scheduleErr("list", "", tf, err, stderr)
	}
	rows := []listView{}
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return scheduleErr("list", "", tf, err, stderr)
		}
		if !*all && e.WorkflowType.Name != scheduleWorkflowType {
			continue
		}
		r := listView{ID: e.ID, Spec: specWords(e.Spec), Paused: e.Paused, Note: e.Note, WorkflowType: e.WorkflowType.Name}
		if len(e.NextActionTimes) > 0 {
			t := e.NextActionTimes[0].UTC()
			r.NextRun = &t
		}
		if n := len(e.RecentActions); n > 0 {
			r.LastAction = &actionViews(ctx, c, e.RecentActions[n-1:])[0]
		}
		rows = append(rows, r)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rows)
		return exitOK
	}
	if len(rows) == 0 {
		fmt.Fprintf(stdout, "No schedules in namespace %s.\n", *tf.namespace)
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSPEC\tPAUSED\tNEXT RUN\tLAST RUN")
	for _, r := range rows {
		next, last := "-", "-"
		if r.NextRun != nil && !r.Paused {
			next = r.NextRun.Format(time.RFC3339)
		}
		if a := r.LastAction; a != nil {
			last = fmt.Sprintf("%s %s (%s)", a.StartedAt.Format(time.RFC3339), a.Status, a.WorkflowID)
		}
		paused := "no"
		if r.Paused {
			paused = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, r.Spec, paused, next, last)
	}
	tw.Flush()
	return exitOK
}

// handleCommand runs the shape shared by pause, unpause, trigger and delete:
// flags, one ID, one call on the schedule's handle.
func handleCommand(sub, synopsis string, args []string, stdout, stderr io.Writer,
	addFlags func(fs *flag.FlagSet) func() error,
	do func(ctx context.Context, c client.Client, tf temporalFlags, h client.ScheduleHandle) (string, error)) int {
	fs := newFS("schedule "+sub, stderr)
	tf := addTemporalFlags(fs)
	var check func() error
	if addFlags != nil {
		check = addFlags(fs)
	}
	id, err := parseWithID(fs, args, synopsis)
	if err == nil && check != nil {
		err = check()
	}
	if err != nil {
		return scheduleUsageErr(sub, err, stderr)
	}
	if parseOnly {
		return exitOK
	}
	c, code := tf.dial(stderr)
	if code != exitOK {
		return code
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scheduleRPCTimeout)
	defer cancel()
	msg, err := do(ctx, c, tf, c.ScheduleClient().GetHandle(ctx, id))
	if err != nil {
		return scheduleErr(sub, id, tf, err, stderr)
	}
	fmt.Fprintln(stdout, msg)
	fmt.Fprintf(stdout, "  Temporal UI: %s\n", scheduleLink(tf, id))
	return exitOK
}

func runSchedulePause(args []string, stdout, stderr io.Writer) int {
	var note *string
	return handleCommand("pause", describeSynopsis("pause", "\n\nNo new runs start until unpaused; a run in progress goes on."), args, stdout, stderr,
		func(fs *flag.FlagSet) func() error {
			note = fs.String("note", "", "why it is paused (shown with the schedule)")
			return nil
		},
		func(ctx context.Context, c client.Client, tf temporalFlags, h client.ScheduleHandle) (string, error) {
			n := *note
			if n == "" {
				n = "paused with starter schedule pause"
			}
			return "Paused schedule " + h.GetID(), h.Pause(ctx, client.SchedulePauseOptions{Note: n})
		})
}

func runScheduleUnpause(args []string, stdout, stderr io.Writer) int {
	var note *string
	return handleCommand("unpause", describeSynopsis("unpause", "\n\nAlso resumes a schedule paused by --pause-on-failure. Runs missed while paused\nare not made up; an incremental run exports everything since the watermark."), args, stdout, stderr,
		func(fs *flag.FlagSet) func() error {
			note = fs.String("note", "", "a note replacing the pause note")
			return nil
		},
		func(ctx context.Context, c client.Client, tf temporalFlags, h client.ScheduleHandle) (string, error) {
			n := *note
			if n == "" {
				n = "unpaused with starter schedule unpause"
			}
			return "Unpaused schedule " + h.GetID(), h.Unpause(ctx, client.ScheduleUnpauseOptions{Note: n})
		})
}

// triggerWait is how long trigger waits to name the run it started: the
// schedule starts it asynchronously.
const triggerWait = 10 * time.Second

func runScheduleTrigger(args []string, stdout, stderr io.Writer) int {
	var overlap *string
	var policy enumspb.ScheduleOverlapPolicy
	synopsis := describeSynopsis("trigger", "\n\nStarts a run now, even when paused. With the schedule's overlap policy (skip by\ndefault) nothing starts while a run is in progress; --overlap overrides it for\nthis run.\n\n"+allowAllNote)
	return handleCommand("trigger", synopsis, args, stdout, stderr,
		func(fs *flag.FlagSet) func() error {
			overlap = fs.String("overlap", "", "overlap policy for this run: "+overlapNames+" (default: the schedule's)")
			return func() (err error) {
				if *overlap != "" {
					policy, err = parseOverlap(*overlap)
				}
				return err
			}
		},
		func(ctx context.Context, c client.Client, tf temporalFlags, h client.ScheduleHandle) (string, error) {
			before, err := h.Describe(ctx)
			if err != nil {
				return "", err
			}
			if err := h.Trigger(ctx, client.ScheduleTriggerOptions{Overlap: policy}); err != nil {
				return "", err
			}
			msg := "Triggered schedule " + h.GetID()
			effective := policy
			if effective == enumspb.SCHEDULE_OVERLAP_POLICY_UNSPECIFIED && before.Schedule.Policy != nil {
				effective = before.Schedule.Policy.Overlap
			}
			var running []string
			for _, r := range before.Info.RunningWorkflows {
				running = append(running, r.WorkflowID)
			}
			wait := triggerWait
			if len(running) > 0 && overlapName(effective) != "allow-all" {
				// Temporal will not start it now, and does not count a
				// skipped trigger: a short look is enough.
				wait = 2 * time.Second
			}
			for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
				d, err := h.Describe(ctx)
				if err != nil {
					break
				}
				if d.Info.NumActions > before.Info.NumActions && len(d.Info.RecentActions) > 0 {
					if wf := d.Info.RecentActions[len(d.Info.RecentActions)-1].StartWorkflowResult; wf != nil {
						return fmt.Sprintf("%s: started workflow %s\n  Workflow UI: %s", msg, wf.WorkflowID, tf.link(wf.WorkflowID)), nil
					}
					return msg, nil
				}
			}
			if len(running) == 0 {
				return msg + " (no run has shown yet; see `starter schedule describe " + h.GetID() + "`)", nil
			}
			switch name := overlapName(effective); name {
			case "skip":
				return fmt.Sprintf("%s: nothing started: %s is still running and the overlap policy is skip (--overlap overrides it for one trigger)", msg, strings.Join(running, ", ")), nil
			case "buffer-one", "buffer-all":
				return fmt.Sprintf("%s: buffered (overlap %s): it starts when %s ends", msg, name, strings.Join(running, ", ")), nil
			default:
				return fmt.Sprintf("%s (overlap %s; running: %s; see `starter schedule describe %s`)", msg, name, strings.Join(running, ", "), h.GetID()), nil
			}
		})
}

func runScheduleDelete(args []string, stdout, stderr io.Writer) int {
	return handleCommand("delete", describeSynopsis("delete", "\n\nRuns already started go on; their output stays. The watermark stays in the\noutput location, so a new schedule with the same input carries on from it."), args, stdout, stderr, nil,
		func(ctx context.Context, c client.Client, tf temporalFlags, h client.ScheduleHandle) (string, error) {
			return "Deleted schedule " + h.GetID(), h.Delete(ctx)
		})
}
