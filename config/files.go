package config

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"
)

// The files a config names are opened and parsed by `gateway check` (and at
// start) as the user the process runs as: a key readable only by root, or a
// cert_file that points at the users file, passes a check that only looks
// whether the file is there and then fails the service at every restart.

// Size bounds for reading the files a config names: a path that points at
// /dev/zero or a huge file must not read until the box runs out of memory.
const (
	maxPEMFile   = 16 << 20 // certificates, keys, CA bundles (a system bundle is ~250 KiB)
	maxUsersFile = 64 << 20 // ~800,000 users at a cost-10 bcrypt hash each
	maxTokenFile = 64 << 10
)

// ReadBounded reads the regular file at path, at most max bytes: a FIFO, a
// device or a larger file is refused with an error saying so.
func ReadBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d this file may hold", path, fi.Size(), max)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s grew past %d bytes while it was read", path, max)
	}
	return data, nil
}

// LoadUsers reads a users file: one "username:bcrypt-hash" per line; blank
// lines and lines starting with # are ignored.
func LoadUsers(path string) (map[string][]byte, error) {
	data, err := ReadBounded(path, maxUsersFile)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	return parseUsers(data, path)
}

func parseUsers(data []byte, path string) (map[string][]byte, error) {
	users := map[string][]byte{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("users file %s line %d: want username:bcrypt-hash", path, n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("users file %s line %d: %q is not a bcrypt hash", path, n, name)
		}
		users[name] = []byte(hash)
	}
	return users, sc.Err()
}

// CheckFiles opens and parses every file cfg names, as the user the process
// runs as: certificates and keys (and that each key belongs to its
// certificate), CA bundles, the users file, the admin token file; that
// data_dir can be written; and that the secrets the service needs at start
// are there (the SASL password, which usually comes from the environment).
// It returns one problem per key.
func CheckFiles(cfg *Config) Problems {
	c := &checker{}
	m := &cfg.MQTT
	if m.TLS.Address != "" {
		c.keyPair("mqtt.tls", m.TLS.CertFile, m.TLS.KeyFile)
		c.caBundle("mqtt.tls.client_ca_file", m.TLS.ClientCAFile)
	}
	if m.UsersFile != "" {
		if data, err := ReadBounded(m.UsersFile, maxUsersFile); err != nil {
			c.addf("mqtt.users_file", "cannot read %q: %v", m.UsersFile, unwrapPathErr(err))
		} else if users, err := parseUsers(data, m.UsersFile); err != nil {
			c.addf("mqtt.users_file", "%v", err)
		} else if len(users) == 0 && !m.AllowAnonymous && m.TLS.ClientCAFile == "" {
			c.addf("mqtt.users_file", "%s holds no user: nobody could log in (add one with gateway passwd --file %s USER)", m.UsersFile, m.UsersFile)
		}
	}
	if k := &cfg.Kafka; k.TLS.Enabled {
		c.caBundle("kafka.tls.ca_file", k.TLS.CAFile)
		if k.TLS.CertFile != "" && k.TLS.KeyFile != "" {
			c.keyPair("kafka.tls", k.TLS.CertFile, k.TLS.KeyFile)
		}
	}
	if k := &cfg.Kafka; k.SASL.Mechanism != "" && k.SASL.Password == "" {
		// Not a settings problem (it usually comes from the service's
		// environment, which a tool may not be allowed to read), but the
		// service cannot start without it.
		c.addf("kafka.sasl.password", "must be set when kafka.sasl.mechanism is set: in the file, or as GATEWAY_KAFKA_SASL_PASSWORD in the service's environment (/etc/default/gateway)")
	}
	if cfg.Admin.TokenFile != "" {
		data, err := ReadBounded(cfg.Admin.TokenFile, maxTokenFile)
		switch {
		case err != nil:
			c.addf("admin.token_file", "cannot read %q: %v", cfg.Admin.TokenFile, unwrapPathErr(err))
		case strings.TrimSpace(firstLine(data)) == "":
			c.addf("admin.token_file", "%s holds no token (its first line is empty)", cfg.Admin.TokenFile)
		}
	}
	c.writableDir("data_dir", cfg.DataDir)
	return c.problems
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// keyPair checks prefix.cert_file and prefix.key_file: both readable, the
// first a PEM certificate chain, the second a PEM private key that matches
// it.
func (c *checker) keyPair(prefix, certFile, keyFile string) {
	certPEM := c.pemFile(prefix+".cert_file", certFile, "CERTIFICATE")
	keyPEM := c.pemFile(prefix+".key_file", keyFile, "PRIVATE KEY")
	if certPEM == nil || keyPEM == nil {
		return
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		c.addf(prefix+".key_file", "%s does not go with %s: %v", keyFile, certFile, err)
	}
}

// caBundle checks a file of one or more PEM CA certificates.
func (c *checker) caBundle(key, path string) {
	data := c.pemFile(key, path, "CERTIFICATE")
	if data == nil {
		return
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		c.addf(key, "%s holds no certificate that parses", path)
	}
}

// pemFile reads path and checks it holds a PEM block whose type ends in
// want ("CERTIFICATE"; "PRIVATE KEY" also takes "RSA PRIVATE KEY" and "EC
// PRIVATE KEY"), and that certificates parse. It returns the content, or nil
// after adding a problem.
func (c *checker) pemFile(key, path, want string) []byte {
	if path == "" {
		return nil // "must be set" is reported by validate
	}
	data, err := ReadBounded(path, maxPEMFile)
	if err != nil {
		c.addf(key, "cannot read %q: %v", path, unwrapPathErr(err))
		return nil
	}
	found := false
	for rest := data; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if !strings.HasSuffix(blk.Type, want) {
			continue
		}
		if want == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
				c.addf(key, "%s: a certificate does not parse: %v", path, err)
				return nil
			}
		}
		found = true
	}
	if !found {
		c.addf(key, "%s holds no PEM %s", path, strings.ToLower(want))
		return nil
	}
	return data
}

// writableDir checks that dir exists and this user can create files in it,
// or that it can be created.
func (c *checker) writableDir(key, dir string) {
	if dir == "" {
		return
	}
	d := dir
	for {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				c.addf(key, "%s is not a directory", d)
				return
			}
			if err := unix.Access(d, unix.W_OK|unix.X_OK); err != nil {
				if d == dir {
					c.addf(key, "cannot write in %s: %v", d, err)
				} else {
					c.addf(key, "%s does not exist and cannot be created in %s: %v", dir, d, err)
				}
			}
			return
		}
		if !errors.Is(err, os.ErrNotExist) {
			c.addf(key, "%s: %v", d, unwrapPathErr(err))
			return
		}
		parent := filepath.Dir(d)
		if parent == d {
			return
		}
		d = parent
	}
}
