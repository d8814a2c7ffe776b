package broker

import (
	"crypto/tls"
	"encoding/asn1"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/rules"
)

// LoadUsers reads a users file: one "username:bcrypt-hash" per line; blank
// lines and lines starting with # are ignored. The format is config's
// (`gateway check` reads it the same way).
func LoadUsers(path string) (map[string][]byte, error) { return config.LoadUsers(path) }

// authHook authenticates connections, binds client ids to identities and
// applies the ACL.
//
// Everything about who a client is gets decided in OnConnect, which mochi
// (v2.7.9, attachClient) calls right after reading CONNECT and before
// OnConnectAuthenticate, OnSessionEstablish and the session takeover
// (inheritClientSession): a refusal there answers with its own CONNACK and
// never touches the session, or the connection, already using that client
// id. OnConnectAuthenticate then only confirms the decision.
type authHook struct {
	mqtt.HookBase
	b     *Broker
	users map[string][]byte
	// dummy is compared against for a user name we don't know, so that an
	// unknown name costs the same bcrypt work as a known one (no user
	// enumeration by timing).
	dummy []byte
	// anonymous is allow_anonymous per listener id ("tcp", "tls", "ws").
	anonymous map[string]bool
	// bind: an authenticated client's id must be its identity
	// (mqtt.client_id_binding: identity).
	bind        bool
	maxClientID int
	maxUsername int
	logins      *loginGuard
	acl         atomic.Pointer[config.ACL] // swapped on reload

	approved sync.Map // *mqtt.Client -> struct{}: OnConnect accepted it, until OnConnectAuthenticate

	// expanded caches each client's ACL filters with {client_id},
	// {username} and {cert_cn} filled in: the check runs several times per
	// publish.
	expanded sync.Map // *mqtt.Client -> *clientACL
}

type clientACL struct {
	from      *config.ACL // the ACL these were expanded from; a reload replaces it
	publish   [][]string  // filters split into levels
	subscribe []string
}

func (h *authHook) ID() string { return "gateway-auth" }

func (h *authHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnDisconnect, mqtt.OnPacketEncode:
		return true
	}
	return false
}

func (h *authHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.expanded.Delete(cl)
	h.approved.Delete(cl)
}

// clientFilters returns the client's expanded ACL, building it on first use
// and after a reload.
func (h *authHook) clientFilters(cl *mqtt.Client, acl *config.ACL) *clientACL {
	if v, ok := h.expanded.Load(cl); ok && v.(*clientACL).from == acl {
		return v.(*clientACL)
	}
	c := &clientACL{from: acl}
	cn := certCN(cl)
	for _, p := range acl.Publish {
		if f, ok := expandACL(p, cl, cn); ok {
			c.publish = append(c.publish, strings.Split(f, "/"))
		}
	}
	for _, p := range acl.Subscribe {
		if f, ok := expandACL(p, cl, cn); ok {
			c.subscribe = append(c.subscribe, f)
		}
	}
	h.expanded.Store(cl, c)
	return c
}

// Connect refusals: the MQTT 5 reason code and the 3.1.1 return code.
var (
	refuseClientID = [2]packets.Code{packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid}
	refuseLogin    = [2]packets.Code{packets.ErrBadUsernameOrPassword, packets.Err3NotAuthorized} // 3.1.1 code 5, as mochi maps it
	refuseNotAuth  = [2]packets.Code{packets.ErrNotAuthorized, packets.Err3NotAuthorized}
	refuseBusy     = [2]packets.Code{packets.ErrConnectionRateExceeded, packets.Err3ServerUnavailable}
	refuseTopic    = [2]packets.Code{packets.ErrTopicNameInvalid, packets.Err3NotAuthorized}
	refuseProtocol = [2]packets.Code{packets.ErrProtocolViolation, packets.Err3ServerUnavailable} // MQTT 5 only
)

// refuse answers CONNECT with the code for the client's protocol version and
// returns the error that makes mochi close the connection.
func (h *authHook) refuse(cl *mqtt.Client, codes [2]packets.Code, why string) error {
	code := codes[0]
	if cl.Properties.ProtocolVersion < 5 {
		code = codes[1]
	}
	h.b.countLoginRefused(why)
	_ = h.b.server.SendConnack(cl, code, false, nil)
	return codes[0]
}

