package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/bulkflow/bulkflow/internal/codec"
	"github.com/bulkflow/bulkflow/workflows"
)

func scheduleCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(append([]string{"schedule"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// actionInput is the JSON the workflow will receive.
func actionInput(t *testing.T, o *client.ScheduleOptions) map[string]any {
	t.Helper()
	a, ok := o.Action.(*client.ScheduleWorkflowAction)
	if !ok || len(a.Args) != 1 {
		t.Fatalf("action = %#v", o.Action)
	}
	b, err := json.Marshal(a.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestScheduleCreateOptions(t *testing.T) {
	t.Setenv("BULKFLOW_TASK_QUEUE", "")
	base := []string{"--id", "nightly", "--server", "epic-prod", "--types", "Patient,Observation"}
	cases := []struct {
		name  string
		args  []string
		check func(t *testing.T, o *client.ScheduleOptions, in map[string]any)
	}{
		{"every with defaults", []string{"--every", "24h"}, func(t *testing.T, o *client.ScheduleOptions, in map[string]any) {
			if len(o.Spec.Intervals) != 1 || o.Spec.Intervals[0] != (client.ScheduleIntervalSpec{Every: 24 * time.Hour}) || len(o.Spec.CronExpressions) != 0 {
				t.Errorf("spec = %+v", o.Spec)
			}
			if o.Overlap != enumspb.SCHEDULE_OVERLAP_POLICY_SKIP || o.CatchupWindow != time.Hour || o.PauseOnFailure || o.Paused || o.Note != "" {
				t.Errorf("policies = overlap %v catchup %v pauseOnFailure %v paused %v note %q", o.Overlap, o.CatchupWindow, o.PauseOnFailure, o.Paused, o.Note)
			}
			a := o.Action.(*client.ScheduleWorkflowAction)
			if o.ID != "nightly" || a.ID != "nightly" || a.Workflow != "BulkExportWorkflow" || a.TaskQueue != "fhir-bulk-export" {
				t.Errorf("id %q, action %+v", o.ID, a)
			}
			if in["incremental"] != true || in["server"] != "epic-prod" || len(in["types"].([]any)) != 2 {
				t.Errorf("input = %v", in)
			}
		}},
		{"every with offset in days", []string{"--every", "7d/26h"}, func(t *testing.T, o *client.ScheduleOptions, _ map[string]any) {
			if got := o.Spec.Intervals[0]; got.Every != 7*24*time.Hour || got.Offset != 26*time.Hour {
				t.Errorf("interval = %+v", got)
			}
		}},
		{"cron with time zone", []string{"--cron", " 0 2 * * Mon-Fri ", "--time-zone", "America/Chicago"}, func(t *testing.T, o *client.ScheduleOptions, _ map[string]any) {
			if len(o.Spec.CronExpressions) != 1 || o.Spec.CronExpressions[0] != "0 2 * * Mon-Fri" || o.Spec.TimeZoneName != "America/Chicago" || len(o.Spec.Intervals) != 0 {
				t.Errorf("spec = %+v", o.Spec)
			}
		}},
		{"cron shorthand", []string{"--cron", "@daily"}, func(t *testing.T, o *client.ScheduleOptions, _ map[string]any) {
			if o.Spec.CronExpressions[0] != "@daily" {
				t.Errorf("spec = %+v", o.Spec)
			}
		}},
		{"overlap buffer-one", []string{"--every", "1h", "--overlap", "buffer-one"}, overlapIs(enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ONE)},
		{"overlap buffer-all", []string{"--every", "1h", "--overlap", "buffer-all"}, overlapIs(enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ALL)},
		{"overlap cancel-other", []string{"--every", "1h", "--overlap", "cancel-other"}, overlapIs(enumspb.SCHEDULE_OVERLAP_POLICY_CANCEL_OTHER)},
		{"overlap terminate-other", []string{"--every", "1h", "--overlap", "terminate-other"}, overlapIs(enumspb.SCHEDULE_OVERLAP_POLICY_TERMINATE_OTHER)},
		{"overlap allow-all", []string{"--every", "1h", "--overlap", "allow-all"}, overlapIs(enumspb.SCHEDULE_OVERLAP_POLICY_ALLOW_ALL)},
		{"overlap in Temporal's spelling", []string{"--every", "1h", "--overlap", "BufferOne"}, overlapIs(enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ONE)},
		{"catch-up, pause on failure, note, paused", []string{"--every", "1h", "--catchup-window", "2d", "--pause-on-failure", "--note", "go-live Monday", "--paused"},
			func(t *testing.T, o *client.ScheduleOptions, _ map[string]any) {
				if o.CatchupWindow != 48*time.Hour || !o.PauseOnFailure || o.Note != "go-live Monday" || !o.Paused {
					t.Errorf("catchup %v pauseOnFailure %v note %q paused %v", o.CatchupWindow, o.PauseOnFailure, o.Note, o.Paused)
				}
			}},
		{"not incremental, since seeds, export flags", []string{"--every", "1h", "--incremental=false", "--since", "2024-01-01T00:00:00Z",
			"--level", "group", "--group", "g1", "--elements", "id,meta", "--type-filter", "Observation?category=laboratory,vital-signs",
			"--concurrency", "4", "--keep-job", "--task-queue", "q2"},
			func(t *testing.T, o *client.ScheduleOptions, in map[string]any) {
				if _, ok := in["incremental"]; ok {
					t.Errorf("incremental set: %v", in)
				}
				opts, _ := in["options"].(map[string]any)
				if in["since"] != "2024-01-01T00:00:00Z" || in["level"] != "group" || in["group"] != "g1" ||
					len(in["elements"].([]any)) != 2 || in["typeFilters"].([]any)[0] != "Observation?category=laboratory,vital-signs" ||
					opts["concurrency"] != 4.0 || opts["keepJob"] != true {
					t.Errorf("input = %v", in)
				}
				if q := o.Action.(*client.ScheduleWorkflowAction).TaskQueue; q != "q2" {
					t.Errorf("task queue %q", q)
				}
			}},
		{"relative --out made absolute", []string{"--every", "1h", "--out", "exports"}, func(t *testing.T, _ *client.ScheduleOptions, in map[string]any) {
			if out, _ := in["output"].(string); !filepath.IsAbs(out) || filepath.Base(out) != "exports" {
				t.Errorf("output %q", out)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var errb bytes.Buffer
			o, _, code := parseScheduleCreate(append(append([]string{}, base...), c.args...), &errb)
			if code != exitOK || o == nil {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			c.check(t, o, actionInput(t, o))
		})
	}
}

func overlapIs(want enumspb.ScheduleOverlapPolicy) func(*testing.T, *client.ScheduleOptions, map[string]any) {
	return func(t *testing.T, o *client.ScheduleOptions, _ map[string]any) {
		if o.Overlap != want {
			t.Errorf("overlap = %v, want %v", o.Overlap, want)
		}
	}
}

// Invalid input exits 2 with a message naming the flag, before any call to
// Temporal (none runs here).
func TestScheduleCreateInvalid(t *testing.T) {
	ok := []string{"--id", "s", "--server", "epic-prod"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no id", []string{"--server", "epic-prod", "--every", "1h"}, "--id"},
		{"no spec", ok, "--every 24h or --cron"},
		{"both specs", append([]string{"--every", "1h", "--cron", "@daily"}, ok...), "not both"},
		{"bad every", append([]string{"--every", "daily"}, ok...), `--every "daily"`},
		{"zero every", append([]string{"--every", "0s"}, ok...), "positive duration"},
		{"offset not shorter", append([]string{"--every", "1h/2h"}, ok...), "offset"},
		{"bad cron", append([]string{"--cron", "0 2 * *"}, ok...), "give 5 fields"},
		{"time zone with every", append([]string{"--every", "1h", "--time-zone", "UTC"}, ok...), "--time-zone goes with --cron"},
		{"bad overlap", append([]string{"--every", "1h", "--overlap", "sometimes"}, ok...), `--overlap "sometimes": use skip, buffer-one`},
		{"bad catch-up", append([]string{"--every", "1h", "--catchup-window", "soon"}, ok...), "--catchup-window"},
		{"catch-up below Temporal's minimum", append([]string{"--every", "1h", "--catchup-window", "5s"}, ok...), "at least 10s"},
		{"no server", []string{"--id", "s", "--every", "1h"}, `give "server"`},
		{"bad since", append([]string{"--every", "1h", "--since", "yesterday"}, ok...), "not a FHIR instant"},
		{"bad type", append([]string{"--every", "1h", "--types", "patient"}, ok...), "did you mean Patient"},
		{"positional argument", append([]string{"--every", "1h", "nightly"}, ok...), "unexpected argument"},
		{"until with incremental", append([]string{"--every", "1h", "--until", "2024-01-01T00:00:00Z"}, ok...), "do not go together"},
		{"run folder", append([]string{"--every", "1h", "--run", "r1"}, ok...), "--run does not go with a schedule"},
		{"unknown flag", append([]string{"--every", "1h", "--bogus"}, ok...), "flag provided but not defined"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := scheduleCmd(append([]string{"create"}, c.args...)...)
			if code != exitUsage || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q, want exit 2 and %q", code, stderr, c.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q", stdout)
			}
		})
	}
	// Every problem is reported at once, one per line.
	_, _, stderr := scheduleCmd("create", "--every", "1h", "--overlap", "x", "--server", "a")
	if strings.Count(stderr, "starter schedule create:") != 2 {
		t.Errorf("want two problems, one per line:\n%s", stderr)
	}
}

func TestScheduleUsage(t *testing.T) {
	for _, sub := range []string{"create", "list", "describe", "pause", "unpause", "trigger", "delete"} {
		code, _, stderr := scheduleCmd(sub, "--help")
		if code != exitOK || !strings.Contains(stderr, "Usage: starter schedule "+sub) {
			t.Errorf("%s --help: exit %d\n%s", sub, code, stderr)
		}
		if (sub == "create" || sub == "trigger") && !strings.Contains(stderr, "no last completion result") {
			t.Errorf("%s --help lacks the allow-all note", sub)
		}
	}
	if code, _, stderr := scheduleCmd(); code != exitUsage || !strings.Contains(stderr, "unpause") {
		t.Errorf("no subcommand: exit %d\n%s", code, stderr)
	}
	if code, _, _ := scheduleCmd("--help"); code != exitOK {
		t.Errorf("--help: exit %d", code)
	}
	for _, args := range [][]string{
		{"frobnicate"},
		{"describe"},
		{"describe", "a", "b"},
		{"pause", "--note"},
		{"trigger", "s", "--overlap", "never"},
		{"list", "extra"},
		{"delete"},
	} {
		if code, _, stderr := scheduleCmd(args...); code != exitUsage {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, stderr)
		}
	}
}

func TestParseWithIDFlagsEitherSide(t *testing.T) {
	for _, args := range [][]string{{"--json", "s1"}, {"s1", "--json"}} {
		fs := newFS("t", io.Discard)
		asJSON := fs.Bool("json", false, "")
		id, err := parseWithID(fs, args, "t")
		if err != nil || id != "s1" || !*asJSON {
			t.Errorf("%v: id %q json %v err %v", args, id, *asJSON, err)
		}
	}
}

// Temporal turns cron into calendars; describe must say them in words.
func TestSpecWords(t *testing.T) {
	r := func(start, end int) []client.ScheduleRange {
		return []client.ScheduleRange{{Start: start, End: end, Step: 1}}
	}
	// As the server returns "0 2 * * *".
	daily := client.ScheduleCalendarSpec{Second: r(0, 0), Minute: r(0, 0), Hour: r(2, 2), DayOfMonth: r(1, 31), Month: r(1, 12), DayOfWeek: r(0, 6)}
	weekdays := daily
	weekdays.DayOfWeek = r(1, 5)
	monthly := daily
	monthly.DayOfMonth = r(1, 1)
	odd := daily
	odd.Hour = []client.ScheduleRange{{Start: 0, End: 23, Step: 6}}
	cases := []struct {
		spec client.ScheduleSpec
		want string
	}{
		{client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: 24 * time.Hour}}}, "every 24h"},
		{client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: 90 * time.Minute, Offset: 15 * time.Minute}}}, "every 1h30m, offset 15m"},
		{client.ScheduleSpec{Calendars: []client.ScheduleCalendarSpec{daily}}, "daily at 02:00 UTC"},
		{client.ScheduleSpec{Calendars: []client.ScheduleCalendarSpec{weekdays}, TimeZoneName: "America/Chicago"}, "at 02:00 America/Chicago on Mon-Fri"},
		{client.ScheduleSpec{Calendars: []client.ScheduleCalendarSpec{monthly}}, "at 02:00 UTC on day 1 of the month"},
		{client.ScheduleSpec{Calendars: []client.ScheduleCalendarSpec{odd}}, "calendar sec=0 min=0 hour=0-23/6 day=* month=* weekday=* (UTC)"},
		{client.ScheduleSpec{CronExpressions: []string{"@daily"}}, `cron "@daily" (UTC)`},
		{client.ScheduleSpec{}, "never (no times: trigger only)"},
	}
	for _, c := range cases {
		if got := specWords(&c.spec); got != c.want {
			t.Errorf("specWords(%+v) = %q, want %q", c.spec, got, c.want)
		}
	}
}

