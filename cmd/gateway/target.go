package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgegw/gateway/admin"
	"github.com/edgegw/gateway/buffer"
	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/internal/console"
)

// Which gateway a day-2 command (status, buffer, deadletter, check) acts
// on. They all take the same --config, --env-file, --admin and --token-file
// (and --data-dir where they read a data dir) and find what they were not
// given the way the service does, so that the config file and the unit's
// environment stay the one source of truth for the data dir and the admin
// address:
//
//	config file    --config; else, when --admin is not given either, the
//	               installed one: $GATEWAY_CONFIG, else /etc/gateway/config.yaml
//	               (skipped with a note when it cannot be read)
//	environment    the process environment; with the installed config also
//	               the unit's environment file (/etc/default/gateway, or
//	               $GATEWAY_ENV_FILE), or the --env-file given; the process
//	               environment wins over the file
//	data dir       --data-dir, else the config's data_dir after the
//	               environment (GATEWAY_DATA_DIR), else $GATEWAY_DATA_DIR
//	admin address  --admin, else the config's admin.address, else
//	               $GATEWAY_ADMIN_ADDRESS, else 127.0.0.1:9100
//	token          --token-file, else the config's admin.token_file, else
//	               $GATEWAY_ADMIN_TOKEN_FILE
//
// An explicit --admin never gets the installed config's token: it may be
// another machine.

const (
	installedConfig  = "/etc/gateway/config.yaml"
	installedEnvFile = "/etc/default/gateway"
	defaultAdmin     = "127.0.0.1:9100"
)

// defaultConfigPath is the installed gateway's config file.
func defaultConfigPath() string {
	if p := os.Getenv("GATEWAY_CONFIG"); p != "" {
		return p
	}
	return installedConfig
}

// defaultEnvFile is the installed unit's environment file.
func defaultEnvFile() string {
	if p := os.Getenv("GATEWAY_ENV_FILE"); p != "" {
		return p
	}
	return installedEnvFile
}

// targetFlags are the flags every day-2 command shares.
type targetFlags struct {
	fs                                         *flag.FlagSet
	config, envFile, admin, tokenFile, dataDir *string
}

func addTargetFlags(fs *flag.FlagSet, withDataDir bool) *targetFlags {
	tf := &targetFlags{fs: fs}
	tf.config = fs.String("config", "", "the gateway's config file (default: the installed one, "+installedConfig+" or $GATEWAY_CONFIG)")
	tf.envFile = fs.String("env-file", "", "environment file of the gateway's unit (default: "+installedEnvFile+" or $GATEWAY_ENV_FILE, with the installed config)")
	tf.admin = fs.String("admin", "", "admin address of the running gateway (default: admin.address of the config, else $GATEWAY_ADMIN_ADDRESS, else "+defaultAdmin+")")
	tf.tokenFile = fs.String("token-file", "", "file holding the admin bearer token (default: admin.token_file of the config, else $GATEWAY_ADMIN_TOKEN_FILE)")
	if withDataDir {
		tf.dataDir = fs.String("data-dir", "", "the gateway's data_dir (default: data_dir of the config, else $GATEWAY_DATA_DIR)")
	}
	return tf
}

func (tf *targetFlags) given(name string) bool {
	given := false
	tf.fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			given = true
		}
	})
	return given
}

// target is what a day-2 command acts on.
type target struct {
	configPath string         // "" when no config was read
	cfg        *config.Config // nil when none was read
	environ    []string       // the environment the config was read with
	dataDir    string
	admin      string
	tokenFile  string
	explicitAd bool // --admin was given
}

// resolve finds the target. A config given with --config that cannot be
// read is an error (exit 2) unless --admin was given too, which is all
// status needs; the installed config that cannot be read (an unprivileged
// operator) is skipped with a note.
func (tf *targetFlags) resolve(cmd string, stderr io.Writer) (*target, int) {
	t := &target{admin: *tf.admin, tokenFile: *tf.tokenFile, explicitAd: tf.given("admin")}
	if tf.dataDir != nil {
		t.dataDir = *tf.dataDir
	}
	path, explicit := *tf.config, tf.given("config")
	if !explicit && !t.explicitAd {
		if _, err := os.Stat(defaultConfigPath()); err == nil {
			path = defaultConfigPath()
		}
	}
	envFile := *tf.envFile
	if !tf.given("env-file") && path != "" && sameFile(path, defaultConfigPath()) {
		envFile = defaultEnvFile()
	}
	fileEnv, err := readEnvFile(envFile)
	switch {
	case err == nil:
	case tf.given("env-file"):
		fmt.Fprintf(stderr, "gateway %s: --env-file: %v\n", cmd, err)
		return nil, exitUsage
	case !errors.Is(err, os.ErrNotExist):
		fmt.Fprintf(stderr, "gateway %s: note: not reading the unit's environment file: %v\n", cmd, err)
	}
	// The file first: a later entry wins, and the process environment wins.
	t.environ = append(fileEnv, os.Environ()...)
	if path != "" {
		cfg, err := config.LoadSettings(path, t.environ)
		switch {
		case err == nil:
			t.configPath, t.cfg = path, cfg
		case explicit && !t.explicitAd:
			printLoadError(stderr, err)
			return nil, exitUsage
		default:
			fmt.Fprintf(stderr, "gateway %s: note: not using %s: %s\n", cmd, path, oneLineErr(err))
		}
	}
	env := envMap(t.environ)
	if t.cfg != nil {
		if t.dataDir == "" {
			t.dataDir = t.cfg.DataDir
		}
		if t.admin == "" {
			t.admin = t.cfg.Admin.Address
		}
		if t.tokenFile == "" {
			t.tokenFile = t.cfg.Admin.TokenFile
		}
	}
	if t.dataDir == "" {
		t.dataDir = env["GATEWAY_DATA_DIR"]
	}
	if t.admin == "" {
		t.admin = env["GATEWAY_ADMIN_ADDRESS"]
	}
	if t.tokenFile == "" {
		t.tokenFile = env["GATEWAY_ADMIN_TOKEN_FILE"]
	}
	if t.admin == "" {
		t.admin = defaultAdmin
	}
	return t, exitOK
}

