package main

// The floods of a hostile terminal (issue 23), each against a fresh gateway
// process: resident memory before, at the peak and after, and what the
// attacker got. Run with -floods; compare two builds with -gateway.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/edgegw/gateway/internal/rawmqtt"
)

// gw is one gateway process under test.
type gw struct {
	dir, mqtt, tls, admin string
	cmd                   *exec.Cmd
	pid                   int
	cfgPath               string
}

func startGW(bin, dir, extra string, env []string) (*gw, error) {
	g := &gw{dir: dir}
	mp, _ := freePort()
	ap, _ := freePort()
	kp, _ := freePort() // nothing listens: Kafka unreachable
	g.mqtt = fmt.Sprintf("127.0.0.1:%d", mp)
	g.admin = fmt.Sprintf("127.0.0.1:%d", ap)
	cfg := fmt.Sprintf(`id: floodbench
data_dir: %q
mqtt: {address: %q}
kafka: {brokers: ["127.0.0.1:%d"]}
admin: {address: %q, pprof: true}
routes:
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments}
  - {name: telemetry, match: "terminals/+/telemetry/#", kafka_topic: telemetry}
log: {level: error}
`, filepath.Join(dir, "data"), g.mqtt, kp, g.admin) + extra
	g.cfgPath = filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return g, g.run(bin, env)
}

func (g *gw) run(bin string, env []string) error {
	g.cmd = exec.Command(bin, "run", "--config", g.cfgPath)
	g.cmd.Env = append(os.Environ(), env...)
	logf, _ := os.OpenFile(filepath.Join(g.dir, "gateway.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if err := g.cmd.Start(); err != nil {
		return err
	}
	g.pid = g.cmd.Process.Pid
	if !poll(60*time.Second, func() bool {
		resp, err := http.Get("http://" + g.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	}) {
		return errors.New("gateway not ready after 60s")
	}
	return nil
}

func (g *gw) stop() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = g.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = g.cmd.Process.Kill()
		<-done
	}
	g.cmd = nil
}

func (g *gw) settle() int64 { return settleRSS(g.pid, func() { liveHeap(g.admin) }) }

// cpu is the process's user+system CPU time.
func (g *gw) cpu() time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", g.pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100 // USER_HZ
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return -1
	}
	return st.Size()
}

// floods runs each flood on a fresh gateway and prints one block each.
func floods(bin string, which string) error {
	fmt.Printf("floods of a hostile terminal against %s (Kafka unreachable; RSS = VmRSS)\n", bin)
	all := []struct {
		name string
		run  func(bin string) error
	}{
		{"silent", floodSilent},
		{"subscriptions", floodSubscriptions},
		{"retained", floodRetained},
		{"deep", floodDeep},
		{"login", floodLogin},
	}
	for _, f := range all {
		if which != "" && !strings.Contains(","+which+",", ","+f.name+",") {
			continue
		}
		if err := f.run(bin); err != nil {
			fmt.Printf("  %s: %v\n", f.name, err)
		}
	}
	return nil
}

