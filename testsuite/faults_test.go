package testsuite

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite/authserver"
)

func TestParseFaults(t *testing.T) {
	good := []string{
		"",
		"kickoff=429(retry-after=2)@1; file:Observation.1=truncate-midline@1-2; status=transient@2,3",
		"file=slow(bps=1000)\nmanifest=errors(n=2)",
		"token=503@3-; wellknown=html(code=504)@*; # comment",
		"delete=500; metadata=text",
	}
	for _, g := range good {
		if _, err := parseFaults(g); err != nil {
			t.Errorf("%q: %v", g, err)
		}
	}
	bad := []string{"nonsense", "bogus=429", "kickoff=truncate-midline", "status=200", "file=reset@0", "file=reset@3-1", "file=slow(bps=1"}
	for _, b := range bad {
		if _, err := parseFaults(b); err == nil {
			t.Errorf("%q: no error", b)
		}
	}
	r, _ := parseFaults("status=503@2,4-5,7-")
	for att, want := range map[int]bool{1: false, 2: true, 3: false, 4: true, 5: true, 6: false, 7: true, 100: true} {
		if r[0].fires(att) != want {
			t.Errorf("attempt %d fires=%v", att, !want)
		}
	}
}

// faultEnv is one fresh server per fault case.
type faultEnv struct {
	t *testing.T
	s *Server
}

func (e faultEnv) kick(query string, headers ...string) (*http.Response, []byte) {
	return do(e.t, req(e.t, "GET", e.s.BaseURL()+"/$export"+query, nil, append(kickHeaders, headers...)...))
}

// export runs a Patient-only export without faults interfering with kickoff.
func (e faultEnv) export(headers ...string) (string, manifest) {
	loc := kickoff(e.t, req(e.t, "GET", e.s.BaseURL()+"/$export?_type=Patient", nil, append(kickHeaders, headers...)...))
	return loc, poll(e.t, loc, headers...)
}

func wantStatus(t *testing.T, resp *http.Response, body []byte, code int) {
	t.Helper()
	if resp.StatusCode != code {
		t.Fatalf("status %d, want %d: %.300s", resp.StatusCode, code, body)
	}
}

