#!/usr/bin/env bash
# deploy/arm/install.sh: install or upgrade the gateway on the box itself.
# Run as root:  ./install.sh BINARY [CONFIG]
#   BINARY  dist/gateway-linux-arm64 or dist/gateway-linux-armv7 (copied over)
#   CONFIG  a config.yaml; only installed when /etc/gateway/config.yaml is absent
# Upgrades keep /etc/gateway and /var/lib/gateway (the buffer) as they are.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
[ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: $0 BINARY [CONFIG]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
bin=$1
cfg=${2:-}

# Refuse a binary for the wrong CPU before touching anything.
"$bin" version >/dev/null || { echo "install.sh: $bin does not run on $(uname -m)" >&2; exit 1; }

getent group gateway >/dev/null || groupadd --system gateway
getent passwd gateway >/dev/null ||
	useradd --system --gid gateway --home-dir /var/lib/gateway --no-create-home \
		--shell /usr/sbin/nologin --comment "edge gateway" gateway

install -d -m 0750 -o root -g gateway /etc/gateway
if [ ! -e /etc/gateway/config.yaml ]; then
	[ -n "$cfg" ] || { echo "install.sh: no /etc/gateway/config.yaml yet: pass a CONFIG" >&2; exit 2; }
	install -m 0640 -o root -g gateway "$cfg" /etc/gateway/config.yaml
fi
# The service's environment (the unit's EnvironmentFile=; the gateway's
# commands read it too). Kept when present.
if [ ! -e /etc/default/gateway ]; then
	install -d /etc/default
	printf '%s\n' '# Environment of the gateway service (EnvironmentFile= of gateway.service).' \
		'# gateway status, buffer, deadletter and check read it with /etc/gateway/config.yaml.' \
		'GATEWAY_DATA_DIR=/var/lib/gateway' >/etc/default/gateway.new
	chown root:gateway /etc/default/gateway.new
	chmod 0640 /etc/default/gateway.new
	mv /etc/default/gateway.new /etc/default/gateway
fi
install -d -m 0750 -o gateway -g gateway /var/lib/gateway
"$bin" check --config /etc/gateway/config.yaml

install -m 0755 "$bin" /usr/local/bin/gateway.new
mv -f /usr/local/bin/gateway.new /usr/local/bin/gateway
install -m 0644 "$here/gateway.service" /etc/systemd/system/gateway.service
install -d /usr/local/share/doc/gateway
install -m 0644 "$here/README.md" /usr/local/share/doc/gateway/README.md

systemctl daemon-reload
systemctl enable gateway.service
systemctl restart gateway.service
systemctl --no-pager --lines=5 status gateway.service || true
