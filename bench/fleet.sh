#!/usr/bin/env bash
# bench/fleet.sh: what the fleet features cost a box (docs/fleet.md).
#
# 1. The link: one idle gateway with fleet.status_interval (default 60s) and
#    a config topic, for FLEET_IDLE (default 300s); the bytes its status
#    producer and config reader exchanged with Kafka (sarama's counts:
#    requests and responses, before TCP/TLS), as bytes a day.
# 2. Flash: bytes written to storage per delivered message at 100 msg/s
#    (100 clients, 200 B, QoS 1), without and with status records every
#    FLEET_WEAR_INTERVAL (default 1s, the worst case), runs interleaved side
#    by side (WEAR_RUNS, WEAR_DURATION as in bench/wear.sh).
#
#   FLEET_IDLE=300 FLEET_INTERVAL=60s FLEET_WEAR_INTERVAL=1s WEAR_RUNS=3 WEAR_DURATION=20s
#   FLEET_SKIP_LINK=1 / FLEET_SKIP_WEAR=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
GO=${GO:-go}
RUNS=${WEAR_RUNS:-3}
DUR=${WEAR_DURATION:-20s}
IDLE=${FLEET_IDLE:-300}
INTERVAL=${FLEET_INTERVAL:-60s}
WEAR_INTERVAL=${FLEET_WEAR_INTERVAL:-1s}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gwfleet.XXXXXX")
PIDS=()
BENCH_NAME=fleet
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

log "building into bin/"
mkdir -p bin
for c in gateway devkafka loadgen; do
	"$GO" build -o "bin/$c" "./cmd/$c" || die "build ./cmd/$c failed"
done

free_port; KAFKA_PORT=$FREE_PORT
bin/devkafka -addr "127.0.0.1:$KAFKA_PORT" -data-dir "$TMP/kafka" \
	-topics telemetry,receipts.bench,receipts.delivered,gateway.status,gateway.config >"$TMP/devkafka.log" 2>&1 &
KAFKA_PID=$!
PIDS+=("$KAFKA_PID")
wait_port "$KAFKA_PORT" "$KAFKA_PID" devkafka
bin/gateway fleet keygen --out "$TMP/signing" >/dev/null

write_bytes() { awk '/^write_bytes:/ {print $2}' "/proc/$1/io"; }
# metric ADMIN NAME [LABEL]: the sum of a metric's samples (with LABEL in them).
metric() {
	curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null |
		awk -v n="$2" -v l="${3:-}" '($1 == n || index($1, n "{") == 1) && index($1, l) {s += $2} END {printf "%.0f\n", s}'
}

GW_PID= GW_PORT= GW_ADMIN=
# start_gateway NAME EXTRA_YAML
start_gateway() {
	free_port; GW_PORT=$FREE_PORT
	free_port; GW_ADMIN=$FREE_PORT
	mkdir -p "$TMP/$1"
	sed -e "s|@DATA_DIR@|$TMP/$1/data|" -e "s|@MQTT_PORT@|$GW_PORT|" \
		-e "s|@KAFKA_PORT@|$KAFKA_PORT|" -e "s|@ADMIN_PORT@|$GW_ADMIN|" \
		bench/gateway.yaml >"$TMP/$1/gateway.yaml"
	printf '%s\n' "$2" >>"$TMP/$1/gateway.yaml"
	bin/gateway run --config "$TMP/$1/gateway.yaml" >"$TMP/$1.log" 2>&1 &
	GW_PID=$!
	PIDS+=("$GW_PID")
	wait_port "$GW_PORT" "$GW_PID" "$1"
}

fleet_yaml() {
	printf 'fleet: {status_topic: gateway.status, status_interval: %s, config_topic: gateway.config, config_keys: ["%s"]}' "$1" "$TMP/signing.pub"
}

