#!/usr/bin/env bash
# bench/receipts.sh: the receipts figures of issue 3 (`make bench-receipts`,
# also run by `make bench`).
#
# Each run starts a fresh stack on free 127.0.0.1 ports: devkafka (kfake, in
# memory), the gateway (bin/gateway run, config written below, receipts at
# QoS 1 with delivery confirmations on) and, for (b), cmd/payproc. Then:
#
#   (a) receipts delivered per second to 1,000 online terminals
#       (bin/receiptbench -mode online: 1,000 subscribed terminals, 100
#       receipts each produced to Kafka at once; first produce -> last receipt)
#   (b) payment -> receipt round trip through cmd/payproc at 200 payments/s:
#       p50 and p99 (bin/loadgen -receipts, 50 terminals, 4 payments awaiting
#       their receipt per terminal at most)
#   (c) 100,000 receipts waiting for 10,000 offline devices (persistent
#       sessions): seconds from all of them reconnecting at once to the last
#       receipt delivered (bin/receiptbench -mode offline)
#
# BENCH_RUNS times each (default 3), medians printed at the end.
#
#   BENCH_RUNS=3  BENCH_RT_DURATION=20s  BENCH_ONLINE_DEVICES=1000
#   BENCH_OFFLINE_DEVICES=10000  BENCH_OFFLINE_RECEIPTS=100000
#   BENCH_RECEIPTS_ONLY=a,b,c   (a subset)
#
# Everything started here is stopped on exit (trap); every step is bounded.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

RUNS=${BENCH_RUNS:-3}
RT_DUR=${BENCH_RT_DURATION:-20s}
ONLINE_DEVICES=${BENCH_ONLINE_DEVICES:-1000}
OFFLINE_DEVICES=${BENCH_OFFLINE_DEVICES:-10000}
OFFLINE_RECEIPTS=${BENCH_OFFLINE_RECEIPTS:-100000}
ONLY=${BENCH_RECEIPTS_ONLY:-a,b,c}
GO=${GO:-go}
GW_ID=rbench

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gwrbench.XXXXXX")
PIDS=()

BENCH_NAME=bench-receipts
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
fmtn() { awk -v a="$2" -v d="$1" 'BEGIN { if (a=="-" || a=="") print "-"; else printf "%." d "f\n", a }'; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }

log "building into bin/"
mkdir -p bin
for c in gateway devkafka loadgen payproc receiptbench; do
	"$GO" build -o "bin/$c" "./cmd/$c" || die "build ./cmd/$c failed"
done

# start_stack [payproc]: devkafka + gateway (+ payproc) on fresh ports and a
# fresh data dir; sets KP MP AP STACK_PIDS.
start_stack() {
	local dir="$TMP/run$1"
	rm -rf "$dir"
	mkdir -p "$dir"
	free_port
	KP=$FREE_PORT
	free_port
	MP=$FREE_PORT
	free_port
	AP=$FREE_PORT
	STACK_PIDS=()
	bin/devkafka -addr "127.0.0.1:$KP" -data-dir "" -partitions 3 \
		-topics "payments,receipts.$GW_ID,receipts.delivered" >"$TMP/devkafka.log" 2>&1 &
	PIDS+=($!)
	STACK_PIDS+=($!)
	wait_port "$KP" $! devkafka
	cat >"$dir/gateway.yaml" <<EOF
id: $GW_ID
data_dir: "$dir/data"
mqtt: {address: "127.0.0.1:$MP", max_inflight: 64}
kafka: {brokers: ["127.0.0.1:$KP"], version: "2.8.0", compression: zstd}
routes:
  - {name: payments, match: "terminals/+/payments/#", kafka_topic: payments}
receipts: {qos: 1, confirm_topic: receipts.delivered}
admin: {address: "127.0.0.1:$AP"}
log: {level: warn}
EOF
	bin/gateway run --config "$dir/gateway.yaml" >"$TMP/gateway.log" 2>&1 &
	PIDS+=($!)
	STACK_PIDS+=($!)
	wait_port "$MP" $! gateway
	wait_port "$AP" $! gateway
	if [ "${2:-}" = payproc ]; then
		bin/payproc -brokers "127.0.0.1:$KP" >"$TMP/payproc.log" 2>&1 &
		PIDS+=($!)
		STACK_PIDS+=($!)
	fi
}

