#!/bin/sh
# Creates Temporal's two Postgres databases and brings their schemas to the
# version of this admin-tools image: what the deprecated auto-setup image did
# on every start, done once per `docker compose up` by temporal-admin-tools
# (the shape of temporalio/samples-server's compose/). Safe to re-run:
# create fails harmlessly on an existing database, update-schema is a no-op
# at the latest version. Production: run it under change control.
set -eu
SQL="temporal-sql-tool --plugin postgres12 --ep ${POSTGRES_SEEDS} -u ${POSTGRES_USER} -p ${DB_PORT}"
for db in temporal temporal_visibility; do
  schema=temporal
  [ "$db" = temporal_visibility ] && schema=visibility
  $SQL --db "$db" create || true
  $SQL --db "$db" setup-schema -v 0.0 || true
  $SQL --db "$db" update-schema -d "/etc/temporal/schema/postgresql/v12/${schema}/versioned"
done
echo "Temporal schemas are up to date"