// OnConnect decides who the client is and whether it may use its client id
// and its will, before mochi touches any session (see authHook).
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if g := guardOf(cl); g != nil {
		g.client.Store(cl)
		if why := g.protocolError(); why != "" {
			// MQTT 5 3.1.2.11: mochi v2.7.9 accepts these
			return h.refuse(cl, refuseProtocol, why)
		}
	}
	if len(pk.Connect.ClientIdentifier) > h.maxClientID {
		return h.refuse(cl, refuseClientID, "client_id_too_long")
	}
	if len(pk.Connect.Username) > h.maxUsername {
		return h.refuse(cl, refuseLogin, "username_too_long")
	}
	identity, codes, why := h.authenticate(cl, pk)
	if why != "" {
		return h.refuse(cl, codes, why)
	}
	if identity != "" && len(pk.Connect.Username) == 0 {
		// A certificate login: the CN serves as the user name, as with
		// mosquitto's use_identity_as_username, so {username} and the
		// stored session carry it too.
		cl.Properties.Username = []byte(identity)
	}
	if identity != "" && h.bind {
		switch {
		case pk.Connect.ClientIdentifier == "":
			// No id asked for: the identity is the id (MQTT 5 tells the
			// client in CONNACK's assigned client identifier).
			cl.ID = identity
			if cl.Properties.ProtocolVersion == 5 {
				cl.Properties.Props.AssignedClientID = identity
			}
		case cl.ID != identity:
			return h.refuse(cl, refuseClientID, "client_id_not_bound")
		}
	}
	if identity == "" && h.bind {
		if _, isUser := h.users[cl.ID]; isUser {
			// An anonymous client (where allowed) may not pose as a user
			// of the users file, connected or not.
			return h.refuse(cl, refuseClientID, "client_id_of_a_user")
		}
	}
	// Whatever the binding, a session belongs to the identity that made it:
	// nobody else takes it over (its subscriptions, its receipts).
	if existing, ok := h.b.server.Clients.Get(cl.ID); ok {
		if existing.Net.Inline {
			// mochi's in-process client ("inline"), which publishes the
			// receipts: a takeover would cut the downlink.
			return h.refuse(cl, refuseClientID, "client_id_reserved")
		}
		if owner := string(existing.Properties.Username); owner != "" && h.authConfigured() && owner != identity {
			return h.refuse(cl, refuseClientID, "session_owned")
		}
	}
	if pk.Connect.WillFlag {
		t := pk.Connect.WillTopic
		switch rs := h.b.rules(); {
		case topicTooLong(t, h.b.bounds.bounds) || topicTooDeep(t, h.b.bounds.bounds):
			return h.refuse(cl, refuseTopic, "will_topic_invalid")
		case h.b.isReceiptsTopic(t):
			// only the gateway publishes there: a will would be taken for
			// a receipt (a retained one, for good)
			return h.refuse(cl, refuseNotAuth, "will_denied")
		case rs.Match(t) == nil && rs.Unrouted != "local":
			// a publish there would be refused (unrouted: reject): so is
			// a will, at CONNECT, where the terminal hears of it
			return h.refuse(cl, refuseTopic, "will_unrouted")
		}
		allowed := mqtt.IsValidFilter(pk.Connect.WillTopic, true) && h.allowed(cl, pk.Connect.WillTopic, true)
		// mochi may end the connection before OnDisconnect runs (a failed
		// CONNACK write): keep nothing keyed by cl from here; the ACL is
		// expanded again at the first publish.
		h.expanded.Delete(cl)
		if !allowed {
			return h.refuse(cl, refuseNotAuth, "will_denied")
		}
	}
	h.approved.Store(cl, struct{}{})
	return nil
}

func (h *authHook) authConfigured() bool { return len(h.users) > 0 || h.b.certLogin }

// authenticate returns the client's identity ("" for an anonymous client),
// or why it is refused and with which codes.
func (h *authHook) authenticate(cl *mqtt.Client, pk packets.Packet) (identity string, codes [2]packets.Code, why string) {
	user := string(pk.Connect.Username)
	cn, ambiguous := certIdentity(cl)
	switch {
	case ambiguous:
		return "", refuseLogin, "certificate_cn_ambiguous"
	case cn != "" && (user == "" || user == cn) && len(pk.Connect.Password) == 0:
		// A certificate verified against client_ca_file is a complete
		// login; a user name equal to its CN adds nothing.
		return cn, codes, ""
	case user == "":
		if h.anonymous[cl.Net.Listener] {
			return "", codes, ""
		}
		return "", refuseLogin, "anonymous"
	}
	hash, known := h.users[user]
	if len(h.users) == 0 {
		// No users file: a user name proves nothing; the client is
		// anonymous where that is allowed.
		if h.anonymous[cl.Net.Listener] {
			return "", codes, ""
		}
		return "", refuseLogin, "unknown_user"
	}
	if !known {
		hash = h.dummy
	}
	ok, busy := h.logins.check(cl.Net.Remote, user, hash, pk.Connect.Password)
	switch {
	case busy:
		return "", refuseBusy, "login_backoff"
	case !ok || !known:
		// A name we don't know is refused even when anonymous access is
		// on: a terminal misconfigured with credentials should hear of it.
		return "", refuseLogin, "bad_credentials"
	}
	return user, codes, ""
}

// OnConnectAuthenticate confirms what OnConnect decided.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	_, ok := h.approved.LoadAndDelete(cl)
	return ok
}

