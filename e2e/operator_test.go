package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/internal/testkit"
)

// Day two on a box: the tools act on the gateway the service runs, and only
// on it; check catches what the service will hit; read-only commands write
// nothing and trust nothing in a data dir; device-controlled text reaches the
// console escaped.

// cli runs the gateway binary with extra environment and returns its
// combined output and exit code.
func cli(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	return cliAs(t, nil, env, args...)
}

// cliAs is cli as another user (cred nil: this one), with a 60 s limit.
func cliAs(t *testing.T, cred *syscall.Credential, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bin := gatewayBin
	if cred != nil {
		bin = worldBinary(t)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = "/"
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("gateway %v did not finish within 60 s:\n%s", args, out)
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatal(err)
	}
	return string(out), 0
}

// worldBinary is a copy of the gateway binary another user can execute (the
// build's directory is private).
func worldBinary(t *testing.T) string {
	t.Helper()
	dir := worldDir(t)
	data, err := os.ReadFile(gatewayBin)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "gateway")
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// worldDir is a temporary directory, and its parents, that other users may
// enter (t.TempDir is 0700).
func worldDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// nobody is the credential of an unprivileged user, for tests that run as
// root.
func nobody(t *testing.T) (*syscall.Credential, *user.User) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a command as another user")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, u
}

