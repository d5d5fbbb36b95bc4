package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/bulkflow/bulkflow/activities"
	"github.com/bulkflow/bulkflow/internal/bulkworker"
	"github.com/bulkflow/bulkflow/internal/codec"
	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// With the codec, the raw histories of an export and its chunk hold no PHI:
// not the FHIR base URL, no patient reference, no resource, and not the text
// of a failure. Without it the same scan finds the URL and the failure text
// (so the scan can see payloads and failures), but never a resource: resources
// never enter Temporal at all.
func TestCodecHistoryHasNoPHI(t *testing.T) {
	requireE2E(t)
	raw := make([]byte, 32)
	rand.Read(raw)
	key, err := codec.NewKey("e2e", raw)
	if err != nil {
		t.Fatal(err)
	}
	cdc, err := codec.New(key)
	if err != nil {
		t.Fatal(err)
	}
	dc := codec.DataConverter(cdc)
	cc, err := client.Dial(client.Options{
		HostPort:         dev.FrontendHostPort(),
		Namespace:        "default",
		Logger:           sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler)),
		DataConverter:    dc,
		FailureConverter: codec.FailureConverter(dc),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Close)

	// The first two downloads of each Patient file come back short (one,
	// then two lines): the first in its batch of small files (a result, not
	// a failure), the second as a DownloadFile attempt whose failure the
	// history keeps (last_failure of the retry's started event), naming the
	// URL and file; the third succeeds. Two different counts, so the second
	// is not taken for the same failure twice.
	const faults = "file:Patient=truncate-lines(n=1)@1; file:Patient=truncate-lines(n=2)@2"
	srv := fhirServer(t, testsuite.Options{Patients: 20, Faults: faults})
	u, err := url.Parse(srv.BaseURL())
	if err != nil {
		t.Fatal(err)
	}
	host := u.Host // 127.0.0.1:port: unique to this test's server

	exportWith := func(c client.Client) (string, workflows.ExportResult) {
		t.Helper()
		queue := fmt.Sprintf("e2e-codec-%d", queueSeq.Add(1))
		reg, _ := servers.Load("")
		w := bulkworker.New(c, queue, activities.New(reg, t.TempDir(), slog.New(slog.DiscardHandler)), 16)
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		id := fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())
		run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: id, TaskQueue: queue},
			workflows.BulkExportWorkflow, workflows.ExportInput{BaseURL: srv.BaseURL()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var res workflows.ExportResult
		if err := run.Get(ctx, &res); err != nil {
			t.Fatalf("export %s: %v", id, err)
		}
		if res.Status != "committed" || res.Totals.Resources["Patient"] != 20 {
			t.Fatalf("export %s: status %q, %d patients", id, res.Status, res.Totals.Resources["Patient"])
		}
		return id, res
	}

	// Encrypted.
	id, _ := exportWith(cc)
	enc, failures := historyBytes(t, id)
	if len(failures) == 0 {
		t.Error("with the codec: no failure in the history, the failure converter went untested")
	}
	for _, f := range failures {
		if f != "Encoded failure" {
			t.Errorf("with the codec, a failure message in clear: %q", f)
		}
	}
	for _, clear := range []string{host, `"resourceType"`, "Patient/"} {
		if i := bytes.Index(enc, []byte(clear)); i >= 0 {
			t.Errorf("with the codec, history holds %q in clear: …%s…", clear, around(enc, i))
		}
	}
	if !bytes.Contains(enc, []byte(codec.EncodingEncrypted)) {
		t.Error("no encrypted payload in the history: the scan saw nothing")
	}
	// The codec client reads its own history back (inputs decode).
	if _, err := cc.DescribeWorkflowExecution(context.Background(), id, ""); err != nil {
		t.Error(err)
	}

	// In clear (the suite's plain client): the same scan finds the URL and the
	// failure text, and still no resource.
	if err := srv.SetFaults(faults); err != nil {
		t.Fatal(err)
	}
	id, _ = exportWith(tclient)
	plain, failures := historyBytes(t, id)
	if !bytes.Contains(plain, []byte(host)) {
		t.Errorf("without the codec the scan does not find %q: it would prove nothing", host)
	}
	var clearFailure bool
	for _, f := range failures {
		clearFailure = clearFailure || strings.Contains(f, "Patient/")
	}
	if !clearFailure {
		t.Errorf("without the codec no failure names the Patient file (%q): the failure check would prove nothing", failures)
	}
	if i := bytes.Index(plain, []byte(`"resourceType"`)); i >= 0 {
		t.Errorf("a resource in the history: …%s…", around(plain, i))
	}
}

// historyBytes is everything the server stores for the export and its
// chunks (see fullHistory), and every failure's message.
func historyBytes(t *testing.T, id string) ([]byte, []string) {
	t.Helper()
	b, failures, _ := fullHistory(t, id, "")
	return b, failures
}

func walk(m protoreflect.Message, buf *bytes.Buffer, failures *[]string) {
	if m.Descriptor().FullName() == "temporal.api.failure.v1.Failure" {
		*failures = append(*failures, m.Get(m.Descriptor().Fields().ByName("message")).String())
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				scalar(fd, l.Get(i), buf, failures)
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				buf.WriteString(k.String())
				buf.WriteByte('\n')
				scalar(fd.MapValue(), mv, buf, failures)
				return true
			})
		default:
			scalar(fd, v, buf, failures)
		}
		return true
	})
}

func scalar(fd protoreflect.FieldDescriptor, v protoreflect.Value, buf *bytes.Buffer, failures *[]string) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		walk(v.Message(), buf, failures)
	case protoreflect.BytesKind:
		buf.Write(v.Bytes())
		buf.WriteByte('\n')
	case protoreflect.StringKind:
		buf.WriteString(v.String())
		buf.WriteByte('\n')
	}
}

func around(b []byte, i int) string {
	lo, hi := max(0, i-80), min(len(b), i+80)
	return strings.ToValidUTF8(string(b[lo:hi]), "?")
}