// token reads the admin token ("" without a token file).
func (t *target) token() (string, error) {
	if t.tokenFile == "" {
		return "", nil
	}
	return admin.ReadToken(t.tokenFile)
}

func printLoadError(w io.Writer, err error) {
	var problems config.Problems
	if errors.As(err, &problems) {
		for _, p := range problems {
			fmt.Fprintln(w, p)
		}
		return
	}
	fmt.Fprintln(w, err)
}

func oneLineErr(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return os.SameFile(fa, fb)
}

func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			m[k] = v
		}
	}
	return m
}

// readEnvFile reads a systemd EnvironmentFile: KEY=VALUE lines, blank lines
// and lines starting with # or ; ignored, a value in single or double quotes
// taken literally (\" \\ \$ and \` escaped inside double quotes), a
// backslash at the end of a line continuing it. "" reads nothing.
func readEnvFile(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	data, err := config.ReadBounded(path, 1<<20)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cont string
	for n := 1; sc.Scan(); n++ {
		line := cont + sc.Text()
		cont = ""
		if strings.HasSuffix(line, `\`) {
			cont = strings.TrimSuffix(line, `\`)
			continue
		}
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("%s line %d: want KEY=VALUE", path, n)
		}
		out = append(out, k+"="+unquoteEnv(strings.TrimSpace(v)))
	}
	return out, sc.Err()
}

func unquoteEnv(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return v[1 : len(v)-1]
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
		var b strings.Builder
		for i := 0; i < len(v); i++ {
			if v[i] == '\\' && i+1 < len(v) && strings.IndexByte("\"\\$`", v[i+1]) >= 0 {
				i++
			}
			b.WriteByte(v[i])
		}
		return b.String()
	}
	return v
}

// askRunning reads /status of the gateway behind t.admin and, when the
// command was given a data dir, makes sure that gateway is the one running
// on it: a tool pointed at one data dir never prints another gateway's
// contents. It says on stderr which gateway answered.
func askRunning(ctx context.Context, cmd string, t *target, dataDir string, stderr io.Writer) (*admin.Status, string, error) {
	token, err := t.token()
	if err != nil {
		return nil, "", err
	}
	st, err := admin.FetchStatusWithToken(ctx, t.admin, token)
	if err != nil {
		return nil, "", err
	}
	who := fmt.Sprintf("gateway %s at %s (%s)", console.Escape(orDash(st.GatewayID)), t.admin, orDash(admin.Identity(st)))
	if dataDir != "" {
		if err := sameGateway(st, dataDir); err != nil {
			return nil, "", fmt.Errorf("%s is held by a running gateway, but the admin endpoint that answered is %s: %v. "+
				"Give the admin address of the gateway that runs on %s (--admin, or --config with its config file)", dataDir, who, err, dataDir)
		}
	}
	fmt.Fprintf(stderr, "gateway %s: asked the running %s\n", cmd, who)
	return st, token, nil
}

// sameGateway checks that st comes from the gateway whose data dir is dir:
// the same directory, and the buffer epoch its journal carries.
func sameGateway(st *admin.Status, dir string) error {
	if st.DataDir == "" {
		return errors.New("it does not say its data dir (a release before 0.4?)")
	}
	mine, err1 := os.Stat(dir)
	theirs, err2 := os.Stat(st.DataDir)
	switch {
	case err1 == nil && err2 == nil:
		if !os.SameFile(mine, theirs) {
			return fmt.Errorf("its data dir is %s, not %s", console.Escape(st.DataDir), dir)
		}
	default:
		abs, _ := filepath.Abs(dir)
		if filepath.Clean(abs) != filepath.Clean(st.DataDir) {
			return fmt.Errorf("its data dir is %s, not %s", console.Escape(st.DataDir), dir)
		}
	}
	if epoch, err := buffer.JournalEpoch(filepath.Join(dir, "buffer.db")); err == nil && epoch != "" && st.Epoch != "" && epoch != st.Epoch {
		return fmt.Errorf("its buffer epoch is %s, the journal in %s says %s", console.Escape(st.Epoch), dir, epoch)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
