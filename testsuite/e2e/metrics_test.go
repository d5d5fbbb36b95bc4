package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bulkflow/bulkflow/testsuite"
	"github.com/bulkflow/bulkflow/workflows"
)

// `curl /metrics` on a running worker after an export shows bulkflow's own
// metrics with non-zero values, and the Temporal SDK's. A 429 on a file is
// waited out within its attempt (counted as throttled, not as a retry); the
// truncated file is the retry.
func TestWorkerMetricsAfterAnExport(t *testing.T) {
	requireE2E(t)
	workerBin := buildBinary(t, "./worker")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	srv := fhirServer(t, testsuite.Options{Patients: 20, LargeAttachments: -1, Faults: "file:Observation=429(retry-after=1)@1; file:Condition=truncate-lines(n=2)@1"})
	queue := "e2e-metrics"
	cmd := exec.Command(workerBin, "-temporal-address", dev.FrontendHostPort(), "-task-queue", queue, "-output", t.TempDir(),
		"-metrics-addr", addr, "-log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	res := runExport(t, queue, workflows.ExportInput{BaseURL: srv.BaseURL()})

	var body string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if strings.Contains(body, "bulkflow_resources_total") {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	sum := func(metric string) float64 {
		re := regexp.MustCompile(`(?m)^` + metric + `(\{[^}]*\})? ([0-9.e+]+)$`)
		var total float64
		for _, m := range re.FindAllStringSubmatch(body, -1) {
			v, _ := strconv.ParseFloat(m[2], 64)
			total += v
		}
		return total
	}
	if got := sum("bulkflow_resources_total"); got != float64(res.Totals.ResourceCount()) {
		t.Errorf("bulkflow_resources_total = %v, the export moved %d", got, res.Totals.ResourceCount())
	}
	for _, m := range []string{"bulkflow_bytes_total", "bulkflow_throttled_total", "bulkflow_file_retries_total", "bulkflow_export_duration_seconds_count"} {
		if sum(m) == 0 {
			t.Errorf("%s is zero after an export with a 429 and a truncated file", m)
		}
	}
	if !strings.Contains(body, "temporal_") {
		t.Error("no Temporal SDK metrics on /metrics")
	}
	if t.Failed() {
		fmt.Println(body)
	}
}
