package testsuite

import (
	"bytes"
	"testing"
)

// NoGzip serves identity even to a client that asks for gzip (the bulk
// client always does), with the same bytes; the force-gzip fault still wins.
func TestNoGzipServesIdentity(t *testing.T) {
	s := startServer(t, Options{Patients: 10, LargeAttachments: -1, NoGzip: true})
	m := poll(t, kickoff(t, req(t, "GET", s.BaseURL()+"/$export?_type=Observation", nil, kickHeaders...)))
	u := m.Output[0].URL
	_, plain := do(t, req(t, "GET", u, nil))
	resp, body := do(t, req(t, "GET", u, nil, "Accept-Encoding: gzip"))
	if enc := resp.Header.Get("Content-Encoding"); enc != "" {
		t.Fatalf("Content-Encoding %q with NoGzip", enc)
	}
	if !bytes.Equal(body, plain) || bytes.Count(body, []byte("\n")) != m.Output[0].Count {
		t.Fatalf("identity body differs: %d bytes, %d lines, want %d lines", len(body), bytes.Count(body, []byte("\n")), m.Output[0].Count)
	}
	if err := s.SetFaults("file=force-gzip"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, req(t, "GET", u, nil)); resp.Header.Get("Content-Encoding") != "gzip" {
		t.Error("force-gzip fault did not gzip with NoGzip set")
	}
}
