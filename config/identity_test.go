package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIdentityDefaults(t *testing.T) {
	cfg, err := Parse([]byte(minimal), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.MQTT
	if m.ClientIDBinding != "identity" || !m.BindsClientID() || m.ConnectTimeout != 10*time.Second ||
		m.MaxSessionExpiry != 720*time.Hour || m.MaxSessions != 100000 || m.TopicAliasMax != 16 ||
		m.MaxConnectSize != 16<<10 || m.MaxClientIDLength != 128 || m.MaxUsernameLength != 128 {
		t.Fatalf("defaults: %+v", m)
	}
	if cfg.Admin.Pprof || cfg.Admin.TokenFile != "" {
		t.Fatalf("admin defaults: %+v", cfg.Admin)
	}
	// the per-listener overrides inherit allow_anonymous unless set
	cfg, err = Parse([]byte(minimal+"mqtt: {allow_anonymous: true, tcp_allow_anonymous: false, users_file: "+usersPath(t)+"}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MQTT.AnonymousTCP || !cfg.MQTT.AnonymousWebsocket || !cfg.MQTT.AnonymousTLS {
		t.Fatalf("overrides: %+v", cfg.MQTT)
	}
	// max_connect_size never exceeds max_packet_size
	cfg, err = Parse([]byte(minimal+"mqtt: {max_packet_size: 4096}\n"), nil)
	if err != nil || cfg.MQTT.MaxConnectSize != 4096 {
		t.Fatalf("connect size %v %v", cfg, err)
	}
}

func usersPath(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "users")
	os.WriteFile(p, []byte("a:$2a$04$abcdefghijklmnopqrstuuJ0uLxZ3p0cQ4Y3l0p7yHq9iZr8sH3cW\n"), 0o600)
	return p
}

// `gateway check` flags combinations that cannot do what was meant.
func TestIdentityBadFiles(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, []byte("x"), 0o600)
	cases := []struct{ name, yaml, want string }{
		{"bad binding", "mqtt: {client_id_binding: prefix}\n", "mqtt.client_id_binding: must be one of identity | any"},
		{"timeout too long", "mqtt: {connect_timeout: 2m}\n", "mqtt.connect_timeout: must be a duration above 0 and at most 30s"},
		{"timeout zero", "mqtt: {connect_timeout: 0}\n", "mqtt.connect_timeout:"},
		{"expiry zero", "mqtt: {max_session_expiry: 0s}\n", "mqtt.max_session_expiry: must be a duration from 1s"},
		{"sessions zero", "mqtt: {max_sessions: 0}\n", "mqtt.max_sessions: must be between"},
		{"alias too big", "mqtt: {topic_alias_max: 70000}\n", "mqtt.topic_alias_max: must be between 0 and 65535"},
		{"tiny connect", "mqtt: {max_connect_size: 10}\n", "mqtt.max_connect_size: must be at least 64"},
		{"ca without tls", "mqtt: {tls: {client_ca_file: " + ca + "}}\n", "mqtt.tls.client_ca_file: is set but mqtt.tls.address is empty"},
		{"override on disabled listener", "mqtt: {websocket_allow_anonymous: true}\n", "mqtt.websocket_allow_anonymous: is set but that listener is disabled"},
		{"tcp closed without users", "mqtt: {allow_anonymous: true, tcp_allow_anonymous: false}\n", "mqtt.tcp_allow_anonymous: the plain listener"},
		{"certs only on tls", "mqtt: {allow_anonymous: false, tls: {address: ':8883', cert_file: " + ca + ", key_file: " + ca + ", client_ca_file: " + ca + "}}\n", "mqtt.tcp_allow_anonymous: the plain listener (mqtt.address) refuses anonymous clients"},
		{"token file missing", "admin: {token_file: /nonexistent/token}\n", "admin.token_file: cannot read"},
		{"pprof without admin", "admin: {address: '', pprof: true}\n", "admin.address: is empty"},
		{"bad acl placeholder shape", "acl: {publish: ['a/{cert_cn}#']}\n", "acl.publish[0]: invalid topic filter"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(minimal+c.yaml), nil)
			if err == nil {
				t.Fatalf("accepted:\n%s", c.yaml)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %q, want it to contain %q", err, c.want)
			}
		})
	}
	// A TLS-only terminal listener with certificates and a loopback
	// listener for local apps is a sensible combination.
	ok := "mqtt: {address: '127.0.0.1:1883', allow_anonymous: false, tcp_allow_anonymous: true, tls: {address: ':8883', cert_file: " + ca + ", key_file: " + ca + ", client_ca_file: " + ca + "}}\nacl: {publish: ['terminals/{cert_cn}/#']}\n"
	if _, err := Parse([]byte(minimal+ok), nil); err != nil {
		t.Fatalf("refused: %v", err)
	}
}
