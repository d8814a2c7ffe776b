package broker

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	mochibolt "github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/gateway/buffer"
)

func persistentClient(t *testing.T, addr, id string) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(false).
		SetAutoReconnect(false).SetConnectRetry(false)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	return c
}

// sessionCommits is how many pages the session store has written.
func sessionPages(e *env) int64 {
	st := e.brk.store.db.Stats()
	return st.TxStats.GetWrite()
}

// Flash wear: a clean session writes nothing; a persistent terminal that
// reconnects and subscribes to what it already had writes nothing; a new
// subscription is written (once, behind) and restored after a restart.
func TestSessionStoreWritesOnlyChanges(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, "", buffer.Options{})
	settle := func() { time.Sleep(sessionFlushEvery + 300*time.Millisecond) }

	before := sessionPages(e)
	for i := 0; i < 5; i++ {
		c := pahoClient(t, e.addr, fmt.Sprintf("clean-%d", i), nil)
		c.Subscribe(fmt.Sprintf("terminals/clean-%d/receipts", i), 1, nil).WaitTimeout(5 * time.Second)
		c.Disconnect(0)
	}
	settle()
	if w := sessionPages(e) - before; w != 0 {
		t.Fatalf("clean sessions wrote %d pages to sessions.db; want none", w)
	}

	// first connection of a persistent terminal: stored
	c := persistentClient(t, e.addr, "term-p")
	if tok := c.Subscribe("terminals/term-p/receipts", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := c.Subscribe("terminals/term-p/cmd", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c.Disconnect(0)
	settle()
	if sessionPages(e) == before {
		t.Fatal("a persistent session was not written")
	}
	// the same terminal reconnects: nothing changed, nothing written
	before = sessionPages(e)
	for i := 0; i < 3; i++ {
		c = persistentClient(t, e.addr, "term-p")
		c.Subscribe("terminals/term-p/receipts", 1, nil).WaitTimeout(5 * time.Second)
		c.Disconnect(0)
	}
	settle()
	if w := sessionPages(e) - before; w != 0 {
		t.Fatalf("reconnects of an unchanged persistent session wrote %d pages; want none", w)
	}
	e.stop()

	// after a restart the subscription is there: a message published while
	// the terminal is offline reaches it when it reconnects
	e = start(t, dir, "unrouted: local\nacl: {subscribe: ['#'], publish: ['#']}\n", buffer.Options{})
	pub := pahoClient(t, e.addr, "edge-app", nil)
	if tok := pub.Publish("terminals/term-p/cmd", 1, false, "r1"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	got := make(chan string, 1)
	o := paho.NewClientOptions().AddBroker("tcp://" + e.addr).SetClientID("term-p").SetCleanSession(false).
		SetAutoReconnect(false).SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
	c = paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer c.Disconnect(0)
	select {
	case m := <-got:
		if m != "r1" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stored subscription did not survive the restart")
	}
}

// A sessions.db written by mochi's own bbolt hook (the first release) opens
// with its clients and subscriptions.
func TestSessionStoreReadsMochiFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sessions.db")
	old := new(mochibolt.Hook)
	if err := old.Init(&mochibolt.Options{Path: path}); err != nil {
		t.Fatal(err)
	}
	cl := &mqtt.Client{ID: "term-old"}
	cl.Properties.ProtocolVersion = 4
	old.OnSessionEstablished(cl, packets.Packet{})
	old.OnSubscribed(cl, packets.Packet{Filters: packets.Subscriptions{{Filter: "terminals/term-old/receipts", Qos: 1}}}, []byte{1})
	old.OnSysInfoTick(new(system.Info))
	old.Stop()

	s := newSessionStore(path, nil, nil, nil)
	if err := s.Init(nil); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	clients, _ := s.StoredClients()
	subs, _ := s.StoredSubscriptions()
	if len(clients) != 1 || clients[0].ID != "term-old" || len(subs) != 1 || subs[0].Filter != "terminals/term-old/receipts" {
		t.Fatalf("from a mochi-written file: clients %+v subscriptions %+v", clients, subs)
	}
	if _, err := s.StoredSysInfo(); err != nil {
		t.Fatal(err)
	}
	_ = storage.ClientKey
}

// MQTT-4.3.2-5: once a PUBACK went out, the packet id names a new message.
// A DUP repeating it on the same connection is the stored copy (the client
// had that PUBACK); on a later connection it may be a new, identical message
// whose first copy was lost with the old connection: stored, never dropped,
// and marked with the possible original's seq.
func TestDupAfterPubackOnLaterConnectionIsStored(t *testing.T) {
	e := start(t, "", "", buffer.Options{})
	topic := "terminals/term-r/payments/1"
	c := dialRaw(t, e.addr, 4, "term-r", false)
	c.publish(1, 9, false, topic, []byte("same"))
	c.expectPuback()
	c.publish(1, 9, true, topic, []byte("same")) // same connection: the copy
	c.expectPuback()
	if n := total(e.buf); n != 1 {
		t.Fatalf("DUP on the same connection: %d stored, want 1", n)
	}
	c.conn.Close()
	c = dialRaw(t, e.addr, 4, "term-r", false)
	c.publish(1, 9, true, topic, []byte("same"))
	c.expectPuback()
	if n := total(e.buf); n != 2 {
		t.Fatalf("DUP on a later connection after its PUBACK: %d stored, want 2 (never dropped)", n)
	}
	recs, _ := e.buf.Read(nil, func(string) int { return 0 }, 10, 1<<20)
	if len(recs) != 2 {
		t.Fatalf("read %d", len(recs))
	}
	var mark string
	for _, h := range recs[1].Headers {
		if h.Key == buffer.HeaderPossibleDuplicateOf {
			mark = string(h.Value)
		}
	}
	if mark != fmt.Sprint(recs[0].Seq) {
		t.Fatalf("second copy's %s header = %q, want %d", buffer.HeaderPossibleDuplicateOf, mark, recs[0].Seq)
	}
}

// Shutdown while clients are disconnecting: mochi's own listener-close path
// (GetByListener) takes the clients' read lock twice and deadlocks when a
// client's Delete waits for the write lock in between; the gateway ends the
// clients its own way. Close must return.
func TestCloseWhileClientsDisconnect(t *testing.T) {
	for round := 0; round < 5; round++ {
		e := start(t, "", "", buffer.Options{})
		var clients []paho.Client
		for i := 0; i < 30; i++ {
			clients = append(clients, pahoClient(t, e.addr, fmt.Sprintf("term-%d-%d", round, i), nil))
		}
		done := make(chan struct{})
		go func() {
			for _, c := range clients {
				go c.Disconnect(0)
			}
			e.brk.Close()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: broker Close did not return while clients disconnected (deadlock)", round)
		}
	}
}
