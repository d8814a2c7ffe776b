package fleet

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func keyPair(t *testing.T) (ed25519.PrivateKey, []PublicKey, string) {
	t.Helper()
	privPEM, pubPEM, id, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kf, pf := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	if err := os.WriteFile(kf, privPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pf, pubPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	priv, err := LoadPrivateKey(kf)
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := LoadPublicKeys([]string{pf})
	if err != nil {
		t.Fatal(err)
	}
	if len(pubs) != 1 || pubs[0].ID != id {
		t.Fatalf("keys: %+v, want id %s", pubs, id)
	}
	return priv, pubs, pf
}

// A signature covers the key, the version and the value: changing any of
// them, or verifying with another key, fails.
func TestSignatureCoversKeyVersionValue(t *testing.T) {
	priv, pubs, _ := keyPair(t)
	_, other, _ := keyPair(t)
	value := []byte("log: {level: debug}\n")
	sig := Sign(priv, "*", 7, value)
	if id, err := Verify(pubs, "*", 7, value, sig); err != nil || id != pubs[0].ID {
		t.Fatalf("a good signature: %v %q", err, id)
	}
	for name, err := range map[string]error{
		"another key":     func() error { _, err := Verify(other, "*", 7, value, sig); return err }(),
		"another box":     func() error { _, err := Verify(pubs, "edge-01", 7, value, sig); return err }(),
		"another version": func() error { _, err := Verify(pubs, "*", 8, value, sig); return err }(),
		"another value":   func() error { _, err := Verify(pubs, "*", 7, []byte("log: {level: warn}\n"), sig); return err }(),
	} {
		if !errors.Is(err, ErrBadSig) {
			t.Errorf("%s: %v, want ErrBadSig", name, err)
		}
	}
	if _, err := Verify(pubs, "*", 7, value, ""); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned: %v", err)
	}
	if _, err := Verify(pubs, "*", 7, value, "not base64!"); !errors.Is(err, ErrSigEncoded) {
		t.Errorf("garbage signature: %v", err)
	}
	// Both keys in one file (a rotation): either verifies.
	both := filepath.Join(t.TempDir(), "both.pub")
	var pem []byte
	for _, f := range []string{pubs[0].File, other[0].File} {
		b, _ := os.ReadFile(f)
		pem = append(pem, b...)
	}
	os.WriteFile(both, pem, 0o600)
	ks, err := LoadPublicKeys([]string{both})
	if err != nil || len(ks) != 2 {
		t.Fatalf("two keys in a file: %v %d", err, len(ks))
	}
	if _, err := Verify(ks, "*", 7, value, sig); err != nil {
		t.Fatal(err)
	}
}

func TestKeyFilesRefuseWhatIsNotAnEd25519Key(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pub")
	os.WriteFile(bad, []byte("hello\n"), 0o600)
	if _, err := LoadPublicKeys([]string{bad}); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Fatalf("not a key: %v", err)
	}
	if _, err := LoadPublicKeys([]string{filepath.Join(dir, "missing.pub")}); err == nil || !strings.Contains(err.Error(), "fleet.config_keys") {
		t.Fatalf("missing: %v", err)
	}
	if _, err := LoadPrivateKey(bad); err == nil {
		t.Fatal("a private key from garbage")
	}
}

// The signed bytes are documented so that the central side can sign with
// openssl alone: a key made and a signature made by openssl verify here.
func TestOpensslSignatureVerifies(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	key, pub := filepath.Join(dir, "o.key"), filepath.Join(dir, "o.pub")
	run := func(args ...string) []byte {
		out, err := exec.Command("openssl", args...).CombinedOutput()
		if err != nil {
			t.Skipf("openssl %v: %v %s", args, err, out)
		}
		return out
	}
	run("genpkey", "-algorithm", "ed25519", "-out", key)
	run("pkey", "-in", key, "-pubout", "-out", pub)
	value := []byte("buffer: {max_disk_bytes: 2GiB}\n")
	msg := filepath.Join(dir, "msg")
	os.WriteFile(msg, SignedBytes("edge-01", 42, value), 0o600)
	sig := run("pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", msg)
	pubs, err := LoadPublicKeys([]string{pub})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(pubs, "edge-01", 42, value, b64(sig)); err != nil {
		t.Fatalf("openssl's signature: %v", err)
	}
	if _, err := LoadPrivateKey(key); err != nil {
		t.Fatalf("openssl's private key: %v", err)
	}
}

func TestCheckSections(t *testing.T) {
	for _, ok := range []string{"", "{}", "~", "routes: []\n", "log: {level: debug}\nbuffer: {max_disk_bytes: 1GiB}\n", "Routes: []\n",
		"receipts: {max_age: 24h}\nacl: {publish: ['a/#']}\nlink: {windows: []}\nunrouted: local\n"} {
		if err := CheckSections([]byte(ok)); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for value, want := range map[string]string{
		"kafka: {brokers: [evil:9092]}\n":         "sets kafka",
		"fleet: {config_keys: [/tmp/mine.pub]}\n": "sets fleet",
		"log: {level: debug}\nid: other\n":        "sets id",
		"- routes\n":                              "not a YAML mapping",
		"routes: [\n":                             "not YAML",
		"admin: {address: 0.0.0.0:9100}\n":        "sets admin",
		"data_dir: /\n":                           "sets data_dir",
		strings.Repeat("#", MaxOverlayBytes+1):    "more than",
	} {
		err := CheckSections([]byte(value))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: %v, want %q", value, err, want)
		}
	}
}

func TestStoreRoundTripAndRevokedKey(t *testing.T) {
	priv, pubs, _ := keyPair(t)
	_, other, _ := keyPair(t)
	dir := t.TempDir()
	if got, err := LoadStore(dir); err != nil || len(got) != 0 {
		t.Fatalf("no file: %v %v", got, err)
	}
	v := "log: {level: debug}\n"
	in := map[string]*Overlay{
		"*":   {Key: "*", Version: 3, Value: v, Signature: Sign(priv, "*", 3, []byte(v)), Partition: 1, Offset: 9},
		"box": {Key: "box", Version: 5, Value: v, Signature: Sign(priv, "box", 5, []byte(v))},
	}
	if err := SaveStore(dir, in); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("a temporary file was left: %v", entries)
	}
	out, err := LoadStore(dir)
	if err != nil || out["*"].Offset != 9 || out["box"].Version != 5 {
		t.Fatalf("round trip: %v %+v", err, out)
	}
	ok, refused := VerifyStored(out, pubs, "box")
	if len(ok) != 2 || len(refused) != 0 {
		t.Fatalf("verified: %v %v", ok, refused)
	}
	if l := Layers(ok, "box"); len(l) != 2 {
		t.Fatalf("layers: %d", len(l))
	}
	// The signing key was removed from fleet.config_keys: what it signed
	// no longer applies.
	ok, refused = VerifyStored(out, other, "box")
	if len(ok) != 0 || len(refused) != 2 || refused[0].Reason != ReasonBadSig {
		t.Fatalf("after the key was revoked: %v %+v", ok, refused)
	}
	os.WriteFile(filepath.Join(dir, StoreFile), []byte("{broken"), 0o600)
	if _, err := LoadStore(dir); err == nil {
		t.Fatal("a damaged file read as fine")
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
