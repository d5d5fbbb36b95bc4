// Package servers is the worker's registry of FHIR servers: base URL,
// credentials and TLS settings, loaded from a config file. Workflows name a
// server (or give its base URL); the credentials never leave the worker.
package servers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/bulkflow/bulkflow/internal/audit"
	"github.com/bulkflow/bulkflow/internal/auth"
	"github.com/bulkflow/bulkflow/internal/bulk"
)

// Server is one configured FHIR server.
type Server struct {
	Name    string      `json:"name"`
	BaseURL string      `json:"baseURL"`
	Auth    auth.Config `json:"auth,omitempty"`
	TLS     TLSConfig   `json:"tls,omitempty"`
	// RetryAfterMin / RetryAfterMax clamp the waits the server asks for
	// (Go durations such as "1s", "10m"). Defaults 1s and 10m.
	RetryAfterMin string `json:"retryAfterMin,omitempty"`
	RetryAfterMax string `json:"retryAfterMax,omitempty"`
	// MaxConcurrentDownloads caps the downloads from the server of all
	// workers together (internal/budget; per worker with -download-budget
	// worker); the fleet adapts below it (AIMD) when the server answers
	// 429/503. Default 16.
	MaxConcurrentDownloads int `json:"maxConcurrentDownloads,omitempty"`
	// AllowedOrigins are further origins (scheme://host[:port], e.g. a CDN
	// serving this server's files with requiresAccessToken true) that may
	// receive this server's credentials: the bearer token and the mTLS
	// client certificate. The FHIR base's origin and tokenURL's origin are
	// always allowed; nothing else is, whatever the server sends
	// (docs/security.md, "Where credentials go").
	AllowedOrigins []string `json:"allowedOrigins,omitempty"`
}

// TLSConfig holds file paths for a custom CA and a client certificate (mTLS).
type TLSConfig struct {
	CAFile   string `json:"caFile,omitempty"`
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
}

// File is the config file's shape.
type File struct {
	Servers []Server `json:"servers"`
}

// Registry resolves server names and base URLs to protocol clients. Clients
// are built once and shared, so each server has one token source per worker.
type Registry struct {
	servers map[string]Server
	// AllowUnconfigured lets a workflow name a base URL that is not in the
	// config file; such servers get no credentials.
	AllowUnconfigured bool
	UserAgent         string

	mu      sync.Mutex
	clients map[string]*bulk.Client
}

// Load reads and validates a config file. An empty path gives an empty registry.
func Load(path string) (*Registry, error) {
	r := &Registry{servers: map[string]Server{}, clients: map[string]*bulk.Client{}, AllowUnconfigured: true}
	if path == "" {
		return r, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("servers config: %w", err)
	}
	var f File
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("servers config %s: %w (see README, \"Configuration\")", path, err)
	}
	for i, s := range f.Servers {
		if err := r.Add(s); err != nil {
			return nil, fmt.Errorf("servers config %s: servers[%d]: %w", path, i, err)
		}
	}
	return r, nil
}

// Add registers s after validating it.
func (r *Registry) Add(s Server) error {
	if s.Name == "" {
		return errors.New(`"name" is required`)
	}
	if _, dup := r.servers[s.Name]; dup {
		return fmt.Errorf("server %q is defined twice", s.Name)
	}
	if err := checkBaseURL(s.BaseURL); err != nil {
		return fmt.Errorf("server %q: %w", s.Name, err)
	}
	if err := s.Auth.Validate(); err != nil {
		return fmt.Errorf("server %q: %w", s.Name, err)
	}
	if s.MaxConcurrentDownloads < 0 || s.MaxConcurrentDownloads > 1024 {
		return fmt.Errorf("server %q: maxConcurrentDownloads %d: use 1 to 1024 (0 = default %d)", s.Name, s.MaxConcurrentDownloads, DefaultMaxConcurrentDownloads)
	}
	if _, err := origins(s); err != nil {
		return fmt.Errorf("server %q: %w", s.Name, err)
	}
	if (s.TLS.CertFile == "") != (s.TLS.KeyFile == "") {
		return fmt.Errorf("server %q: tls.certFile and tls.keyFile go together", s.Name)
	}
	for _, d := range []string{s.RetryAfterMin, s.RetryAfterMax} {
		if d == "" {
			continue
		}
		if _, err := time.ParseDuration(d); err != nil {
			return fmt.Errorf("server %q: %w (use Go durations such as 1s or 10m)", s.Name, err)
		}
	}
	r.servers[s.Name] = s
	return nil
}

// Names lists the configured servers.
func (r *Registry) Names() []string {
	var out []string
	for n := range r.servers {
		out = append(out, n)
	}
	return out
}

func checkBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("base URL %q must be an absolute http(s) URL such as https://ehr.example.org/fhir", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("base URL %q must not have a query or fragment", s)
	}
	return nil
}

func sameBase(a, b string) bool {
	return strings.TrimRight(a, "/") == strings.TrimRight(b, "/")
}