// prefill puts messages (and dead letters) into a data dir before a gateway
// starts on it.
func prefill(t *testing.T, dir, route, client, topic string, messages, deadLetters int) []uint64 {
	t.Helper()
	b, err := buffer.Open(buffer.Options{Path: filepath.Join(dir, "buffer.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rec := func(i int) buffer.Record {
		return buffer.Record{Route: route, KafkaTopic: route, Received: time.Now(), ClientID: client, Key: []byte(client),
			MQTTTopic: topic, Payload: []byte(fmt.Sprintf("%s/%d", client, i))}
	}
	for i := range messages {
		if _, err := b.AppendWait(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	var ids []uint64
	var recs []buffer.Record
	for i := range deadLetters {
		r := rec(1000 + i)
		res, err := b.AppendWait(r)
		if err != nil {
			t.Fatal(err)
		}
		r.Seq = res.Seq
		recs = append(recs, r)
		ids = append(ids, r.Seq)
	}
	if len(recs) > 0 {
		if err := b.DeadLetter(recs, "too_large", "the record is larger than "+client+" allows"); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// deadKafka is an address where no Kafka answers: what a gateway buffers
// stays in its buffer.
func deadKafka(t *testing.T) []string {
	return []string{fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))}
}

// Finding 1: two gateways on one box. A tool pointed at one's data dir never
// prints what the other's admin endpoint answers (whichever way it was
// given the address: flag or environment); it says which gateway answered
// and exits 1. Pointed at the right one (by --config, or the address), it
// says who answered and shows that gateway's buffer and dead letters.
func TestToolsNeverReadAnotherGateway(t *testing.T) {
	a := newGateway(t, deadKafka(t), "")
	a.env = []string{"GATEWAY_ID=gw-a"}
	b := newGateway(t, deadKafka(t), "")
	b.env = []string{"GATEWAY_ID=gw-b"}
	aData, bData := filepath.Join(a.dir, "data"), filepath.Join(b.dir, "data")
	os.MkdirAll(aData, 0o750)
	os.MkdirAll(bData, 0o750)
	ids := prefill(t, aData, "payments", "term-a", "terminals/term-a/payments/p", 4, 1)
	prefill(t, bData, "telemetry", "term-b", "terminals/term-b/telemetry/t", 2, 0)
	a.start()
	b.start()

	for _, tc := range []struct {
		env  []string
		args []string
	}{
		{nil, []string{"buffer", "stats", "--data-dir", aData, "--admin", b.admin}},
		{[]string{"GATEWAY_ADMIN_ADDRESS=" + b.admin}, []string{"buffer", "stats", "--data-dir", aData}},
		{nil, []string{"buffer", "ls", "--data-dir", aData, "--admin", b.admin}},
		{nil, []string{"buffer", "peek", "--data-dir", aData, "--admin", b.admin, "--route", "telemetry"}},
		{nil, []string{"deadletter", "ls", "--data-dir", aData, "--admin", b.admin}},
		{[]string{"GATEWAY_ADMIN_ADDRESS=" + b.admin}, []string{"deadletter", "ls", "--data-dir", aData}},
		{nil, []string{"deadletter", "drop", "--data-dir", aData, "--admin", b.admin, "--all"}},
	} {
		out, code := cli(t, tc.env, tc.args...)
		if code != 1 || !strings.Contains(out, "gw-b") || !strings.Contains(out, "its data dir is "+bData) ||
			strings.Contains(out, "telemetry ") || strings.Contains(out, "no dead letters") || strings.Contains(out, "no undelivered") {
			t.Errorf("%v %v: exit %d, want 1 and a refusal naming gw-b:\n%s", tc.env, tc.args, code, out)
		}
	}

	// The right gateway: by its config, or by its address.
	out, code := cli(t, nil, "buffer", "stats", "--config", a.cfgPath)
	if code != 0 || !strings.Contains(out, "backlog:   4 messages") || !strings.Contains(out, "gw-a") || !strings.Contains(out, "data dir "+aData) {
		t.Errorf("buffer stats --config A: exit %d:\n%s", code, out)
	}
	out, code = cli(t, nil, "deadletter", "ls", "--config", a.cfgPath)
	if code != 0 || !strings.Contains(out, strconv.FormatUint(ids[0], 10)) || !strings.Contains(out, "too_large") || !strings.Contains(out, "gw-a") {
		t.Errorf("deadletter ls --config A: exit %d:\n%s", code, out)
	}
	out, code = cli(t, []string{"GATEWAY_ADMIN_ADDRESS=" + a.admin}, "buffer", "ls", "--data-dir", aData)
	if code != 0 || !strings.Contains(out, "payments") || strings.Contains(out, "telemetry") {
		t.Errorf("buffer ls with GATEWAY_ADMIN_ADDRESS of A: exit %d:\n%s", code, out)
	}
	// status says who answered
	out, code = cli(t, nil, "status", "--admin", b.admin)
	if code != 0 || !strings.Contains(out, "gateway gw-b") || !strings.Contains(out, "data dir "+bData) {
		t.Errorf("status: exit %d:\n%s", code, out)
	}
}

// hardened is a gateway as the package runs it: the config file does
// not say the data dir (the unit's environment file does), the admin
// endpoint wants a token.
type hardened struct {
	*gatewayProc
	dataDir, envFile, tokenFile string
}

func newHardened(t *testing.T, extraYAML string) *hardened {
	t.Helper()
	dir := t.TempDir()
	h := &hardened{gatewayProc: &gatewayProc{
		t:        t,
		dir:      dir,
		cfgPath:  filepath.Join(dir, "config.yaml"),
		mqttAddr: fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t)),
		admin:    fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t)),
	}}
	h.dataDir = filepath.Join(dir, "state")
	h.envFile = filepath.Join(dir, "environment")
	h.tokenFile = filepath.Join(dir, "admin-token")
	h.gatewayProc.token = "s3cret-token"
	os.MkdirAll(h.dataDir, 0o750)
	os.WriteFile(h.tokenFile, []byte(h.gatewayProc.token+"\n"), 0o600)
	os.WriteFile(h.envFile, []byte("# the unit's environment file\nGATEWAY_DATA_DIR="+h.dataDir+"\n"), 0o640)
	cfg := fmt.Sprintf(`id: hardened-gw
data_dir: ./data-the-unit-overrides
mqtt: {address: %q}
kafka: {brokers: [%q]}
admin: {address: %q, token_file: %q}
`, h.mqttAddr, deadKafka(t)[0], h.admin, h.tokenFile) + routesYAML + extraYAML
	if err := os.WriteFile(h.cfgPath, []byte(cfg), 0o640); err != nil {
		t.Fatal(err)
	}
	// systemd reads the environment file into the service's environment
	h.env = []string{"GATEWAY_DATA_DIR=" + h.dataDir}
	t.Cleanup(func() {
		h.stop()
		if t.Failed() {
			t.Logf("gateway log (tail):\n%s", tail(h.logs, 60))
		}
	})
	return h
}