func withGW(bin, extra string, env []string, f func(g *gw) error) error {
	dir, err := os.MkdirTemp("", "floodbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	g, err := startGW(bin, dir, extra, env)
	if err != nil {
		return err
	}
	defer g.stop()
	return f(g)
}

// 10,000 silent TCP connections, held until the deadline, then closed.
func floodSilent(bin string) error {
	return withGW(bin, "", nil, func(g *gw) error {
		idle := g.settle()
		stop := make(chan struct{})
		peakC := peakRSS(g.pid, stop)
		var conns []net.Conn
		for i := 0; i < 10000; i++ {
			c, err := net.DialTimeout("tcp", g.mqtt, 5*time.Second)
			if err != nil {
				break
			}
			conns = append(conns, c)
		}
		time.Sleep(2 * time.Second) // the gateway has accepted what it will
		closed := waitClosed(conns, time.Second)
		close(stop)
		peak := <-peakC
		closeAll(conns)
		after := g.settle()
		fmt.Printf("  10,000 silent TCP connections: RSS idle %.1f MB, held %.1f MB (%+.1f), after they closed %.1f MB (%+.1f); %d of %d closed by the gateway at once\n",
			mb(idle), mb(peak), mb(peak-idle), mb(after), mb(after-idle), closed, len(conns))
		return nil
	})
}

// 40,000 subscriptions in one session, 400 filters per SUBSCRIBE.
func floodSubscriptions(bin string) error {
	return withGW(bin, "", nil, func(g *gw) error {
		idle := g.settle()
		c, err := rawmqtt.Connect(g.mqtt, rawmqtt.Options{ClientID: "flood", Clean: true})
		if err != nil {
			return err
		}
		defer c.Close()
		granted := 0
		for batch := 0; batch < 100; batch++ {
			fs := make([]string, 400)
			for i := range fs {
				fs[i] = fmt.Sprintf("terminals/flood/s/%d/%d", batch, i)
			}
			if err := c.Subscribe(uint16(batch+1), 1, fs...); err != nil {
				return err
			}
			body, err := c.ReadType(9, 60*time.Second)
			if err != nil {
				return err
			}
			for _, code := range body[3:] {
				if code < 0x80 {
					granted++
				}
			}
		}
		held := g.settle()
		c.Close()
		after := g.settle()
		fmt.Printf("  40,000 subscriptions in one session: RSS idle %.1f MB, subscribed %.1f MB (%+.1f), after it left %.1f MB (%+.1f); %d granted\n",
			mb(idle), mb(held), mb(held-idle), mb(after), mb(after-idle), granted)
		return nil
	})
}

// 150 retained messages of 240 KB on the terminal's own topics, then a
// restart.
func floodRetained(bin string) error {
	return withGW(bin, "", nil, func(g *gw) error {
		idle := g.settle()
		c, err := rawmqtt.Connect(g.mqtt, rawmqtt.Options{ClientID: "flood", Clean: true})
		if err != nil {
			return err
		}
		payload := bytes.Repeat([]byte("r"), 240_000)
		taken := 0
		for i := 0; i < 150; i++ {
			if err := c.Publish(1, true, uint16(i+1), fmt.Sprintf("terminals/flood/telemetry/r%d", i), nil, payload); err != nil {
				return err
			}
			body, err := c.ReadType(4, 60*time.Second)
			if err != nil {
				return err
			}
			if len(body) == 2 || body[2] == 0 {
				taken++
			}
		}
		c.Close()
		held := g.settle()
		g.stop()
		db := fileSize(filepath.Join(g.dir, "data", "sessions.db"))
		if err := g.run(bin, nil); err != nil {
			return err
		}
		restarted := g.settle()
		fmt.Printf("  150 retained messages of 240 KB: RSS idle %.1f MB, after %.1f MB (%+.1f), after a restart %.1f MB (%+.1f over the first idle); sessions.db %.1f MB; %d retained\n",
			mb(idle), mb(held), mb(held-idle), mb(restarted), mb(restarted-idle), float64(db)/(1<<20), taken)
		return nil
	})
}

// One 256 KiB SUBSCRIBE of 4 filters of 65,000 levels each, while another
// terminal subscribes.
func floodDeep(bin string) error {
	return withGW(bin, "", nil, func(g *gw) error {
		idle := g.settle()
		att, err := rawmqtt.Connect(g.mqtt, rawmqtt.Options{ClientID: "flood", Clean: true})
		if err != nil {
			return err
		}
		defer att.Close()
		by, err := rawmqtt.Connect(g.mqtt, rawmqtt.Options{ClientID: "bystander", Clean: true})
		if err != nil {
			return err
		}
		defer by.Close()
		deep := "terminals/flood/" + strings.Repeat("/", 65000)
		cpu0 := g.cpu()
		stop := make(chan struct{})
		peakC := peakRSS(g.pid, stop)
		start := time.Now()
		if err := att.Subscribe(1, 1, deep, deep+"a", deep+"b", deep+"c"); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond) // the attacker's SUBSCRIBE is being handled
		byStart := time.Now()
		if err := by.Subscribe(1, 1, "terminals/bystander/receipts"); err != nil {
			return err
		}
		byDone := make(chan time.Duration, 1)
		go func() {
			if _, err := by.ReadType(9, 180*time.Second); err != nil {
				byDone <- -1
				return
			}
			byDone <- time.Since(byStart)
		}()
		body, err := att.ReadType(9, 180*time.Second)
		took := time.Since(start)
		byTook := <-byDone
		close(stop)
		peak := <-peakC
		codes := "none within 180 s"
		if err == nil {
			codes = fmt.Sprintf("%x", body[3:])
		}
		fmt.Printf("  one SUBSCRIBE of 4 x 65,000 levels: SUBACK %s after %v, gateway CPU %v; the bystander's SUBACK after %v; RSS idle %.1f MB, peak %.1f MB (%+.1f)\n",
			codes, took.Round(time.Millisecond), (g.cpu() - cpu0).Round(10*time.Millisecond), byTook.Round(time.Millisecond), mb(idle), mb(peak), mb(peak-idle))
		return nil
	})
}

