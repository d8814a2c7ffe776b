package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/edgegw/gateway/internal/testkit"
)

// `gateway check` opens and parses every file the config names: what only
// existed passed before, and the service then failed at every restart.
func TestLoadOpensAndParsesEveryFile(t *testing.T) {
	dir := t.TempDir()
	ca := testkit.NewCA(t, "files")
	srv := ca.Server()
	other := ca.Client("other")
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	users := filepath.Join(dir, "users")
	os.WriteFile(users, []byte("# terminals\nterm-1:"+string(hash)+"\n"), 0o600)
	badUsers := filepath.Join(dir, "bad-users")
	os.WriteFile(badUsers, []byte("term-1:"+string(hash)+"\nterm-2 secret\n"), 0o600)
	emptyUsers := filepath.Join(dir, "empty-users")
	os.WriteFile(emptyUsers, []byte("# nobody yet\n"), 0o600)
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("s3cret\n"), 0o600)
	emptyToken := filepath.Join(dir, "empty-token")
	os.WriteFile(emptyToken, []byte("\n"), 0o600)
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"), 0o600)
	notDir := filepath.Join(dir, "a-file")
	os.WriteFile(notDir, nil, 0o600)

	write := func(yaml string) string {
		p := filepath.Join(t.TempDir(), "gateway.yaml")
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := "kafka: {brokers: ['127.0.0.1:9092']}\ndata_dir: " + filepath.Join(dir, "data") + "\n"
	tls := func(cert, key, clientCA string) string {
		return "mqtt: {allow_anonymous: false, users_file: " + users + ", tls: {address: ':8883', cert_file: " + cert + ", key_file: " + key + ", client_ca_file: " + clientCA + "}}\n"
	}
	good := base + tls(srv.CertFile, srv.KeyFile, ca.File) + "admin: {token_file: " + token + "}\n"
	if _, err := Load(write(good)); err != nil {
		t.Fatalf("a good hardened config: %v", err)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"cert_file is the users file", base + tls(users, srv.KeyFile, ca.File), "mqtt.tls.cert_file: " + users + " holds no PEM certificate"},
		{"key of another certificate", base + tls(srv.CertFile, other.KeyFile, ca.File), "mqtt.tls.key_file: " + other.KeyFile + " does not go with"},
		{"key_file is a certificate", base + tls(srv.CertFile, srv.CertFile, ca.File), "mqtt.tls.key_file: " + srv.CertFile + " holds no PEM private key"},
		{"client CA that does not parse", base + tls(srv.CertFile, srv.KeyFile, garbage), "mqtt.tls.client_ca_file: " + garbage},
		{"client CA is a device", base + tls(srv.CertFile, srv.KeyFile, "/dev/zero"), "mqtt.tls.client_ca_file: cannot read \"/dev/zero\": /dev/zero is not a regular file"},
		{"users file with a bad line", base + "mqtt: {allow_anonymous: false, users_file: " + badUsers + "}\n", "mqtt.users_file: users file " + badUsers + " line 2: want username:bcrypt-hash"},
		{"users file with nobody", base + "mqtt: {allow_anonymous: false, users_file: " + emptyUsers + "}\n", "mqtt.users_file: " + emptyUsers + " holds no user"},
		{"empty token", base + "admin: {token_file: " + emptyToken + "}\n", "admin.token_file: " + emptyToken + " holds no token"},
		{"kafka CA garbage", "data_dir: " + dir + "\nkafka: {brokers: ['127.0.0.1:9092'], tls: {enabled: true, ca_file: " + users + "}}\n", "kafka.tls.ca_file: " + users + " holds no PEM certificate"},
		{"SASL without its password", "data_dir: " + dir + "\nkafka: {brokers: ['127.0.0.1:9092'], sasl: {mechanism: SCRAM-SHA-512, username: box}}\n", "kafka.sasl.password: must be set"},
		{"data_dir is a file", "kafka: {brokers: ['127.0.0.1:9092']}\ndata_dir: " + notDir + "\n", "data_dir: " + notDir + " is not a directory"},
	} {
		_, err := Load(write(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want a problem with %q", tc.name, err, tc.want)
		}
	}

	// As a user who cannot read the key (the service user, a root-only key).
	if os.Geteuid() != 0 {
		key := filepath.Join(dir, "root-only-key.pem")
		data, _ := os.ReadFile(srv.KeyFile)
		os.WriteFile(key, data, 0o000)
		_, err := Load(write(base + tls(srv.CertFile, key, ca.File)))
		if err == nil || !strings.Contains(err.Error(), "mqtt.tls.key_file: cannot read") || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("unreadable key: %v", err)
		}
	}

	// LoadSettings looks at none of them (status, buffer, deadletter).
	if _, err := LoadSettings(write(base+tls("/nonexistent/cert", "/nonexistent/key", "/nonexistent/ca")), nil); err != nil {
		t.Errorf("LoadSettings opened the files: %v", err)
	}
}

// A YAML syntax error names the line at fault, not where its block began.
func TestYAMLErrorLine(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"id: x\nkafka:\n  brokers: [a:1]\n   client_id: y\nmqtt:\n  address: ':1'\n", "line 4: did not find expected key"},
		{"id: x\nkafka:\n  brokers: [a:1]\nmqtt:\n\taddress: x\n", "line 5: found character that cannot start any token"},
	} {
		_, err := Parse([]byte(tc.yaml), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