// describe shows the action's input, which Describe returns as a payload:
// plain, or encrypted by the workers' codec.
func TestDecodeInput(t *testing.T) {
	t.Setenv(codec.EnvKey, "")
	t.Setenv(codec.EnvKeyFile, "")
	raw := make([]byte, 32)
	rand.Read(raw)
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, raw, 0o600)
	k, _ := codec.NewKey(codec.DefaultKeyID, raw)
	c, _ := codec.New(k)
	in := workflows.ExportInput{Incremental: true}
	plain, _ := converter.GetDefaultDataConverter().ToPayload(in)
	sealed, err := codec.DataConverter(c).ToPayload(in)
	if err != nil {
		t.Fatal(err)
	}
	noKey := ""
	for _, tc := range []struct {
		name    string
		keyFile string
		p       *commonpb.Payload
		ok      bool
	}{
		{"plain", noKey, plain, true},
		{"encrypted with the key", keyFile, sealed, true},
		{"encrypted without the key", noKey, sealed, false},
	} {
		got := decodeInput(temporalFlags{codecKeyFile: &tc.keyFile}, tc.p)
		var m map[string]any
		err := json.Unmarshal(got, &m)
		if tc.ok && (err != nil || m["incremental"] != true) {
			t.Errorf("%s: decoded %s", tc.name, got)
		}
		if !tc.ok && (err == nil || !strings.Contains(string(got), "--codec-key-file")) {
			t.Errorf("%s: got %s, want a note asking for --codec-key-file", tc.name, got)
		}
	}
}

// §5: an incremental schedule's summary says where the watermark stands and
// never advises --since.
func TestDescribeSaysWhereTheWatermarkStands(t *testing.T) {
	var b bytes.Buffer
	printView(&b, scheduleView{ID: "nightly", Incremental: true, Watermark: "2026-11-30T02:00:00Z", WatermarkFrom: "nightly-2026-11-30T02:00:00Z"})
	if s := b.String(); !strings.Contains(s, "the watermark stands at 2026-11-30T02:00:00Z (committed by nightly-2026-11-30T02:00:00Z)") || strings.Contains(s, "--since") {
		t.Errorf("incremental:\n%s", s)
	}
	b.Reset()
	printView(&b, scheduleView{ID: "weekly"})
	if s := b.String(); !strings.Contains(s, "Incremental:      no") {
		t.Errorf("not incremental:\n%s", s)
	}
}
