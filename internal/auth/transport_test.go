package auth

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bulkflow/bulkflow/testsuite/authserver"
)

// After the server forgets the token, the next request gets a 401, the
// Transport fetches a new token and replays the request (body included)
// once.
func TestRetryOn401WithNewToken(t *testing.T) {
	e := newEnv(t, authserver.Config{})
	s := e.source(t, smartConfigFor(t, ecKey))
	c := e.client(s)
	if code, _ := get(t, c, e.fhirBase+"/Patient"); code != http.StatusOK {
		t.Fatalf("first GET = %d", code)
	}
	e.as.ExpireAllTokens()
	resp, err := c.Post(e.fhirBase+"/$export", "application/fhir+json", strings.NewReader(`{"resourceType":"Parameters"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != `{"resourceType":"Parameters"}` {
		t.Fatalf("POST after expiry = %d %q, want 200 with the body replayed", resp.StatusCode, body)
	}
	st := e.as.Stats()
	if st.TokensIssued != 2 || st.AuthorizeFailures[authserver.AuthzExpired] != 1 || s.Stats().Invalidations != 1 {
		t.Fatalf("authserver %+v, source %+v", st, s.Stats())
	}
}

// Many requests failing with the same stale token cause one refresh.
func TestConcurrent401sRefreshOnce(t *testing.T) {
	e := newEnv(t, authserver.Config{})
	s := e.source(t, smartConfigFor(t, ecKey))
	c := e.client(s)
	get(t, c, e.fhirBase+"/Patient")
	e.as.ExpireAllTokens()
	var wg sync.WaitGroup
	var bad atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(e.fhirBase + "/Patient")
			if err != nil || resp.StatusCode != http.StatusOK {
				bad.Add(1)
			}
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 || s.Stats().Fetches != 2 {
		t.Fatalf("%d failed, source %+v, want all OK with 2 fetches", bad.Load(), s.Stats())
	}
}

// A 401 that persists is returned after one retry; its plain-text body is
// handed over untouched. A request whose body cannot be replayed is not
// retried, but the token is still dropped.
func TestSecond401AndUnreplayableBody(t *testing.T) {
	var hits atomic.Int32
	fhir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte("token expired, go away"))
	}))
	defer fhir.Close()
	s := fakeSource(t, fakeTokenServer(t, 200, "application/json", `{"access_token":"t","token_type":"bearer","expires_in":300}`), nil)
	c := Client(&http.Client{}, s)

	code, body := get(t, c, fhir.URL+"/Patient")
	if code != http.StatusUnauthorized || body != "token expired, go away" || hits.Load() != 2 || s.Stats().Fetches != 2 {
		t.Fatalf("GET = %d %q after %d hits, source %+v; want the second 401 after one retry", code, body, hits.Load(), s.Stats())
	}

	hits.Store(0)
	before := s.Stats().Invalidations
	req, _ := http.NewRequest(http.MethodPost, fhir.URL+"/$export", io.MultiReader(strings.NewReader("{}")))
	if req.GetBody != nil {
		t.Fatal("test needs a request without GetBody")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	inv := s.Stats().Invalidations - before
	if resp.StatusCode != http.StatusUnauthorized || hits.Load() != 1 || inv != 1 {
		t.Fatalf("unreplayable POST: %d after %d hits, invalidations %d; want one attempt and the token dropped", resp.StatusCode, hits.Load(), inv)
	}
}

// A static bearer token cannot be refreshed: no retry.
func TestStaticBearerNoRetry(t *testing.T) {
	e := newEnv(t, authserver.Config{Mode: authserver.ModeBearer, StaticToken: "right"})
	t.Setenv("BULKFLOW_TEST_TOKEN", "wrong")
	ts, err := Config{Type: "bearer", TokenEnv: "BULKFLOW_TEST_TOKEN"}.TokenSource(context.Background(), http.DefaultClient, e.fhirBase)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, e.client(ts), e.fhirBase+"/Patient"); code != http.StatusUnauthorized {
		t.Fatalf("GET = %d", code)
	}
	if st := e.as.Stats(); st.AuthorizeFailureTotal() != 1 {
		t.Fatalf("requests rejected = %d, want 1 (no retry)", st.AuthorizeFailureTotal())
	}
}

// Client-secret tokens refresh on 401 like smart ones, with either auth style.
func TestClientSecretRefreshOn401(t *testing.T) {
	for _, style := range []string{"basic", "post"} {
		t.Run(style, func(t *testing.T) {
			e := newEnv(t, authserver.Config{Mode: authserver.ModeClientSecret, Clients: []authserver.Client{{ID: "svc", Secret: "p@ss word"}}})
			sec := writeFile(t, "secret", []byte("p@ss word\n"))
			s := e.source(t, Config{Type: "client-secret", TokenURL: e.tokenURL, ClientID: "svc", ClientSecretFile: sec, AuthStyle: style, Scopes: []string{"system/*.read"}})
			c := e.client(s)
			for i := range 2 {
				if code, body := get(t, c, e.fhirBase+"/Patient"); code != http.StatusOK {
					t.Fatalf("GET %d = %d %s", i, code, body)
				}
				e.as.ExpireAllTokens()
			}
			if st := e.as.Stats(); st.TokensIssued != 2 || st.AuthorizeOK != 2 {
				t.Fatalf("stats = %+v", st)
			}
		})
	}
}

// If the refresh after a 401 fails, the caller gets the token error (here a
// temporary one), not the stale 401.
func TestRefreshFailureAfter401(t *testing.T) {
	var n atomic.Int32
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) > 1 {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"t1","token_type":"bearer","expires_in":300}`))
	}))
	defer tokenSrv.Close()
	fhir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "expired", http.StatusUnauthorized)
	}))
	defer fhir.Close()
	testKeys(t)
	cfg := smartConfigFor(t, ecKey)
	cfg.TokenURL = tokenSrv.URL + "/token"
	ts, err := cfg.TokenSource(context.Background(), tokenSrv.Client(), "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Client(&http.Client{}, ts).Get(fhir.URL + "/Patient")
	if !errors.Is(err, ErrTemporary) || !strings.Contains(err.Error(), "after HTTP 401") {
		t.Fatalf("err = %v, want a temporary token error", err)
	}
}