// OnPacketEncode announces topic_alias_max in a successful MQTT 5 CONNACK
// (mochi v2.7.9 enforces its TopicAliasMaximum but never announces it, and
// a client may use no alias it was not told of).
//
// A CONNACK refusing an MQTT 3.1.1 client carries a 3.1.1 return code:
// mochi v2.7.9 maps some MQTT 5 reason codes, and sends others (0x80, 0x82)
// as they are, which 3.1.1 does not define. Where 3.1.1 has no equivalent
// (a malformed CONNECT, a protocol error) it says to close the connection
// without a CONNACK, and frameGuard.Write holds such a CONNACK back
// (TestConnack311Codes).
func (h *authHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Connack {
		return pk
	}
	if pk.ReasonCode == 0 && cl.Properties.ProtocolVersion == 5 {
		pk.Properties.TopicAliasMaximum = h.b.server.Options.Capabilities.TopicAliasMaximum
	}
	if cl.Properties.ProtocolVersion < 5 && pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
		if c, ok := v3ConnackCodes[pk.ReasonCode]; ok {
			pk.ReasonCode = c
		}
	}
	return pk
}

// v3ConnackCodes maps the MQTT 5 CONNACK reason codes that have a 3.1.1
// equivalent. mochi answers a 3.1.1 persistent session without a client id
// with 0x80; 3.1.1 says 0x02 (identifier rejected).
var v3ConnackCodes = map[byte]byte{
	packets.ErrUnspecifiedError.Code:           packets.Err3ClientIdentifierNotValid.Code,
	packets.ErrUnsupportedProtocolVersion.Code: packets.Err3UnsupportedProtocolVersion.Code,
	packets.ErrClientIdentifierNotValid.Code:   packets.Err3ClientIdentifierNotValid.Code,
	packets.ErrBadUsernameOrPassword.Code:      packets.Err3NotAuthorized.Code, // as mochi maps it
	packets.ErrNotAuthorized.Code:              packets.Err3NotAuthorized.Code,
	packets.ErrServerUnavailable.Code:          packets.Err3ServerUnavailable.Code,
	packets.ErrServerBusy.Code:                 packets.Err3ServerUnavailable.Code,
	packets.ErrQuotaExceeded.Code:              packets.Err3ServerUnavailable.Code,
	packets.ErrConnectionRateExceeded.Code:     packets.Err3ServerUnavailable.Code,
	packets.ErrBadAuthenticationMethod.Code:    packets.Err3NotAuthorized.Code,
}

// certCN is the subject CN of the client's verified certificate, or "" (no
// certificate, or one whose subject names more than one CN).
func certCN(cl *mqtt.Client) string {
	cn, _ := certIdentity(cl)
	return cn
}

// certIdentity is the subject CN of the client's verified certificate;
// ambiguous when the subject holds several CNs: Go's pkix.Name keeps the
// last one, another reader may take the first, so such a certificate names
// no identity and its login is refused.
func certIdentity(cl *mqtt.Client) (cn string, ambiguous bool) {
	conn := cl.Net.Conn
	if g := guardOf(cl); g != nil {
		conn = g.Conn
	}
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return "", false
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return "", false // no certificate, or one nobody verified
	}
	subject := st.VerifiedChains[0][0].Subject
	n := 0
	for _, atv := range subject.Names {
		if atv.Type.Equal(oidCommonName) {
			n++
		}
	}
	if n > 1 {
		return "", true
	}
	return subject.CommonName, false
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// OnACLCheck: a publish topic must match a publish filter; a subscription
// filter must lie entirely within a subscribe filter.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := h.allowed(cl, topic, write)
	if !ok && write {
		// mochi calls it with write only for a client's PUBLISH: a terminal
		// hammering a topic it may not use shows in
		// gateway_ingest_refused_total{reason="acl_denied"}.
		h.b.countRefused("", "acl_denied")
	}
	return ok
}

// allowed applies the ACL: may cl publish (write) to topic, or subscribe
// to the filter topic.
func (h *authHook) allowed(cl *mqtt.Client, topic string, write bool) bool {
	acl := h.acl.Load()
	if acl == nil {
		return write || h.b.bounds.subscribing(cl, topic) || h.b.bounds.allowDelivery(cl, topic)
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
			// mochi asks the same for a subscription and for each delivery
			// (publishToClient, before it stores anything): a delivery
			// also needs room in the client's window.
			return h.b.bounds.subscribing(cl, topic) || h.b.bounds.allowDelivery(cl, topic)
		}
	}
	return false
}

// expandACL fills {client_id}, {username} and {cert_cn}. A value that is
// empty, or contains a level separator or a wildcard, would widen the
// filter, so such an entry grants nothing.
func expandACL(pattern string, cl *mqtt.Client, cn string) (string, bool) {
	if !strings.Contains(pattern, "{") {
		return pattern, true
	}
	vals := []string{"{client_id}", cl.ID, "{username}", string(cl.Properties.Username), "{cert_cn}", cn}
	for i := 0; i < len(vals); i += 2 {
		if strings.Contains(pattern, vals[i]) && (vals[i+1] == "" || strings.ContainsAny(vals[i+1], "/+#")) {
			return "", false
		}
	}
	return strings.NewReplacer(vals...).Replace(pattern), true
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
