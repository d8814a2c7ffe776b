package broker

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"
)

// revocations are the certificate revocation lists of mqtt.tls.crl_file:
// per issuer (its raw subject), the revoked serial numbers.
type revocations struct {
	byIssuer map[string]map[string]bool // raw issuer -> serial (decimal) -> revoked
	stale    []string                   // issuers whose CRL is past its next update
}

// loadCRLs reads PEM ("X509 CRL" blocks) or DER CRLs from path and checks
// that each is signed by one of the client CAs: a CRL nobody can vouch for
// could revoke anyone, or be a typo that revokes nobody.
func loadCRLs(path string, cas []*x509.Certificate, now time.Time) (*revocations, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mqtt.tls.crl_file: %w", err)
	}
	var ders [][]byte
	if bytes.Contains(data, []byte("-----BEGIN")) {
		for rest := data; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if b.Type == "X509 CRL" {
				ders = append(ders, b.Bytes)
			}
		}
	} else {
		ders = [][]byte{data}
	}
	if len(ders) == 0 {
		return nil, fmt.Errorf("mqtt.tls.crl_file: no CRL in %s (PEM blocks \"X509 CRL\", or one DER CRL)", path)
	}
	rv := &revocations{byIssuer: map[string]map[string]bool{}}
	for i, der := range ders {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("mqtt.tls.crl_file: CRL %d of %s: %w", i+1, path, err)
		}
		var signer *x509.Certificate
		for _, ca := range cas {
			if bytes.Equal(ca.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(ca) == nil {
				signer = ca
				break
			}
		}
		if signer == nil {
			return nil, fmt.Errorf("mqtt.tls.crl_file: CRL %d of %s (issuer %q) is not signed by a CA of mqtt.tls.client_ca_file", i+1, path, crl.Issuer)
		}
		set := rv.byIssuer[string(crl.RawIssuer)]
		if set == nil {
			set = map[string]bool{}
			rv.byIssuer[string(crl.RawIssuer)] = set
		}
		for _, e := range crl.RevokedCertificateEntries {
			set[e.SerialNumber.String()] = true
		}
		if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
			rv.stale = append(rv.stale, crl.Issuer.String())
		}
	}
	return rv, nil
}

// errRevoked refuses a client certificate that a CRL lists.
var errRevoked = errors.New("client certificate revoked (mqtt.tls.crl_file)")

// check refuses a verified chain one of whose certificates (but the root)
// is revoked by its issuer's CRL.
func (rv *revocations) check(chains [][]*x509.Certificate) error {
	for _, chain := range chains {
		for _, c := range chain[:max(len(chain)-1, 0)] {
			if rv.revoked(c.RawIssuer, c.SerialNumber) {
				return errRevoked
			}
		}
	}
	return nil
}

func (rv *revocations) revoked(issuer []byte, serial *big.Int) bool {
	return rv.byIssuer[string(issuer)][serial.String()]
}

// parseCerts returns the certificates of a PEM file (the client CAs).
func parseCerts(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil && b.Type == "CERTIFICATE" {
			out = append(out, c)
		}
	}
}
