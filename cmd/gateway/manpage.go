package main

import (
	"strings"
)

// manPage is the gateway(1) manual page the Debian package installs
// (deploy/debian/gateway.1): `gateway help` in troff, with the files it
// reads. TestManPageIsCurrent keeps the committed file equal to it.
func manPage() string {
	var b strings.Builder
	b.WriteString(`.\" gateway(1). Generated from ` + "`gateway help`" + ` (cmd/gateway/manpage.go): do not edit;
.\" UPDATE_MAN=1 go test -run TestManPageIsCurrent ./cmd/gateway writes it again.
.TH GATEWAY 1 "" "gateway" "Edge gateway"
.SH NAME
gateway \- MQTT to Kafka store-and-forward gateway for edge boxes
.SH SYNOPSIS
.nf
`)
	b.WriteString(troff(strings.TrimPrefix(usage, "usage:\n")))
	b.WriteString(`.fi
.SH DESCRIPTION
Terminals publish over MQTT (3.1.1 and 5, QoS 1) to the broker embedded in
the gateway. Every message is written to a disk buffer and synced before it
is acknowledged, and drained to a Kafka cluster whenever the link allows;
receipts from Kafka are delivered back to each terminal.
.PP
The service runs
.B gateway run
under systemd (gateway.service). The other commands are for the operator on
the box: they act on the gateway the service runs, with the same config file
and the same environment.
.SH FILES
.TP
.I /etc/gateway/config.yaml
The configuration.
.TP
.I /etc/default/gateway
The service's environment (GATEWAY_DATA_DIR, secrets such as
GATEWAY_KAFKA_SASL_PASSWORD); the commands read it with the installed config.
.TP
.I /var/lib/gateway
All state: buffer.db and its journal, sessions.db, receipts.db.
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1).
The operations guide, configuration and admin references in
.IR /usr/share/doc/gateway/docs/ .
`)
	return b.String()
}

// troff escapes text for a no-fill block: backslashes, hyphens (a minus in
// an option), and lines a formatter would take for requests.
func troff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}
