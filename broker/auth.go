package broker

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/rules"
)

// LoadUsers reads a users file: one "username:bcrypt-hash" per line; blank
// lines and lines starting with # are ignored.
func LoadUsers(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	defer f.Close()
	users := map[string][]byte{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("users file %s line %d: want username:bcrypt-hash", path, n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("users file %s line %d: %q is not a bcrypt hash", path, n, name)
		}
		users[name] = []byte(hash)
	}
	return users, sc.Err()
}

// authHook authenticates connections and applies the ACL.
type authHook struct {
	mqtt.HookBase
	allowAnonymous bool
	users          map[string][]byte
	acl            atomic.Pointer[config.ACL] // swapped on reload

	// expanded caches each client's ACL filters with {client_id} and
	// {username} filled in: the check runs several times per publish.
	expanded sync.Map // *mqtt.Client -> *clientACL
}

type clientACL struct {
	from      *config.ACL // the ACL these were expanded from; a reload replaces it
	publish   [][]string  // filters split into levels
	subscribe []string
}

func (h *authHook) ID() string { return "gateway-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnDisconnect
}

func (h *authHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.expanded.Delete(cl)
}

// clientFilters returns the client's expanded ACL, building it on first use
// and after a reload.
func (h *authHook) clientFilters(cl *mqtt.Client, acl *config.ACL) *clientACL {
	if v, ok := h.expanded.Load(cl); ok && v.(*clientACL).from == acl {
		return v.(*clientACL)
	}
	c := &clientACL{from: acl}
	for _, p := range acl.Publish {
		if f, ok := expandACL(p, cl); ok {
			c.publish = append(c.publish, strings.Split(f, "/"))
		}
	}
	for _, p := range acl.Subscribe {
		if f, ok := expandACL(p, cl); ok {
			c.subscribe = append(c.subscribe, f)
		}
	}
	h.expanded.Store(cl, c)
	return c
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	if user == "" {
		return h.allowAnonymous
	}
	hash, ok := h.users[user]
	if !ok {
		// A name we don't know is refused even when anonymous access is on:
		// a terminal misconfigured with credentials should hear about it.
		return len(h.users) == 0 && h.allowAnonymous
	}
	return bcrypt.CompareHashAndPassword(hash, pk.Connect.Password) == nil
}

// OnACLCheck: a publish topic must match a publish filter; a subscription
// filter must lie entirely within a subscribe filter.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	acl := h.acl.Load()
	if acl == nil {
		return true
	}
	c := h.clientFilters(cl, acl)
	if write {
		for _, f := range c.publish {
			if rules.MatchFilter(f, topic) {
				return true
			}
		}
		return false
	}
	for _, f := range c.subscribe {
		if filterWithin(topic, f) {
			return true
		}
	}
	return false
}

// expandACL fills {client_id} and {username}. A value that contains a level
// separator or a wildcard would widen the filter, so such an entry grants
// nothing.
func expandACL(pattern string, cl *mqtt.Client) (string, bool) {
	if !strings.Contains(pattern, "{") {
		return pattern, true
	}
	id, user := cl.ID, string(cl.Properties.Username)
	if strings.Contains(pattern, "{client_id}") && (id == "" || strings.ContainsAny(id, "/+#")) {
		return "", false
	}
	if strings.Contains(pattern, "{username}") && (user == "" || strings.ContainsAny(user, "/+#")) {
		return "", false
	}
	return strings.NewReplacer("{client_id}", id, "{username}", user).Replace(pattern), true
}

// filterWithin reports whether every topic matched by sub is also matched by
// allowed.
func filterWithin(sub, allowed string) bool {
	if strings.HasPrefix(sub, "$share/") {
		// $share/group/filter: the ACL applies to the filter part.
		parts := strings.SplitN(sub, "/", 3)
		if len(parts) < 3 {
			return false
		}
		sub = parts[2]
	}
	s := strings.Split(sub, "/")
	a := strings.Split(allowed, "/")
	for i, al := range a {
		if al == "#" {
			// "#" also matches the parent level, so s may end here too.
			return !(i == 0 && strings.HasPrefix(sub, "$") && !strings.HasPrefix(allowed, "$"))
		}
		if i >= len(s) {
			return false
		}
		sl := s[i]
		switch {
		case sl == "#":
			return false // sub reaches deeper than allowed can
		case al == "+":
			if i == 0 && strings.HasPrefix(sl, "$") {
				return false
			}
		case sl != al:
			return false // includes sl == "+" against a literal
		}
	}
	return len(s) == len(a)
}
