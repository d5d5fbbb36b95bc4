package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulkflow/bulkflow/internal/auth"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/testsuite/authserver"
	"github.com/bulkflow/bulkflow/workflows"
)

// tokenTap is a pass-through proxy in front of the test server's token
// endpoint that records every client assertion the worker sends and every
// access token it gets back: the secrets a history scan must not find.
type tokenTap struct {
	mu         sync.Mutex
	assertions []string
	tokens     []string
}

// start serves the tap and returns the token URL the worker is configured
// with. The request reaches the auth server with the tap's Host, so the
// assertion's aud (the tap's URL) is the URL the request arrived at.
func (tp *tokenTap) start(t *testing.T, tokenURL string) string {
	t.Helper()
	up, err := url.Parse(tokenURL)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if form, err := url.ParseQuery(string(body)); err == nil && form.Get("client_assertion") != "" {
			tp.mu.Lock()
			tp.assertions = append(tp.assertions, form.Get("client_assertion"))
			tp.mu.Unlock()
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, up.Scheme+"://"+up.Host+r.URL.RequestURI(), bytes.NewReader(body))
		req.Header = r.Header.Clone()
		req.Host = r.Host
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		if json.Unmarshal(out, &tok) == nil && tok.AccessToken != "" {
			tp.mu.Lock()
			tp.tokens = append(tp.tokens, tok.AccessToken)
			tp.mu.Unlock()
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		w.Write(out)
	}))
	t.Cleanup(ts.Close)
	return ts.URL + up.Path
}

// No token or credential in Temporal's history: a SMART-authenticated export
// (several chunks, a token that expires mid-file and a retried file, so
// failures are recorded too) is scanned, every run and every child, for each
// access token the worker got, each client assertion it signed and the
// private key. The same scan must find the job's status URL, so it does see
// the payloads.
func TestNoCredentialInHistory(t *testing.T) {
	requireE2E(t)
	client, jwksPath := smartClient(t, "bulkflow-history", "ES384", "khist")
	const faults = "file:Observation=expired-token@1; file:Patient=truncate-lines(n=1)@1"
	srv := fhirServer(t, testsuite.Options{Patients: 40, ResourcesPerFile: 100, LargeAttachments: -1, Faults: faults,
		Auth: authserver.Config{Mode: authserver.ModeSMART, Clients: []authserver.Client{client}}})
	var tap tokenTap
	tokenURL := tap.start(t, srv.BaseURL()+"/auth/token")
	reg := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL(), Auth: auth.Config{
		Type: "smart", ClientID: "bulkflow-history", JWKSFile: jwksPath, TokenURL: tokenURL}})
	queue := startWorkerReg(t, reg, t.TempDir())
	run := start(t, queue, workflows.ExportInput{Server: "ehr", Options: workflows.Options{FilesPerChunk: 3}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var res workflows.ExportResult
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("export: %v", err)
	}
	want, err := srv.Expected(testsuite.Query{Level: "system"})
	if err != nil {
		t.Fatal(err)
	}
	assertExact(t, res, want)
	for _, f := range []string{"file:Observation=expired-token@1", "file:Patient=truncate-lines(n=1)@1"} {
		if srv.Stats().FaultsFired[f] == 0 {
			t.Errorf("fault %q never fired", f)
		}
	}
	if res.Totals.Retries == 0 {
		t.Error("no file was retried: no failure reached the history")
	}

	// The secrets.
	tap.mu.Lock()
	secrets := map[string][]string{"access token": tap.tokens, "client assertion": tap.assertions}
	tap.mu.Unlock()
	if len(secrets["access token"]) < 2 || len(secrets["client assertion"]) < 2 {
		t.Fatalf("tap saw %d tokens and %d assertions: want a refresh (>= 2 each), or the test proves little",
			len(secrets["access token"]), len(secrets["client assertion"]))
	}
	if st := srv.Auth().Stats(); st.TokensIssued != len(secrets["access token"]) {
		t.Fatalf("auth server issued %d tokens, the tap saw %d: a token went around the tap", st.TokensIssued, len(secrets["access token"]))
	}
	b, err := os.ReadFile(jwksPath)
	if err != nil {
		t.Fatal(err)
	}
	var keys struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys.Keys {
		if d, _ := k["d"].(string); d != "" { // the private part of a JWK
			secrets["private key"] = append(secrets["private key"], d)
		}
	}
	if len(secrets["private key"]) != 1 {
		t.Fatalf("want one private key in the client's JWK Set, found %d", len(secrets["private key"]))
	}

	hist, _, runs := fullHistory(t, run.GetID(), run.GetRunID())
	if runs < 1+res.Totals.Files/3 {
		t.Errorf("scanned %d runs, want the export and its %d chunks", runs, (res.Totals.Files+2)/3)
	}
	// The scan sees the payloads: the status URL is there.
	if !bytes.Contains(hist, []byte(srv.BaseURL())) {
		t.Fatalf("the history scan does not find the server's URL %s: it would prove nothing", srv.BaseURL())
	}
	for what, vals := range secrets {
		for _, v := range vals {
			if i := bytes.Index(hist, []byte(v)); i >= 0 {
				t.Errorf("%s in the history: …%s…", what, around(hist, i))
			}
		}
	}
	// Parts of a JWT (header.payload without the signature) count too.
	for _, a := range secrets["client assertion"] {
		if parts := strings.Split(a, "."); len(parts) == 3 && bytes.Contains(hist, []byte(parts[1])) {
			t.Errorf("the payload of a client assertion is in the history")
		}
	}
	t.Logf("scanned %d runs, %d bytes, for %d tokens, %d assertions and the private key", runs, len(hist),
		len(secrets["access token"]), len(secrets["client assertion"]))
}

// fullHistory returns every event the server stores for a workflow: each
// run it continued as new into, and each child workflow (recursively), as
// text: each event as protojson (field names, strings) plus every string
// and bytes field found walking it (payload data is bytes, which protojson
// would show only in base64). It also returns every failure's message and
// the number of runs scanned.
func fullHistory(t *testing.T, id, runID string) ([]byte, []string, int) {
	t.Helper()
	var buf bytes.Buffer
	var failures []string
	runs := 0
	type exec struct{ id, run string }
	queue := []exec{{id, runID}}
	seen := map[exec]bool{}
	for len(queue) > 0 {
		e := queue[0]
		queue = queue[1:]
		if seen[e] {
			continue
		}
		seen[e] = true
		runs++
		it := tclient.GetWorkflowHistory(context.Background(), e.id, e.run, false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		n := 0
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatalf("history of %s/%s: %v", e.id, e.run, err)
			}
			n++
			appendEvent(t, &buf, ev, &failures)
			if a := ev.GetChildWorkflowExecutionStartedEventAttributes(); a != nil {
				queue = append(queue, exec{a.GetWorkflowExecution().GetWorkflowId(), a.GetWorkflowExecution().GetRunId()})
			}
			if a := ev.GetWorkflowExecutionContinuedAsNewEventAttributes(); a != nil {
				queue = append(queue, exec{e.id, a.GetNewExecutionRunId()})
			}
		}
		if n == 0 {
			t.Fatalf("no history for %s/%s", e.id, e.run)
		}
	}
	for _, f := range failures {
		buf.WriteString(f)
		buf.WriteByte('\n')
	}
	return buf.Bytes(), failures, runs
}

func appendEvent(t *testing.T, buf *bytes.Buffer, ev *historypb.HistoryEvent, failures *[]string) {
	t.Helper()
	b, err := protojson.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	buf.Write(b)
	buf.WriteByte('\n')
	walk(ev.ProtoReflect(), buf, failures)
}
