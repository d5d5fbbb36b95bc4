package authserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is a throw-away certificate authority with one server and one client
// certificate (ECDSA P-256), for TLS and mTLS tests. Everything is generated
// in memory; WriteFiles puts it on disk for tools that want paths.
type PKI struct {
	CACertPEM     []byte
	ServerCertPEM []byte
	ServerKeyPEM  []byte // PKCS#8
	ClientCertPEM []byte
	ClientKeyPEM  []byte // PKCS#8

	caPool     *x509.CertPool
	serverCert tls.Certificate
	clientCert tls.Certificate
}

// NewTestPKI creates the CA, a server certificate valid for 127.0.0.1, ::1,
// localhost and any extra hosts (IP literals or DNS names), and a client
// certificate (CN "bulkflow-test-client"). Certificates are valid from an
// hour ago (tolerating clock skew) for 24 hours.
func NewTestPKI(hosts ...string) (*PKI, error) {
	now := time.Now()
	notBefore, notAfter := now.Add(-time.Hour), now.Add(24*time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("authserver: PKI: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "bulkflow test CA", Organization: []string{"bulkflow testsuite"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("authserver: PKI: CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("authserver: PKI: CA: %w", err)
	}

	p := &PKI{CACertPEM: pemBlock("CERTIFICATE", caDER), caPool: x509.NewCertPool()}
	p.caPool.AddCert(caCert)

	serverTmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			serverTmpl.IPAddresses = append(serverTmpl.IPAddresses, ip)
		} else if h != "" {
			serverTmpl.DNSNames = append(serverTmpl.DNSNames, h)
		}
	}
	if p.ServerCertPEM, p.ServerKeyPEM, p.serverCert, err = issue(serverTmpl, caCert, caKey); err != nil {
		return nil, fmt.Errorf("authserver: PKI: server: %w", err)
	}

	clientTmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "bulkflow-test-client"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if p.ClientCertPEM, p.ClientKeyPEM, p.clientCert, err = issue(clientTmpl, caCert, caKey); err != nil {
		return nil, fmt.Errorf("authserver: PKI: client: %w", err)
	}
	return p, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		// crypto/rand does not fail on supported platforms; a fixed serial is
		// still a valid certificate.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func issue(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (certPEM, keyPEM []byte, pair tls.Certificate, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, pair, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, pair, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, pair, err
	}
	certPEM, keyPEM = pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER)
	pair, err = tls.X509KeyPair(certPEM, keyPEM)
	return certPEM, keyPEM, pair, err
}

// CertPool returns a pool holding only the test CA.
func (p *PKI) CertPool() *x509.CertPool { return p.caPool.Clone() }

// ServerTLSConfig serves the server certificate with TLS >= 1.2 (BD2 L30-38:
// "SHALL use TLS ≥ 1.2"). With requireClientCert, clients must present a
// certificate signed by the test CA; otherwise one is verified if offered.
func (p *PKI) ServerTLSConfig(requireClientCert bool) *tls.Config {
	auth := tls.VerifyClientCertIfGiven
	if requireClientCert {
		auth = tls.RequireAndVerifyClientCert
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{p.serverCert},
		ClientCAs:    p.caPool.Clone(),
		ClientAuth:   auth,
	}
}

// ClientTLSConfig trusts the test CA and, if withClientCert, presents the
// client certificate.
func (p *PKI) ClientTLSConfig(withClientCert bool) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: p.caPool.Clone()}
	if withClientCert {
		c.Certificates = []tls.Certificate{p.clientCert}
	}
	return c
}

// PKI file keys in the WriteFiles result.
const (
	FileCACert     = "ca_cert"
	FileServerCert = "server_cert"
	FileServerKey  = "server_key"
	FileClientCert = "client_cert"
	FileClientKey  = "client_key"
)

// WriteFiles writes the PEM files into dir (created if needed; keys mode
// 0600) and returns their paths keyed by the File* constants.
func (p *PKI) WriteFiles(dir string) (paths map[string]string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("authserver: PKI: %w", err)
	}
	files := []struct {
		key, name string
		data      []byte
		mode      os.FileMode
	}{
		{FileCACert, "ca.pem", p.CACertPEM, 0o644},
		{FileServerCert, "server.pem", p.ServerCertPEM, 0o644},
		{FileServerKey, "server-key.pem", p.ServerKeyPEM, 0o600},
		{FileClientCert, "client.pem", p.ClientCertPEM, 0o644},
		{FileClientKey, "client-key.pem", p.ClientKeyPEM, 0o600},
	}
	paths = make(map[string]string, len(files))
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if err := os.WriteFile(path, f.data, f.mode); err != nil {
			return nil, fmt.Errorf("authserver: PKI: %w", err)
		}
		paths[f.key] = path
	}
	return paths, nil
}
