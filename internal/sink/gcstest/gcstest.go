// Package gcstest runs an in-process fake Google Cloud Storage server for
// tests, so any package can exercise the gs:// sink without a real bucket or
// an emulator container.
package gcstest

import (
	"strings"
	"testing"

	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
)

// StartFake starts a fake GCS server holding an empty bucket and returns a
// client wired to it. Both are stopped when the test ends.
func StartFake(t testing.TB, bucket string) (*storage.Client, *fakestorage.Server) {
	t.Helper()
	// A real HTTP listener (not only the in-memory transport) so that code
	// building its own client, like sink.Open, can reach it via EmulatorHost.
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1", Port: 0})
	if err != nil {
		t.Fatalf("start fake GCS: %v", err)
	}
	t.Cleanup(srv.Stop)
	srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: bucket})
	client := srv.Client()
	t.Cleanup(func() { client.Close() })
	return client, srv
}

// EmulatorHost is the value for STORAGE_EMULATOR_HOST that points the Cloud
// Storage library (and so sink.Open("gs://...")) at srv:
//
//	t.Setenv("STORAGE_EMULATOR_HOST", gcstest.EmulatorHost(srv))
func EmulatorHost(srv *fakestorage.Server) string {
	return strings.TrimPrefix(srv.URL(), "http://")
}
