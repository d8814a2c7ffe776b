# bench/lib.sh: helpers shared by the bench scripts. The caller sets TMP (a
# scratch dir), PIDS (an array of processes to stop at exit) and BENCH_NAME
# (the prefix of error messages) before sourcing it.

cleanup() {
	local rc=$?
	set +e
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	# Give them a moment to flush, then make sure.
	for _ in $(seq 50); do
		local alive=0
		for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ "$alive" = 0 ] && break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${BENCH_NAME:-bench}" "$*" >&2; exit 1; }

# port_open PORT: something accepts TCP on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a port nothing listens on now (probe random ports).
# free_port sets FREE_PORT (not echoed: a subshell would lose USED_PORTS).
# Ports are picked below Linux's ephemeral range (32768-60999), where the
# thousands of client connections of a run take theirs, and never twice.
USED_PORTS=" "
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 12000))
		[[ "$USED_PORTS" == *" $p "* ]] && continue
		if ! port_open "$p"; then
			USED_PORTS+="$p "
			FREE_PORT=$p
			return
		fi
	done
	die "no free port found"
}

# wait_port PORT PID NAME: until the port answers, the process dies or 30 s pass.
wait_port() {
	local deadline=$((SECONDS + 30))
	while ! port_open "$1"; do
		kill -0 "$2" 2>/dev/null || { cat "$TMP/$3.log" >&2 || true; die "$3 exited before listening on $1"; }
		[ "$SECONDS" -lt "$deadline" ] || die "$3 not listening on $1 after 30 s"
		sleep 0.1
	done
}

# stop PID: TERM, wait up to 10 s, then KILL.
stop() {
	kill -TERM "$1" 2>/dev/null || return 0
	for _ in $(seq 100); do
		kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# jget KEY JSONLINE: a number field of loadgen's -json line.
jget() { grep -o "\"$1\":[-0-9.e+]*" <<<"$2" | head -1 | cut -d: -f2; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# start_devkafka: the local Kafka-protocol cluster on a free port; sets
# KAFKA_PORT and KAFKA_PID.
start_devkafka() {
	free_port; KAFKA_PORT=$FREE_PORT
	bin/devkafka -addr "127.0.0.1:$KAFKA_PORT" -data-dir "$TMP/kafka" \
		-topics telemetry,receipts.bench,receipts.delivered >"$TMP/devkafka.log" 2>&1 &
	KAFKA_PID=$!
	PIDS+=("$KAFKA_PID")
	wait_port "$KAFKA_PORT" "$KAFKA_PID" devkafka
}

# NATS: nats-server, the durable MQTT peer (bench only, never a dependency of
# the gateway), installed into bin/tools with `go install` unless
# BENCH_INSTALL=0.
NATS=bin/tools/nats-server
ensure_nats() {
	if [ ! -x "$NATS" ] && [ "${BENCH_INSTALL:-1}" = 1 ]; then
		log "installing nats-server v2.15.2 into bin/tools (bench only)"
		GOBIN="$(pwd)/bin/tools" timeout 600 "${GO:-go}" install github.com/nats-io/nats-server/v2@v2.15.2 \
			>"$TMP/nats-install.log" 2>&1 || true
	fi
	[ -x "$NATS" ]
}

# start_nats NAME: nats-server with MQTT on JetStream, sync_interval: always
# (its durable setting), on free ports; sets NATS_PORT (MQTT) and NATS_PID.
start_nats() {
	local client
	free_port; NATS_PORT=$FREE_PORT
	free_port; client=$FREE_PORT
	cat >"$TMP/$1.conf" <<-EOF
		server_name: $1
		listen: 127.0.0.1:$client
		jetstream {
		  store_dir: "$TMP/$1"
		  sync_interval: always
		}
		mqtt {
		  listen: 127.0.0.1:$NATS_PORT
		}
	EOF
	"$NATS" -c "$TMP/$1.conf" >"$TMP/$1.log" 2>&1 &
	NATS_PID=$!
	PIDS+=("$NATS_PID")
	wait_port "$NATS_PORT" "$NATS_PID" "$1"
}
