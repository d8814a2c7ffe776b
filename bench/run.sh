#!/usr/bin/env bash
# bench/run.sh: the figures of `make bench`, measured side by side.
#
# Starts on free 127.0.0.1 ports: devkafka (kfake, the Kafka side), benchbroker
# (mochi with no ingest hook: the broker's own ceiling), the gateway
# (bin/gateway run --config, generated from bench/gateway.yaml) and Debian's
# mosquitto with persistence on; then runs bin/loadgen against them,
# interleaved, BENCH_RUNS times each, and prints medians and ratios.
#
#   (a) 100 clients, 1 publish in flight each, 200 B, QoS 1
#   (b) 1 client, 32 publishes in flight
#   (c) publish->PUBACK p99 at 1,000 msg/s spread over 100 clients
#   (d) RSS of a fresh gateway with 1,000 idle clients connected
#   (e) drain of a backlog vs bare sarama, also with kafka.exactly_once
#   (f) RSS under hostile connections: silent, oversized CONNECTs, offline sessions
#       (cmd/resbench, also `make bench-resources`)
#   nats-server 2.15 MQTT on JetStream with sync_interval: always (the durable
#   peer) in (a) and (b); a bench-only tool installed into bin/tools with
#   `go install`, never a dependency of the gateway.
#
# Environment knobs:
#   BENCH_RUNS=3          runs per case (medians over these)
#   BENCH_DURATION=10s    duration of one loadgen run
#   BENCH_IDLE_CLIENTS=1000
#   BENCH_SKIP_GATEWAY=1  do not build or run the gateway
#   BENCH_SKIP_MOSQUITTO=1
#   BENCH_INSTALL=0       do not apt-get install mosquitto or go install nats-server
#   BENCH_SKIP_NATS=1
#
# Everything started here is stopped on exit (trap); every step has a bound.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

RUNS=${BENCH_RUNS:-3}
DUR=${BENCH_DURATION:-10s}
IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-1000}
GO=${GO:-go}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gwbench.XXXXXX")
PIDS=()

BENCH_NAME=bench
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="-" || b=="-" || b+0==0) print "-"; else printf "%.2f", a/b }'; }

fmt0() { awk -v a="$1" 'BEGIN { if (a=="-") print "-"; else printf "%.0f", a }'; }
fmt2() { awk -v a="$1" 'BEGIN { if (a=="-") print "-"; else printf "%.2f", a }'; }

# ---------------------------------------------------------------- build
log "building into bin/"
mkdir -p bin
for c in devkafka loadgen benchbroker drainbench; do
	"$GO" build -o "bin/$c" "./cmd/$c" || die "build ./cmd/$c failed"
done
HAVE_GW=1
if [ "${BENCH_SKIP_GATEWAY:-0}" = 1 ]; then
	HAVE_GW=0
	echo "gateway: skipped (BENCH_SKIP_GATEWAY=1)" >&2
elif ! "$GO" build -o bin/gateway ./cmd/gateway 2>"$TMP/gateway-build.log"; then
	HAVE_GW=0
	echo "gateway: SKIPPED, ./cmd/gateway does not build yet:" >&2
	head -5 "$TMP/gateway-build.log" >&2
fi

HAVE_MOSQ=1
if [ "${BENCH_SKIP_MOSQUITTO:-0}" = 1 ]; then
	HAVE_MOSQ=0
elif ! command -v mosquitto >/dev/null 2>&1 && [ -x /usr/sbin/mosquitto ]; then
	PATH=$PATH:/usr/sbin
