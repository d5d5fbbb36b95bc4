package e2e

// Issue 4's "must show" security tests, end to end: SMART Backend Services
// with RS384 and ES384 keys, tokens expiring while many files download, mTLS,
// no token on cross-origin redirects or capability URLs, and a 401 in the
// middle of a run. Each test configures the worker's servers registry the way
// an operator's servers file would (servers.Server with an auth.Config and
// TLS file paths), so the product's own credential plumbing is exercised.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	sdktest "go.temporal.io/sdk/testsuite"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/auth"
	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/testsuite/authserver"
	"github.com/bulkflow/bulkflow/workflows"
)

// secRegistry is a worker registry holding exactly s (named "ehr" by the tests).
func secRegistry(t *testing.T, s servers.Server) *servers.Registry {
	t.Helper()
	reg, err := servers.Load("")
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Add(s); err != nil {
		t.Fatalf("registry: %v", err)
	}
	return reg
}

// startWorkerReg runs an in-process worker with reg on a fresh task queue,
// built like startWorker's.
func startWorkerReg(t *testing.T, reg *servers.Registry, output string) string {
	t.Helper()
	queue := fmt.Sprintf("e2e-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), queueSeq.Add(1))
	w := bulkworker.New(tclient, queue, activities.New(reg, output, slog.New(slog.DiscardHandler)), 16)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return queue
}

// kickoffOnce runs the Kickoff activity once, in an activity context but
// outside any workflow, and returns its error: the workflow retries a
// kick-off with backoff for a long time, and the first attempt's error is
// what an operator reads.
func kickoffOnce(t *testing.T, reg *servers.Registry) error {
	t.Helper()
	var suite sdktest.WorkflowTestSuite
	suite.SetLogger(sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	env := suite.NewTestActivityEnvironment()
	env.SetTestTimeout(30 * time.Second)
	acts := activities.New(reg, t.TempDir(), slog.New(slog.DiscardHandler))
	env.RegisterActivity(acts)
	_, err := env.ExecuteActivity(acts.Kickoff, activities.KickoffInput{ServerRef: activities.ServerRef{Server: "ehr"}})
	return err
}

// smartClient makes a client key, writes its private JWK Set to a 0600 file
// and returns the registration for the auth server and the path.
func smartClient(t *testing.T, clientID, alg, kid string) (authserver.Client, string) {
	t.Helper()
	priv, pub, err := authserver.NewClientKey(alg, kid)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{priv}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "private.jwks")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return authserver.Client{ID: clientID, JWKS: &pub}, path
}

// assertCleanAuth checks that the auth server rejected nothing: no token
// errors, no rejected assertion, no replayed jti, no refused FHIR request.
func assertCleanAuth(t *testing.T, st authserver.Stats) {
	t.Helper()
	if st.TokensIssued < 1 {
		t.Errorf("no token issued: the export did not authenticate")
	}
	if st.TokenRequests != st.TokensIssued {
		t.Errorf("%d token requests, %d tokens issued", st.TokenRequests, st.TokensIssued)
	}
	if len(st.TokenErrors) != 0 || len(st.AssertionsRejected) != 0 {
		t.Errorf("token errors %v, assertions rejected %v", st.TokenErrors, st.AssertionsRejected)
	}
	if st.JTIReplays != 0 {
		t.Errorf("%d jti replays", st.JTIReplays)
	}
	if st.AuthorizeOK == 0 {
		t.Error("no FHIR request was authorized: the token was never used")
	}
}

// SMART Backend Services with both algorithms a client SHALL support. The
// RS384 case names kid and alg; the ES384 case names neither (the JWK Set's
// single private key gives both).
func TestSecuritySMARTBackendServices(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		alg      string
		kid      string
		cfgKid   string
		cfgAlg   string
		clientID string
	}{
		{alg: "RS384", kid: "bulkflow-rs384", cfgKid: "bulkflow-rs384", cfgAlg: "RS384", clientID: "bulkflow-rs"},
		{alg: "ES384", kid: "bulkflow-es384", clientID: "bulkflow-es"},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			client, jwks := smartClient(t, tc.clientID, tc.alg, tc.kid)
			srv := fhirServer(t, testsuite.Options{Patients: 30, LargeAttachments: -1,
				Auth: authserver.Config{Mode: authserver.ModeSMART, Clients: []authserver.Client{client}}})
			reg := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL(), Auth: auth.Config{
				Type: "smart", ClientID: tc.clientID, JWKSFile: jwks, Kid: tc.cfgKid, Alg: tc.cfgAlg}})
			queue := startWorkerReg(t, reg, t.TempDir())
			res := runExport(t, queue, workflows.ExportInput{Server: "ehr"})
			want, err := srv.Expected(testsuite.Query{Level: "system"})
			if err != nil {
				t.Fatal(err)
			}
			assertExact(t, res, want)
			st := srv.Auth().Stats()
			assertCleanAuth(t, st)
			// One token source per server per worker, a 300 s token and a
			// run of seconds: exactly one token for the whole export.
			if st.TokenRequests != 1 {
				t.Errorf("%d token requests for one short export, want 1 (the token is cached and shared)", st.TokenRequests)
			}
			if n := st.AuthorizeFailureTotal(); n != 0 {
				t.Errorf("%d FHIR requests refused: %v", n, st.AuthorizeFailures)
			}
			if res.Totals.Retries != 0 {
				t.Errorf("%d retries in a run without faults", res.Totals.Retries)
			}
		})
	}
}