// Client returns the protocol client for a server given by name, or by base
// URL (matched against the configured servers first).
// ClientID is the OAuth client_id the worker uses for the server (for audit
// events; never a secret), "" without client credentials.
func (r *Registry) ClientID(name, baseURL string) string {
	s, _ := r.lookup(name, baseURL)
	return s.Auth.ClientID
}

// lookup finds a configured server by name, else by base URL.
func (r *Registry) lookup(name, baseURL string) (Server, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.servers[name]; ok {
		return s, true
	}
	if baseURL != "" {
		for _, c := range r.servers {
			if sameBase(c.BaseURL, baseURL) {
				return c, true
			}
		}
	}
	return Server{}, false
}

// DefaultMaxConcurrentDownloads is the per-server download cap.
const DefaultMaxConcurrentDownloads = 16

// MaxConcurrentDownloads is the download cap for the server a workflow
// names (by name or base URL).
func (r *Registry) MaxConcurrentDownloads(name, baseURL string) int {
	if s, ok := r.lookup(name, baseURL); ok && s.MaxConcurrentDownloads > 0 {
		return s.MaxConcurrentDownloads
	}
	return DefaultMaxConcurrentDownloads
}

func (r *Registry) Client(name, baseURL string) (*bulk.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s Server
	switch {
	case name != "":
		var ok bool
		if s, ok = r.servers[name]; !ok {
			return nil, fmt.Errorf("server %q is not configured on this worker (configured: %s); add it to the worker's servers file", name, strings.Join(r.Names(), ", "))
		}
		if baseURL != "" && !sameBase(baseURL, s.BaseURL) {
			return nil, fmt.Errorf("server %q has base URL %s, but the request names %s; give one or the other", name, s.BaseURL, baseURL)
		}
	case baseURL != "":
		found := false
		for _, c := range r.servers {
			if sameBase(c.BaseURL, baseURL) {
				s, found = c, true
				break
			}
		}
		if !found {
			if !r.AllowUnconfigured {
				return nil, fmt.Errorf("base URL %s is not configured on this worker; add it to the servers file", baseURL)
			}
			if err := checkBaseURL(baseURL); err != nil {
				return nil, err
			}
			s = Server{Name: "url:" + strings.TrimRight(baseURL, "/"), BaseURL: baseURL}
		}
	default:
		return nil, errors.New("no FHIR server given: set server (a name from the worker's servers file) or baseURL")
	}
	if c, ok := r.clients[s.Name]; ok {
		return c, nil
	}
	c, err := r.build(s)
	if err != nil {
		return nil, err
	}
	r.clients[s.Name] = c
	return c, nil
}

// origins is the server's credential rule (auth.Origins).
func origins(s Server) (*auth.Origins, error) {
	return auth.NewOrigins(s.BaseURL, s.Auth.TokenURL, s.AllowedOrigins)
}

// build wires the server's clients so that credentials follow the origin
// rule on every request, redirect hops included: requests to allowed
// origins go through the transport holding the client certificate (and,
// for the protocol client, get the token); every other request goes
// through a transport without a certificate and loses any Authorization
// header (auth.SplitTransport).
func (r *Registry) build(s Server) (*bulk.Client, error) {
	allowed, err := origins(s)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", s.Name, err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	tr.ResponseHeaderTimeout = 5 * time.Minute
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12} // BD2 L30: TLS 1.2 or later
	if s.TLS.CAFile != "" {
		pem, err := os.ReadFile(s.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("server %q: CA bundle: %w", s.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("server %q: CA bundle %s holds no PEM certificates", s.Name, s.TLS.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	if s.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.TLS.CertFile, s.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("server %q: client certificate: %w", s.Name, err)
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	// The plain transport trusts the same CAs but never holds the client
	// certificate, so a foreign origin cannot be shown it.
	plainTr := tr.Clone()
	plainCfg := tlsCfg.Clone()
	plainCfg.Certificates = nil
	plainTr.TLSClientConfig = plainCfg
	tr.TLSClientConfig = tlsCfg
	split := &http.Client{Transport: &auth.SplitTransport{Origins: allowed, Trusted: tr, Plain: plainTr}}
	ts, err := s.Auth.TokenSource(context.Background(), split, s.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", s.Name, err)
	}
	c := &bulk.Client{
		BaseURL: strings.TrimRight(s.BaseURL, "/"),
		HTTP:    auth.ClientFor(split, ts, allowed),
		// requiresAccessToken false: never the token; the client certificate
		// only on allowed origins (a server that demands mTLS for everything).
		FileHTTP:  &http.Client{Transport: split.Transport},
		Origins:   allowed,
		UserAgent: r.UserAgent,
		Observe:   audit.Observe, // every exchange lands in the calling activity's audit trail
	}
	if s.RetryAfterMin != "" {
		c.MinRetryAfter, _ = time.ParseDuration(s.RetryAfterMin)
	}
	if s.RetryAfterMax != "" {
		c.MaxRetryAfter, _ = time.ParseDuration(s.RetryAfterMax)
	}
	return c, nil
}
