package main

import (
	"bufio"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCommand starts the command on a free port, reads the base URL from the
// first stdout line, checks one request and shuts it down with SIGINT.
func TestCommand(t *testing.T) {
	r, w, _ := os.Pipe()
	stdout := os.Stdout
	os.Stdout = w
	defer func() { os.Stdout = stdout }()
	os.Args = []string{"fhirserver", "-addr", "127.0.0.1:0", "-patients", "7", "-large-attachments", "-1", "-log-level", "warn",
		"-faults", "metadata=503@1"}
	done := make(chan error, 1)
	go func() { done <- run() }()
	line, err := bufio.NewReader(r).ReadString('\n') // one short line, not NDJSON
	if err != nil {
		t.Fatal(err)
	}
	base, ok := strings.CutPrefix(strings.TrimSpace(line), "FHIR base URL: ")
	if !ok || !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("first line %q", line)
	}
	for i, want := range []int{503, 200} { // the -faults flag is honoured
		resp, err := http.Get(base + "/metadata")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("metadata attempt %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
	syscall.Kill(os.Getpid(), syscall.SIGINT)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no graceful shutdown")
	}
}