// Tokens that expire while an export of many files runs.
//
// Production case: the EHR issues 60 s tokens and a run takes an hour, so
// the worker's token requests should be about run time / lifetime (the
// source refreshes at 80% of the lifetime, so 3600 / 48 = 75 per hour, and a
// token revoked early costs one more), not one per request or per file, and
// no file may fail for it. Waiting minutes is too slow for a
// test, and the client clamps expires_in to at least 10 s, so the expiry is
// forced server-side instead: every 100 ms ExpireAllTokens invalidates every
// token issued so far (one "lifetime" = 100 ms), while hundreds of small
// files download for a few seconds. Each forced expiry must cost at most one
// token request (the first request that sees the 401 refreshes; the others
// racing with the same stale token share that refresh), so token requests <=
// expirations + 1 (the first token). The 401s are absorbed by the transport's
// refresh-and-resend: no file attempt fails and no file is served twice.
func TestSecurityTokensExpireDuringManyFiles(t *testing.T) {
	requireE2E(t)
	client, jwks := smartClient(t, "bulkflow-expiry", "ES384", "k1")
	srv := fhirServer(t, testsuite.Options{Patients: 120, ResourcesPerFile: 20, LargeAttachments: -1,
		Faults: "file=slow(bps=200000)",
		Auth:   authserver.Config{Mode: authserver.ModeSMART, Clients: []authserver.Client{client}}})
	reg := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL(), Auth: auth.Config{
		Type: "smart", ClientID: "bulkflow-expiry", JWKSFile: jwks}})
	queue := startWorkerReg(t, reg, t.TempDir())

	run := start(t, queue, workflows.ExportInput{Server: "ehr", Options: workflows.Options{Concurrency: 8}})
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				srv.Auth().ExpireAllTokens()
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	started := time.Now()
	var res workflows.ExportResult
	err := run.Get(ctx, &res)
	close(done)
	wg.Wait()
	elapsed := time.Since(started)
	if err != nil {
		t.Fatalf("export with expiring tokens failed: %v", err)
	}
	want, err := srv.Expected(testsuite.Query{Level: "system"})
	if err != nil {
		t.Fatal(err)
	}
	assertExact(t, res, want)

	st := srv.Auth().Stats()
	sst := srv.Stats()
	expired := st.AuthorizeFailures[authserver.AuthzExpired]
	t.Logf("%s, %d files: %d forced expirations, %d token requests, %d requests refused as expired (%d file 401s), %d retries",
		elapsed.Round(time.Millisecond), res.Totals.Files, st.ExpireAllCalls, st.TokenRequests, expired, sst.StatusCodes["file"][401], res.Totals.Retries)
	if res.Totals.Files < 200 {
		t.Errorf("only %d files: the test wants hundreds", res.Totals.Files)
	}
	if st.ExpireAllCalls < 5 {
		t.Errorf("only %d expirations during the run: it was too short to prove anything", st.ExpireAllCalls)
	}
	if expired == 0 {
		t.Fatal("no request was refused as expired: the expiries never hit the client")
	}
	if st.TokenRequests < 2 {
		t.Errorf("%d token requests: the expired token was never replaced", st.TokenRequests)
	}
	if st.TokenRequests > st.ExpireAllCalls+1 {
		t.Errorf("%d token requests for %d expirations: more than one refresh per expiry", st.TokenRequests, st.ExpireAllCalls)
	}
	if len(st.TokenErrors) != 0 || len(st.AssertionsRejected) != 0 || st.JTIReplays != 0 {
		t.Errorf("token errors %v, assertions rejected %v, jti replays %d", st.TokenErrors, st.AssertionsRejected, st.JTIReplays)
	}
	if other := st.AuthorizeFailureTotal() - expired; other != 0 {
		t.Errorf("%d requests refused for reasons other than expiry: %v", other, st.AuthorizeFailures)
	}
	// Each 401 was followed by a success within the same attempt: no file
	// attempt failed and every file body was served exactly once.
	if res.Totals.Retries != 0 {
		t.Errorf("%d file retries: a 401 reached the activity instead of being refreshed by the transport", res.Totals.Retries)
	}
	if sst.FilesServed != int64(res.Totals.Files) {
		t.Errorf("%d file bodies served for %d files", sst.FilesServed, res.Totals.Files)
	}
}