fi
if [ "$HAVE_MOSQ" = 1 ] && ! command -v mosquitto >/dev/null 2>&1; then
	if [ "${BENCH_INSTALL:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		log "installing mosquitto (apt-get)"
		export DEBIAN_FRONTEND=noninteractive
		timeout 300 apt-get install -y mosquitto mosquitto-clients >/dev/null 2>&1 ||
			{ timeout 300 apt-get update >/dev/null 2>&1 && timeout 300 apt-get install -y mosquitto mosquitto-clients >/dev/null 2>&1; } || true
		PATH=$PATH:/usr/sbin
	fi
	if ! command -v mosquitto >/dev/null 2>&1; then
		HAVE_MOSQ=0
		echo "mosquitto: SKIPPED, not installed (apt-get install -y mosquitto)" >&2
	fi
fi

HAVE_NATS=1
if [ "${BENCH_SKIP_NATS:-0}" = 1 ]; then
	HAVE_NATS=0
elif ! ensure_nats; then
	HAVE_NATS=0
	echo "nats-server: SKIPPED, could not be installed (go install github.com/nats-io/nats-server/v2@v2.15.2)" >&2
fi

# ---------------------------------------------------------------- start
start_devkafka

free_port; BB_PORT=$FREE_PORT
bin/benchbroker -addr "127.0.0.1:$BB_PORT" >"$TMP/benchbroker.log" 2>&1 &
BB_PID=$!
PIDS+=("$BB_PID")
wait_port "$BB_PORT" "$BB_PID" benchbroker

GW_PID=
GW_PORT=
# start_gateway NAME: a gateway with a fresh data dir; sets GW_PID and GW_PORT.
start_gateway() {
	free_port; GW_PORT=$FREE_PORT
	local admin
	free_port; admin=$FREE_PORT
	mkdir -p "$TMP/$1"
	sed -e "s|@DATA_DIR@|$TMP/$1/data|" -e "s|@MQTT_PORT@|$GW_PORT|" \
		-e "s|@KAFKA_PORT@|$KAFKA_PORT|" -e "s|@ADMIN_PORT@|$admin|" \
		bench/gateway.yaml >"$TMP/$1/gateway.yaml"
	bin/gateway run --config "$TMP/$1/gateway.yaml" >"$TMP/$1.log" 2>&1 &
	GW_PID=$!
	PIDS+=("$GW_PID")
	wait_port "$GW_PORT" "$GW_PID" "$1"
}
if [ "$HAVE_GW" = 1 ]; then
	start_gateway gateway
	# The same gateway with Kafka unreachable: durable ingest alone, without
	# the drain and the local cluster competing for the same CPUs (on a box
	# the cluster is remote; offline is the gateway's normal work too).
	GW_LIVE_PORT=$GW_PORT GW_LIVE_PID=$GW_PID
	KAFKA_LIVE_PORT=$KAFKA_PORT
	free_port; KAFKA_PORT=$FREE_PORT # nothing listens there
	start_gateway gateway-offline
	GW_OFFLINE_PORT=$GW_PORT GW_OFFLINE_PID=$GW_PID
	KAFKA_PORT=$KAFKA_LIVE_PORT GW_PORT=$GW_LIVE_PORT GW_PID=$GW_LIVE_PID
fi

MQ_PORT=
if [ "$HAVE_MOSQ" = 1 ]; then
	free_port; MQ_PORT=$FREE_PORT
	mkdir -p "$TMP/mosquitto"
	cat >"$TMP/mosquitto.conf" <<-EOF
		listener $MQ_PORT 127.0.0.1
		allow_anonymous true
		persistence true
		persistence_location $TMP/mosquitto/
		user $(id -un)
		log_dest stderr
		log_type error
		log_type warning
	EOF
	mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
	MQ_PID=$!
	PIDS+=("$MQ_PID")
	wait_port "$MQ_PORT" "$MQ_PID" mosquitto
	echo "mosquitto: $(mosquitto -h 2>/dev/null | head -1), persistence on" >&2
fi

NATS_PORT=
if [ "$HAVE_NATS" = 1 ]; then
	start_nats nats
	echo "nats-server: $("$NATS" --version 2>/dev/null), MQTT on JetStream, sync_interval: always" >&2
fi

echo "ports: devkafka $KAFKA_PORT, benchbroker $BB_PORT, gateway ${GW_PORT:--}, mosquitto ${MQ_PORT:--}, nats ${NATS_PORT:--}" >&2

# loadgen PORT ARGS...: one bounded run, prints its JSON line.
loadgen() {
	local port=$1
	shift
	timeout 300 bin/loadgen -broker "tcp://127.0.0.1:$port" -json "$@" 2>>"$TMP/loadgen.err" ||
		echo '{"error":"loadgen failed"}'
}

declare -A R # R[case,target,run,field]

# record CASE TARGET RUN JSON
record() {
	local f
	for f in acked_per_s p50_ms p99_ms max_ms errors connected; do
		R[$1,$2,$3,$f]=$(jget "$f" "$4")
	done
	printf '  %-3s %-11s run %d: %8s msg/s  p50 %6s ms  p99 %7s ms  errors %s\n' "$1" "$2" "$3" \
		"$(fmt0 "${R[$1,$2,$3,acked_per_s]:--}")" "${R[$1,$2,$3,p50_ms]:--}" "${R[$1,$2,$3,p99_ms]:--}" \
		"${R[$1,$2,$3,errors]:--}" >&2
}

# med CASE TARGET FIELD: the median over the runs, or "-".
med() {
	local vals=() v
	for ((i = 1; i <= RUNS; i++)); do
		v=${R[$1,$2,$i,$3]:-}
		[ -n "$v" ] && vals+=("$v")
	done
	if [ "${#vals[@]}" = 0 ]; then echo "-"; else median "${vals[@]}"; fi
}

TARGETS=(benchbroker)
declare -A PORT=([benchbroker]=$BB_PORT)
if [ "$HAVE_GW" = 1 ]; then
	TARGETS+=(gateway gateway-offline)
	PORT[gateway]=$GW_PORT
	PORT[gateway-offline]=$GW_OFFLINE_PORT
fi
if [ "$HAVE_MOSQ" = 1 ]; then TARGETS+=(mosquitto); PORT[mosquitto]=$MQ_PORT; fi
if [ "$HAVE_NATS" = 1 ]; then TARGETS+=(nats); PORT[nats]=$NATS_PORT; fi

# ---------------------------------------------------------------- (a) (b) (c)
log "runs: $RUNS x $DUR per case, interleaved (a: 100 clients x 1 in flight; b: 1 client x 32; c: 1000 msg/s over 100 clients)"
# rotate N ITEMS...: the items rotated left by N, so that no target always
# runs first (or right after the same other one) in a round.
rotate() {
	local n=$1
	shift
	local a=("$@") i
	for ((i = 0; i < ${#a[@]}; i++)); do echo "${a[(i + n) % ${#a[@]}]}"; done
}
for ((run = 1; run <= RUNS; run++)); do
	for t in $(rotate "$run" "${TARGETS[@]}"); do
		record a "$t" "$run" "$(loadgen "${PORT[$t]}" -clients 100 -inflight 1 -size 200 -qos 1 -duration "$DUR" -client-prefix "a$run-")"
	done
	for t in $(rotate "$run" benchbroker gateway gateway-offline nats); do
		[ -n "${PORT[$t]:-}" ] || continue
		record b "$t" "$run" "$(loadgen "${PORT[$t]}" -clients 1 -inflight 32 -size 200 -qos 1 -duration "$DUR" -client-prefix "b$run-")"
	done
	for t in $(rotate "$run" gateway benchbroker); do
		[ -n "${PORT[$t]:-}" ] || continue
		record c "$t" "$run" "$(loadgen "${PORT[$t]}" -clients 100 -rate 1000 -inflight 1 -size 200 -qos 1 -duration "$DUR" -client-prefix "c$run-")"
	done
done

# ---------------------------------------------------------------- (d) idle RSS
# A fresh process per measurement, so that the heap left over from the
# throughput runs does not count.
declare -A RSS_IDLE RSS_BASE
idle_rss() { # NAME PID PORT
	local base peak=0 v lg
	base=$(rss_kb "$2")
	timeout 120 bin/loadgen -broker "tcp://127.0.0.1:$3" -clients "$IDLE_CLIENTS" -idle -duration 8s \
		-client-prefix idle- -json >"$TMP/idle-$1.json" 2>>"$TMP/loadgen.err" &
	lg=$!
	while kill -0 "$lg" 2>/dev/null; do
		v=$(rss_kb "$2")
		[ "$v" -gt "$peak" ] && peak=$v
		sleep 0.2
	done
	wait "$lg" || true
	RSS_BASE[$1]=$base
	RSS_IDLE[$1]=$peak
	printf '  d   %-11s RSS %6.1f MB before, %6.1f MB peak with %s idle clients (connected %s)\n' "$1" \
		"$(awk -v k="$base" 'BEGIN{print k/1024}')" "$(awk -v k="$peak" 'BEGIN{print k/1024}')" \
		"$IDLE_CLIENTS" "$(jget connected "$(cat "$TMP/idle-$1.json")")" >&2
}
log "(d) RSS with $IDLE_CLIENTS idle clients"
stop "$BB_PID"
bin/benchbroker -addr "127.0.0.1:$BB_PORT" >"$TMP/benchbroker-idle.log" 2>&1 &
BB_PID=$!
PIDS+=("$BB_PID")
wait_port "$BB_PORT" "$BB_PID" benchbroker-idle
idle_rss benchbroker "$BB_PID" "$BB_PORT"
if [ "$HAVE_GW" = 1 ]; then
	stop "$GW_OFFLINE_PID"
	stop "$GW_PID"
	start_gateway gateway-idle
	idle_rss gateway "$GW_PID" "$GW_PORT"
fi

# ---------------------------------------------------------------- HOOK: drain benchmark
# (e) Drain of a 1,000,000-message backlog to devkafka vs a bare sarama async
# producer sending the same records in the same run. To be written by the
# lead. Available here: $KAFKA_PORT (devkafka), $TMP (scratch), start_gateway,
# stop, wait_port, free_port, $RUNS. Set these (msg/s, medians) and the final
# table prints them and their ratio:
DRAIN_GATEWAY=${DRAIN_GATEWAY:--}
DRAIN_SARAMA=${DRAIN_SARAMA:--}
bench_drain() {
	# cmd/drainbench runs its own in-process Kafka-protocol cluster, fills a
	# fresh buffer with DRAIN_N records per round (outside the timing), times
	# the bridge draining it to empty, then a bare sarama async producer with
	# the same settings sending the same records; rounds alternate.
	local out line
	out=$(timeout 1200 bin/drainbench -n "${DRAIN_N:-1000000}" -rounds "$RUNS" 2>&1) || {
		echo "  e   drainbench failed:" >&2
		echo "$out" | tail -5 >&2
		return
	}
	echo "$out" | grep '^round' | sed 's/^/  e   /' >&2
	line=$(echo "$out" | grep '^DRAIN ')
	DRAIN_GATEWAY=$(echo "$line" | sed -n 's/.*bridge=\([0-9]*\).*/\1/p')
	DRAIN_SARAMA=$(echo "$line" | sed -n 's/.*bare=\([0-9]*\).*/\1/p')
}
log "(e) drain of a backlog"
bench_drain
# (e') the same with kafka.exactly_once: one transaction per batch, reported.
DRAIN_EOS=- DRAIN_EOS_BARE=-
bench_drain_eos() {
	local out
	out=$(timeout 1200 bin/drainbench -n "${DRAIN_N:-1000000}" -rounds "$RUNS" -exactly-once 2>&1) || {
		echo "  e'  drainbench -exactly-once failed:" >&2
		echo "$out" | tail -5 >&2
		return
	}
	echo "$out" | grep '^round' | sed "s/^/  e'  /" >&2
	DRAIN_EOS=$(echo "$out" | grep '^DRAIN ' | sed -n 's/.*bridge=\([0-9]*\).*/\1/p')
	DRAIN_EOS_BARE=$(echo "$out" | grep '^DRAIN ' | sed -n 's/.*bare=\([0-9]*\).*/\1/p')
}
log "(e') exactly-once drain of a backlog"
bench_drain_eos
# ---------------------------------------------------------------- end of HOOK

# ---------------------------------------------------------------- table
A_BB=$(med a benchbroker acked_per_s)
A_GW=$(med a gateway acked_per_s)
A_MQ=$(med a mosquitto acked_per_s)
A_GO=$(med a gateway-offline acked_per_s)
B_GO=$(med b gateway-offline acked_per_s)
B_BB=$(med b benchbroker acked_per_s)
B_GW=$(med b gateway acked_per_s)
A_NA=$(med a nats acked_per_s)
B_NA=$(med b nats acked_per_s)

echo
echo "RESULTS (medians of $RUNS runs, $DUR each; $(nproc) CPUs; $(date -u +%Y-%m-%dT%H:%MZ))"
printf '%-52s %12s %12s %12s\n' "case" "benchbroker" "gateway" "mosquitto"
printf '%-52s %12s %12s %12s\n' "(a) 100 clients x 1 in flight, 200 B, QoS1: msg/s" "$(fmt0 "$A_BB")" "$(fmt0 "$A_GW")" "$(fmt0 "$A_MQ")"
printf '%-52s %12s %12s %12s\n' "    p99 publish->PUBACK ms" "$(fmt2 "$(med a benchbroker p99_ms)")" "$(fmt2 "$(med a gateway p99_ms)")" "$(fmt2 "$(med a mosquitto p99_ms)")"
printf '%-52s %12s %12s %12s\n' "(a') gateway with Kafka unreachable (ingest only)" "-" "$(fmt0 "$A_GO")" "-"
printf '%-52s %12s %12s %12s\n' "(b) 1 client x 32 in flight: msg/s" "$(fmt0 "$B_BB")" "$(fmt0 "$B_GW")" "-"
printf '%-52s %12s %12s %12s\n' "(b') gateway with Kafka unreachable" "-" "$(fmt0 "$B_GO")" "-"
printf '%-52s %12s %12s %12s\n' "nats-server MQTT/JetStream sync always: (a) msg/s" "-" "$(fmt0 "$A_NA")" "-"
printf '%-52s %12s %12s %12s\n' "nats-server MQTT/JetStream sync always: (b) msg/s" "-" "$(fmt0 "$B_NA")" "-"
printf '%-52s %12s %12s %12s\n' "(c) 1000 msg/s over 100 clients: p99 ms" "$(fmt2 "$(med c benchbroker p99_ms)")" "$(fmt2 "$(med c gateway p99_ms)")" "-"
printf '%-52s %12s %12s %12s\n' "    p50 ms" "$(fmt2 "$(med c benchbroker p50_ms)")" "$(fmt2 "$(med c gateway p50_ms)")" "-"
printf '%-52s %12s %12s %12s\n' "(d) RSS MB, $IDLE_CLIENTS idle clients (fresh process)" \
	"$(awk -v k="${RSS_IDLE[benchbroker]:-0}" 'BEGIN{printf "%.1f", k/1024}')" \
	"$( [ -n "${RSS_IDLE[gateway]:-}" ] && awk -v k="${RSS_IDLE[gateway]}" 'BEGIN{printf "%.1f", k/1024}' || echo -)" "-"
printf '%-52s %12s %12s %12s\n' "(e) drain 1,000,000 backlog: msg/s (sarama = bare)" "$DRAIN_SARAMA" "$DRAIN_GATEWAY" "-"
printf '%-52s %12s %12s %12s\n' "(e') the same, kafka.exactly_once: true" "-" "$DRAIN_EOS" "-"
echo
echo "RATIOS (of the medians)                                   target"
printf '  (a) gateway / benchbroker   %6s                     >= 0.6\n' "$(ratio "$A_GW" "$A_BB")"
printf '  (a) gateway / nats-server   %6s                     (reported: the durable peer)\n' "$(ratio "$A_GW" "$A_NA")"
printf '  (a) gateway / mosquitto     %6s                     (reported)\n' "$(ratio "$A_GW" "$A_MQ")"
printf '  (a) benchbroker / mosquitto %6s                     (reference)\n' "$(ratio "$A_BB" "$A_MQ")"
printf '  (a) offline gw / benchbroker %5s                     (ingest only)\n' "$(ratio "$A_GO" "$A_BB")"
printf '  (b) gateway / benchbroker   %6s                     >= 0.5\n' "$(ratio "$B_GW" "$B_BB")"
printf '  (b) gateway / nats-server   %6s                     (reported)\n' "$(ratio "$B_GW" "$B_NA")"
printf '  (b) offline gw / benchbroker %5s                     (ingest only)\n' "$(ratio "$B_GO" "$B_BB")"
printf '  (c) gateway p99 ms          %6s                     <= 10\n' "$(fmt2 "$(med c gateway p99_ms)")"
printf '  (d) gateway RSS MB          %6s                     <= 100\n' \
	"$( [ -n "${RSS_IDLE[gateway]:-}" ] && awk -v k="${RSS_IDLE[gateway]}" 'BEGIN{printf "%.1f", k/1024}' || echo -)"
printf '  (e) gateway / sarama drain  %6s                     >= 0.5\n' "$(ratio "$DRAIN_GATEWAY" "$DRAIN_SARAMA")"
printf "  (e') exactly-once / sarama  %6s                     >= 0.5 (bare sarama of the same run)\n" "$(ratio "$DRAIN_EOS" "$DRAIN_EOS_BARE")"
echo
echo "per-run ratios (a) gateway/benchbroker, gateway/mosquitto, same run:"
for ((run = 1; run <= RUNS; run++)); do
	printf '  run %d: %s  %s\n' "$run" "$(ratio "${R[a,gateway,$run,acked_per_s]:--}" "${R[a,benchbroker,$run,acked_per_s]:--}")" \
		"$(ratio "${R[a,gateway,$run,acked_per_s]:--}" "${R[a,mosquitto,$run,acked_per_s]:--}")"
done
echo "per-run ratios (b) gateway/benchbroker:"
for ((run = 1; run <= RUNS; run++)); do
	printf '  run %d: %s\n' "$run" "$(ratio "${R[b,gateway,$run,acked_per_s]:--}" "${R[b,benchbroker,$run,acked_per_s]:--}")"
done
echo "per-round ratios (e) drain / bare sarama, (e') exactly-once / bare sarama: see the round lines above (target >= 0.5 in every round)"
errs=0
for k in "${!R[@]}"; do
	case $k in *,errors) [ "${R[$k]:-0}" != 0 ] && [ -n "${R[$k]}" ] && errs=$((errs + 1)) ;; esac
done
[ "$errs" = 0 ] || echo "WARNING: $errs runs reported errors; see above and loadgen stderr" >&2
[ "$HAVE_GW" = 1 ] || echo "NOTE: gateway was skipped (does not build yet); ratios involving it show '-'"
[ "$HAVE_MOSQ" = 1 ] || echo "NOTE: mosquitto was skipped (not installed)"

# ---------------------------------------------------------------- (f) resources
# What strangers can make the gateway hold (issue 9): RSS idle, with silent
# connections, unfinished 256 KiB CONNECTs, 3,000 offline MQTT 5 sessions and
# 1,000 idle clients (cmd/resbench; also `make bench-resources`).
if [ "$HAVE_GW" = 1 ]; then
	log "(f) resources under hostile connections (cmd/resbench)"
	"$GO" build -o bin/resbench ./cmd/resbench || die "build ./cmd/resbench failed"
	echo
	timeout 900 bin/resbench -gateway bin/gateway || echo "WARNING: resbench failed" >&2
fi
