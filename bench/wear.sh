#!/usr/bin/env bash
# bench/wear.sh: flash wear of the gateway, as bytes the gateway process
# caused to be written to storage (/proc/PID/io write_bytes) per delivered
# message, with Kafka up, 100 clients, 200 B payloads, QoS 1.
#
# Each measurement starts a gateway with a fresh data dir, runs bin/loadgen at
# a rate for WEAR_DURATION, then waits until the backlog is delivered and a
# purge has deleted the delivered blocks (deletes included), and reads
# write_bytes. Also: one persistent-session reconnect (connect, subscribe to
# its receipts topic, disconnect), and a sweep of buffer.commit_wait at 100
# msg/s (the setting that trades PUBACK latency for wear).
#
#   WEAR_RUNS=3            runs per rate (medians)
#   WEAR_DURATION=20s      loadgen duration per run
#   WEAR_RATES="10 100 1000"
#   WEAR_SWEEP="0ms 10ms 50ms 100ms 250ms"   commit_wait values at 100 msg/s
#                          (with commit_min_records: 0, so the wait is the knob)
#   WEAR_SKIP_SWEEP=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
GO=${GO:-go}
RUNS=${WEAR_RUNS:-3}
DUR=${WEAR_DURATION:-20s}
RATES=${WEAR_RATES:-"10 100 1000"}
SWEEP=${WEAR_SWEEP:-"0ms 10ms 50ms 100ms 250ms"}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gwwear.XXXXXX")
PIDS=()
BENCH_NAME=wear
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

log "building into bin/"
mkdir -p bin
for c in gateway devkafka loadgen; do
	"$GO" build -o "bin/$c" "./cmd/$c" || die "build ./cmd/$c failed"
done

start_devkafka

write_bytes() { awk '/^write_bytes:/ {print $2}' "/proc/$1/io"; }

# metric ADMIN NAME: the sum of a metric's samples from /metrics.
metric() {
	curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null |
		awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%.0f\n", s}'
}

GW_PID= GW_PORT= GW_ADMIN=
# start_gateway NAME EXTRA_BUFFER_YAML
start_gateway() {
	free_port; GW_PORT=$FREE_PORT
	free_port; GW_ADMIN=$FREE_PORT
	mkdir -p "$TMP/$1"
	sed -e "s|@DATA_DIR@|$TMP/$1/data|" -e "s|@MQTT_PORT@|$GW_PORT|" \
		-e "s|@KAFKA_PORT@|$KAFKA_PORT|" -e "s|@ADMIN_PORT@|$GW_ADMIN|" \
		bench/gateway.yaml >"$TMP/$1/gateway.yaml"
	if [ -n "$2" ]; then printf 'buffer:\n%s\n' "$2" >>"$TMP/$1/gateway.yaml"; fi
	bin/gateway run --config "$TMP/$1/gateway.yaml" >"$TMP/$1.log" 2>&1 &
	GW_PID=$!
	PIDS+=("$GW_PID")
	wait_port "$GW_PORT" "$GW_PID" "$1"
}

