#!/usr/bin/env bash
# scripts/run-dev.sh: what `make run` does. Starts devkafka (kfake with its
# data in ./.devkafka, so records survive restarts) on 127.0.0.1:$KAFKA_PORT,
# the sample payment processor, and the gateway with config.example.yaml,
# dialling that Kafka and listening on the ports below, whatever the config
# file says (GATEWAY_* overrides). Ctrl-C stops all three, also when the
# output goes through a pipe (make run | tee run.log).
#
#   CONFIG=config.example.yaml  KAFKA_PORT=9092  MQTT_PORT=1883  ADMIN_PORT=9100
#   DEVKAFKA_DATA=./.devkafka  BIN=bin
set -euo pipefail
# A Ctrl-C on the terminal signals the whole foreground job: make, this
# script, a tee, the programs below. The script's trap stops them in order,
# whatever each made of the signal: the gateway first (it finishes its
# commits and closes its files), then payproc, then devkafka. The script
# waits for the gateway with `wait`, not in the foreground: bash runs a
# trap only once a foreground command has returned, so a gateway started in
# the foreground kept everything running after a Ctrl-C that did not reach
# it. A reader of the output that Ctrl-C stopped (tee) must not stop the
# script either: SIGPIPE is ignored (the gateway ignores it too).
trap '' PIPE
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-config.example.yaml}
KAFKA_PORT=${KAFKA_PORT:-9092}
MQTT_PORT=${MQTT_PORT:-1883}
ADMIN_PORT=${ADMIN_PORT:-9100}
DATA=${DEVKAFKA_DATA:-./.devkafka}
BIN=${BIN:-bin}
KAFKA_PID=
PAYPROC_PID=
GATEWAY_PID=

# The gateway takes these over its config file: the addresses printed
# below are the ones it uses. `bin/gateway status` in this environment asks
# this gateway (it reads GATEWAY_ADMIN_ADDRESS too).
export GATEWAY_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export GATEWAY_MQTT_ADDRESS=":$MQTT_PORT"
export GATEWAY_ADMIN_ADDRESS="127.0.0.1:$ADMIN_PORT"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop PID NAME SECONDS: SIGTERM, then SIGKILL after SECONDS.
stop() {
	local pid=$1 name=$2 secs=$3
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	echo "stopping $name (pid $pid)" >&2 || true
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq $((secs * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	set +e
	trap '' INT TERM HUP # a second Ctrl-C does not cut the stop short
	stop "$GATEWAY_PID" gateway 60
	stop "$PAYPROC_PID" payproc 5
	stop "$KAFKA_PID" devkafka 30
}
trap cleanup EXIT
# Ctrl-C is the normal way to stop: exit 0.
trap 'exit 0' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

[ -f "$CONFIG" ] || { echo "run: $CONFIG not found" >&2; exit 2; }

if port_open "$KAFKA_PORT"; then
	echo "something already listens on 127.0.0.1:$KAFKA_PORT; using it as the Kafka cluster" >&2
else
	"$BIN/devkafka" -addr "127.0.0.1:$KAFKA_PORT" -data-dir "$DATA" &
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
"$BIN/payproc" -brokers "127.0.0.1:$KAFKA_PORT" 2>"$DATA/payproc.log" &
PAYPROC_PID=$!

if command -v kcat >/dev/null 2>&1; then
	READ="kcat -b 127.0.0.1:$KAFKA_PORT -C -t payments -f '%k %h %s\\n' -e"
elif command -v kafkacat >/dev/null 2>&1; then
	READ="kafkacat -b 127.0.0.1:$KAFKA_PORT -C -t payments -f '%k %h %s\\n' -e"
else
	READ="$BIN/kafkatail -b 127.0.0.1:$KAFKA_PORT -t payments      (kcat not installed: apt-get install kafkacat)"
fi

"$BIN/gateway" run --config "$CONFIG" &
GATEWAY_PID=$!

cat <<EOM

Kafka (devkafka) on 127.0.0.1:$KAFKA_PORT, data in $DATA. The gateway (pid $GATEWAY_PID) runs $CONFIG
with MQTT on port $MQTT_PORT and its admin endpoint on 127.0.0.1:$ADMIN_PORT.

Publish as a terminal (another shell):
  mosquitto_pub -h 127.0.0.1 -p $MQTT_PORT -q 1 -i term-1 -t terminals/term-1/payments/p1 -m '{"amount":1200}'
Then fetch its receipt as that terminal (receipts go only to the client whose id is the device;
they wait in the gateway's outbox until it subscribes; payproc, pid $PAYPROC_PID, logs to $DATA/payproc.log):
  mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -q 1 -i term-1 -t terminals/term-1/receipts -v -C 1
Read what landed in Kafka:
  $READ
  $BIN/kafkatail -b 127.0.0.1:$KAFKA_PORT -t payments      (Go fallback, always available)
Gateway state:
  $BIN/gateway status --admin 127.0.0.1:$ADMIN_PORT
$( [ -n "$KAFKA_PID" ] && printf 'Take Kafka away (the gateway keeps buffering) and bring it back:\n  kill %s\n  %s/devkafka -addr 127.0.0.1:%s -data-dir %s\n' "$KAFKA_PID" "$BIN" "$KAFKA_PORT" "$DATA")

Ctrl-C stops the gateway, payproc and devkafka.

EOM

# Returns when the gateway exits, or at once on a signal (then the trap
# exits and cleanup stops everything).
set +e
wait "$GATEWAY_PID"
status=$?
set -e
GATEWAY_PID=
exit "$status"
