package fleet

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// Headers of a config record (and of a status record: HeaderType).
const (
	HeaderType            = "gw.type"             // "status" or "config"
	HeaderGatewayID       = "gw.id"               // on status records: the box
	HeaderConfigVersion   = "gw.config.version"   // decimal, greater than every earlier version of the key
	HeaderConfigSignature = "gw.config.signature" // base64 ed25519 signature of SignedBytes
	HeaderConfigKeyID     = "gw.config.key_id"    // which key signed (informative; every configured key is tried)
)

// AllBoxes is the key of an overlay meant for every box.
const AllBoxes = "*"

// signedPrefix separates this signature's purpose from any other use of the
// same key.
const signedPrefix = "gw.config.v1\x00"

// SignedBytes is what a config record's signature covers: a fixed prefix,
// the record key, the version in decimal and the value, NUL-separated. A
// gateway id never contains NUL and a version is digits, so no two
// (key, version, value) share these bytes. Anyone can reproduce them, e.g.
// printf 'gw.config.v1\0%s\0%s\0' "$KEY" "$VERSION" | cat - overlay.yaml.
func SignedBytes(key string, version uint64, value []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(signedPrefix) + len(key) + 22 + len(value))
	b.WriteString(signedPrefix)
	b.WriteString(key)
	b.WriteByte(0)
	b.WriteString(strconv.FormatUint(version, 10))
	b.WriteByte(0)
	b.Write(value)
	return b.Bytes()
}

// PublicKey is a key overlays may be signed by.
type PublicKey struct {
	Key  ed25519.PublicKey
	ID   string // KeyID(Key)
	File string // where it was read from
}

// KeyID names a public key: the first 8 bytes of its SHA-256, in hex.
func KeyID(k ed25519.PublicKey) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:8])
}

// Sign signs an overlay for key at version; the result is the
// gw.config.signature header's value.
func Sign(priv ed25519.PrivateKey, key string, version uint64, value []byte) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(priv, SignedBytes(key, version, value)))
}

// Errors of Verify, for the refusal reasons.
var (
	ErrUnsigned   = errors.New("the record has no gw.config.signature header")
	ErrBadSig     = errors.New("the signature is not valid under any key of fleet.config_keys")
	ErrSigEncoded = errors.New("gw.config.signature is not base64 of a 64-byte ed25519 signature")
)

// Verify checks a base64 signature over (key, version, value) against keys
// and returns the id of the key that made it.
func Verify(keys []PublicKey, key string, version uint64, value []byte, sigB64 string) (string, error) {
	if sigB64 == "" {
		return "", ErrUnsigned
	}
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return "", ErrSigEncoded
	}
	msg := SignedBytes(key, version, value)
	for _, k := range keys {
		if ed25519.Verify(k.Key, msg, sig) {
			return k.ID, nil
		}
	}
	return "", ErrBadSig
}

// GenerateKey makes a signing key pair, PEM-encoded: the private key as
// PKCS #8 ("PRIVATE KEY"), the public key as PKIX ("PUBLIC KEY"), the
// formats openssl uses for ed25519.
func GenerateKey() (privPEM, pubPEM []byte, id string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, "", fmt.Errorf("fleet: generate key: %w", err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, "", fmt.Errorf("fleet: encode private key: %w", err)
	}
	px, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, "", fmt.Errorf("fleet: encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: px}), KeyID(pub), nil
}

// maxKeyFile bounds what is read of a key file.
const maxKeyFile = 64 << 10

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("%s: larger than %d bytes: not a key file", path, maxKeyFile)
	}
	return data, nil
}

// LoadPublicKeys reads the ed25519 public keys of files (PEM "PUBLIC KEY"
// blocks; a file may hold several, e.g. the old and the new key while a
// key is rotated). Errors name the file.
func LoadPublicKeys(files []string) ([]PublicKey, error) {
	var out []PublicKey
	for _, path := range files {
		data, err := readBounded(path)
		if err != nil {
			return nil, fmt.Errorf("fleet.config_keys: %w", err)
		}
		found := 0
		for rest := data; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "PUBLIC KEY" {
				continue
			}
			k, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("fleet.config_keys: %s: %w", path, err)
			}
			ek, ok := k.(ed25519.PublicKey)
			if !ok {
				return nil, fmt.Errorf("fleet.config_keys: %s: a %T, not an ed25519 public key", path, k)
			}
			out = append(out, PublicKey{Key: ek, ID: KeyID(ek), File: path})
			found++
		}
		if found == 0 {
			return nil, fmt.Errorf("fleet.config_keys: %s: no PEM \"PUBLIC KEY\" block (make one with gateway fleet keygen)", path)
		}
	}
	return out, nil
}

// LoadPrivateKey reads an ed25519 private key (PEM "PRIVATE KEY", PKCS #8).
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, fmt.Errorf("fleet: signing key: %w", err)
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, fmt.Errorf("fleet: signing key %s: no PEM \"PRIVATE KEY\" block", path)
		}
		if b.Type != "PRIVATE KEY" {
			continue
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("fleet: signing key %s: %w", path, err)
		}
		ek, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("fleet: signing key %s: a %T, not an ed25519 private key", path, k)
		}
		return ek, nil
	}
}
