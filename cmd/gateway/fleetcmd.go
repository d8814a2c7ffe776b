package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edgegw/gateway/config"
	"github.com/edgegw/gateway/fleet"
)

// `gateway fleet ...`: the central side's commands (docs/fleet.md). They
// reach Kafka with the kafka: section of a gateway-style YAML file
// (--config; only kafka: and fleet: are read), GATEWAY_KAFKA_* environment
// variables, or --brokers, in that order of strength: a flag wins.

const fleetUsage = `usage:
  gateway fleet keygen [--out PREFIX]
                         make a signing key pair: PREFIX.key (keep it central),
                         PREFIX.pub (list it in the boxes' fleet.config_keys)
  gateway fleet push --to ID|'*' --key FILE [--version N] [--base FILE] OVERLAY.yaml
                         validate, sign and produce an overlay to fleet.config_topic
  gateway fleet ls [--since DURATION] [--json]
                         one line per box from fleet.status_topic, worst first
  gateway fleet exporter --listen ADDR [--forget DURATION]
                         Prometheus metrics of every box, labelled gateway="<id>"
Kafka settings for push, ls and exporter:
  --config FILE          a YAML file with kafka: (brokers, tls, sasl) and fleet: topics
  --brokers HOST:PORT,.. overrides kafka.brokers (so does GATEWAY_KAFKA_BROKERS)
  --topic NAME           overrides fleet.config_topic (push) or fleet.status_topic
`

func cmdFleet(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, fleetUsage)
		return exitUsage
	}
	switch args[0] {
	case "keygen":
		return cmdFleetKeygen(args[1:], stdout, stderr)
	case "push":
		return cmdFleetPush(args[1:], stdout, stderr)
	case "ls":
		return cmdFleetLs(args[1:], stdout, stderr)
	case "exporter":
		return cmdFleetExporter(args[1:], stdout, stderr)
	case "help", "--help", "-h":
		fmt.Fprint(stdout, fleetUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "gateway fleet: unknown command %q\n%s", args[0], fleetUsage)
	return exitUsage
}

func cmdFleetKeygen(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("fleet keygen", stderr)
	out := fs.String("out", "fleet-signing", "path prefix of the key files")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return exitUsage
	}
	priv, pub, id, err := fleet.GenerateKey()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	// O_EXCL: a signing key is never overwritten by accident.
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{*out + ".key", priv, 0o600}, {*out + ".pub", pub, 0o644}} {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			fmt.Fprintf(stderr, "gateway fleet keygen: %v\n", err)
			return exitFailure
		}
		_, err = fh.Write(f.data)
		if err == nil {
			err = fh.Sync()
		}
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			fmt.Fprintf(stderr, "gateway fleet keygen: %s: %v\n", f.path, err)
			return exitFailure
		}
	}
	fmt.Fprintf(stdout, "key %s\n  %s.key: the signing key; keep it off the boxes (push --key)\n  %s.pub: list it in every box's fleet.config_keys\n", id, *out, *out)
	return exitOK
}

// fleetKafka is the central commands' Kafka and fleet settings.
type fleetKafka struct {
	configPath, brokers, topic string
}

func (fk *fleetKafka) flags(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&fk.configPath, "config", "", "YAML file with kafka: and fleet: (e.g. a box's config)")
	fs.StringVar(&fk.brokers, "brokers", "", "Kafka brokers, comma-separated (overrides kafka.brokers)")
	fs.StringVar(&fk.topic, "topic", "", "the topic (overrides fleet.config_topic or fleet.status_topic)")
}

