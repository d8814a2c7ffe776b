// Command resbench measures what strangers on the network can make a real
// gateway process hold (DESIGN invariant 12): the resident memory (VmRSS) of
// `gateway run` when idle, with 300 silent connections (held, then after
// mqtt.connect_timeout), with 200 unfinished 256 KiB CONNECTs, with 3,000
// offline persistent MQTT 5 sessions, and with 1,000 idle clients.
//
//	resbench [-gateway bin/gateway] [-connect-timeout 3s]
//
// With -floods, the floods of a logged-in hostile terminal instead (issue
// 23), each on a fresh gateway: 10,000 silent connections, 40,000
// subscriptions, 150 retained messages of 240 KB (and a restart), a SUBSCRIBE
// of 4 x 65,000 levels, a login flood from 200 addresses:
//
//	resbench -floods all [-gateway bin/gateway]
//
// Kafka is left unreachable: buffering is normal work and keeps the figures
// about the broker. Linux only (reads /proc). Run by `make bench-resources`.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("gateway", "bin/gateway", "the gateway binary")
	timeout := flag.Duration("connect-timeout", 3*time.Second, "mqtt.connect_timeout of the gateway under test")
	silent := flag.Int("silent", 300, "silent connections")
	partial := flag.Int("partial", 200, "unfinished 256 KiB CONNECTs")
	sessions := flag.Int("sessions", 3000, "offline persistent MQTT 5 sessions")
	idle := flag.Int("idle", 1000, "idle connected clients")
	flood := flag.String("floods", "", `run the floods of a hostile terminal instead: "all" or a comma list of silent, subscriptions, retained, deep, login`)
	flag.Parse()
	if *flood != "" {
		if *flood == "all" {
			*flood = ""
		}
		if err := floods(*bin, *flood); err != nil {
			fmt.Fprintln(os.Stderr, "resbench:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*bin, *timeout, *silent, *partial, *sessions, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "resbench:", err)
		os.Exit(1)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func run(bin string, timeout time.Duration, nSilent, nPartial, nSessions, nIdle int) error {
	dir, err := os.MkdirTemp("", "resbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	mqttPort, _ := freePort()
	kafkaPort, _ := freePort() // nothing listens there
	adminPort, _ := freePort()
	adminAddr := fmt.Sprintf("127.0.0.1:%d", adminPort)
	addr := fmt.Sprintf("127.0.0.1:%d", mqttPort)
	cfg := fmt.Sprintf(`id: resbench
data_dir: %q
mqtt: {address: %q, connect_timeout: %s}
kafka: {brokers: ["127.0.0.1:%d"]}
admin: {address: %q, pprof: true}
unrouted: local
routes:
  - {name: telemetry, match: "terminals/+/telemetry/#", kafka_topic: telemetry}
log: {level: error}
`, filepath.Join(dir, "data"), addr, timeout, kafkaPort, adminAddr)
	cfgPath := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	logf, _ := os.Create(filepath.Join(dir, "gateway.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	pid := cmd.Process.Pid
	if !poll(30*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		return errors.New("gateway not listening after 30s")
	}

	// A GC every 5 s while settling: what a process that keeps working
	// gets from its own allocations (and Go forces one every 2 minutes);
	// the runtime returns freed memory only after a few of them.
	settle := func(pid int) int64 {
		return settleRSS(pid, func() { liveHeap(adminAddr) })
	}
	idleRSS := settle(pid)
	fmt.Printf("resources of the gateway process (mqtt.connect_timeout %s; live heap = Go heap after a forced GC)\n", timeout)
	idleHeap := liveHeap(adminAddr)
	fmt.Printf("  %-62s %8s %8s %10s %10s\n", "", "VmRSS", "+idle", "live heap", "+idle")
	row := func(name string, kb int64, note string) {
		h := liveHeap(adminAddr)
		fmt.Printf("  %-62s %6.1f MB %+6.1f MB %7.1f MB %+7.1f MB  %s\n", name, mb(kb), mb(kb-idleRSS), float64(h)/(1<<20), float64(h-idleHeap)/(1<<20), note)
	}

	row("idle", idleRSS, "")

	// 1. silent connections: held until the deadline, then closed.
	conns := make([]net.Conn, 0, nSilent)
	for i := 0; i < nSilent; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("silent connection %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	row(fmt.Sprintf("%d silent connections, held", nSilent), rss(pid), "")
	closed := waitClosed(conns, timeout+5*time.Second)
	row(fmt.Sprintf("%d silent connections, after the deadline", nSilent), settle(pid), fmt.Sprintf("(%d/%d closed by the gateway)", closed, nSilent))
	closeAll(conns)

	// 2. unfinished 256 KiB CONNECTs: header announcing 256 KiB, then all but
	// one byte of the body.
	const big = 256 * 1024
	conns = conns[:0]
	var sent atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	peakC := peakRSS(pid, stop)
	for i := 0; i < nPartial; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("partial CONNECT %d: %w", i, err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			pkt := appendLen([]byte{0x10}, big)
			pkt = append(pkt, make([]byte, big-1)...)
			_ = c.SetWriteDeadline(time.Now().Add(timeout + 5*time.Second))
			n, _ := c.Write(pkt)
			sent.Add(int64(n))
		}()
	}
	wg.Wait()
	time.Sleep(time.Second) // what the gateway read of them is in by now
	close(stop)
	peak := <-peakC
	row(fmt.Sprintf("%d unfinished 256 KiB CONNECTs, peak", nPartial), peak, fmt.Sprintf("(target <= +30 MB; %.1f MB accepted by the socket)", float64(sent.Load())/(1<<20)))
	closed = waitClosed(conns, timeout+5*time.Second)
	closeAll(conns)
	row(fmt.Sprintf("%d unfinished 256 KiB CONNECTs, after", nPartial), settle(pid), fmt.Sprintf("(%d/%d closed by the gateway)", closed, nPartial))

	// 3. offline persistent MQTT 5 sessions, expiry 0xFFFFFFFF asked for.
	before := rss(pid)
	stop = make(chan struct{})
	peakC = peakRSS(pid, stop)
	if err := parallel(nSessions, 32, func(i int) error {
		c, err := connect(addr, fmt.Sprintf("offline-%05d", i), false, 0xFFFFFFFF)
		if err != nil {
			return err
		}
		c.Close() // no DISCONNECT: the session stays
		return nil
	}); err != nil {
		return err
	}
	close(stop)
	row(fmt.Sprintf("%d offline persistent MQTT 5 sessions, peak while connecting", nSessions), <-peakC, "")
	sessRSS := settle(pid)
	row(fmt.Sprintf("%d offline persistent MQTT 5 sessions, settled", nSessions), sessRSS, fmt.Sprintf("(target <= +40 MB; %+.1f MB over the row before the sessions)", mb(sessRSS-before)))

	// 4. idle clients connected (clean sessions).
	before = sessRSS
	idleConns := make([]net.Conn, nIdle)
	if err := parallel(nIdle, 32, func(i int) error {
		c, err := connect(addr, fmt.Sprintf("idle-%05d", i), true, 0)
		idleConns[i] = c
		return err
	}); err != nil {
		return err
	}
	cur := settle(pid)
	row(fmt.Sprintf("%d idle clients connected (with the sessions above)", nIdle), cur, fmt.Sprintf("(%+.1f MB for the clients)", mb(cur-before)))
	closeAll(idleConns)
	return nil
}

// connect opens an MQTT 5 connection and waits for CONNACK 0.
func connect(addr, id string, clean bool, expiry uint32) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	var body []byte
	body = binary.BigEndian.AppendUint16(body, 4)
	body = append(body, "MQTT"...)
	flags := byte(0)
	if clean {
		flags = 0x02
	}
	body = append(body, 5, flags, 0, 60)
	if expiry > 0 {
		body = append(body, 5, 0x11)
		body = binary.BigEndian.AppendUint32(body, expiry)
	} else {
		body = append(body, 0)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(id)))
	body = append(body, id...)
	pkt := append(appendLen([]byte{0x10}, len(body)), body...)
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(pkt); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReader(c)
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(r, hdr); err != nil || hdr[0] != 0x20 {
		c.Close()
		return nil, fmt.Errorf("%s: no CONNACK (%v)", id, err)
	}
	rest := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, rest); err != nil || len(rest) < 2 || rest[1] != 0 {
		c.Close()
		return nil, fmt.Errorf("%s: CONNACK %v (%v)", id, rest, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func appendLen(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 128
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func parallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || first.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}

// waitClosed reports how many of conns the server closed within d.
func waitClosed(conns []net.Conn, d time.Duration) int {
	deadline := time.Now().Add(d)
	var n atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(deadline)
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					var ne net.Error
					if !(errors.As(err, &ne) && ne.Timeout()) {
						n.Add(1)
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	return int(n.Load())
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// rss is the process's VmRSS in KiB.
func rss(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
	}
	return 0
}

// liveHeap forces a GC in the gateway (the heap profile endpoint does, with
// gc=1) and returns go_memstats_heap_alloc_bytes: what is still reachable.
func liveHeap(admin string) int64 {
	c := &http.Client{Timeout: 30 * time.Second}
	if resp, err := c.Get("http://" + admin + "/debug/pprof/heap?gc=1"); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_alloc_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int64(f)
		}
	}
	return 0
}

// rssParts is the anonymous and file-backed (mmapped database pages) parts
// of VmRSS, in KiB.
func rssParts(pid int) (anon, file int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "RssAnon:":
			anon = n
		case "RssFile:":
			file = n
		}
	}
	return anon, file
}

// settleRSS waits until RSS stops falling, up to 60 s, running gc every 5 s,
// and returns the last reading. The Go runtime returns freed memory to the
// system in steps, some seconds and GCs later, so one quiet reading is not
// enough: 10 in a row.
func settleRSS(pid int, gc func()) int64 {
	gc()
	last := rss(pid)
	stable := 0
	for i, end := 1, time.Now().Add(60*time.Second); time.Now().Before(end) && stable < 10; i++ {
		time.Sleep(time.Second)
		if i%5 == 0 {
			gc()
		}
		cur := rss(pid)
		if cur >= last-256 { // within 256 KiB
			stable++
		} else {
			stable = 0
		}
		last = cur
	}
	return last
}

// peakRSS samples RSS every 100 ms until stop is closed and returns the
// highest reading.
func peakRSS(pid int, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		peak := rss(pid)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				out <- max(peak, rss(pid))
				return
			case <-t.C:
				peak = max(peak, rss(pid))
			}
		}
	}()
	return out
}

func mb(kb int64) float64 { return float64(kb) / 1024 }

func poll(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}
