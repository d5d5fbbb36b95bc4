# bulkflow: `make demo` runs a complete export on an embedded default;
# `make test` runs every test. Both install what they need on first use.

SHELL        := /bin/bash
GO           ?= go
BIN          := $(CURDIR)/bin
TEMPORAL_CLI := $(BIN)/temporal
# v1.5.1 installs from the module proxy; later CLIs use a replace directive
# that `go install` refuses.
TEMPORAL_CLI_VERSION := v1.5.1
# Temporal's static analyser for non-deterministic workflow code.
WORKFLOWCHECK         := $(BIN)/workflowcheck
WORKFLOWCHECK_VERSION := v0.6.0

.PHONY: demo test test-short vet workflowcheck replay-record bench bench-smoke scale temporal-cli clean

$(TEMPORAL_CLI):
	@echo "Installing the Temporal CLI $(TEMPORAL_CLI_VERSION) into $(BIN) (first run only; builds from source, a few minutes)..."
	GOBIN=$(BIN) $(GO) install github.com/temporalio/cli/cmd/temporal@$(TEMPORAL_CLI_VERSION)

temporal-cli: $(TEMPORAL_CLI)

$(WORKFLOWCHECK):
	GOBIN=$(BIN) $(GO) install go.temporal.io/sdk/contrib/tools/workflowcheck@$(WORKFLOWCHECK_VERSION)

# Non-deterministic calls in workflow code (false positives are listed,
# with their reasons, in workflowcheck.config.yaml).
workflowcheck: $(WORKFLOWCHECK)
	$(WORKFLOWCHECK) -config workflowcheck.config.yaml ./workflows/... ./internal/budget/...

# Re-record the replay corpus (workflows/testdata/corpus) from real runs;
# `make test` replays it. See docs/versioning.md before re-recording.
replay-record: $(TEMPORAL_CLI)
	BULKFLOW_TEMPORAL_CLI=$(TEMPORAL_CLI) BULKFLOW_RECORD_CORPUS=1 $(GO) test -count=1 -run 'TestReplayCorpus' ./testsuite/e2e/

demo: $(TEMPORAL_CLI)
	BULKFLOW_TEMPORAL_CLI=$(TEMPORAL_CLI) $(GO) run ./starter demo

# Includes the replay of every history in workflows/testdata (go test ./workflows/).
test: $(TEMPORAL_CLI) workflowcheck
	$(GO) vet ./...
	BULKFLOW_TEMPORAL_CLI=$(TEMPORAL_CLI) $(GO) test -count=1 -timeout 30m ./...

# Unit tests only: no Temporal dev server needed.
test-short:
	$(GO) test -short ./...

# End-to-end benchmark: Temporal dev server + test FHIR server + the real
# worker as a subprocess; every run verified (docs/benchmarks.md).
bench: $(TEMPORAL_CLI)
	BULKFLOW_TEMPORAL_CLI=$(TEMPORAL_CLI) $(GO) run ./testsuite/bench

# The same scenarios, tiny (< 1 minute).
bench-smoke: $(TEMPORAL_CLI)
	BULKFLOW_TEMPORAL_CLI=$(TEMPORAL_CLI) $(GO) run ./testsuite/bench -scale 0.02 -runs 1

# ~1,000,000 resources end to end, exact counts verified (docs/scale.md). Not for CI.
scale: $(TEMPORAL_CLI)
	BULKFLOW_TEMPORAL_CLI=$(TEMPORAL_CLI) $(GO) run ./testsuite/bench -scenarios scale -runs 1

clean:
	rm -rf bulkflow-demo bulkflow-output
