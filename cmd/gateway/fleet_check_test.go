package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgegw/gateway/fleet"
)

// `gateway check` explains the applied overlay: its version and key, what
// it changes against the file, and when it no longer fits the file.
func TestCheckExplainsTheAppliedOverlay(t *testing.T) {
	dir := t.TempDir()
	privPEM, pubPEM, id, err := fleet.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile, pubFile := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	os.WriteFile(keyFile, privPEM, 0o600)
	os.WriteFile(pubFile, pubPEM, 0o600)
	priv, err := fleet.LoadPrivateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o700)
	path := filepath.Join(dir, "gateway.yaml")
	file := func(budget string) {
		y := fmt.Sprintf(`id: ship-7
data_dir: %q
kafka: {brokers: ["127.0.0.1:9"]}
buffer: {max_disk_bytes: %s}
routes:
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments, max_bytes: 100MiB}
fleet: {config_topic: gateway.config, config_keys: [%q]}
`, data, budget, pubFile)
		if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	check := func() string {
		var out, errb bytes.Buffer
		if code := run([]string{"check", "--config", path}, &out, &errb); code != exitOK {
			t.Fatalf("check: exit %d\n%s%s", code, out.String(), errb.String())
		}
		return out.String()
	}
	file("1GiB")
	if out := check(); !strings.Contains(out, "no overlay from gateway.config is applied") {
		t.Fatalf("no overlay yet:\n%s", out)
	}
	v := "log: {level: debug}\nroutes:\n  - {name: payments, match: \"terminals/+/payments/#\", kafka_topic: payments, max_bytes: 512MiB}\n"
	if err := fleet.SaveStore(data, map[string]*fleet.Overlay{"*": {Key: "*", Version: 9, Value: v, Signature: fleet.Sign(priv, "*", 9, []byte(v)), Offset: 4}}); err != nil {
		t.Fatal(err)
	}
	out := check()
	for _, want := range []string{`overlay "*" version 9, signed by key ` + id, `routes[0].max_bytes: "104857600" -> "536870912" (hot reload)`,
		`log.level: "info" -> "debug"`, "fleet: ok: the file with the overlay validates; it changes 2 keys"} {
		if !strings.Contains(out, want) {
			t.Fatalf("check does not say %q:\n%s", want, out)
		}
	}
	// The operator on board lowers the budget below the overlay's route
	// budget: the file runs alone, and check says so.
	file("256MiB")
	if out := check(); !strings.Contains(out, "does not validate, so the gateway runs the file alone") || !strings.Contains(out, "routes[0].max_bytes") {
		t.Fatalf("an overlay that no longer fits:\n%s", out)
	}
}