// load reads the settings; which is "status" or "config" (the topic).
func (fk *fleetKafka) load(which string) (config.Kafka, string, error) {
	var data []byte
	if fk.configPath != "" {
		var err error
		if data, err = os.ReadFile(fk.configPath); err != nil {
			return config.Kafka{}, "", fmt.Errorf("config: %w", err)
		}
	}
	env := os.Environ()
	if fk.brokers != "" {
		env = append(env, config.EnvPrefix+"_KAFKA_BROKERS="+fk.brokers)
	}
	cfg, err := config.Parse(data, env)
	if err != nil {
		var p config.Problems
		if errors.As(err, &p) {
			return config.Kafka{}, "", fmt.Errorf("%s", strings.Join(p, "\n"))
		}
		return config.Kafka{}, "", err
	}
	topic := fk.topic
	if topic == "" {
		if which == "config" {
			topic = cfg.Fleet.ConfigTopic
		} else {
			topic = cfg.Fleet.StatusTopic
		}
	}
	if topic == "" {
		return config.Kafka{}, "", fmt.Errorf("no topic: pass --topic or set fleet.%s_topic in --config", which)
	}
	if err := config.CheckKafkaTopic(topic); err != nil {
		return config.Kafka{}, "", fmt.Errorf("--topic: %w", err)
	}
	return cfg.Kafka, topic, nil
}

func (fk *fleetKafka) client(which string) (sarama.Client, string, error) {
	k, topic, err := fk.load(which)
	if err != nil {
		return nil, "", err
	}
	sc, err := fleet.ClientConfig(k)
	if err != nil {
		return nil, "", err
	}
	cl, err := sarama.NewClient(k.Brokers, sc)
	if err != nil {
		return nil, "", fmt.Errorf("kafka %s: %w", strings.Join(k.Brokers, ","), err)
	}
	return cl, topic, nil
}

// overlayBase is what an overlay is validated over when no --base is
// given: every default, as on a box whose file sets only kafka.brokers.
const overlayBase = "kafka: {brokers: [\"127.0.0.1:9092\"]}\n"

func cmdFleetPush(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("fleet push", stderr)
	var fk fleetKafka
	fk.flags(fs)
	to := fs.String("to", "", "the box's id, or '*' for every box")
	keyFile := fs.String("key", "", "the signing key (gateway fleet keygen's .key)")
	ver := fs.Uint64("version", 0, "the overlay's version (default: the Unix time, above every version pushed to this key)")
	base := fs.String("base", "", "validate over this box config file (default: the built-in defaults)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *to == "" || *keyFile == "" || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "gateway fleet push: --to ID|'*', --key FILE and one OVERLAY.yaml are required")
		return exitUsage
	}
	if strings.ContainsAny(*to, "/+#\x00") || strings.TrimSpace(*to) != *to {
		fmt.Fprintf(stderr, "gateway fleet push: --to %q is not a gateway id\n", *to)
		return exitUsage
	}
	value, err := readOverlay(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "gateway fleet push: %v\n", err)
		return exitUsage
	}
	if err := fleet.CheckSections(value); err != nil {
		fmt.Fprintf(stderr, "gateway fleet push: %s: %v\n", fs.Arg(0), err)
		return exitUsage
	}
	baseData := []byte(overlayBase)
	if *base != "" {
		if baseData, err = os.ReadFile(*base); err != nil {
			fmt.Fprintf(stderr, "gateway fleet push: --base: %v\n", err)
			return exitUsage
		}
	}
	// No environment here: the overlay is checked as the boxes will read it.
	if _, err := config.ParseLayers(baseData, [][]byte{value}, nil); err != nil {
		fmt.Fprintf(stderr, "gateway fleet push: %s does not validate; nothing pushed:\n", fs.Arg(0))
		var p config.Problems
		if errors.As(err, &p) {
			for _, line := range p {
				fmt.Fprintln(stderr, "  "+line)
			}
		} else {
			fmt.Fprintln(stderr, "  "+err.Error())
		}
		return exitUsage
	}
	priv, err := fleet.LoadPrivateKey(*keyFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	cl, topic, err := fk.client("config")
	if err != nil {
		fmt.Fprintf(stderr, "gateway fleet push: %v\n", err)
		return exitUsage
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	latest, err := fleet.LatestVersion(ctx, cl, topic, *to)
	if err != nil {
		fmt.Fprintf(stderr, "gateway fleet push: reading the versions of %q: %v\n", *to, err)
		return exitFailure
	}
	v := *ver
	switch {
	case v == 0:
		v = max(uint64(time.Now().Unix()), latest+1)
	case v <= latest:
		fmt.Fprintf(stderr, "gateway fleet push: version %d is not above %d, the newest pushed to %q: the boxes would refuse it\n", v, latest, *to)
		return exitUsage
	}
	res, err := fleet.Push(cl, topic, *to, v, value, priv)
	if err != nil {
		fmt.Fprintf(stderr, "gateway fleet push: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "pushed %q version %d to %s partition %d offset %d, signed by key %s\n", *to, res.Version, topic, res.Partition, res.Offset, res.KeyID)
	return exitOK
}

func readOverlay(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, fleet.MaxOverlayBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > fleet.MaxOverlayBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, fleet.MaxOverlayBytes)
	}
	return data, nil
}

func cmdFleetLs(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("fleet ls", stderr)
	var fk fleetKafka
	fk.flags(fs)
	since := fs.Duration("since", 0, "read only records newer than this (for a topic that is not compacted); 0 reads it all")
	asJSON := fs.Bool("json", false, "print the newest record of every box as JSON lines")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return exitUsage
	}
	cl, topic, err := fk.client("status")
	if err != nil {
		fmt.Fprintf(stderr, "gateway fleet ls: %v\n", err)
		return exitUsage
	}
	defer cl.Close()
	ex := fleet.NewExporter()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := fleet.ReadStatus(ctx, cl, topic, *since, false, ex.Observe, ex.Invalid); err != nil {
		fmt.Fprintf(stderr, "gateway fleet ls: %v\n", err)
		return exitFailure
	}
	boxes := ex.Boxes()
	if *asJSON {
		return printBoxesJSON(stdout, boxes)
	}
	now := time.Now()
	ss := make([]fleet.Summary, 0, len(boxes))
	for _, b := range boxes {
		ss = append(ss, fleet.Summarize(b.Record, now))
	}
	fleet.SortByTrouble(ss)
	fleet.PrintBoard(stdout, ss)
	return exitOK
}

