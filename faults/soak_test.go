package faults

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/gateway/internal/lossyfs"
	"github.com/edgegw/gateway/internal/testkit"
)

// envDuration reads a duration from the environment.
func envDuration(t *testing.T, key string, def time.Duration) time.Duration {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return d
}

// sample is one minute's look at the gateway process.
type sample struct {
	at                      time.Duration
	rss, goroutines, fds    float64
	bufferFile, diskWritten float64 // diskWritten: bytes the gateway wrote (write syscalls), cumulative over restarts
}

// TestSoak runs only with SOAK=duration (`make soak`, 30m by default): 500
// terminals at 500 msg/s in all, receipts flowing, Kafka refusing or hanging
// for a minute every five, a power cut every ten; it samples the process
// every minute and passes when nothing acknowledged is lost and nothing
// grows beyond noise. SOAK_SAMPLE, SOAK_KAFKA_EVERY, SOAK_KAFKA_FOR,
// SOAK_CUT_EVERY and SOAK_TERMINALS scale it down for a quick proof.
func TestSoak(t *testing.T) {
	total := envDuration(t, "SOAK", 0)
	if total == 0 {
		t.Skip("soak: set SOAK=30m (make soak)")
	}
	every := envDuration(t, "SOAK_SAMPLE", time.Minute)
	kafkaEvery := envDuration(t, "SOAK_KAFKA_EVERY", 5*time.Minute)
	kafkaFor := envDuration(t, "SOAK_KAFKA_FOR", time.Minute)
	cutEvery := envDuration(t, "SOAK_CUT_EVERY", 10*time.Minute)
	terminals := 500
	if v, err := strconv.Atoi(os.Getenv("SOAK_TERMINALS")); err == nil && v > 0 {
		terminals = v
	}

	r := newRig(t, testkit.WithProxy())
	r.fs.SetFaults(lossyfs.Faults{FsyncDelay: time.Millisecond})
	r.gw.start()
	// 500 msg/s in all: each terminal one per second
	pubs := startPublishers(t, r.gw.mqttAddr, "soak", terminals, time.Second)
	rc := startReceipts(t, r, 50, 20*time.Millisecond)

	start := time.Now()
	var samples []sample
	var written float64 // from processes already gone
	lastPid, lastWchar := 0, 0.0
	nextSample, nextKafka, nextCut := start.Add(every), start.Add(kafkaEvery), start.Add(cutEvery)
	kafkaBackAt := time.Time{}
	faultNo, cuts := 0, 0
	var recover time.Duration
	for time.Since(start) < total {
		time.Sleep(200 * time.Millisecond)
		now := time.Now()
		if !kafkaBackAt.IsZero() && now.After(kafkaBackAt) {
			r.kafka.SetMode(t, testkit.Pass)
			kafkaBackAt = time.Time{}
			t.Logf("%v: Kafka back", now.Sub(start).Round(time.Second))
		}
		if now.After(nextKafka) {
			mode := []testkit.Mode{testkit.Refuse, testkit.Hang}[faultNo%2]
			faultNo++
			r.kafka.SetMode(t, mode)
			kafkaBackAt = now.Add(kafkaFor)
			nextKafka = nextKafka.Add(kafkaEvery)
			t.Logf("%v: Kafka %v for %v", now.Sub(start).Round(time.Second), mode, kafkaFor)
		}
		if now.After(nextCut) {
			r.powerCut(lossyfs.Mode(cuts % 3))
			cuts++
			recover = max(recover, r.gw.start())
			nextCut = nextCut.Add(cutEvery)
			t.Logf("%v: power cut %d", now.Sub(start).Round(time.Second), cuts)
		}
		if now.After(nextSample) {
			nextSample = nextSample.Add(every)
			pid := r.gw.pid()
			wchar := procIO(pid, "wchar")
			if pid != lastPid {
				written += lastWchar
				lastPid = pid
			}
			lastWchar = wchar
			s := sample{
				at:          now.Sub(start),
				rss:         procStatus(pid, "VmRSS") * 1024,
				goroutines:  metric(r.gw, "go_goroutines"),
				fds:         countFDs(pid),
				bufferFile:  fileSize(filepath.Join(r.fs.Backing(), "data", "buffer.db")),
				diskWritten: written + wchar,
			}
			samples = append(samples, s)
			t.Logf("%v: rss %.1f MiB, goroutines %.0f, fds %.0f, buffer file %.1f MiB, written %.1f MiB, acked %d",
				s.at.Round(time.Second), s.rss/(1<<20), s.goroutines, s.fds, s.bufferFile/(1<<20), s.diskWritten/(1<<20), pubs.n.Load())
		}
	}
	r.kafka.SetMode(t, testkit.Pass)
	pubs.halt()
	rc.stopProducing()
	acked := pubs.ackedSet()
	lost, dups := verifyUplink(t, r.kafka.Addrs, acked, 5*time.Minute)
	produced, missing, _ := rc.verify(3 * time.Minute)
	// growth: least-squares slope per hour from the second sample to the last
	var notes []string
	if len(samples) >= 3 {
		ss := samples[1:]
		for _, m := range []struct {
			name string
			get  func(sample) float64
			unit float64
			tol  float64 // allowed growth over the run, as a fraction of the mean
		}{
			{"rss MiB", func(s sample) float64 { return s.rss }, 1 << 20, 0.25},
			{"goroutines", func(s sample) float64 { return s.goroutines }, 1, 0.25},
			{"fds", func(s sample) float64 { return s.fds }, 1, 0.25},
			{"buffer file MiB", func(s sample) float64 { return s.bufferFile }, 1 << 20, 0.5},
		} {
			slope, mean := fit(ss, m.get)
			span := (ss[len(ss)-1].at - ss[0].at).Hours()
			notes = append(notes, fmt.Sprintf("%s %+.2f/h (mean %.1f)", m.name, slope/m.unit, mean/m.unit))
			if mean > 0 && slope*span > m.tol*mean {
				t.Errorf("%s grows: %+.2f per hour over a mean of %.1f", m.name, slope/m.unit, mean/m.unit)
			}
		}
		wslope, _ := fit(ss, func(s sample) float64 { return s.diskWritten })
		notes = append(notes, fmt.Sprintf("written %.1f MiB/h (%.0f B per acked message)", wslope/(1<<20),
			ss[len(ss)-1].diskWritten/math.Max(1, float64(len(acked)))))
	}
	report(t, row{Fault: fmt.Sprintf("soak %v", total), Runs: cuts, Acked: int64(len(acked)), Lost: lost, Dups: dups, Recover: recover,
		Note: fmt.Sprintf("%d terminals, %d Kafka faults, %d power cuts; receipts %d/%d missing; %s", terminals, faultNo, cuts, missing, produced,
			strings.Join(notes, "; "))})
	if missing > 0 {
		t.Errorf("%d of %d receipts never reached their terminal", missing, produced)
	}
}

// fit returns the least-squares slope (per hour) and the mean of get.
func fit(ss []sample, get func(sample) float64) (slope, mean float64) {
	var sx, sy, sxx, sxy float64
	n := float64(len(ss))
	for _, s := range ss {
		x, y := s.at.Hours(), get(s)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	mean = sy / n
	if d := n*sxx - sx*sx; d != 0 {
		slope = (n*sxy - sx*sy) / d
	}
	return
}

func procStatus(pid int, key string) float64 {
	return procField(fmt.Sprintf("/proc/%d/status", pid), key+":")
}

func procIO(pid int, key string) float64 {
	return procField(fmt.Sprintf("/proc/%d/io", pid), key+":")
}

func procField(path, key string) float64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == key {
			v, _ := strconv.ParseFloat(fields[1], 64)
			return v
		}
	}
	return 0
}

func countFDs(pid int) float64 {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return float64(len(ents))
}

func fileSize(p string) float64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return float64(fi.Size())
}

// metric reads one unlabelled sample from /metrics.
func metric(g *gateway, name string) float64 {
	resp, err := httpc.Get("http://" + g.admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, name+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(l[len(name):]), 64)
			return v
		}
	}
	return 0
}
