// Command fhirserver runs the bulkflow test FHIR Bulk Data server.
//
//	go run ./testsuite/fhirserver -addr 127.0.0.1:9090 -patients 100
//
// The first line of stdout is "FHIR base URL: <url>"; requests are logged
// to stderr with log/slog. Ctrl-C (SIGINT) or SIGTERM shuts down gracefully.
// See testsuite/README.md for flags, the fault script syntax and examples.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/testsuite/authserver"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fhirserver:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		o        testsuite.Options
		addr     = flag.String("addr", "127.0.0.1:9090", "listen address (host:port; port 0 = any)")
		logLevel = flag.String("log-level", "info", "log level: debug, info, warn, error")
		logJSON  = flag.Bool("log-json", false, "log JSON instead of text")

		authMode     = flag.String("auth", "", `auth mode: "" / none, smart, client-secret, bearer`)
		tokenLife    = flag.Duration("token-lifetime", 0, "access token lifetime (default 300s)")
		clientID     = flag.String("client-id", "bulkflow", "registered client id (smart, client-secret)")
		jwksFile     = flag.String("jwks", "", "smart: file with the client's public JWKS (inline registration)")
		jwksURL      = flag.String("jwks-url", "", "smart: the client's JWKS URL (registration by URL)")
		clientSecret = flag.String("client-secret", "", "client-secret mode: the client's secret")
		staticToken  = flag.String("static-token", "", "bearer mode: the one accepted token")
		scopes       = flag.String("scopes", "", "comma-separated scopes the server grants (default system/*.rs,system/*.read)")
		pkiDir       = flag.String("pki-dir", "", "with -tls: write the CA, server and client PEM files here (for curl --cacert)")
	)
	flag.Int64Var(&o.Seed, "seed", 1, "data seed (same seed = byte-identical files)")
	flag.IntVar(&o.Patients, "patients", 100, "number of patients")
	flag.IntVar(&o.ResourcesPerFile, "per-file", 10000, "max resources (lines) per NDJSON file")
	flag.DurationVar(&o.ExportDuration, "export-duration", 0, "how long status stays 202 after kick-off")
	flag.DurationVar(&o.RetryAfter, "retry-after", time.Second, "Retry-After sent with 202 status responses")
	flag.DurationVar(&o.FileTTL, "ttl", time.Hour, "files expire (410) this long after completion")
	flag.BoolVar(&o.RangeRequests, "range", false, "serve Range requests (206, Accept-Ranges: bytes)")
	flag.IntVar(&o.MaxConcurrentDownloads, "max-downloads", 0, "concurrent file downloads above which files get 429 (0 = unlimited)")
	flag.StringVar(&o.Faults, "faults", "", "fault script, e.g. 'kickoff=429(retry-after=2)@1; file:Observation.1=truncate-midline@1'")
	flag.IntVar(&o.LargeAttachments, "large-attachments", 3, "DocumentReferences with > 4 MB inline attachments (-1 = none)")
	flag.IntVar(&o.ManifestPageSize, "page-size", 2, "output entries per manifest page with allowPartialManifests")
	flag.BoolVar(&o.TLS, "tls", false, "serve HTTPS with a throw-away CA (see -pki-dir)")
	flag.BoolVar(&o.ClientCert, "client-cert", false, "with -tls: require a client certificate (mTLS)")
	flag.Parse()

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return err
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	if *logJSON {
		o.Logger = slog.New(slog.NewJSONHandler(os.Stderr, hopts))
	} else {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, hopts))
	}

	o.Auth = authserver.Config{Mode: *authMode, TokenLifetime: *tokenLife, StaticToken: *staticToken}
	if *scopes != "" {
		o.Auth.Scopes = splitComma(*scopes)
	}
	switch *authMode {
	case authserver.ModeSMART:
		c := authserver.Client{ID: *clientID, JWKSURL: *jwksURL}
		if *jwksFile != "" {
			b, err := os.ReadFile(*jwksFile)
			if err != nil {
				return err
			}
			var set jose.JSONWebKeySet
			if err := json.Unmarshal(b, &set); err != nil {
				return fmt.Errorf("-jwks %s: %w", *jwksFile, err)
			}
			c.JWKS = &set
		}
		o.Auth.Clients = []authserver.Client{c}
	case authserver.ModeClientSecret:
		o.Auth.Clients = []authserver.Client{{ID: *clientID, Secret: *clientSecret}}
	}

	// Catch signals before announcing the URL: whoever reads it may signal at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := testsuite.NewServer(o)
	if err != nil {
		return err
	}
	if err := srv.Start(*addr); err != nil {
		return err
	}
	fmt.Printf("FHIR base URL: %s\n", srv.BaseURL())
	if pki := srv.PKI(); pki != nil && *pkiDir != "" {
		paths, err := pki.WriteFiles(*pkiDir)
		if err != nil {
			return err
		}
		fmt.Printf("CA certificate: %s\n", paths[authserver.FileCACert])
	}

	<-ctx.Done()
	stop()
	o.Logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
