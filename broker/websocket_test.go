package broker

import (
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/edgegw/gateway/buffer"
)

// MQTT over WebSocket works, and a connection that never upgrades, or
// upgrades and never sends CONNECT, is closed at connect_timeout.
func TestWebsocketListenerBounded(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, "GATEWAY_MQTT_WEBSOCKET_ADDRESS=127.0.0.1:0", "GATEWAY_MQTT_CONNECT_TIMEOUT=1s")
	addr := e.brk.Addr("ws")

	o := paho.NewClientOptions().AddBroker("ws://" + addr).SetClientID("ws-term").SetAutoReconnect(false)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect over websocket: %v", tok.Error())
	}
	defer c.Disconnect(0)
	if tok := c.Publish("terminals/ws-term/payments/1", 1, false, "pay"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish over websocket: %v", tok.Error())
	}
	eventually(t, "stored", func() bool { return total(e.buf) == 1 })

	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); isTimeout(err) {
		t.Fatal("a connection that never upgrades is still open after 10s")
	}

	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := ws.ReadMessage(); isTimeout(err) {
		t.Fatal("an upgraded connection without CONNECT is still open after 10s")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// Close ends connections that have not sent CONNECT yet (TCP and upgraded
// WebSocket ones) instead of waiting out their connect_timeout.
func TestCloseEndsConnectionsBeforeConnect(t *testing.T) {
	e := start(t, "", "", buffer.Options{}, "GATEWAY_MQTT_WEBSOCKET_ADDRESS=127.0.0.1:0", "GATEWAY_MQTT_CONNECT_TIMEOUT=30s")
	tcp, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+e.brk.Addr("ws")+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	eventually(t, "both connections accepted", func() bool {
		e.brk.tcp[0].mu.Lock()
		n := len(e.brk.tcp[0].conns)
		e.brk.tcp[0].mu.Unlock()
		e.brk.ws.mu.Lock()
		m := len(e.brk.ws.conns)
		e.brk.ws.mu.Unlock()
		return n == 1 && m == 1
	})
	closed := make(chan error, 1)
	go func() { closed <- e.brk.Close() }()
	_ = tcp.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := tcp.Read(make([]byte, 1)); isTimeout(err) {
		t.Fatal("TCP connection before CONNECT still open 10s after Close")
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := ws.ReadMessage(); isTimeout(err) {
		t.Fatal("WebSocket connection before CONNECT still open 10s after Close")
	}
	<-closed
}
