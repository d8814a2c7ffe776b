package broker

import (
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// serveConn hands one accepted connection (past its TLS handshake or
// WebSocket upgrade) to mochi behind a frameGuard, and contains a panic in
// mochi's reading of it: mochi v2.7.9 recovers nothing, so a packet that
// panics its decoder would end the whole process. The panicking client's
// connection is closed and its session ended as a disconnect would end it
// (see Broker.endPanicked); every other client goes on.
//
// mochi gets the connection only once its first byte arrived: a silent
// connection costs our goroutine until the deadline, not a mochi client
// (two buffers and a writer goroutine).
func serveConn(id string, conn net.Conn, slot *pendingSlot, limits connLimits, establish listeners.EstablishFn, log *slog.Logger) {
	g := &frameGuard{Conn: conn, max: limits.maxPacket, maxConnect: limits.maxConnect, events: limits.events, slot: slot}
	defer slot.release()
	defer func() {
		if v := recover(); v != nil {
			_ = g.Close()
			if limits.panicked != nil {
				limits.panicked(g, v, debug.Stack())
			}
		}
	}()
	first := make([]byte, 1)
	if n, err := conn.Read(first); n == 0 {
		_ = g.Close()
		if log != nil {
			log.Debug("mqtt connection ended before its first byte", "listener", id, "remote", conn.RemoteAddr(), "error", err)
		}
		return
	}
	g.preload(first)
	err := establish(id, g)
	if err != nil && log != nil {
		log.Debug("mqtt connection ended", "listener", id, "remote", conn.RemoteAddr(), "error", err)
	}
}

// endPanicked counts and logs a panic in mochi's reading of a client's
// packets, and ends that client as mochi's attachClient would have after
// its read loop (v2.7.9): our hooks hear of the disconnect, and a session
// that ends with its connection is removed. The will is not sent: the
// client's last act was a packet nobody could read.
func (b *Broker) endPanicked(g *frameGuard, v any, stack []byte) {
	b.clientPanics.Inc()
	cl := g.client.Load()
	id := ""
	if cl != nil {
		id = cl.ID
	}
	b.logEvery.Log(b.log, slog.LevelError, "panic/"+id, "a client's packet made the MQTT broker panic; that client was disconnected (see gateway_mqtt_client_panics_total)",
		"client", id, "remote", g.RemoteAddr(), "panic", fmt.Sprint(v), "stack", string(stack))
	if cl == nil {
		return // before OnConnect: mochi holds nothing of it
	}
	err := fmt.Errorf("panic: %v", v)
	cl.Stop(err)
	expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryInterval == 0) ||
		(cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
	// Our hooks, in the order New adds them.
	for _, h := range b.disconnectHooks() {
		h.OnDisconnect(cl, err, expire)
	}
	if expire && !cl.IsTakenOver() {
		cl.ClearInflights()
		b.server.UnsubscribeClient(cl)
		if cur, ok := b.server.Clients.Get(cl.ID); ok && cur == cl {
			b.server.Clients.Delete(cl.ID)
		}
	}
}

// disconnectHooks are the hooks that keep state per client, in the order
// they were added to mochi.
func (b *Broker) disconnectHooks() []interface {
	OnDisconnect(cl *mqtt.Client, err error, expire bool)
} {
	hs := []interface {
		OnDisconnect(cl *mqtt.Client, err error, expire bool)
	}{b.auth, b.ingest}
	if b.store != nil {
		hs = append(hs, b.store)
	}
	return append(hs, b.bounds, b.limits, b.downlink)
}