// mTLS: with the CA and the client certificate the export completes; without
// the client certificate the kick-off fails with an error that says why, as a
// non-retryable error, and the export fails within seconds.
func TestSecurityMutualTLS(t *testing.T) {
	requireE2E(t)
	srv := fhirServer(t, testsuite.Options{Patients: 25, LargeAttachments: -1, TLS: true, ClientCert: true})
	files, err := srv.PKI().WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{authserver.FileClientKey, authserver.FileServerKey} {
		if fi, err := os.Stat(files[k]); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", k, err, fi.Mode().Perm())
		}
	}

	t.Run("with-client-cert", func(t *testing.T) {
		reg := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL(), TLS: servers.TLSConfig{
			CAFile: files[authserver.FileCACert], CertFile: files[authserver.FileClientCert], KeyFile: files[authserver.FileClientKey]}})
		queue := startWorkerReg(t, reg, t.TempDir())
		res := runExport(t, queue, workflows.ExportInput{Server: "ehr"})
		want, err := srv.Expected(testsuite.Query{Level: "system"})
		if err != nil {
			t.Fatal(err)
		}
		assertExact(t, res, want)
		if srv.Stats().Kickoffs != 1 {
			t.Errorf("kickoffs = %d, want 1", srv.Stats().Kickoffs)
		}
	})

	t.Run("without-client-cert", func(t *testing.T) {
		before := srv.Stats().Kickoffs
		reg := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL(), TLS: servers.TLSConfig{
			CAFile: files[authserver.FileCACert]}})
		began := time.Now()
		err := kickoffOnce(t, reg)
		took := time.Since(began)
		if err == nil {
			t.Fatal("kick-off without a client certificate succeeded against an mTLS server")
		}
		// The same certificate fails the same way: non-retryable, so the
		// workflow fails at once instead of retrying for an hour.
		var ae *temporal.ApplicationError
		if !errors.As(err, &ae) {
			t.Fatalf("error %T is not an application error", err)
		}
		if !ae.NonRetryable() {
			t.Errorf("a refused client certificate is retryable (type %q): it would be retried with backoff", ae.Type())
		}
		if took > 10*time.Second {
			t.Errorf("the refused handshake took %s to report", took)
		}
		msg := err.Error()
		t.Logf("kick-off error: %s", msg)
		if !strings.Contains(msg, "certificate") || !strings.Contains(msg, "tls") {
			t.Errorf("error %q does not say the TLS handshake failed for want of a client certificate", msg)
		}
		if strings.Contains(msg, "BEGIN") {
			t.Errorf("error %q carries PEM material", msg)
		}
		if n := srv.Stats().Kickoffs; n != before {
			t.Errorf("kickoffs went from %d to %d without a client certificate", before, n)
		}
		// End to end: the export fails within seconds, non-retryable, with
		// one kick-off attempt and nothing committed.
		out := t.TempDir()
		queue := startWorkerReg(t, reg, out)
		run := start(t, queue, workflows.ExportInput{Server: "ehr"})
		ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		defer cancel()
		began = time.Now()
		err = run.Get(ctx, nil)
		took = time.Since(began)
		if err == nil {
			t.Fatal("an export without a client certificate succeeded")
		}
		t.Logf("export failed after %s: %v", took.Round(time.Millisecond), err)
		if took > 30*time.Second {
			t.Errorf("the export took %s to fail: a refused certificate must fail at once, not after retries", took)
		}
		// The workflow wraps the activity's error (as "wrapError"); the
		// activity's own, innermost, is what decided there was no retry.
		ae = nil
		for e := error(err); e != nil; e = errors.Unwrap(e) {
			if a, ok := e.(*temporal.ApplicationError); ok {
				ae = a
			}
		}
		if ae == nil || !ae.NonRetryable() {
			t.Errorf("the kick-off's failure is not a non-retryable application error: %v", err)
		}
		if m, _ := filepath.Glob(filepath.Join(out, "*", "_manifest.json")); len(m) != 0 {
			t.Errorf("a failed export committed %v", m)
		}
		// And the server's CA is needed too: the system roots do not trust it.
		reg2 := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL()})
		err = kickoffOnce(t, reg2)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("kick-off without the CA: %v; want a certificate verification error", err)
		}
	})
}

