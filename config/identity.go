package config

import (
	"strings"
	"time"
)

// MaxConnectTimeout is the longest mqtt.connect_timeout accepted: a stranger
// holds a connection (and its memory) for at most this long before CONNECT.
const MaxConnectTimeout = 30 * time.Second

// mqttIdentity validates the keys of client identity and resource bounds
// (mqtt.client_id_binding, the per-listener allow_anonymous overrides,
// connect_timeout, max_connect_size, max_session_expiry, max_sessions,
// topic_alias_max and the length limits), and flags combinations that
// cannot do what the operator meant.
func (c *checker) mqttIdentity(r *raw, m *MQTT) {
	m.ClientIDBinding = c.oneOf("mqtt.client_id_binding", strings.ToLower(strings.TrimSpace(r.MQTT.ClientIDBinding)), "identity", "any")

	// "" inherits mqtt.allow_anonymous.
	override := func(key, s string, listening bool) bool {
		if strings.TrimSpace(s) == "" {
			return m.AllowAnonymous
		}
		if !listening {
			c.addf(key, "is set but that listener is disabled")
		}
		return c.boolean(key, s)
	}
	m.AnonymousTCP = override("mqtt.tcp_allow_anonymous", r.MQTT.TCPAllowAnonymous, m.Address != "")
	m.AnonymousTLS = override("mqtt.tls.allow_anonymous", r.MQTT.TLS.AllowAnonymous, m.TLS.Address != "")
	m.AnonymousWebsocket = override("mqtt.websocket_allow_anonymous", r.MQTT.WebsocketAllowAnonymous, m.WebsocketAddress != "")
	// A listener that takes no anonymous client needs a way to log in:
	// passwords, or (on TLS only) client certificates.
	if m.Address != "" && !m.AnonymousTCP && m.UsersFile == "" {
		c.addf("mqtt.tcp_allow_anonymous", "the plain listener (mqtt.address) refuses anonymous clients but mqtt.users_file is not set: nobody could connect there (client certificates exist only on mqtt.tls)")
	}
	if m.WebsocketAddress != "" && !m.AnonymousWebsocket && m.UsersFile == "" {
		c.addf("mqtt.websocket_allow_anonymous", "the websocket listener refuses anonymous clients but mqtt.users_file is not set: nobody could connect there")
	}
	if m.TLS.Address != "" && !m.AnonymousTLS && m.UsersFile == "" && m.TLS.ClientCAFile == "" {
		c.addf("mqtt.tls.allow_anonymous", "the TLS listener refuses anonymous clients but neither mqtt.users_file nor mqtt.tls.client_ca_file is set: nobody could connect there")
	}
	if m.TLS.ClientCAFile != "" && m.TLS.Address == "" {
		c.addf("mqtt.tls.client_ca_file", "is set but mqtt.tls.address is empty: no listener asks for client certificates")
	}
	m.ConnectTimeout = c.duration("mqtt.connect_timeout", r.MQTT.ConnectTimeout)
	if m.ConnectTimeout <= 0 || m.ConnectTimeout > MaxConnectTimeout {
		c.addf("mqtt.connect_timeout", "must be a duration above 0 and at most %s, not %q", MaxConnectTimeout, r.MQTT.ConnectTimeout)
	}
	m.MaxConnectSize = c.size("mqtt.max_connect_size", r.MQTT.MaxConnectSize)
	if m.MaxConnectSize < 64 {
		c.addf("mqtt.max_connect_size", "must be at least 64 bytes, not %q", r.MQTT.MaxConnectSize)
	} else if m.MaxPacketSize > 0 && m.MaxConnectSize > m.MaxPacketSize {
		m.MaxConnectSize = m.MaxPacketSize // no packet may exceed max_packet_size anyway
	}
	m.MaxSessionExpiry = c.duration("mqtt.max_session_expiry", r.MQTT.MaxSessionExpiry)
	if m.MaxSessionExpiry < time.Second || m.MaxSessionExpiry > (1<<32-1)*time.Second {
		c.addf("mqtt.max_session_expiry", "must be a duration from 1s to 136 years (MQTT's limit), like 720h, not %q", r.MQTT.MaxSessionExpiry)
	}
	m.MaxSessions = int(c.integer("mqtt.max_sessions", r.MQTT.MaxSessions, 1, 100_000_000))
	m.TopicAliasMax = int(c.integer("mqtt.topic_alias_max", r.MQTT.TopicAliasMax, 0, 65535))
	m.MaxClientIDLength = int(c.integer("mqtt.max_client_id_length", r.MQTT.MaxClientIDLength, 1, 65535))
	m.MaxUsernameLength = int(c.integer("mqtt.max_username_length", r.MQTT.MaxUsernameLength, 1, 65535))
}