// Findings 2 and 3: every day-2 command takes the service's config and the
// unit's environment file (installed or given), sends the admin token, and
// so finds the data dir and admin address the service uses; without the
// token the refusal is readable.
func TestDayTwoCommandsUseTheServicesConfigAndEnvironment(t *testing.T) {
	h := newHardened(t, "")
	ids := prefill(t, h.dataDir, "payments", "term-1", "terminals/term-1/payments/p", 3, 1)
	h.start()
	installed := []string{"GATEWAY_CONFIG=" + h.cfgPath, "GATEWAY_ENV_FILE=" + h.envFile}
	id := strconv.FormatUint(ids[0], 10)

	for _, tc := range []struct {
		env  []string
		args []string
		want []string
	}{
		// the installed config, found by default, with its environment file
		{installed, []string{"deadletter", "ls"}, []string{id, "too_large", "data dir " + h.dataDir}},
		{installed, []string{"deadletter", "ls", "--config", h.cfgPath}, []string{id, "too_large"}},
		{installed, []string{"buffer", "stats"}, []string{"backlog:   3 messages", "hardened-gw", "data dir " + h.dataDir}},
		{installed, []string{"buffer", "stats", "--config", h.cfgPath}, []string{"backlog:   3 messages"}},
		{installed, []string{"status"}, []string{"gateway hardened-gw", "data dir " + h.dataDir}},
		{installed, []string{"check", "--against", h.admin}, []string{"ok: no changes against the running gateway"}},
		// a config that is not the installed one, with the environment file given
		{nil, []string{"deadletter", "ls", "--config", h.cfgPath, "--env-file", h.envFile}, []string{id}},
		{nil, []string{"check", "--config", h.cfgPath, "--env-file", h.envFile, "--against", h.admin}, []string{"ok: no changes"}},
		// no config: flags and the environment
		{nil, []string{"deadletter", "ls", "--admin", h.admin, "--token-file", h.tokenFile}, []string{id}},
		{nil, []string{"buffer", "ls", "--data-dir", h.dataDir, "--admin", h.admin, "--token-file", h.tokenFile}, []string{"payments"}},
		{[]string{"GATEWAY_ADMIN_ADDRESS=" + h.admin, "GATEWAY_ADMIN_TOKEN_FILE=" + h.tokenFile}, []string{"status"}, []string{"gateway hardened-gw"}},
		{[]string{"GATEWAY_ADMIN_ADDRESS=" + h.admin, "GATEWAY_ADMIN_TOKEN_FILE=" + h.tokenFile, "GATEWAY_DATA_DIR=" + h.dataDir}, []string{"deadletter", "ls"}, []string{id}},
	} {
		out, code := cli(t, tc.env, tc.args...)
		if code != 0 {
			t.Errorf("%v %v: exit %d:\n%s", tc.env, tc.args, code, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v %v: output lacks %q:\n%s", tc.env, tc.args, w, out)
			}
		}
	}

	// Without the token: the endpoint's own words, not a JSON error.
	out, code := cli(t, nil, "deadletter", "ls", "--admin", h.admin)
	if code != 1 || !strings.Contains(out, "401") || !strings.Contains(out, "Bearer") || strings.Contains(out, "invalid character") {
		t.Errorf("deadletter ls without the token: exit %d:\n%s", code, out)
	}
	// The config alone, without the unit's environment, names another data
	// dir: the tool says so instead of asking some gateway.
	out, code = cli(t, nil, "buffer", "stats", "--config", h.cfgPath)
	if code != 1 || !strings.Contains(out, "data-the-unit-overrides") {
		t.Errorf("buffer stats --config without the environment file: exit %d:\n%s", code, out)
	}
	// and what deadletter resend changes is done on the gateway that runs
	out, code = cli(t, installed, "deadletter", "resend", id)
	if code != 0 || !strings.Contains(out, "re-sent") {
		t.Errorf("deadletter resend: exit %d:\n%s", code, out)
	}
	out, _ = cli(t, installed, "buffer", "stats")
	if !strings.Contains(out, "backlog:   4 messages") {
		t.Errorf("after the resend:\n%s", out)
	}
}

