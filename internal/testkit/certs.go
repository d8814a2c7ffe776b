package testkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority made for one test, with its certificate
// written as PEM in the test's temporary directory.
type CA struct {
	t       testing.TB
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	CertPEM []byte
	File    string // the CA certificate, PEM
}

// serialNumber is random, as tests may make certificates in parallel.
func serialNumber() *big.Int {
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	return n
}

// NewCA makes a self-signed CA named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{t: t, cert: cert, key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	ca.File = filepath.Join(t.TempDir(), name+"-ca.pem")
	if err := os.WriteFile(ca.File, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

// Pool is a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Issued is a certificate and key signed by a CA, in memory and as PEM files.
type Issued struct {
	TLS      tls.Certificate
	CertFile string
	KeyFile  string
	Serial   *big.Int
}

// Server issues a server certificate for 127.0.0.1 and localhost.
func (ca *CA) Server() Issued {
	return ca.issue("localhost", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour), true)
}

// Client issues a client certificate whose subject CN is cn.
func (ca *CA) Client(cn string) Issued {
	return ca.issue(cn, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour), false)
}

// ExpiredClient issues a client certificate for cn that expired an hour ago.
func (ca *CA) ExpiredClient(cn string) Issued {
	return ca.issue(cn, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour), false)
}

// ClientWithSubject issues a client certificate with the given subject
// (e.g. two CNs in ExtraNames); files are named after name.
func (ca *CA) ClientWithSubject(name string, subject pkix.Name) Issued {
	return ca.issueSubject(name, subject, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour), false)
}

// CRL writes a PEM certificate revocation list signed by the CA that
// revokes the given certificates, and returns its path.
func (ca *CA) CRL(revoked ...Issued) string {
	t := ca.t
	t.Helper()
	tmpl := &x509.RevocationList{Number: serialNumber(), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(24 * time.Hour)}
	for _, r := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: r.Serial, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "crl.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (ca *CA) issue(cn string, from, until time.Time, server bool) Issued {
	return ca.issueSubject(cn, pkix.Name{CommonName: cn}, from, until, server)
}

func (ca *CA) issueSubject(cn string, subject pkix.Name, from, until time.Time, server bool) Issued {
	t := ca.t
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(),
		Subject:      subject,
		NotBefore:    from,
		NotAfter:     until,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	is := Issued{TLS: pair, CertFile: filepath.Join(dir, cn+".pem"), KeyFile: filepath.Join(dir, cn+"-key.pem"), Serial: tmpl.SerialNumber}
	if err := os.WriteFile(is.CertFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(is.KeyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return is
}
