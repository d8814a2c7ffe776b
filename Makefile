# Developer entry points. Only Go (from PATH) is required; `deps` adds the
# Debian MQTT clients the tests use when it can.

GO      ?= go
BIN     := bin
DIST    := dist
# The release: `git describe` of the last v* tag (v0.3.0 -> 0.3.0; commits
# after it -> 0.3.0-5-gabc1234), else the VERSION file.
VERSION ?= $(shell (git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null || echo v$$(cat VERSION)) | sed 's/^v//')
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# main.version and main.commit are read by `gateway version`.
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# The package `make cross` builds; `make cross CROSS_PKG=./cmd/loadgen` checks
# the toolchain with another program.
CROSS_PKG ?= ./cmd/gateway
CROSS_NAME ?= $(notdir $(CROSS_PKG))

.PHONY: all build run test test-arm deps bench bench-wear bench-receipts bench-resources cross fmt vet clean deb deb-lint faults soak fleet-scale bench-fleet

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/gateway ./cmd/gateway
	$(GO) build -o $(BIN)/devkafka ./cmd/devkafka
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen
	$(GO) build -o $(BIN)/benchbroker ./cmd/benchbroker
	$(GO) build -o $(BIN)/kafkatail ./cmd/kafkatail
	$(GO) build -o $(BIN)/payproc ./cmd/payproc

# Local Kafka-protocol cluster (kfake, data in ./.devkafka) on 127.0.0.1:9092
# plus the gateway with config.example.yaml; Ctrl-C stops both.
run: build
	@scripts/run-dev.sh

test: deps
	$(GO) vet ./...
	@# kfake is a dev/test cluster: it must never link into the product.
	@if $(GO) list -deps ./cmd/gateway 2>/dev/null | grep -q 'franz-go/pkg/kfake'; then \
		echo "test: kfake is linked into ./cmd/gateway"; exit 1; fi
	$(GO) test -race -timeout 15m ./...

# mosquitto_pub/mosquitto_sub serve as outside MQTT clients in tests. Installs
# them when missing and running as root with apt-get; otherwise only warns
# (the tests that need them skip).
deps:
	@if command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "deps: installing mosquitto-clients with apt-get"; \
		export DEBIAN_FRONTEND=noninteractive; \
		timeout 300 apt-get install -y -q mosquitto-clients >/dev/null 2>&1 || \
		{ timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 300 apt-get install -y -q mosquitto-clients >/dev/null 2>&1; } || \
		echo "deps: WARNING: apt-get could not install mosquitto-clients; tests that need mosquitto_pub/mosquitto_sub will skip"; \
	else \
		echo "deps: WARNING: mosquitto_pub/mosquitto_sub missing (apt-get install mosquitto-clients); tests that need them will skip"; \
	fi

# The fault suite (faults/): the real gateway on a lossy FUSE filesystem
# (internal/lossyfs), 100 power cuts at random moments, cuts timed inside
# commits, disk full, fsync EIO, slow and read-only storage; prints one table
# line per fault. Needs root and /dev/fuse (skips otherwise); within 15
# minutes on 2 cores. FAULTS_LOGS=dir keeps each scenario's gateway log.
# `make test` runs the short version.
faults:
	FAULTS=full $(GO) test -count=1 -v -timeout 15m -run 'Test(PowerCut|TimedCuts|RepackCut|CompactionCut|DiskFull|FsyncEIO|FsyncEIOReceipts|ReadOnly|SlowStorage|Upgrade)$$' ./faults/

# Not in CI: 500 terminals at 500 msg/s, receipts, Kafka refusing or hanging a
# minute every five, a power cut every ten, sampled every minute
# (SOAK=30m by default; e.g. make soak SOAK=2h).
SOAK ?= 30m
soak:
	SOAK=$(SOAK) $(GO) test -count=1 -v -timeout 0 -run '^TestSoak$$' ./faults/

# The fleet with FLEET_BOXES real gateway processes against one Kafka-protocol
# cluster (e2e/fleet_test.go: fleet ls and the exporter, a push to * applied by
# all, forged overlays refused, the outage after the link returns); prints the
# FIGURE lines. `make test` runs it with 3 boxes.
FLEET_BOXES ?= 200
FLEET_INTERVAL ?= 10s
fleet-scale:
	@# every gateway watches its config file: one inotify instance each (Linux's default limit is 128)
	@need=$$(( $(FLEET_BOXES) + 128 )); have=$$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo $$need); \
	if [ "$$have" -lt "$$need" ]; then sysctl -w fs.inotify.max_user_instances=$$need || \
		{ echo "fleet-scale: raise fs.inotify.max_user_instances to $$need"; exit 1; }; fi
	FLEET_BOXES=$(FLEET_BOXES) FLEET_INTERVAL=$(FLEET_INTERVAL) $(GO) test -count=1 -v -timeout 40m -run '^TestFleet$$' ./e2e/
	FLEET_START_BOXES=10000 $(GO) test -count=1 -v -run '^TestStartReadsOnlyTheBoxsPartitions$$' ./fleet/