// Files redirected (307) to another origin ("object storage") must not get
// the bearer token; requiresAccessToken=false capability URLs must not get
// it either. The FHIR server itself refuses file requests without the token,
// so the first hop proves the token was sent where it belongs.
func TestSecurityNoTokenToOtherOrigins(t *testing.T) {
	requireE2E(t)
	const token = "e2e-static-token-0123456789"
	t.Setenv("BULKFLOW_E2E_EHR_TOKEN", token)
	for _, tc := range []struct {
		name, faults string
		check        func(t *testing.T, st testsuite.Stats, files int)
	}{
		{"redirect-307", "file=redirect", func(t *testing.T, st testsuite.Stats, files int) {
			if st.AuthHeaderForwardedOnRedirect != 0 {
				t.Errorf("the token reached object storage %d times", st.AuthHeaderForwardedOnRedirect)
			}
			if st.Requests["storage"] < int64(files) {
				t.Errorf("object storage served %d requests for %d files: the redirect was not followed", st.Requests["storage"], files)
			}
			if st.Requests["file"] < int64(files) || st.StatusCodes["file"][307] < int64(files) {
				t.Errorf("file requests %d, 307s %d for %d files", st.Requests["file"], st.StatusCodes["file"][307], files)
			}
		}},
		{"capability-urls", "manifest=capability-urls", func(t *testing.T, st testsuite.Stats, files int) {
			if st.AuthHeaderOnCapabilityURL != 0 {
				t.Errorf("the token was sent to a capability URL %d times", st.AuthHeaderOnCapabilityURL)
			}
			if st.Requests["capability"] < int64(files) {
				t.Errorf("%d capability URL requests for %d files", st.Requests["capability"], files)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fhirServer(t, testsuite.Options{Patients: 25, LargeAttachments: -1, Faults: tc.faults,
				Auth: authserver.Config{Mode: authserver.ModeBearer, StaticToken: token}})
			reg := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL(),
				Auth: auth.Config{Type: "bearer", TokenEnv: "BULKFLOW_E2E_EHR_TOKEN"}})
			queue := startWorkerReg(t, reg, t.TempDir())
			res := runExport(t, queue, workflows.ExportInput{Server: "ehr"})
			want, err := srv.Expected(testsuite.Query{Level: "system"})
			if err != nil {
				t.Fatal(err)
			}
			assertExact(t, res, want)
			st := srv.Stats()
			if st.FaultsFired[tc.faults] == 0 {
				t.Fatalf("fault %q never fired", tc.faults)
			}
			tc.check(t, st, res.Totals.Files)
			if as := srv.Auth().Stats(); as.AuthorizeFailureTotal() != 0 || as.AuthorizeOK == 0 {
				t.Errorf("FHIR requests authorized %d, refused %v", as.AuthorizeOK, as.AuthorizeFailures)
			}
		})
	}
}

