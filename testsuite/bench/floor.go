package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The floor (issue 14): what the same downloads cost with nothing but a
// plain Go HTTP client. It kicks off the same export on the same server,
// waits for the manifest, then GETs every output, error and deleted URL to a
// file on disk with floorConcurrency requests at once, without validation,
// hashing, fsync or any bookkeeping. floorResult.wall runs from the first
// file GET to the last file written: the server's preparation wait is not
// in it. bulkflow's figure to compare (runResult.window) runs from the
// first file GET the server saw to the export's commit, so neither side
// counts the kick-off and status polling, and bulkflow pays for its
// validation, staging, commit and Temporal round trips.

// floorConcurrency is bulkflow's default download window (workflows
// defaultConcurrency), so both sides have as many requests in flight.
const floorConcurrency = 8

type floorResult struct {
	wall  time.Duration
	files int
	bytes int64
}

// floor runs one floor download of the export of types from base into dir.
func floor(ctx context.Context, base string, types []string, dir string) (floorResult, error) {
	var r floorResult
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: floorConcurrency}}
	defer hc.CloseIdleConnections()
	u := strings.TrimRight(base, "/") + "/$export"
	if len(types) > 0 {
		u += "?_type=" + url.QueryEscape(strings.Join(types, ","))
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	resp, err := hc.Do(req)
	if err != nil {
		return r, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	status := resp.Header.Get("Content-Location")
	if resp.StatusCode != http.StatusAccepted || status == "" {
		return r, fmt.Errorf("floor kick-off: %s", resp.Status)
	}
	var urls []string
	for next := status; next != ""; {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, next, nil)
		req.Header.Set("Accept", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return r, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			return r, err
		}
		if resp.StatusCode == http.StatusAccepted {
			select {
			case <-ctx.Done():
				return r, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		if resp.StatusCode != http.StatusOK {
			return r, fmt.Errorf("floor status: %s", resp.Status)
		}
		var m struct {
			Output, Error, Deleted []struct {
				URL string `json:"url"`
			}
			Link []struct {
				Relation string `json:"relation"`
				URL      string `json:"url"`
			} `json:"link"`
		}
		if err := json.Unmarshal(body, &m); err != nil {
			return r, fmt.Errorf("floor manifest: %w", err)
		}
		for _, l := range [][]struct {
			URL string `json:"url"`
		}{m.Output, m.Error, m.Deleted} {
			for _, f := range l {
				urls = append(urls, f.URL)
			}
		}
		next = ""
		for _, l := range m.Link {
			if l.Relation == "next" {
				next = l.URL
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return r, err
	}
	work := make(chan int)
	var bytes atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, floorConcurrency)
	start := time.Now()
	for w := range floorConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if errs[w] != nil {
					continue
				}
				n, err := get(ctx, hc, urls[i], filepath.Join(dir, fmt.Sprintf("%06d.ndjson", i)))
				bytes.Add(n)
				errs[w] = err
			}
		}()
	}
	for i := range urls {
		work <- i
	}
	close(work)
	wg.Wait()
	r.wall = time.Since(start)
	r.files, r.bytes = len(urls), bytes.Load()
	// Tidy the job away, as a client should.
	if req, err := http.NewRequestWithContext(ctx, http.MethodDelete, status, nil); err == nil {
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	return r, errors.Join(errs...)
}

func get(ctx context.Context, hc *http.Client, u, path string) (int64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("Accept", "application/fhir+ndjson")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("floor GET: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, resp.Body)
	return n, errors.Join(err, f.Close())
}
