// Package fleet is the central side's view and control of every box, over
// the Kafka link each box already has (CONTRACT §7):
//
//   - Status up. An Agent on the box produces a small JSON status record,
//     keyed by the box's id, every fleet.status_interval while the link is
//     up and at once when it returns. The record is built from the same
//     snapshot GET /status serves (admin.BuildStatus), is kept in memory
//     only (the newest one; nothing is written to flash), and goes out on a
//     producer of its own, after the most urgent route's backlog.
//   - Config down. The Agent reads the records keyed by its id and by "*"
//     from fleet.config_topic (only the partitions those two keys hash to),
//     verifies each overlay's ed25519 signature against fleet.config_keys,
//     its version (newer than the one applied) and its sections (the
//     hot-reloadable ones and receipts), and hands the accepted overlays to
//     the gateway's own reload path, which validates the local file with
//     them exactly as it validates a changed file. Accepted overlays are
//     kept in data_dir (Store) and applied over the file at every start.
//   - The central commands: Push (sign and produce an overlay), ReadStatus
//     (the newest record of every box, for `gateway fleet ls`) and Exporter
//     (one Prometheus scrape target for the whole fleet).
//
// The cluster side needs nothing but Kafka: no service, no schema registry.
package fleet
