#!/bin/sh
# Registers the "default" namespace and bulkflow's search attributes, so the
# Temporal UI can filter exports by server, level, phase and types
# (workflows.SearchAttributesToRegister; deploy/compose_test.go checks the
# list). Idempotent: existing ones are kept.
set -eu
ADDR="${TEMPORAL_ADDRESS:-temporal:7233}"
NS="${TEMPORAL_NAMESPACE:-default}"
until temporal operator cluster health --address "$ADDR"; do
  echo "waiting for Temporal at $ADDR"; sleep 2
done
temporal operator namespace describe -n "$NS" --address "$ADDR" >/dev/null 2>&1 ||
  temporal operator namespace create -n "$NS" --retention 7d --address "$ADDR"
for sa in FhirServer:Keyword ExportLevel:Keyword ExportPhase:Keyword ResourceTypes:KeywordList; do
  name=${sa%%:*}; type=${sa#*:}
  temporal operator search-attribute list -n "$NS" --address "$ADDR" | grep -qw "$name" ||
    temporal operator search-attribute create -n "$NS" --name "$name" --type "$type" --address "$ADDR"
done
echo "Namespace $NS and bulkflow's search attributes are registered"