stop_stack() {
	local i
	for ((i = ${#STACK_PIDS[@]} - 1; i >= 0; i--)); do stop "${STACK_PIDS[$i]}"; done
	STACK_PIDS=()
}

A=() B50=() B99=() C=() CSTORE=()
run=0
for r in $(seq "$RUNS"); do
	if want a; then
		run=$((run + 1))
		log "(a) run $r: $ONLINE_DEVICES online terminals x 100 receipts"
		start_stack "$run"
		out=$(timeout 300 bin/receiptbench -mode online -json -broker "tcp://127.0.0.1:$MP" -kafka "127.0.0.1:$KP" \
			-admin "127.0.0.1:$AP" -topic "receipts.$GW_ID" -devices "$ONLINE_DEVICES" -per-device 100 -timeout 240s) || true
		echo "$out" >&2
		stop_stack
		v=$(jget receipts_per_s "$out")
		grep -q '"complete":true' <<<"$out" && A+=("$v")
	fi
	if want b; then
		run=$((run + 1))
		log "(b) run $r: payment -> receipt through payproc at 200/s for $RT_DUR"
		start_stack "$run" payproc
		# Warm-up: until payproc has joined its group and answered once.
		timeout 60 bin/loadgen -receipts -json -broker "tcp://127.0.0.1:$MP" -client-prefix warm- -clients 1 \
			-rate 5 -duration 1s -drain-timeout 40s >"$TMP/warm.json" 2>&1 || true
		out=$(timeout 300 bin/loadgen -receipts -json -broker "tcp://127.0.0.1:$MP" -client-prefix term- \
			-clients 50 -rate 200 -inflight 4 -duration "$RT_DUR" -drain-timeout 30s) || true
		echo "$out" >&2
		stop_stack
		if [ "$(jget errors "$out")" = 0 ] && [ "$(jget acked "$out")" = "$(jget sent "$out")" ]; then
			B50+=("$(jget p50_ms "$out")")
			B99+=("$(jget p99_ms "$out")")
		fi
	fi
	if want c; then
		run=$((run + 1))
		per=$((OFFLINE_RECEIPTS / OFFLINE_DEVICES))
		log "(c) run $r: $((per * OFFLINE_DEVICES)) receipts for $OFFLINE_DEVICES offline devices, all reconnecting at once"
		start_stack "$run"
		out=$(timeout 600 bin/receiptbench -mode offline -json -broker "tcp://127.0.0.1:$MP" -kafka "127.0.0.1:$KP" \
			-admin "127.0.0.1:$AP" -topic "receipts.$GW_ID" -devices "$OFFLINE_DEVICES" -per-device "$per" \
			-connect-parallel 1000 -timeout 500s) || true
		echo "$out" >&2
		stop_stack
		if grep -q '"complete":true' <<<"$out"; then
			C+=("$(jget seconds "$out")")
			CSTORE+=("$(jget store_seconds "$out")")
		fi
	fi
done

printf '\nreceipts figures (medians of %s runs; runs that did not complete are left out)\n' "$RUNS"
want a && printf '  (a) receipts/s delivered to %s online terminals:          %s   (runs: %s)\n' \
	"$ONLINE_DEVICES" "$(fmtn 0 "$(median "${A[@]}")")" "$(for x in "${A[@]}"; do fmtn 0 "$x"; done | xargs)"
want b && printf '  (b) payment->receipt via payproc at 200/s, p50 / p99 ms:   %s / %s   (p99 runs: %s)\n' \
	"$(fmtn 1 "$(median "${B50[@]}")")" "$(fmtn 1 "$(median "${B99[@]}")")" "$(for x in "${B99[@]}"; do fmtn 1 "$x"; done | xargs)"
want c && printf '  (c) %s receipts, %s devices reconnecting: all delivered in %s s   (runs: %s; stored in %s s)\n' \
	"$OFFLINE_RECEIPTS" "$OFFLINE_DEVICES" "$(fmtn 2 "$(median "${C[@]}")")" "$(for x in "${C[@]}"; do fmtn 2 "$x"; done | xargs)" "$(fmtn 2 "$(median "${CSTORE[@]}")")"
exit 0
