package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/bulkflow/bulkflow/internal/codec"
	"github.com/bulkflow/bulkflow/internal/envflag"
)

const codecServerHelp = `Serves the payload codec over HTTP (POST /encode, POST /decode: Temporal's
remote codec protocol) so that the Temporal UI and CLI can show the clear text
of histories that workers encrypted with -codec-key-file. Only those who can
reach this server (and hold -auth-token-file's token, if set) can decrypt:
run it where the people allowed to see PHI run their browser, e.g. on
127.0.0.1, not on the Temporal server.

Point the Temporal UI at it:
  - per user: in the UI, the Data Encoder settings ("Codec Server endpoint")
    = http://127.0.0.1:8081 (the browser calls it itself, so give the address
    as the browser sees it);
  - for everyone: start the UI server with TEMPORAL_CODEC_ENDPOINT=http://...
    (dev server: temporal server start-dev --ui-codec-endpoint http://...),
    and TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true to forward the user's token as
    "Authorization: Bearer ...", which -auth-token-file then checks.
-ui-origin must be the UI's origin (scheme://host:port as in the browser's
address bar) or the browser refuses the answers (CORS).
Temporal CLI: temporal workflow show -w ID --codec-endpoint http://127.0.0.1:8081
  [--codec-auth "Bearer TOKEN"]`

func runCodecServer(args []string, stdout, stderr io.Writer) int {
	fs := newFS("codec-server", stderr)
	keyFile := envflag.String(fs, "codec-key-file", codec.EnvKeyFile, "",
		"payload encryption key file, the workers' (see docs/security.md); without it $"+codec.EnvKey+" is used")
	addr := envflag.String(fs, "addr", "BULKFLOW_CODEC_ADDR", "127.0.0.1:8081", "listen address")
	origins := envflag.String(fs, "ui-origin", "BULKFLOW_CODEC_UI_ORIGIN", "http://localhost:8233",
		"Temporal UI origin(s) allowed to call from a browser, comma-separated; * for any (then without credentials)")
	tokenFile := envflag.String(fs, "auth-token-file", "BULKFLOW_CODEC_AUTH_TOKEN_FILE", "",
		"file holding a bearer token that every request must carry (Authorization: Bearer <token>)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: starter codec-server [flags]\n\n%s\n\nFlags:\n", codecServerHelp)
		fs.PrintDefaults()
	}
	pos, err := parseFlags(fs, args)
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("codec-server takes no arguments, got %q", pos)
	}
	if err != nil {
		return usageError(stderr, "codec-server", err)
	}
	if parseOnly {
		return exitOK
	}
	c, err := codec.Load(*keyFile)
	if err != nil {
		fmt.Fprintln(stderr, "starter:", err)
		return exitUsage
	}
	if c == nil {
		fmt.Fprintf(stderr, "starter: codec-server needs keys: -codec-key-file, $%s or $%s\n", codec.EnvKeyFile, codec.EnvKey)
		return exitUsage
	}
	opts := codec.HandlerOptions{}
	for _, o := range strings.Split(*origins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			opts.UIOrigins = append(opts.UIOrigins, o)
		}
	}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintln(stderr, "starter: auth token:", err)
			return exitUsage
		}
		if opts.AuthToken = strings.TrimSpace(string(b)); opts.AuthToken == "" {
			fmt.Fprintf(stderr, "starter: auth token file %s is empty\n", *tokenFile)
			return exitUsage
		}
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(stderr, "starter:", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	auth := "no auth token: anyone who can reach it can decrypt"
	if opts.AuthToken != "" {
		auth = "bearer token required"
	}
	fmt.Fprintf(stdout, "codec server on http://%s (keys %s; UI origins %s; %s)\n",
		ln.Addr(), strings.Join(c.KeyIDs(), ", "), strings.Join(opts.UIOrigins, ", "), auth)
	if err := serveCodec(ctx, ln, codec.Handler(c, opts)); err != nil {
		fmt.Fprintln(stderr, "starter:", err)
		return exitFailed
	}
	return exitOK
}

// serveCodec serves h on ln until ctx ends, then lets requests in flight finish.
func serveCodec(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