// Finding 4: check opens and parses every file the config names as the
// user it runs as. A key only root can read passes a root check (which
// says it was one), and fails `check --as` the service user, naming the
// key, as `gateway run` would fail as that user.
func TestCheckAsTheServiceUser(t *testing.T) {
	cred, u := nobody(t)
	dir := worldDir(t)
	ca := testkit.NewCA(t, "check-as")
	srv := ca.Server()
	copyFile := func(from, to string, mode os.FileMode) string {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, to)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	cert := copyFile(srv.CertFile, "server.pem", 0o644)
	key := copyFile(srv.KeyFile, "server-key.pem", 0o600) // root only
	clientCA := copyFile(ca.File, "clients-ca.pem", 0o644)
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o750)
	os.Chown(state, int(cred.Uid), int(cred.Gid))
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`id: check-as
data_dir: %s
mqtt: {address: "", allow_anonymous: false, tls: {address: "127.0.0.1:%d", cert_file: %s, key_file: %s, client_ca_file: %s}}
kafka: {brokers: ["127.0.0.1:9092"]}
`, state, testkit.FreePort(t), cert, key, clientCA)), 0o644)

	out, code := cli(t, nil, "check", "--config", cfg)
	if code != 0 || !strings.HasPrefix(out, "ok") && !strings.Contains(out, "\nok") || !strings.Contains(out, "--as gateway") {
		t.Fatalf("check as root: exit %d:\n%s", code, out)
	}
	out, code = cli(t, nil, "check", "--config", cfg, "--as", u.Username)
	if code != 2 || !strings.Contains(out, "mqtt.tls.key_file: cannot read") || !strings.Contains(out, "permission denied") ||
		strings.Contains(out, "cert_file") || !strings.Contains(out, "as user "+u.Username) {
		t.Fatalf("check --as %s with a root-only key: exit %d:\n%s", u.Username, code, out)
	}
	// what check --as predicts is what run as that user meets
	out, code = cliAs(t, cred, nil, "run", "--config", cfg)
	if code == 0 || !strings.Contains(out, "permission denied") {
		t.Fatalf("run as %s with a root-only key: exit %d:\n%s", u.Username, code, out)
	}
	// the fix the message points at
	os.Chown(key, 0, int(cred.Gid))
	os.Chmod(key, 0o640)
	out, code = cli(t, nil, "check", "--config", cfg, "--as", u.Username)
	if code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("check --as %s with a key its group reads: exit %d:\n%s", u.Username, code, out)
	}
	// a cert_file that is not a certificate
	bad := filepath.Join(dir, "bad.yaml")
	data, _ := os.ReadFile(cfg)
	os.WriteFile(bad, bytes.Replace(data, []byte("cert_file: "+cert), []byte("cert_file: "+cfg), 1), 0o644)
	if out, code := cli(t, nil, "check", "--config", bad); code != 2 || !strings.Contains(out, "mqtt.tls.cert_file: "+cfg+" holds no PEM certificate") {
		t.Fatalf("cert_file pointing at a YAML file: exit %d:\n%s", code, out)
	}
}

// Item 8: `gateway status` as an unprivileged user asks the address it was
// given: a config it cannot read (the installed one, or --config) is noted,
// not fatal.
func TestStatusAsAnUnprivilegedUser(t *testing.T) {
	cred, _ := nobody(t)
	g := newGateway(t, deadKafka(t), "")
	g.start()
	os.Chmod(g.cfgPath, 0o600) // root's, as /etc/gateway/config.yaml is to a stranger
	for _, tc := range []struct {
		env  []string
		args []string
	}{
		{[]string{"GATEWAY_CONFIG=" + g.cfgPath}, []string{"status", "--admin", g.admin}},
		{nil, []string{"status", "--config", g.cfgPath, "--admin", g.admin}},
		{[]string{"GATEWAY_CONFIG=" + g.cfgPath, "GATEWAY_ADMIN_ADDRESS=" + g.admin}, []string{"status"}},
	} {
		out, code := cliAs(t, cred, tc.env, tc.args...)
		if code != 0 || !strings.Contains(out, "gateway e2e-gw") {
			t.Errorf("%v %v as nobody: exit %d:\n%s", tc.env, tc.args, code, out)
		}
	}
}