# What the fleet costs a box: link bytes a day, flash with and without status.
bench-fleet:
	GO=$(GO) bench/fleet.sh

# Figures of the issue: gateway vs mochi without hook vs mosquitto (bench/run.sh).
bench:
	GO=$(GO) bench/run.sh
	GO=$(GO) bench/wear.sh
	GO=$(GO) bench/receipts.sh

# Flash wear only: bytes written per delivered message at 10/100/1,000
# msg/s, per persistent-session reconnect, and the buffer.commit_wait sweep.
bench-wear:
	GO=$(GO) bench/wear.sh

# Figures of issue 3 only: receipts/s to 1,000 online terminals, payment->
# receipt round trip through cmd/payproc at 200/s, 100,000 receipts to 10,000
# devices reconnecting at once (bench/receipts.sh).
bench-receipts:
	GO=$(GO) bench/receipts.sh

# Figures of issue 9 only: resident memory of a real gateway process idle,
# with 300 silent connections, 200 unfinished 256 KiB CONNECTs, 3,000 offline
# MQTT 5 sessions and 1,000 idle clients (cmd/resbench; also the last section
# of bench/run.sh).
bench-resources:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/gateway ./cmd/gateway
	$(GO) build -o $(BIN)/resbench ./cmd/resbench
	$(BIN)/resbench -gateway $(BIN)/gateway

# Static ARM binaries for the edge boxes (see deploy/arm/README.md).
cross:
	@mkdir -p $(DIST)
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $(DIST)/$(CROSS_NAME)-linux-arm64 $(CROSS_PKG)
	CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $(DIST)/$(CROSS_NAME)-linux-armv7 $(CROSS_PKG)
	@ls -l $(DIST)/$(CROSS_NAME)-linux-arm64 $(DIST)/$(CROSS_NAME)-linux-armv7

# Debian packages for the boxes and for amd64: dist/gateway_VERSION_ARCH.deb
# (binary, hardened systemd unit, /etc/gateway/config.yaml as a conffile,
# user and state directory made by postinst; see docs/operations.md). The
# packager is scripts/mkdeb (nfpm as a library, its own go.mod): only Go is
# needed. Debian arch -> Go: amd64 -> amd64, arm64 -> arm64, armhf -> arm GOARM=7.
DEB_ARCHS := amd64:amd64: arm64:arm64: armhf:arm:7
deb:
	@mkdir -p $(DIST)
	@set -e; for a in $(DEB_ARCHS); do \
		deb=$${a%%:*}; rest=$${a#*:}; goarch=$${rest%%:*}; goarm=$${rest#*:}; \
		echo "deb: $$deb"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$goarch GOARM=$$goarm $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' \
			-o $(DIST)/gateway-linux-$$deb ./cmd/gateway; \
		(cd scripts/mkdeb && $(GO) run . -root $(CURDIR) -bin $(CURDIR)/$(DIST)/gateway-linux-$$deb \
			-arch $$deb -version '$(VERSION)' -out $(CURDIR)/$(DIST)); \
	done

# lintian on the packages (apt-get install lintian); errors fail, warnings print.
deb-lint: deb
	lintian --fail-on error --tag-display-limit 0 $(DIST)/gateway_*.deb

# The test suite compiled for arm64 and armv7, run under qemu user emulation
# (apt-get install qemu-user-static). No -race: it needs cgo on ARM.
test-arm:
	@command -v qemu-aarch64-static >/dev/null 2>&1 && command -v qemu-arm-static >/dev/null 2>&1 || \
		{ echo "test-arm: needs qemu-user-static (apt-get install -y qemu-user-static)"; exit 1; }
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) test -exec qemu-aarch64-static -timeout 30m ./...
	CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) test -exec qemu-arm-static -timeout 30m ./...

fmt:
	gofmt -l -w .

vet:
	$(GO) vet ./...

# Keeps ./.devkafka (the local cluster's data); remove it by hand to start over.
clean:
	rm -rf $(BIN) $(DIST)
