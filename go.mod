module github.com/bulkflow/bulkflow

go 1.26.8

require (
	github.com/go-jose/go-jose/v4 v4.1.9 // indirect
	go.temporal.io/sdk v1.51.0 // indirect
	golang.org/x/oauth2 v0.38.0 // indirect
)