// dirDigest is every file's mode, size, time and content in dir.
func dirDigest(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := os.Lstat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %v %d %v", e.Name(), fi.Mode(), fi.Size(), fi.ModTime())
		if fi.Mode().IsRegular() {
			f, _ := os.Open(filepath.Join(dir, e.Name()))
			h := sha256.New()
			io.Copy(h, f)
			f.Close()
			fmt.Fprintf(&b, " %x", h.Sum(nil))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Issue 23 item 10: the read-only commands never write, in the data dir or
// through it. A planted link is refused, never followed; a journal linked
// to /dev/zero is refused at once instead of read until memory runs out.
func TestReadOnlyCommandsWriteNothing(t *testing.T) {
	dir := t.TempDir()
	prefill(t, dir, "payments", "term-1", "terminals/term-1/payments/p", 3, 1)
	before := dirDigest(t, dir)
	for _, args := range [][]string{
		{"deadletter", "ls", "--data-dir", dir},
		{"buffer", "stats", "--data-dir", dir},
		{"buffer", "ls", "--data-dir", dir},
		{"buffer", "peek", "--data-dir", dir, "--route", "payments"},
	} {
		if out, code := cli(t, nil, args...); code != 0 {
			t.Fatalf("%v: exit %d:\n%s", args, code, out)
		}
	}
	if after := dirDigest(t, dir); after != before {
		t.Fatalf("a read-only command changed the data dir:\nbefore\n%s\nafter\n%s", before, after)
	}

	victim := filepath.Join(t.TempDir(), "etc-shadow-stand-in")
	content := []byte("root:$6$not-a-journal:19000:0:99999:7:::\n")
	os.WriteFile(victim, content, 0o600)
	journal := filepath.Join(dir, "buffer.db.journal-0")
	os.Remove(journal)
	if err := os.Symlink(victim, journal); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"deadletter", "ls", "--data-dir", dir},
		{"buffer", "stats", "--data-dir", dir},
	} {
		out, code := cli(t, nil, args...)
		if code != 1 || !strings.Contains(out, "symbolic link") {
			t.Errorf("%v with a linked journal: exit %d:\n%s", args, code, out)
		}
	}
	if got, _ := os.ReadFile(victim); !bytes.Equal(got, content) {
		t.Fatalf("the file behind the link was written: %q", got)
	}
	os.Remove(journal)
	os.Symlink("/dev/zero", journal)
	start := time.Now()
	if out, code := cli(t, nil, "buffer", "stats", "--data-dir", dir); code != 1 || !strings.Contains(out, "symbolic link") {
		t.Errorf("buffer stats with the journal linked to /dev/zero: exit %d after %v:\n%s", code, time.Since(start), out)
	}
}

// Issue 23 item 11: client ids, topics, route names and errors a device or
// Kafka controls reach the console escaped, from the file and from a
// running gateway alike.
func TestDeviceTextReachesTheConsoleEscaped(t *testing.T) {
	g := newGateway(t, deadKafka(t), "")
	data := filepath.Join(g.dir, "data")
	os.MkdirAll(data, 0o750)
	evil := "term-\x1b]0;owned\x07\x1b[2J"
	prefill(t, data, "payments", evil, "terminals/"+evil+"/payments/\x1b[31mred", 2, 1)
	check := func(what, out string) {
		t.Helper()
		if strings.ContainsAny(out, "\x1b\x07") {
			t.Errorf("%s: a control character reached the console:\n%q", what, out)
		}
		if !strings.Contains(out, `term-\x1b]0;owned\x07\x1b[2J`) {
			t.Errorf("%s: the client id is not shown escaped:\n%q", what, out)
		}
	}
	for _, args := range [][]string{
		{"buffer", "peek", "--data-dir", data, "--route", "payments"},
		{"deadletter", "ls", "--data-dir", data},
	} {
		out, code := cli(t, nil, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d:\n%s", args, code, out)
		}
		check(fmt.Sprint(args, " (file)"), out)
	}
	g.start()
	for _, args := range [][]string{
		{"buffer", "peek", "--config", g.cfgPath, "--route", "payments"},
		{"deadletter", "ls", "--config", g.cfgPath},
	} {
		out, code := cli(t, nil, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d:\n%s", args, code, out)
		}
		check(fmt.Sprint(args, " (running)"), out)
	}
}

// Finding 5: a publish the ACL denies is counted (and logged once, without
// its payload, by the gateway), so a terminal hammering a topic it may not
// use shows on the dashboard.
func TestACLRefusalsAreCounted(t *testing.T) {
	k := testkit.Kafka(t, testkit.Topics(1, "payments", "telemetry"))
	g := newGateway(t, k.Addrs, "")
	g.start()
	c := mqttClient(t, g.mqttAddr, "term-1", false)
	for i := range 5 {
		// QoS 0: a 3.1.1 client is not disconnected for it
		c.Publish("terminals/term-2/payments/p", 0, false, fmt.Sprintf("forbidden-%d", i)).WaitTimeout(5 * time.Second)
	}
	// in order behind them on the same connection: once this is acknowledged
	// the five were checked
	if tok := c.Publish("terminals/term-1/payments/p", 1, false, "allowed"); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("allowed publish: %v", tok.Error())
	}
	if v := g.metric(`gateway_ingest_refused_total{reason="acl_denied",route=""}`); v != 5 {
		t.Fatalf("gateway_ingest_refused_total{reason=\"acl_denied\"} = %v, want 5\n%s", v, tail(g.logs, 20))
	}
	if !strings.Contains(g.logs.String(), "reason=acl_denied") {
		t.Errorf("no log line for the refusal:\n%s", tail(g.logs, 20))
	}
}