// A flood of wrong passwords from 200 addresses (random user names) for
// 20 s; meanwhile a terminal logs in with its password every 500 ms from
// another address, and one with its certificate.
func floodLogin(bin string) error {
	dir, err := os.MkdirTemp("", "floodcerts-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ca, caFile, err := newCA(dir)
	if err != nil {
		return err
	}
	srvCert, srvKey, _, err := ca.issue(dir, "localhost", true)
	if err != nil {
		return err
	}
	_, _, cliPair, err := ca.issue(dir, "term-cert", false)
	if err != nil {
		return err
	}
	h, _ := bcrypt.GenerateFromPassword([]byte("term-pw-secret"), bcrypt.DefaultCost)
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte("term-pw:"+string(h)+"\n"), 0o600); err != nil {
		return err
	}
	tp, _ := freePort()
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", tp)
	env := []string{"GATEWAY_MQTT_USERS_FILE=" + users, "GATEWAY_MQTT_ALLOW_ANONYMOUS=false",
		"GATEWAY_MQTT_TLS_ADDRESS=" + tlsAddr, "GATEWAY_MQTT_TLS_CERT_FILE=" + srvCert, "GATEWAY_MQTT_TLS_KEY_FILE=" + srvKey,
		"GATEWAY_MQTT_TLS_CLIENT_CA_FILE=" + caFile}
	return withGW(bin, "", env, func(g *gw) error {
		idle := g.settle()
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		stop := make(chan struct{})
		peakC := peakRSS(g.pid, stop)
		var guesses atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < 200; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				src := fmt.Sprintf("127.0.1.%d", i+1)
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					passwordLogin(src, g.mqtt, fmt.Sprintf("u%d-%d", i, n), "guess")
					guesses.Add(1)
				}
			}(i)
		}
		var pw, cert []time.Duration
		pwFail, certFail := 0, 0
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); {
			time.Sleep(500 * time.Millisecond)
			code, took := passwordLogin("127.0.2.1", g.mqtt, "term-pw", "term-pw-secret")
			if code != 0 {
				pwFail++
			} else {
				pw = append(pw, took)
			}
			start := time.Now()
			c, err := rawmqtt.Connect(tlsAddr, rawmqtt.Options{ClientID: "term-cert", Clean: true, Timeout: 15 * time.Second,
				TLS: &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cliPair}}})
			if err != nil {
				certFail++
			} else {
				cert = append(cert, time.Since(start))
				c.Close()
			}
		}
		close(stop)
		wg.Wait()
		peak := <-peakC
		after := g.settle()
		fmt.Printf("  login flood (200 addresses, wrong passwords, 20 s; %d guesses answered): password logins %d ok, %d refused or timed out, median %v, max %v; certificate logins %d ok, %d failed, median %v, max %v; RSS idle %.1f MB, peak %.1f MB (%+.1f), after %.1f MB\n",
			guesses.Load(), len(pw), pwFail, median(pw), maxDur(pw), len(cert), certFail, median(cert), maxDur(cert),
			mb(idle), mb(peak), mb(peak-idle), mb(after))
		return nil
	})
}

func passwordLogin(src, addr, user, pass string) (int, time.Duration) {
	start := time.Now()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 15 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return -1, time.Since(start)
	}
	defer nc.Close()
	body := rawmqtt.ConnectBody(rawmqtt.Options{ClientID: user, Clean: true, Username: user, Password: pass})
	_ = nc.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := nc.Write(append(rawmqtt.AppendLength([]byte{0x10}, len(body)), body...)); err != nil {
		return -1, time.Since(start)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(nc, ack); err != nil || ack[0] != 0x20 {
		return -1, time.Since(start)
	}
	return int(ack[3]), time.Since(start)
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2].Round(time.Millisecond)
}

func maxDur(d []time.Duration) time.Duration {
	var m time.Duration
	for _, x := range d {
		m = max(m, x)
	}
	return m.Round(time.Millisecond)
}

// A small CA for the certificate logins of the login flood.
type benchCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(dir string) (*benchCA, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flood-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, "", err
	}
	cert, _ := x509.ParseCertificate(der)
	p := filepath.Join(dir, "ca.pem")
	return &benchCA{cert: cert, key: key}, p, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
}

func (ca *benchCA) issue(dir, cn string, server bool) (certFile, keyFile string, pair tls.Certificate, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", pair, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return "", "", pair, err
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	cp := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kp := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
	certFile, keyFile = filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+"-key.pem")
	if err := os.WriteFile(certFile, cp, 0o600); err != nil {
		return "", "", pair, err
	}
	if err := os.WriteFile(keyFile, kp, 0o600); err != nil {
		return "", "", pair, err
	}
	pair, err = tls.X509KeyPair(cp, kp)
	return certFile, keyFile, pair, err
}
