#!/usr/bin/env bash
# scripts/run-dev.sh: what `make run` does. Starts devkafka (kfake with its
# data in ./.devkafka, so records survive restarts) on 127.0.0.1:9092 in the
# background, waits until it answers, then runs the gateway in the foreground
# with config.example.yaml. Ctrl-C stops both.
#
#   CONFIG=config.example.yaml  KAFKA_PORT=9092  DEVKAFKA_DATA=./.devkafka
set -euo pipefail
# Job control: every command below runs in its own process group and the
# foreground one (the gateway) gets the terminal. Ctrl-C then reaches the
# gateway alone, which stops cleanly and exits 0, and not make: GNU make
# re-raises a SIGINT it receives itself, so `make run` would end with 130.
# devkafka and payproc are stopped by the EXIT trap.
set -m
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-config.example.yaml}
KAFKA_PORT=${KAFKA_PORT:-9092}
DATA=${DEVKAFKA_DATA:-./.devkafka}
KAFKA_PID=
PAYPROC_PID=

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cleanup() {
	if [ -n "$PAYPROC_PID" ]; then
		kill -TERM "$PAYPROC_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$PAYPROC_PID" 2>/dev/null || break; sleep 0.1; done
		wait "$PAYPROC_PID" 2>/dev/null || true
	fi
	if [ -n "$KAFKA_PID" ] && kill -0 "$KAFKA_PID" 2>/dev/null; then
		echo "stopping devkafka (pid $KAFKA_PID)" >&2
		kill -TERM "$KAFKA_PID" 2>/dev/null || true
		for _ in $(seq 300); do kill -0 "$KAFKA_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$KAFKA_PID" 2>/dev/null || true
	fi
}
trap cleanup EXIT
# Ctrl-C is the normal way to stop: exit 0 so make does not report an error.
trap 'exit 0' INT
trap 'exit 143' TERM

[ -f "$CONFIG" ] || { echo "run: $CONFIG not found" >&2; exit 2; }

if port_open "$KAFKA_PORT"; then
	echo "something already listens on 127.0.0.1:$KAFKA_PORT; using it as the Kafka cluster" >&2
else
	bin/devkafka -addr "127.0.0.1:$KAFKA_PORT" -data-dir "$DATA" &
	KAFKA_PID=$!
	deadline=$((SECONDS + 30))
	until port_open "$KAFKA_PORT"; do
		kill -0 "$KAFKA_PID" 2>/dev/null || { echo "run: devkafka exited" >&2; KAFKA_PID=; exit 1; }
		[ "$SECONDS" -lt "$deadline" ] || { echo "run: devkafka not answering on $KAFKA_PORT after 30 s" >&2; exit 1; }
		sleep 0.1
	done
fi

# The sample payment processor answers each payment with a receipt on
# receipts.<gateway id>, which the gateway delivers back to the terminal.
mkdir -p "$DATA"
bin/payproc -brokers "127.0.0.1:$KAFKA_PORT" 2>"$DATA/payproc.log" &
PAYPROC_PID=$!

if command -v kcat >/dev/null 2>&1; then
	READ="kcat -b 127.0.0.1:$KAFKA_PORT -C -t payments -f '%k %h %s\\n' -e"
elif command -v kafkacat >/dev/null 2>&1; then
	READ="kafkacat -b 127.0.0.1:$KAFKA_PORT -C -t payments -f '%k %h %s\\n' -e"
else
	READ="bin/kafkatail -b 127.0.0.1:$KAFKA_PORT -t payments      (kcat not installed: apt-get install kafkacat)"
fi
cat <<EOM

Kafka (devkafka) on 127.0.0.1:$KAFKA_PORT, data in $DATA. Starting the gateway with $CONFIG.

Publish as a terminal (another shell):
  mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -i term-1 -t terminals/term-1/payments/p1 -m '{"amount":1200}'
Then fetch its receipt as that terminal (receipts go only to the client whose id is the device;
they wait in the gateway's outbox until it subscribes; payproc logs to $DATA/payproc.log):
  mosquitto_sub -h 127.0.0.1 -p 1883 -q 1 -i term-1 -t terminals/term-1/receipts -v -C 1
Read what landed in Kafka:
  $READ
  bin/kafkatail -b 127.0.0.1:$KAFKA_PORT -t payments      (Go fallback, always available)
Gateway state:
  bin/gateway status
$( [ -n "$KAFKA_PID" ] && printf 'Take Kafka away (the gateway keeps buffering) and bring it back:\n  kill %s\n  bin/devkafka -addr 127.0.0.1:%s -data-dir %s\n' "$KAFKA_PID" "$KAFKA_PORT" "$DATA")

Ctrl-C stops the gateway and devkafka.

EOM

# Not exec: the EXIT trap must still stop devkafka when the gateway ends.
bin/gateway run --config "$CONFIG"