if [ "${FLEET_SKIP_LINK:-0}" != 1 ]; then
	log "link: one idle gateway, status every $INTERVAL, config topic read, for ${IDLE}s"
	start_gateway link "$(fleet_yaml "$INTERVAL")"
	# from the first record on: the start's connection setup is counted apart
	deadline=$((SECONDS + 120))
	while [ "$(metric "$GW_ADMIN" gateway_status_records_sent_total)" = 0 ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
	s0=$(metric "$GW_ADMIN" gateway_status_kafka_bytes_total); c0=$(metric "$GW_ADMIN" gateway_remote_config_kafka_bytes_total)
	r0=$(metric "$GW_ADMIN" gateway_status_records_sent_total); v0=$(metric "$GW_ADMIN" gateway_status_record_bytes_total)
	t0=$SECONDS
	sleep "$IDLE"
	s1=$(metric "$GW_ADMIN" gateway_status_kafka_bytes_total); c1=$(metric "$GW_ADMIN" gateway_remote_config_kafka_bytes_total)
	r1=$(metric "$GW_ADMIN" gateway_status_records_sent_total); v1=$(metric "$GW_ADMIN" gateway_status_record_bytes_total)
	t1=$SECONDS
	startc=$c0
	stop "$GW_PID"
	echo
	echo "== link cost of one idle box, status_interval $INTERVAL, over $((t1 - t0)) s (sarama's byte counts, both directions)"
	awk -v s="$((s1 - s0))" -v c="$((c1 - c0))" -v r="$((r1 - r0))" -v v="$((v1 - v0))" -v t="$((t1 - t0))" -v sc="$startc" 'BEGIN {
		printf "status: %d records, %.0f B JSON each, %.0f B on the wire each; %.0f KiB/day\n", r, (r ? v/r : 0), (r ? s/r : 0), s/t*86400/1024
		printf "config: %.0f KiB/day idle (long polls); the start read %d B\n", c/t*86400/1024, sc
	}'
fi

if [ "${FLEET_SKIP_WEAR:-0}" != 1 ]; then
	# measure NAME EXTRA_YAML: prints "bytes_per_msg delivered records_sent"
	measure() {
		start_gateway "$1" "$2"
		sleep 1
		local before after line acked deadline purges sent
		before=$(write_bytes "$GW_PID")
		line=$(timeout 300 bin/loadgen -broker "tcp://127.0.0.1:$GW_PORT" -json -clients 100 -rate 100 \
			-duration "$DUR" -size 200 2>>"$TMP/loadgen.err" || echo '{}')
		acked=$(jget acked "$line")
		deadline=$((SECONDS + 60))
		while [ "$(metric "$GW_ADMIN" gateway_backlog_messages)" != 0 ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
		purges=$(metric "$GW_ADMIN" gateway_buffer_purges_total)
		deadline=$((SECONDS + 45))
		while [ "$(metric "$GW_ADMIN" gateway_buffer_purges_total)" = "$purges" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
		after=$(write_bytes "$GW_PID")
		sent=$(metric "$GW_ADMIN" gateway_status_records_sent_total)
		stop "$GW_PID"
		awk -v a="$after" -v b="$before" -v n="${acked:-0}" -v s="$sent" \
			'BEGIN { if (n+0 == 0) print "- 0 0"; else printf "%.0f %d %d\n", (a-b)/n, n, s }'
	}
	log "flash at 100 msg/s: without and with status every $WEAR_INTERVAL, $RUNS runs each, interleaved"
	WO=() WI=()
	for ((run = 1; run <= RUNS; run++)); do
		read -r w n s < <(measure "without-$run" "")
		WO+=("$w")
		printf '  run %d without status: %6s B/msg, %d delivered\n' "$run" "$w" "$n" >&2
		read -r w n s < <(measure "with-$run" "$(fleet_yaml "$WEAR_INTERVAL")")
		WI+=("$w")
		printf '  run %d with status:    %6s B/msg, %d delivered, %d status records sent\n' "$run" "$w" "$n" "$s" >&2
	done
	echo
	echo "== flash: bytes written per delivered message at 100 msg/s (medians of $RUNS; load: $(cut -d' ' -f1-3 /proc/loadavg))"
	mo=$(median "${WO[@]}"); mi=$(median "${WI[@]}")
	printf 'without status records:            %s\n' "$mo"
	printf 'with status every %-6s           %s\n' "$WEAR_INTERVAL" "$mi"
	awk -v a="$mo" -v b="$mi" 'BEGIN { if (a > 0) printf "added: %+.2f%%\n", (b-a)/a*100 }'
fi