// A file answers 401 "token expired" on its first attempt: the transport
// drops the token, gets a new one and resends, so the run completes with the
// exact set and no activity retry.
func TestSecurityExpiredTokenMidFile(t *testing.T) {
	requireE2E(t)
	const fault = "file:Observation=expired-token@1"
	for _, mode := range []string{authserver.ModeSMART, authserver.ModeClientSecret} {
		t.Run(mode, func(t *testing.T) {
			opts := testsuite.Options{Patients: 40, ResourcesPerFile: 200, LargeAttachments: -1, Faults: fault}
			var cfg auth.Config
			if mode == authserver.ModeSMART {
				client, jwks := smartClient(t, "bulkflow-401", "RS384", "k401")
				opts.Auth = authserver.Config{Mode: mode, Clients: []authserver.Client{client}}
				cfg = auth.Config{Type: "smart", ClientID: "bulkflow-401", JWKSFile: jwks, Kid: "k401"}
			} else {
				secret := filepath.Join(t.TempDir(), "secret")
				if err := os.WriteFile(secret, []byte("s3cret-e2e\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				opts.Auth = authserver.Config{Mode: mode, Clients: []authserver.Client{{ID: "bulkflow-401", Secret: "s3cret-e2e"}}}
				// The test server requires a scope; client-secret sends one only if configured.
				cfg = auth.Config{Type: "client-secret", ClientID: "bulkflow-401", ClientSecretFile: secret, Scopes: []string{"system/*.read"}}
			}
			srv := fhirServer(t, opts)
			if mode == authserver.ModeClientSecret {
				// client-secret has no discovery: the token URL is configured.
				cfg.TokenURL = srv.BaseURL() + "/auth/token"
			}
			reg := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL(), Auth: cfg})
			queue := startWorkerReg(t, reg, t.TempDir())
			res := runExport(t, queue, workflows.ExportInput{Server: "ehr"})
			want, err := srv.Expected(testsuite.Query{Level: "system"})
			if err != nil {
				t.Fatal(err)
			}
			assertExact(t, res, want)
			sst, ast := srv.Stats(), srv.Auth().Stats()
			fired := sst.FaultsFired[fault]
			obsFiles := (want.Counts["Observation"] + opts.ResourcesPerFile - 1) / opts.ResourcesPerFile
			t.Logf("%d Observation files, fault fired %d times, %d token requests, %d retries", obsFiles, fired, ast.TokenRequests, res.Totals.Retries)
			if fired != int64(obsFiles) || fired < 2 {
				t.Errorf("expired-token fired %d times for %d Observation files", fired, obsFiles)
			}
			assertCleanAuth(t, ast)
			// Each 401 drops the token it was sent with; concurrent 401s
			// with the same token share one refresh.
			if ast.TokenRequests < 2 || ast.TokenRequests > int(fired)+1 {
				t.Errorf("%d token requests for %d 401s: want between 2 and %d", ast.TokenRequests, fired, fired+1)
			}
			if res.Totals.Retries != 0 {
				t.Errorf("%d file retries: the 401 reached the activity instead of being refreshed in the transport", res.Totals.Retries)
			}
		})
	}
}

// A token endpoint that rejects the worker's credentials (here: a SMART key
// the server never registered, answered 401 invalid_client) is a permanent
// failure: docs/auth.md says an OAuth error response is permanent, since the
// same credentials fail the same way. The kick-off must say so and must not
// be retried for minutes.
func TestSecurityRejectedCredentialsArePermanent(t *testing.T) {
	requireE2E(t)
	registered, _ := smartClient(t, "bulkflow-bad", "ES384", "registered")
	_, wrongKey := smartClient(t, "bulkflow-bad", "ES384", "registered") // same kid, another key
	srv := fhirServer(t, testsuite.Options{Patients: 5, LargeAttachments: -1,
		Auth: authserver.Config{Mode: authserver.ModeSMART, Clients: []authserver.Client{registered}}})
	reg := secRegistry(t, servers.Server{Name: "ehr", BaseURL: srv.BaseURL(), Auth: auth.Config{
		Type: "smart", ClientID: "bulkflow-bad", JWKSFile: wrongKey}})
	err := kickoffOnce(t, reg)
	if err == nil {
		t.Fatal("kick-off with an unregistered key succeeded")
	}
	msg := err.Error()
	t.Logf("kick-off error: %s", msg)
	st := srv.Auth().Stats()
	if st.AssertionsRejected[authserver.ReasonSignature] != 1 || st.TokensIssued != 0 {
		t.Fatalf("auth server: rejected %v, issued %d; want one bad signature", st.AssertionsRejected, st.TokensIssued)
	}
	if !strings.Contains(msg, "invalid_client") {
		t.Errorf("error %q does not name the OAuth error", msg)
	}
	if strings.Contains(msg, "eyJ") {
		t.Errorf("error %q looks like it carries a JWT", msg)
	}
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) {
		t.Fatalf("error %T is not an application error", err)
	}
	if !ae.NonRetryable() {
		t.Errorf("a rejected client assertion (HTTP 401 invalid_client) reaches the workflow as type %q, retryable: "+
			"it would be retried with backoff instead of failing at once", ae.Type())
	}
}
