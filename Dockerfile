# syntax=docker/dockerfile:1
#
# bulkflow image: the Temporal worker (entrypoint), the starter CLI and the
# test FHIR Bulk Data server, all static Go binaries.
#
#   docker build -t bulkflow .
#   docker run --rm bulkflow                                   # worker
#   docker run --rm --entrypoint /usr/local/bin/starter bulkflow help
#   docker run --rm -p 9090:9090 --entrypoint /usr/local/bin/fhirserver \
#       bulkflow -addr 0.0.0.0:9090
#
# docker-compose.yml at the repo root builds this file for the worker and
# fhirserver services.

############################ build ############################
# Pinned to go.mod's Go version (deploy/compose_test.go checks it).
FROM golang:1.26.8 AS build
WORKDIR /src

# Module download first, keyed only on go.mod/go.sum, so source edits reuse
# the cached layer (and the BuildKit cache mount keeps it across go.sum bumps).
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
# CGO_ENABLED=0: fully static binaries, so the final stage needs no libc.
# -trimpath and -s -w: reproducible paths, smaller binaries.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ \
        ./worker ./starter ./testsuite/fhirserver

# The worker writes exports to /data/out. A fresh named volume copies the
# ownership of the image's directory at its mount point, so create it here
# owned by distroless's nonroot user (65532); distroless has no shell to
# mkdir/chown in the final stage.
RUN mkdir -p /rootfs/data/out

############################ runtime ############################
# distroless/static: no shell, no package manager, CA certificates and
# tzdata included (needed for HTTPS to EHRs and OAuth2 token endpoints).
# The binaries are static, so nothing else is needed, and the :nonroot tag
# runs as uid 65532. With no shell, debug through an ephemeral debug
# container (docker debug, kubectl debug) rather than baking a shell into
# the production image; debian:bookworm-slim would only be worth its extra
# size and CVE surface if the entrypoint needed a shell script.
FROM gcr.io/distroless/static-debian12:nonroot

COPY --from=build --chown=65532:65532 /rootfs/data /data
COPY --from=build /out/worker /out/starter /out/fhirserver /usr/local/bin/

USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/worker"]
