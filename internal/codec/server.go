package codec

import (
	"crypto/subtle"
	"net/http"
	"strings"

	"go.temporal.io/sdk/converter"
)

// HandlerOptions configure the codec server's HTTP handler.
type HandlerOptions struct {
	// UIOrigins may call the endpoints from a browser (CORS), e.g.
	// "http://localhost:8233". "*" allows any origin, without credentials.
	UIOrigins []string
	// AuthToken, when set, must come as "Authorization: Bearer <token>" on
	// every encode/decode request: anyone who can reach an open codec server
	// can decrypt whatever history they copy into it.
	AuthToken string
}

// maxBody bounds a request: Temporal payloads are limited to a few MB, and an
// unbounded ReadAll is a free memory exhaustion.
const maxBody = 16 << 20

// Handler serves the standard remote codec endpoints (POST /encode, POST
// /decode, as the Temporal UI and CLI call them) with CORS and optional
// bearer-token authentication in front of converter.NewPayloadCodecHTTPHandler.
func Handler(c converter.PayloadCodec, opts HandlerOptions) http.Handler {
	inner := converter.NewPayloadCodecHTTPHandler(c)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		if origin := r.Header.Get("Origin"); origin != "" {
			h.Add("Vary", "Origin")
			if allowed, wildcard := originAllowed(opts.UIOrigins, origin); allowed {
				if wildcard {
					h.Set("Access-Control-Allow-Origin", "*")
				} else {
					h.Set("Access-Control-Allow-Origin", origin)
					h.Set("Access-Control-Allow-Credentials", "true")
				}
			}
		}
		if r.Method == http.MethodOptions {
			// Preflights carry no credentials: answer them before the auth check.
			h.Set("Access-Control-Allow-Methods", "POST, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization")
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if opts.AuthToken != "" && !bearerOK(r.Header.Get("Authorization"), opts.AuthToken) {
			h.Set("WWW-Authenticate", `Bearer realm="bulkflow-codec"`)
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		inner.ServeHTTP(w, r)
	})
}

func originAllowed(allowed []string, origin string) (ok, wildcard bool) {
	for _, a := range allowed {
		if a == "*" {
			return true, true
		}
		if strings.EqualFold(strings.TrimRight(a, "/"), origin) {
			return true, false
		}
	}
	return false, false
}

func bearerOK(header, token string) bool {
	scheme, got, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(token)) == 1
}