func cmdFleetExporter(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("fleet exporter", stderr)
	var fk fleetKafka
	fk.flags(fs)
	listen := fs.String("listen", "", "address to serve /metrics on, e.g. :9101")
	since := fs.Duration("since", 0, "start from records newer than this; 0 reads the topic from its start")
	forget := fs.Duration("forget", 0, "stop exporting a box silent for longer than this; 0 keeps every box")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return exitUsage
	}
	if *listen == "" {
		fmt.Fprintln(stderr, "gateway fleet exporter: --listen ADDR is required")
		return exitUsage
	}
	cl, topic, err := fk.client("status")
	if err != nil {
		fmt.Fprintf(stderr, "gateway fleet exporter: %v\n", err)
		return exitUsage
	}
	defer cl.Close()
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ex := fleet.NewExporter()
	ex.Forget = *forget
	reg := prometheus.NewRegistry()
	reg.MustRegister(ex, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "gateway fleet exporter: %v\n", err)
		return exitFailure
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintf(stdout, "serving the fleet's metrics on http://%s/metrics from %s\n", ln.Addr(), topic)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	failures := 0
	for ctx.Err() == nil {
		err := fleet.ReadStatus(ctx, cl, topic, *since, true, ex.Observe, ex.Invalid)
		if ctx.Err() != nil {
			break
		}
		failures++
		log.Warn("reading the status topic failed; trying again", "topic", topic, "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(min(time.Duration(failures)*time.Second, 30*time.Second)):
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return exitOK
}

func printBoxesJSON(w io.Writer, boxes map[string]fleet.Box) int {
	ids := make([]string, 0, len(boxes))
	for id := range boxes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	enc := json.NewEncoder(w)
	for _, id := range ids {
		if err := enc.Encode(boxes[id].Record); err != nil {
			return exitFailure
		}
	}
	return exitOK
}
