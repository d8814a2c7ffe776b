package kafkaclient

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

var (
	sha256Hash = sha256.New
	sha512Hash = sha512.New
)

// scramClient is the client side of SCRAM (RFC 5802) as sarama's
// SCRAMClientGeneratorFunc wants it, built on the standard library so the
// gateway needs no extra dependency. Passwords are used as given (no
// SASLprep): fine for the ASCII credentials Kafka deployments use.
type scramClient struct {
	h    func() hash.Hash
	user string
	pass string
	// authz is the optional authorization identity.
	authz string

	step        int
	nonce       string
	gs2         string
	firstBare   string
	serverSig   []byte
	done        bool
	randomNonce func() (string, error)
}

func newSCRAM(h func() hash.Hash) *scramClient {
	return &scramClient{h: h, randomNonce: randomNonce}
}

func randomNonce() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawStdEncoding.EncodeToString(b), nil
}

// saslName escapes ',' and '=' as RFC 5802 requires.
func saslName(s string) string {
	return strings.NewReplacer("=", "=3D", ",", "=2C").Replace(s)
}

// Begin implements sarama.SCRAMClient.
func (c *scramClient) Begin(user, pass, authz string) error {
	c.user, c.pass, c.authz = user, pass, authz
	c.step, c.done = 0, false
	return nil
}

// Done implements sarama.SCRAMClient.
func (c *scramClient) Done() bool { return c.done }

// Step implements sarama.SCRAMClient.
func (c *scramClient) Step(challenge string) (string, error) {
	defer func() { c.step++ }()
	switch c.step {
	case 0:
		nonce, err := c.randomNonce()
		if err != nil {
			return "", fmt.Errorf("scram: nonce: %w", err)
		}
		c.nonce = nonce
		c.gs2 = "n,"
		if c.authz != "" {
			c.gs2 += "a=" + saslName(c.authz)
		}
		c.gs2 += ","
		c.firstBare = "n=" + saslName(c.user) + ",r=" + nonce
		return c.gs2 + c.firstBare, nil
	case 1:
		return c.final(challenge)
	case 2:
		attrs := parseAttrs(challenge)
		if e, ok := attrs["e"]; ok {
			return "", fmt.Errorf("scram: server refused: %s", e)
		}
		v, err := base64.StdEncoding.DecodeString(attrs["v"])
		if err != nil || !hmac.Equal(v, c.serverSig) {
			return "", errors.New("scram: server signature does not match: not the server we hold credentials for")
		}
		c.done = true
		return "", nil
	}
	return "", errors.New("scram: unexpected step")
}

func (c *scramClient) final(serverFirst string) (string, error) {
	attrs := parseAttrs(serverFirst)
	if e, ok := attrs["e"]; ok {
		return "", fmt.Errorf("scram: server refused: %s", e)
	}
	r, s, i := attrs["r"], attrs["s"], attrs["i"]
	if !strings.HasPrefix(r, c.nonce) || len(r) == len(c.nonce) {
		return "", errors.New("scram: server nonce does not extend ours")
	}
	salt, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", fmt.Errorf("scram: salt: %w", err)
	}
	iter, err := strconv.Atoi(i)
	if err != nil || iter < 1 {
		return "", fmt.Errorf("scram: iteration count %q", i)
	}
	salted, err := pbkdf2.Key(c.h, c.pass, salt, iter, c.h().Size())
	if err != nil {
		return "", fmt.Errorf("scram: %w", err)
	}
	clientKey := c.hmac(salted, []byte("Client Key"))
	hs := c.h()
	hs.Write(clientKey)
	storedKey := hs.Sum(nil)
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte(c.gs2)) + ",r=" + r
	authMsg := []byte(c.firstBare + "," + serverFirst + "," + withoutProof)
	sig := c.hmac(storedKey, authMsg)
	proof := bytes.Clone(clientKey)
	for j := range proof {
		proof[j] ^= sig[j]
	}
	c.serverSig = c.hmac(c.hmac(salted, []byte("Server Key")), authMsg)
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}

func (c *scramClient) hmac(key, msg []byte) []byte {
	m := hmac.New(c.h, key)
	m.Write(msg)
	return m.Sum(nil)
}

func parseAttrs(s string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(part, "="); ok && len(k) == 1 {
			out[k] = v
		}
	}
	return out
}
