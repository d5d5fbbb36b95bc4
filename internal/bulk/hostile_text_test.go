package bulk

import (
	"context"
	"net/http"
	"strings"
	"testing"
)

// What the server says reaches the user as it said it (truncated, control
// and bidi characters removed), and is called HTML only when it is.
func TestBodyExcerptSaysWhatTheServerSaid(t *testing.T) {
	for _, tc := range []struct {
		name, ct, body, want string
	}{
		{"plain text labelled HTML (Express res.send)", "text/html; charset=utf-8", "Unauthorized: token expired", "Unauthorized: token expired"},
		{"plain text", "text/plain", "quota exceeded for client 42\r\n", "quota exceeded for client 42"},
		{"control and bidi characters", "text/plain", "bad\x1b[31m token\u202e\u2066 here\u2069\x00", "bad [31m token here"},
		{"long text is cut", "text/plain", strings.Repeat("x", 1000), strings.Repeat("x", 197) + "..."},
		{"real HTML", "text/html", "<!DOCTYPE html><html><head><title>Sign in</title></head></html>", "HTML error page (Sign in)"},
		{"HTML without a content type", "", "<html><body><h1>Forbidden</h1></body></html>", "HTML error page (Forbidden)"},
	} {
		if got := bodyExcerpt(tc.ct, 401, []byte(tc.body)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestSanitizeDropsBidiAndInvisible(t *testing.T) {
	for in, want := range map[string]string{
		"50% \u202edone":                "50% done",
		"a\u2066b\u2067c\u2068d\u2069e": "abcde",
		"x\u200by\ufeffz\u200f":         "xyz",
		"line1\u2028line2":              "line1 line2",
	} {
		if got := sanitize(in, 100); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}

// X-Progress is shown to people (CLI, UI): no terminal escapes, no bidi
// overrides, bounded.
func TestStatusProgressSanitised(t *testing.T) {
	srv, _ := recorder(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Progress", "\u202eenod %05\u2066 step\u2069 "+strings.Repeat("!", 300))
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusAccepted)
	})
	c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	st, err := c.Status(context.Background(), srv.URL+"/status")
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(st.Progress, "\u202e\u2066\u2069") || len(st.Progress) > 100 || !strings.HasPrefix(st.Progress, "enod %05 step !!") {
		t.Errorf("progress %q", st.Progress)
	}
}
