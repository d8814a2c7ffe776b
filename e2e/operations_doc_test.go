package e2e

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/gateway/internal/testkit"
)

// docBlock returns the lines of the fenced code block that follows the
// marker <!-- doc-test: NAME --> in a docs page.
func docBlock(t *testing.T, page, name string) []string {
	t.Helper()
	data, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	marker := "<!-- doc-test: " + name + " -->"
	_, rest, ok := strings.Cut(string(data), marker)
	if !ok {
		t.Fatalf("%s has no %s", page, marker)
	}
	lines := strings.Split(rest, "\n")
	var out []string
	in := false
	for _, l := range lines[1:] {
		switch {
		case !in && strings.HasPrefix(l, "```"):
			in = true
		case !in && strings.TrimSpace(l) != "":
			t.Fatalf("%s: %s is not followed by a code block", page, marker)
		case in && strings.HasPrefix(l, "```"):
			if len(out) == 0 {
				t.Fatalf("%s: the block after %s is empty", page, marker)
			}
			return out
		case in:
			out = append(out, l)
		}
	}
	t.Fatalf("%s: the block after %s does not end", page, marker)
	return nil
}

// The operations guide's hardening steps and troubleshooting commands, run
// as written against a gateway installed the way the package installs it,
// in a scratch root: /etc/gateway, /etc/default/gateway and /var/lib live
// under it, the service user gateway is nobody, its group nobody's,
// 127.0.0.1:9100 and the MQTT ports are free ports, and systemctl,
// journalctl and vi are stand-ins that do what they would on the box
// (systemctl starts the gateway as the unit does: the environment file,
// ExecStartPre=gateway check, then gateway run as the service user). The
// test fails when a command does not work as written, or answers 401.
// After the hardening steps the gateway must refuse the admin endpoint
// without the token and take terminals over TLS, by certificate and by
// password.
func TestOperationsGuideCommandsWorkAsWritten(t *testing.T) {
	cred, svc := nobody(t)
	for _, tool := range []string{"bash", "setpriv", "curl", "install", "base64"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	grp, err := user.LookupGroupId(strconv.Itoa(int(cred.Gid)))
	if err != nil {
		t.Skipf("nobody's group: %v", err)
	}
	hardening := docBlock(t, "../docs/operations.md", "hardening")
	troubleshooting := docBlock(t, "../docs/operations.md", "troubleshooting")
	production := strings.Join(docBlock(t, "../docs/configuration.md", "production-config"), "\n") + "\n"

	root := worldDir(t)
	bin := filepath.Join(root, "usr", "bin")
	state := t.TempDir() // the stand-ins' own state: pid file, the journal
	pki := t.TempDir()   // the operator's current directory, files from the PKI
	admin := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	tlsPort := testkit.FreePort(t)
	box := strings.NewReplacer(
		"/etc/gateway", filepath.Join(root, "etc", "gateway"),
		"/etc/default/gateway", filepath.Join(root, "etc", "default", "gateway"),
		"/var/lib", filepath.Join(root, "var", "lib"),
		"127.0.0.1:9100", admin,
		"-g gateway", "-g "+grp.Name,
		"root:gateway", "root:"+grp.Name,
		"chgrp gateway", "chgrp "+grp.Name,
		"--as gateway", "--as "+svc.Username,
		"-u gateway", "-u "+svc.Username,
	)
	deadKafka := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	configs := strings.NewReplacer(
		"/etc/gateway", filepath.Join(root, "etc", "gateway"),
		"/var/lib", filepath.Join(root, "var", "lib"),
		"127.0.0.1:9100", admin,
		`":8883"`, fmt.Sprintf(`"127.0.0.1:%d"`, tlsPort),
		`":1883"`, fmt.Sprintf(`"127.0.0.1:%d"`, testkit.FreePort(t)),
		"127.0.0.1:9092", deadKafka,
		"kafka-1.example.net:9093", deadKafka,
		"kafka-2.example.net:9093", deadKafka,
	)

	// What the package installs (postinst: directories, owners, modes).
	mkdir := func(p string, mode os.FileMode, uid, gid int) {
		if err := os.MkdirAll(p, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		os.Chown(p, uid, gid)
	}
	install := func(from, to string, mode os.FileMode, uid, gid int, r *strings.Replacer) {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, []byte(r.Replace(string(data))), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(to, mode)
		os.Chown(to, uid, gid)
	}
	gid := int(cred.Gid)
	mkdir(filepath.Join(root, "etc", "default"), 0o755, 0, 0)
	mkdir(filepath.Join(root, "etc", "gateway"), 0o750, 0, gid)
	mkdir(filepath.Join(root, "var", "lib"), 0o755, 0, 0)
	mkdir(filepath.Join(root, "var", "lib", "gateway"), 0o750, int(cred.Uid), gid)
	mkdir(bin, 0o755, 0, 0)
	install("../config.example.yaml", filepath.Join(root, "etc", "gateway", "config.yaml"), 0o640, 0, gid, configs)
	install("../deploy/debian/gateway.default", filepath.Join(root, "etc", "default", "gateway"), 0o640, 0, gid, configs)
	install(gatewayBin, filepath.Join(bin, "gateway"), 0o755, 0, 0, strings.NewReplacer())
	productionFile := filepath.Join(state, "production.yaml")
	os.WriteFile(productionFile, []byte(configs.Replace(production)), 0o600)

	// The operator's files from the PKI: one CA signs the server and the
	// terminals.
	ca := testkit.NewCA(t, "terminals")
	srv := ca.Server()
	for from, to := range map[string]string{srv.CertFile: "server.pem", srv.KeyFile: "server.key", ca.File: "terminals-ca.pem"} {
		install(from, filepath.Join(pki, to), 0o600, 0, 0, strings.NewReplacer())
	}
	password := filepath.Join(state, "password")
	os.WriteFile(password, []byte("term-1's password\n"), 0o600)

	// The stand-ins.
	shims := map[string]string{
		"systemctl": `#!/bin/bash
# systemctl for the docs test: the gateway unit as the package ships it
set -u
op=$1; unit=${2%.service}
[ "$unit" = gateway ] || { echo "systemctl stand-in: only gateway.service" >&2; exit 1; }
pidfile=$DOCTEST_STATE/pid
stop() {
	[ -f "$pidfile" ] || return 0
	pid=$(cat "$pidfile")
	kill -TERM "$pid" 2>/dev/null
	for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	rm -f "$pidfile"
}
start() {
	# EnvironmentFile=-/etc/default/gateway, User=gateway, ExecStartPre, ExecStart
	set -a; [ -f "$DOCTEST_ROOT/etc/default/gateway" ] && . "$DOCTEST_ROOT/etc/default/gateway"; set +a
	as="setpriv --reuid=$DOCTEST_USER --regid=$DOCTEST_GROUP --init-groups --"
	cd /
	$as "$DOCTEST_ROOT/usr/bin/gateway" check --config "$DOCTEST_ROOT/etc/gateway/config.yaml" >>"$DOCTEST_STATE/journal" 2>&1 ||
		{ echo "gateway.service: ExecStartPre failed (journalctl -u gateway)" >&2; exit 1; }
	$as "$DOCTEST_ROOT/usr/bin/gateway" run --config "$DOCTEST_ROOT/etc/gateway/config.yaml" >>"$DOCTEST_STATE/journal" 2>&1 &
	echo $! >"$pidfile"
	# Type=notify: systemctl returns once the gateway is ready
	for _ in $(seq 300); do
		kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "gateway.service: exited" >&2; rm -f "$pidfile"; exit 1; }
		code=$(curl -s -o /dev/null -w '%{http_code}' "http://$DOCTEST_ADMIN/readyz")
		[ "$code" = 200 ] || [ "$code" = 401 ] && return 0
		sleep 0.1
	done
	echo "gateway.service: not ready after 30 s" >&2; exit 1
}
case $op in
start) [ -f "$pidfile" ] || start ;;
stop) stop ;;
restart) stop; start ;;
status | is-active) [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null ;;
*) echo "systemctl stand-in: $op?" >&2; exit 1 ;;
esac
`,
		"journalctl": `#!/bin/bash
# journalctl -u gateway [-n N] [-f] for the docs test
n=10
while [ $# -gt 0 ]; do case $1 in -n) n=$2; shift ;; esac; shift; done
tail -n "$n" "$DOCTEST_STATE/journal"
`,
		"vi": `#!/bin/bash
# the operator's edits: the config becomes the production example of
# configuration.md; the environment file gets the SASL password
case $1 in
*/etc/gateway/config.yaml) cp "$DOCTEST_PRODUCTION" "$1" ;;
*/etc/default/gateway) echo 'GATEWAY_KAFKA_SASL_PASSWORD=doc-test-secret' >>"$1" ;;
*) echo "vi stand-in: $1?" >&2; exit 1 ;;
esac
`,
	}
	for name, body := range shims {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(),
		"PATH="+bin+":"+os.Getenv("PATH"),
		"GATEWAY_CONFIG="+filepath.Join(root, "etc", "gateway", "config.yaml"),
		"GATEWAY_ENV_FILE="+filepath.Join(root, "etc", "default", "gateway"),
		"DOCTEST_ROOT="+root, "DOCTEST_STATE="+state, "DOCTEST_ADMIN="+admin,
		"DOCTEST_USER="+svc.Username, "DOCTEST_GROUP="+grp.Name, "DOCTEST_PRODUCTION="+productionFile,
	)
	t.Cleanup(func() {
		if data, err := os.ReadFile(filepath.Join(state, "pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			data, _ := os.ReadFile(filepath.Join(state, "journal"))
			t.Logf("journal (tail):\n%s", lastLines(string(data), 40))
		}
	})
	sh := func(line string) (string, error) {
		cmd := exec.Command("bash", "-o", "pipefail", "-c", line)
		cmd.Dir = pki
		cmd.Env = env
		if stdin, err := os.Open(password); err == nil {
			defer stdin.Close()
			cmd.Stdin = stdin
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	runBlock := func(what string, lines []string) {
		t.Helper()
		for _, line := range lines {
			if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			out, err := sh(box.Replace(line))
			if err != nil || refusedForToken.MatchString(out) {
				t.Fatalf("%s: `%s` does not work as written (%v):\n%s", what, line, err, out)
			}
		}
	}

	// The package starts the service with the shipped example.
	if out, err := sh("systemctl start gateway"); err != nil {
		t.Fatalf("starting the installed gateway: %v\n%s", err, out)
	}
	runBlock("hardening", hardening)

	// Hardened: the token is required, terminals come in over TLS.
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /status without the token after hardening: %s", resp.Status)
	}
	term := ca.Client("term-1")
	connect := func(how string, o *paho.ClientOptions) {
		t.Helper()
		c := paho.NewClient(o.AddBroker(fmt.Sprintf("ssl://127.0.0.1:%d", tlsPort)).SetClientID("term-1").SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("term-1 over TLS by %s: %v", how, tok.Error())
		}
		defer c.Disconnect(0)
		if tok := c.Publish("terminals/term-1/payments/p1", 1, false, "{}"); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("term-1's publish over TLS by %s: %v", how, tok.Error())
		}
	}
	connect("certificate", paho.NewClientOptions().SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{term.TLS}}))
	connect("password", paho.NewClientOptions().SetTLSConfig(&tls.Config{RootCAs: ca.Pool()}).SetUsername("term-1").SetPassword("term-1's password"))

	runBlock("troubleshooting", troubleshooting)
}

// refusedForToken is what a command prints when the admin endpoint wanted
// the token: a 401 as a number of its own (a log line's timestamp such as
// 27.653401326Z holds those digits too) or the word.
var refusedForToken = regexp.MustCompile(`(?i)(^|[^0-9.])401([^0-9]|$)|unauthorized`)

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
