// Package debian holds the gateway's Debian packaging (unit, maintainer
// scripts, copyright; the packager is scripts/mkdeb) and its test.
package debian

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The amd64 package's life on a box, in a scratch root (dpkg --root with
// --force-script-chrootless: the maintainer scripts run on the host with
// DPKG_ROOT set, as on a root without systemd): install creates the user, the
// state directory and the conffile; an upgrade to a second build keeps the
// operator's edited conffile and the state; remove keeps the state and the
// config; purge deletes both.
func TestPackageInstallUpgradeRemovePurge(t *testing.T) {
	for _, tool := range []string{"dpkg", "dpkg-deb", "useradd", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: dpkg --root installs files owned by root and the gateway user")
	}
	if out, _ := exec.Command("dpkg", "--force-help").CombinedOutput(); !bytes.Contains(out, []byte("script-chrootless")) {
		t.Skip("this dpkg has no --force-script-chrootless")
	}
	tmp := t.TempDir()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}

	// Two builds: 0.3.0, and 0.3.1 whose shipped config changed.
	mkdeb := filepath.Join(tmp, "mkdeb")
	run(t, filepath.Join(repo, "scripts", "mkdeb"), nil, "go", "build", "-o", mkdeb, ".")
	build := func(version, conffile string) string {
		bin := filepath.Join(tmp, "gateway-"+version)
		// As make deb builds it (a static, stripped binary).
		run(t, repo, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"},
			"go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/gateway")
		out := run(t, repo, nil, mkdeb, "-root", repo, "-bin", bin, "-arch", "amd64", "-version", version,
			"-config", conffile, "-out", filepath.Join(tmp, "dist"))
		return strings.TrimSpace(out)
	}
	example, err := os.ReadFile(filepath.Join(repo, "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	changed := filepath.Join(tmp, "config-0.3.1.yaml")
	write(t, changed, string(example)+"# shipped with 0.3.1\n")
	deb1 := build("0.3.0", filepath.Join(repo, "config.example.yaml"))
	deb2 := build("0.3.1", changed)

	// lintian, where installed (apt-get install lintian): no errors (and
	// the manual page is there: no no-manual-page warning).
	if _, err := exec.LookPath("lintian"); err == nil {
		run(t, "/", nil, "lintian", "--fail-on", "error", "--tag-display-limit", "0", deb1)
	} else {
		t.Log("lintian not installed: package not linted")
	}

	root := scratchRoot(t, filepath.Join(tmp, "root"))
	p := func(rel string) string { return filepath.Join(root, rel) }
	dpkg := func(args ...string) string {
		t.Helper()
		base := []string{"--root=" + root, "--force-script-chrootless", "--force-architecture", "--log=/dev/null"}
		return run(t, "/", nil, "dpkg", append(base, args...)...)
	}

	// Install.
	dpkg("--install", deb1)
	if s := dpkgStatus(t, root); !strings.Contains(s, "Status: install ok installed") || !strings.Contains(s, "Version: 0.3.0") ||
		!strings.Contains(s, "/etc/gateway/config.yaml") {
		t.Fatalf("after install, dpkg status:\n%s", s)
	}
	uid := field(t, p("etc/passwd"), "gateway", 2)
	if shell := field(t, p("etc/passwd"), "gateway", 6); shell != "/usr/sbin/nologin" {
		t.Errorf("gateway user's shell %q", shell)
	}
	assertOwnerMode(t, p("var/lib/gateway"), uid, 0o750)
	assertOwnerMode(t, p("etc/gateway/config.yaml"), "0", 0o640)
	assertOwnerMode(t, p("etc/default/gateway"), "0", 0o640)
	if env := read(t, p("etc/default/gateway")); !strings.Contains(env, "\nGATEWAY_DATA_DIR=/var/lib/gateway\n") {
		t.Errorf("/etc/default/gateway does not set the data dir:\n%s", env)
	}
	if s := dpkgStatus(t, root); !strings.Contains(s, "/etc/default/gateway") {
		t.Errorf("/etc/default/gateway is not a conffile:\n%s", s)
	}
	if _, err := os.Stat(p("usr/share/man/man1/gateway.1.gz")); err != nil {
		t.Errorf("no manual page: %v", err)
	}
	if runtime.GOARCH == "amd64" {
		if out := run(t, "/", nil, p("usr/bin/gateway"), "version"); !strings.HasPrefix(out, "gateway 0.3.0 ") {
			t.Errorf("installed binary says %q", out)
		}
		run(t, "/", nil, p("usr/bin/gateway"), "check", "--config", p("etc/gateway/config.yaml"), "--env-file", p("etc/default/gateway"))
	}
	unit := read(t, p("usr/lib/systemd/system/gateway.service"))
	for _, want := range []string{"Type=notify", "WatchdogSec=", "ProtectSystem=strict", "ReadWritePaths=/var/lib/gateway", "NoNewPrivileges=yes", "User=gateway",
		"EnvironmentFile=-/etc/default/gateway"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %s", want)
		}
	}

	// The operator edits the config; the gateway has state.
	write(t, p("etc/gateway/config.yaml"), read(t, p("etc/gateway/config.yaml"))+"# operator's change\n")
	write(t, p("var/lib/gateway/buffer.db"), "undelivered messages")

	// Upgrade: both kept (--force-confold answers dpkg's question as a
	// non-interactive upgrade would), the new default beside it.
	dpkg("--force-confold", "--install", deb2)
	if s := dpkgStatus(t, root); !strings.Contains(s, "Version: 0.3.1") {
		t.Fatalf("after upgrade, dpkg status:\n%s", s)
	}
	if !strings.Contains(read(t, p("etc/gateway/config.yaml")), "# operator's change") {
		t.Error("upgrade replaced the operator's config")
	}
	if !strings.Contains(read(t, p("etc/gateway/config.yaml.dpkg-dist")), "# shipped with 0.3.1") {
		t.Error("upgrade did not leave the new default as config.yaml.dpkg-dist")
	}
	if read(t, p("var/lib/gateway/buffer.db")) != "undelivered messages" {
		t.Error("upgrade changed the state")
	}
	if runtime.GOARCH == "amd64" {
		if out := run(t, "/", nil, p("usr/bin/gateway"), "version"); !strings.HasPrefix(out, "gateway 0.3.1 ") {
			t.Errorf("upgraded binary says %q", out)
		}
	}
	if field(t, p("etc/passwd"), "gateway", 2) != uid {
		t.Error("upgrade changed the gateway user")
	}

	// Remove: the program goes, state and config stay.
	dpkg("--remove", "gateway")
	if _, err := os.Stat(p("usr/bin/gateway")); !os.IsNotExist(err) {
		t.Errorf("binary still there after remove: %v", err)
	}
	if read(t, p("var/lib/gateway/buffer.db")) != "undelivered messages" {
		t.Error("remove deleted the state")
	}
	if !strings.Contains(read(t, p("etc/gateway/config.yaml")), "# operator's change") {
		t.Error("remove deleted the config")
	}
	if s := dpkgStatus(t, root); !strings.Contains(s, "Status: deinstall ok config-files") {
		t.Fatalf("after remove, dpkg status:\n%s", s)
	}

	// Purge: state and config gone.
	dpkg("--purge", "gateway")
	for _, gone := range []string{"var/lib/gateway", "etc/gateway"} {
		if _, err := os.Stat(p(gone)); !os.IsNotExist(err) {
			t.Errorf("%s still there after purge: %v", gone, err)
		}
	}
	if s := dpkgStatus(t, root); strings.Contains(s, "Package: gateway") {
		t.Fatalf("after purge, dpkg still knows the package:\n%s", s)
	}
}

