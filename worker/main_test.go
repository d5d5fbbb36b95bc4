package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The container healthcheck: exit 0 only on a 2xx answer.
func TestProbeURL(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) }))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	defer bad.Close()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	for url, want := range map[string]int{ok.URL + "/healthz": 0, bad.URL: 1, gone.URL: 1} {
		if got := probeURL(url, io.Discard); got != want {
			t.Errorf("probe %s = %d, want %d", url, got, want)
		}
	}
}