func TestFaults(t *testing.T) {
	cases := []struct {
		name   string
		script string
		opts   Options
		run    func(e faultEnv)
	}{
		{"kickoff 429 without Retry-After, first attempt only", "kickoff=429@1", Options{}, func(e faultEnv) {
			resp, body := e.kick("")
			wantStatus(e.t, resp, body, 429)
			if resp.Header.Get("Retry-After") != "" || isOO(e.t, body) != "throttled" {
				e.t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
			}
			resp, body = e.kick("")
			wantStatus(e.t, resp, body, 202)
		}},
		{"kickoff 429 Retry-After seconds", "kickoff=429(retry-after=2)", Options{}, func(e faultEnv) {
			resp, body := e.kick("")
			wantStatus(e.t, resp, body, 429)
			if resp.Header.Get("Retry-After") != "2" {
				e.t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
			}
		}},
		{"kickoff 429 Retry-After HTTP-date", "kickoff=429(retry-after=date:30)", Options{}, func(e faultEnv) {
			resp, _ := e.kick("")
			ra, err := http.ParseTime(resp.Header.Get("Retry-After"))
			if resp.StatusCode != 429 || err != nil || time.Until(ra) < 20*time.Second {
				e.t.Errorf("%d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
			}
		}},
		{"kickoff 429 absurd Retry-After", "kickoff=429(retry-after=999999999)", Options{}, func(e faultEnv) {
			resp, _ := e.kick("")
			if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "999999999" {
				e.t.Errorf("%d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
			}
		}},
		{"kickoff export already running", "kickoff=busy@1-2", Options{}, func(e faultEnv) {
			for i := 0; i < 2; i++ {
				resp, body := e.kick("")
				wantStatus(e.t, resp, body, 429)
				if resp.Header.Get("Retry-After") != "2" || !bytes.Contains(body, []byte("already in progress")) {
					e.t.Errorf("busy: %q %s", resp.Header.Get("Retry-After"), body)
				}
			}
			resp, body := e.kick("")
			wantStatus(e.t, resp, body, 202)
			if e.s.Stats().Kickoffs != 1 {
				e.t.Errorf("kickoffs %d", e.s.Stats().Kickoffs)
			}
		}},
		{"kickoff 5xx HTML body", "kickoff=html", Options{}, func(e faultEnv) {
			resp, body := e.kick("")
			wantStatus(e.t, resp, body, 502)
			if resp.Header.Get("Content-Type") != "text/html" || !bytes.Contains(body, []byte("<html>")) {
				e.t.Errorf("html: %s", body)
			}
		}},
		{"kickoff 503 OperationOutcome", "kickoff:system=503", Options{}, func(e faultEnv) {
			resp, body := e.kick("")
			wantStatus(e.t, resp, body, 503)
			if isOO(e.t, body) != "exception" {
				e.t.Error("not exception")
			}
			// the selector narrows to system level: Patient level is untouched
			resp, body = do(e.t, req(e.t, "GET", e.s.BaseURL()+"/Patient/$export", nil, kickHeaders...))
			wantStatus(e.t, resp, body, 202)
		}},
		{"kickoff without Content-Location", "kickoff=no-content-location@1", Options{}, func(e faultEnv) {
			resp, body := e.kick("")
			wantStatus(e.t, resp, body, 202)
			if _, ok := resp.Header["Content-Location"]; ok {
				e.t.Error("Content-Location present")
			}
		}},
		{"kickoff relative Content-Location", "kickoff=relative-content-location", Options{}, func(e faultEnv) {
			resp, body := e.kick("")
			wantStatus(e.t, resp, body, 202)
			if loc := resp.Header.Get("Content-Location"); !strings.HasPrefix(loc, "_jobs/") {
				e.t.Errorf("Content-Location %q", loc)
			}
		}},
		{"kickoff connection dropped", "kickoff=drop@1", Options{}, func(e faultEnv) {
			if _, _, err := rawGet(e.s.BaseURL() + "/$export"); err == nil {
				e.t.Error("no error on dropped connection")
			}
		}},
		{"status transient 5xx on attempts 2-3", "status=transient@2-3", Options{ExportDuration: time.Hour}, func(e faultEnv) {
			_, body := e.kick("")
			_ = body
			loc := kickoff(e.t, req(e.t, "GET", e.s.BaseURL()+"/$export", nil, kickHeaders...))
			codes := []int{}
			for i := 0; i < 4; i++ {
				resp, body := do(e.t, req(e.t, "GET", loc, nil))
				codes = append(codes, resp.StatusCode)
				if resp.StatusCode == 503 && isOO(e.t, body) != "transient" {
					e.t.Error("not transient")
				}
			}
			if codes[0] != 202 || codes[1] != 503 || codes[2] != 503 || codes[3] != 202 {
				e.t.Errorf("codes %v", codes)
			}
		}},
		{"status transient 500", "status=transient(code=500)@1", Options{}, func(e faultEnv) {
			resp, body := e.kick("")
			resp, body = do(e.t, req(e.t, "GET", resp.Header.Get("Content-Location"), nil))
			wantStatus(e.t, resp, body, 500)
			if isOO(e.t, body) != "transient" {
				e.t.Error("not transient")
			}
		}},
		{"status 401 plain text", "status=expired-token@1", Options{}, func(e faultEnv) {
			resp, _ := e.kick("")
			resp, body := do(e.t, req(e.t, "GET", resp.Header.Get("Content-Location"), nil))
			wantStatus(e.t, resp, body, 401)
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") || json.Valid(body) {
				e.t.Errorf("401 body %q", body)
			}
		}},
		{"status 404 deleted job", "status=notfound", Options{}, func(e faultEnv) {
			resp, _ := e.kick("")
			resp, body := do(e.t, req(e.t, "GET", resp.Header.Get("Content-Location"), nil))
			wantStatus(e.t, resp, body, 404)
			isOO(e.t, body)
		}},
		{"status 429 while polling", "status=429(retry-after=3)@1", Options{}, func(e faultEnv) {
			resp, _ := e.kick("")
			resp, body := do(e.t, req(e.t, "GET", resp.Header.Get("Content-Location"), nil))
			wantStatus(e.t, resp, body, 429)
			if resp.Header.Get("Retry-After") != "3" {
				e.t.Error("no Retry-After")
			}
		}},
		{"manifest with error[] of varying severity", "manifest=errors(n=4)", Options{}, func(e faultEnv) {
			_, m := e.export()
			if len(m.Error) != 1 || m.Error[0].Count != 4 {
				e.t.Fatalf("error[] %+v", m.Error)
			}
			var sev []string
			for _, l := range fetchLines(e.t, m.Error[0].URL) {
				var oo struct{ Issue []struct{ Severity string } }
				json.Unmarshal(l, &oo)
				sev = append(sev, oo.Issue[0].Severity)
			}
			if strings.Join(sev, ",") != "fatal,error,warning,information" {
				e.t.Errorf("severities %v", sev)
			}
		}},
		{"manifest truncated once", "manifest=truncated@1", Options{}, func(e faultEnv) {
			resp, _ := e.kick("?_type=Patient")
			loc := resp.Header.Get("Content-Location")
			// The job may still be running (202s are not manifest attempts):
			// wait for the first manifest, bounded.
			resp, body := do(e.t, req(e.t, "GET", loc, nil))
			for i := 0; resp.StatusCode == 202 && i < 200; i++ {
				time.Sleep(10 * time.Millisecond)
				resp, body = do(e.t, req(e.t, "GET", loc, nil))
			}
			if resp.StatusCode != 200 || json.Valid(body) {
				e.t.Errorf("first manifest should be truncated: %d", resp.StatusCode)
			}
			if _, body = do(e.t, req(e.t, "GET", loc, nil)); !json.Valid(body) {
				e.t.Error("second manifest invalid")
			}
		}},
		{"file cut mid-line", "file:Patient.1=truncate-midline@1", Options{}, func(e faultEnv) {
			_, m := e.export()
			resp, body := do(e.t, req(e.t, "GET", m.Output[0].URL, nil))
			wantStatus(e.t, resp, body, 200)
			lines := bytes.Split(body, []byte("\n"))
			if body[len(body)-1] == '\n' || len(lines) != m.Output[0].Count || json.Valid(lines[len(lines)-1]) {
				e.t.Errorf("midline: %d lines, last valid=%v", len(lines), json.Valid(lines[len(lines)-1]))
			}
			if got := fetchLines(e.t, m.Output[0].URL); len(got) != m.Output[0].Count {
				e.t.Error("second attempt not whole")
			}
		}},
		{"file cut at line boundary", "file=truncate-lines(n=3)@1", Options{}, func(e faultEnv) {
			_, m := e.export()
			if got := fetchLines(e.t, m.Output[0].URL); len(got) != m.Output[0].Count-3 {
				e.t.Errorf("%d lines, want %d", len(got), m.Output[0].Count-3)
			}
			if e.s.Stats().FilesServed != 0 {
				e.t.Error("truncated body counted as served")
			}
		}},
		{"file connection reset mid-body", "file=reset@1", Options{Patients: 40}, func(e faultEnv) {
			_, m := e.export()
			resp, b, err := rawGet(m.Output[0].URL)
			if err == nil || resp.StatusCode != 200 || bytes.Count(b, []byte("\n")) != 20 {
				e.t.Errorf("reset: err=%v, %d lines", err, bytes.Count(b, []byte("\n")))
			}
			time.Sleep(50 * time.Millisecond) // the handler records stats after the client saw the reset
			if e.s.Stats().StatusCodes["file"][0] != 1 {
				e.t.Errorf("stats %v", e.s.Stats().StatusCodes)
			}
		}},
		{"file reset after bytes", "file=reset(bytes=1000)@1", Options{}, func(e faultEnv) {
			_, m := e.export()
			_, b, err := rawGet(m.Output[0].URL)
			if err == nil || len(b) != 1000 {
				e.t.Errorf("reset: err=%v, %d bytes", err, len(b))
			}
		}},
		{"slow body (global)", "file=slow(bps=20000)", Options{Patients: 20}, func(e faultEnv) {
			_, m := e.export()
			start := time.Now()
			lines := fetchLines(e.t, m.Output[0].URL)
			size := 0
			for _, l := range lines {
				size += len(l) + 1
			}
			if el, want := time.Since(start), time.Duration(size)*time.Second/20000; el < want*8/10 {
				e.t.Errorf("%d bytes in %v, want >= %v", size, el, want)
			}
		}},
		{"file 410 expired", "file=gone@1", Options{}, func(e faultEnv) {
			_, m := e.export()
			resp, body := do(e.t, req(e.t, "GET", m.Output[0].URL, nil))
			wantStatus(e.t, resp, body, 410)
			isOO(e.t, body)
		}},
		{"file 401 plain text", "file=expired-token@1", Options{}, func(e faultEnv) {
			_, m := e.export()
			resp, body := do(e.t, req(e.t, "GET", m.Output[0].URL, nil))
			wantStatus(e.t, resp, body, 401)
			if string(body) != "token expired\n" {
				e.t.Errorf("%q", body)
			}
		}},
		{"file selector by type", "file:Observation=503", Options{}, func(e faultEnv) {
			m := poll(e.t, kickoff(e.t, req(e.t, "GET", e.s.BaseURL()+"/$export?_type=Patient,Observation", nil, kickHeaders...)))
			for _, o := range m.Output {
				resp, _ := do(e.t, req(e.t, "GET", o.URL, nil))
				if (o.Type == "Observation") != (resp.StatusCode == 503) {
					e.t.Errorf("%s: %d", o.Type, resp.StatusCode)
				}
			}
		}},
		{"file gzip even when not asked", "file=force-gzip", Options{}, func(e faultEnv) {
			_, m := e.export()
			resp, body := do(e.t, req(e.t, "GET", m.Output[0].URL, nil))
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if resp.Header.Get("Content-Encoding") != "gzip" || err != nil {
				e.t.Fatal("not gzip")
			}
			if b, _ := io.ReadAll(zr); bytes.Count(b, []byte("\n")) != m.Output[0].Count {
				e.t.Error("gzip body incomplete")
			}
		}},
		{"307 redirect to object storage", "file=redirect", Options{}, func(e faultEnv) {
			_, m := e.export()
			resp, body := do(e.t, req(e.t, "GET", m.Output[0].URL, nil))
			wantStatus(e.t, resp, body, 307)
			loc := resp.Header.Get("Location")
			if strings.HasPrefix(loc, strings.TrimSuffix(e.s.BaseURL(), "/fhir")) || !strings.Contains(loc, "/_storage/") {
				e.t.Fatalf("Location %q is not on the second listener", loc)
			}
			if lines := fetchLines(e.t, loc); len(lines) != m.Output[0].Count {
				e.t.Errorf("storage served %d lines", len(lines))
			}
			if e.s.Stats().AuthHeaderForwardedOnRedirect != 0 {
				e.t.Error("counted without header")
			}
			fetchLines(e.t, loc, "Authorization: Bearer leaked")
			if st := e.s.Stats(); st.AuthHeaderForwardedOnRedirect != 1 || st.Requests["storage"] != 2 {
				e.t.Errorf("stats %+v", st)
			}
		}},
		{"capability URLs count Authorization headers", "manifest=capability-urls",
			Options{Auth: authserver.Config{Mode: "bearer", StaticToken: "s3cret"}}, func(e faultEnv) {
				_, m := e.export("Authorization: Bearer s3cret")
				if m.RequiresAccessToken || !strings.Contains(m.Output[0].URL, "/_cap/") {
					e.t.Fatalf("manifest %+v", m)
				}
				fetchLines(e.t, m.Output[0].URL) // no token needed
				if e.s.Stats().AuthHeaderOnCapabilityURL != 0 {
					e.t.Error("counted without header")
				}
				fetchLines(e.t, m.Output[0].URL, "Authorization: Bearer s3cret")
				if e.s.Stats().AuthHeaderOnCapabilityURL != 1 {
					e.t.Error("Authorization on capability URL not counted")
				}
				// a forged capability URL is refused
				bad := m.Output[0].URL[:strings.Index(m.Output[0].URL, "/_cap/")+6] + strings.Repeat("0", 32) + "/x/Patient.1.ndjson"
				if resp, _ := do(e.t, req(e.t, "GET", bad, nil)); resp.StatusCode != 404 {
					e.t.Errorf("forged: %d", resp.StatusCode)
				}
			}},
		{"concurrent download cap", "file=slow(bps=40000)", Options{MaxConcurrentDownloads: 1, Patients: 40}, func(e faultEnv) {
			_, m := e.export()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				rawGet(m.Output[0].URL) // occupies the single slot for ~0.7 s
			}()
			time.Sleep(150 * time.Millisecond)
			resp, body := do(e.t, req(e.t, "GET", m.Output[0].URL, nil))
			wantStatus(e.t, resp, body, 429)
			if resp.Header.Get("Retry-After") == "" || isOO(e.t, body) != "throttled" {
				e.t.Error("429 without Retry-After")
			}
			wg.Wait()
			if st := e.s.Stats(); st.ConcurrentDownloadsHighWater != 2 || st.DownloadsRejected != 1 {
				e.t.Errorf("stats %+v", st)
			}
		}},
		{"delete 500", "delete=500@1", Options{}, func(e faultEnv) {
			loc, _ := e.export()
			resp, body := do(e.t, req(e.t, "DELETE", loc, nil))
			wantStatus(e.t, resp, body, 500)
			resp, body = do(e.t, req(e.t, "DELETE", loc, nil))
			wantStatus(e.t, resp, body, 202)
		}},
		{"token 503 and wellknown html", "token=503@1; wellknown=html(code=404)", Options{}, func(e faultEnv) {
			resp, body := do(e.t, req(e.t, "POST", e.s.BaseURL()+"/auth/token", strings.NewReader("grant_type=client_credentials"), "Content-Type: application/x-www-form-urlencoded"))
			wantStatus(e.t, resp, body, 503)
			resp, body = do(e.t, req(e.t, "GET", e.s.BaseURL()+"/.well-known/smart-configuration", nil))
			wantStatus(e.t, resp, body, 404)
			if !bytes.Contains(body, []byte("<html>")) {
				e.t.Error("not html")
			}
			if st := e.s.Stats(); st.Requests["token"] != 1 || st.FaultsFired["token=503@1"] != 1 {
				e.t.Errorf("stats %+v", st)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := c.opts
			if o.Patients == 0 {
				o.Patients = 10
			}
			o.LargeAttachments = -1
			o.Faults = c.script
			c.run(faultEnv{t, startServer(t, o)})
		})
	}
}

// TestSetFaultsResetsCounters: replacing the script restarts attempt counting.
func TestSetFaultsResetsCounters(t *testing.T) {
	s := startServer(t, Options{Patients: 5, LargeAttachments: -1})
	e := faultEnv{t, s}
	if err := s.SetFaults("kickoff=503@1"); err != nil {
		t.Fatal(err)
	}
	codes := func() (c []int) {
		for i := 0; i < 2; i++ {
			resp, _ := e.kick("")
			c = append(c, resp.StatusCode)
		}
		return c
	}
	if c := codes(); c[0] != 503 || c[1] != 202 {
		t.Fatalf("codes %v", c)
	}
	s.SetFaults("kickoff=503@1")
	if c := codes(); c[0] != 503 || c[1] != 202 {
		t.Fatalf("after SetFaults: codes %v", c)
	}
	if err := s.SetFaults("kickoff=nope"); err == nil {
		t.Error("bad script accepted")
	}
	// and over HTTP
	resp, _ := do(t, req(t, "POST", strings.TrimSuffix(s.BaseURL(), "/fhir")+"/_admin/faults", strings.NewReader("kickoff=html@1")))
	if resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	if resp, _ := e.kick(""); resp.StatusCode != 502 {
		t.Errorf("admin-set fault: %d", resp.StatusCode)
	}
}

// rawGet fetches u without transparent gzip, returning what arrived and the read error.
func rawGet(u string) (*http.Response, []byte, error) {
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	resp, err := c.Get(u)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}