// scratchRoot makes an empty root dpkg can install into: its database and
// the account files useradd --prefix edits.
func scratchRoot(t *testing.T, root string) string {
	t.Helper()
	for _, d := range []string{"etc", "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string]string{
		"var/lib/dpkg/status":    "",
		"var/lib/dpkg/available": "",
		"etc/passwd":             "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":              "root:x:0:\n",
		"etc/shadow":             "root:*:19000:0:99999:7:::\n",
		"etc/gshadow":            "root:*::\n",
	} {
		write(t, filepath.Join(root, name), content)
	}
	return root
}

func dpkgStatus(t *testing.T, root string) string {
	return read(t, filepath.Join(root, "var/lib/dpkg/status"))
}

// field returns the i-th colon-separated field of name's line in an
// /etc/passwd-style file.
func field(t *testing.T, path, name string, i int) string {
	t.Helper()
	for _, line := range strings.Split(read(t, path), "\n") {
		if f := strings.Split(line, ":"); len(f) > i && f[0] == name {
			return f[i]
		}
	}
	t.Fatalf("%s: no %s", path, name)
	return ""
}

func assertOwnerMode(t *testing.T, path, uid string, mode os.FileMode) {
	t.Helper()
	out := strings.TrimSpace(run(t, "/", nil, "stat", "-c", "%u %a", path))
	if want := fmt.Sprintf("%s %o", uid, mode.Perm()); out != want {
		t.Errorf("%s: owner and mode %q, want %q", path, out, want)
	}
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
