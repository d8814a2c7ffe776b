package config

// MaxStoreKey is the longest key bbolt stores (bbolt.MaxKeySize). The
// broker's session file keys a subscription by client id and filter, and a
// retained message by its topic: the limits below keep every such key under
// it, so one client's long topic can never make a commit fail for everyone.
const MaxStoreKey = 32768

// storeKeyOverhead is the most a session-file key adds to a client id and a
// topic (a prefix like "SUB_" and a separator).
const storeKeyOverhead = 16

// mqttBounds validates what one client may make the broker hold (issue 23):
// topic length and depth, subscriptions, retained messages, connections
// before login, and the TLS listener's revocation list.
func (c *checker) mqttBounds(r *raw, m *MQTT) {
	b := &m.Bounds
	b.MaxTopicLength = int(c.integer("mqtt.max_topic_length", r.MQTT.MaxTopicLength, 16, 65535))
	if m.MaxClientIDLength > 0 && b.MaxTopicLength > 0 && m.MaxClientIDLength+b.MaxTopicLength+storeKeyOverhead > MaxStoreKey {
		c.addf("mqtt.max_topic_length", "%d plus mqtt.max_client_id_length %d must stay under %d bytes (the longest key of the session file, which names a subscription by client id and filter)",
			b.MaxTopicLength, m.MaxClientIDLength, MaxStoreKey-storeKeyOverhead)
	}
	b.MaxTopicLevels = int(c.integer("mqtt.max_topic_levels", r.MQTT.MaxTopicLevels, 1, 1000))
	b.MaxSubscriptions = int(c.integer("mqtt.max_subscriptions_per_client", r.MQTT.MaxSubscriptionsPerClient, 1, 100_000))
	b.MaxRetained = int(c.integer("mqtt.max_retained_messages", r.MQTT.MaxRetainedMessages, 0, 10_000_000))
	b.MaxRetainedBytes = c.size("mqtt.max_retained_bytes", r.MQTT.MaxRetainedBytes)
	b.MaxRetainedPerClient = int(c.integer("mqtt.max_retained_messages_per_client", r.MQTT.MaxRetainedMessagesPerClient, 0, 10_000_000))
	b.MaxRetainedBytesPerClient = c.size("mqtt.max_retained_bytes_per_client", r.MQTT.MaxRetainedBytesPerClient)
	if b.MaxRetainedPerClient > b.MaxRetained {
		c.addf("mqtt.max_retained_messages_per_client", "%d is more than mqtt.max_retained_messages %d", b.MaxRetainedPerClient, b.MaxRetained)
	}
	if b.MaxRetainedBytesPerClient > b.MaxRetainedBytes {
		c.addf("mqtt.max_retained_bytes_per_client", "%d is more than mqtt.max_retained_bytes %d", b.MaxRetainedBytesPerClient, b.MaxRetainedBytes)
	}
	b.MaxPending = int(c.integer("mqtt.max_pending_connections", r.MQTT.MaxPendingConnections, 1, 1_000_000))
	b.MaxPendingPerAddress = int(c.integer("mqtt.max_pending_connections_per_address", r.MQTT.MaxPendingConnectionsPerAddress, 1, 1_000_000))
	if b.MaxPending > 0 && b.MaxPendingPerAddress > b.MaxPending {
		c.addf("mqtt.max_pending_connections_per_address", "%d is more than mqtt.max_pending_connections %d", b.MaxPendingPerAddress, b.MaxPending)
	}
	if m.TLS.CRLFile != "" {
		if m.TLS.ClientCAFile == "" {
			c.addf("mqtt.tls.crl_file", "is set but mqtt.tls.client_ca_file is not: there are no client certificates to revoke")
		}
		c.fileExists("mqtt.tls.crl_file", m.TLS.CRLFile)
	}
}
