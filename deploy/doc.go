// Package deploy holds bulkflow's local deployment files: the worker's
// server registry for docker-compose.yml (servers.json), an annotated example
// for real EHRs (servers.example.json), and a test that validates the
// repository's Dockerfile and docker-compose.yml without a Docker engine.
package deploy