# measure NAME RATE BUFFER_YAML: prints "bytes_per_msg p99_ms acked records_per_commit"
measure() {
	start_gateway "$1" "$3"
	sleep 1
	local before after line acked p99 deadline purges commits records
	before=$(write_bytes "$GW_PID")
	line=$(timeout 300 bin/loadgen -broker "tcp://127.0.0.1:$GW_PORT" -json -clients 100 -rate "$2" \
		-duration "$DUR" -size 200 2>>"$TMP/loadgen.err" || echo '{}')
	acked=$(jget acked "$line")
	p99=$(jget p99_ms "$line")
	# delivered, then purged: the deletes after Kafka's acknowledgement count
	deadline=$((SECONDS + 60))
	while [ "$(metric "$GW_ADMIN" gateway_backlog_messages)" != 0 ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
	purges=$(metric "$GW_ADMIN" gateway_buffer_purges_total)
	deadline=$((SECONDS + 45))
	while [ "$(metric "$GW_ADMIN" gateway_buffer_purges_total)" = "$purges" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
	after=$(write_bytes "$GW_PID")
	commits=$(metric "$GW_ADMIN" gateway_buffer_commits_total)
	records=$(metric "$GW_ADMIN" gateway_buffer_committed_records_total)
	stop "$GW_PID"
	awk -v a="$after" -v b="$before" -v n="${acked:-0}" -v p="${p99:--}" -v c="$commits" -v r="$records" \
		'BEGIN { if (n+0 == 0) print "- - 0 -"; else printf "%.0f %s %d %.1f\n", (a-b)/n, p, n, (c>0 ? r/c : 0) }'
}

log "wear at ${RATES// /, } msg/s, $RUNS runs of $DUR each, default settings"
declare -A W P
for ((run = 1; run <= RUNS; run++)); do
	for rate in $RATES; do
		read -r w p n rpc < <(measure "r$rate-$run" "$rate" "")
		W[$rate,$run]=$w P[$rate,$run]=$p
		printf '  %5s msg/s run %d: %6s B/msg written, p99 %6s ms, %d delivered, %s records per commit\n' \
			"$rate" "$run" "$w" "$p" "$n" "$rpc" >&2
	done
done

log "one persistent-session reconnect (connect, subscribe to its receipts topic, disconnect)"
start_gateway reconnect ""
# the session exists already (a first connect), as for a terminal in the field
timeout 60 bin/loadgen -broker "tcp://127.0.0.1:$GW_PORT" -clients 1 -idle -duration 1s -clean=false \
	-client-prefix term- -subscribe 'terminals/{client}/receipts' >/dev/null 2>&1 || true
sleep 1
RC=()
for i in 1 2 3 4 5; do
	b=$(write_bytes "$GW_PID")
	timeout 60 bin/loadgen -broker "tcp://127.0.0.1:$GW_PORT" -clients 1 -idle -duration 200ms -clean=false \
		-client-prefix term- -subscribe 'terminals/{client}/receipts' >/dev/null 2>&1 || true
	sleep 1.5
	a=$(write_bytes "$GW_PID")
	RC+=($((a - b)))
done
stop "$GW_PID"
echo "  per reconnect: ${RC[*]} bytes" >&2

# The durable peer: nats-server's MQTT on JetStream, sync_interval: always.
NW=()
if [ "${BENCH_SKIP_NATS:-0}" != 1 ] && ensure_nats; then
	log "nats-server MQTT on JetStream (sync_interval: always) at 100 msg/s"
	for ((run = 1; run <= RUNS; run++)); do
		start_nats "nats-$run"
		sleep 1
		b=$(write_bytes "$NATS_PID")
		line=$(timeout 300 bin/loadgen -broker "tcp://127.0.0.1:$NATS_PORT" -json -clients 100 -rate 100 \
			-duration "$DUR" -size 200 2>>"$TMP/loadgen.err" || echo '{}')
		sleep 2
		a=$(write_bytes "$NATS_PID")
		n=$(jget acked "$line")
		w=$(awk -v a="$a" -v b="$b" -v n="${n:-0}" 'BEGIN { if (n+0==0) print "-"; else printf "%.0f", (a-b)/n }')
		NW+=("$w")
		printf '  nats run %d: %6s B/msg written, p99 %s ms, %s acknowledged\n' "$run" "$w" "$(jget p99_ms "$line")" "$n" >&2
		stop "$NATS_PID"
	done
fi

SW=()
if [ "${WEAR_SKIP_SWEEP:-0}" != 1 ]; then
	log "buffer.commit_wait at 100 msg/s (commit_min_records: 0), one run each"
	for cw in $SWEEP; do
		read -r w p n rpc < <(measure "cw$cw" 100 "  commit_wait: $cw
  commit_min_records: 0")
		SW+=("$cw $w $p $rpc")
		printf '  commit_wait %6s: %6s B/msg, p99 %6s ms, %s records per commit\n' "$cw" "$w" "$p" "$rpc" >&2
	done
fi

echo
echo "== flash wear: bytes written to storage per delivered message (Kafka up, 100 clients, 200 B, QoS 1; medians of $RUNS)"
printf '%-12s %14s %12s\n' "rate" "B/msg" "p99 ms"
for rate in $RATES; do
	ws=() ps=()
	for ((run = 1; run <= RUNS; run++)); do ws+=("${W[$rate,$run]}"); ps+=("${P[$rate,$run]}"); done
	printf '%-12s %14s %12s\n' "$rate msg/s" "$(median "${ws[@]}")" "$(median "${ps[@]}")"
done
printf '%-12s %14s\n' "reconnect" "$(median "${RC[@]}") B (persistent session: connect, subscribe, disconnect)"
if [ "${#NW[@]}" -gt 0 ]; then
	printf '%-12s %14s\n' "nats 100/s" "$(median "${NW[@]}") (nats-server MQTT on JetStream, sync_interval: always; it stores, no Kafka behind it)"
fi
if [ "${#SW[@]}" -gt 0 ]; then
	echo
	echo "== buffer.commit_wait at 100 msg/s (commit_min_records: 0)"
	printf '%-12s %10s %10s %18s\n' "commit_wait" "B/msg" "p99 ms" "records/commit"
	for s in "${SW[@]}"; do
		read -r cw w p rpc <<<"$s"
		printf '%-12s %10s %10s %18s\n' "$cw" "$w" "$p" "$rpc"
	done
fi
