// Package faults is the fault suite of the gateway: the real gateway binary
// on a lossy FUSE filesystem (internal/lossyfs), a Kafka-protocol cluster
// (kfake), real MQTT clients. Each scenario (power cuts at random and timed
// moments, disk full, fsync failing, slow storage, read-only storage) prints
// one line of a table: runs, messages acknowledged, lost, duplicated, time
// to recover.
//
// `go test ./faults/` runs the short version (a few cuts of each kind);
// `make faults` (FAULTS=full) the long one; `make soak` the soak test. The
// tests skip when FUSE cannot be mounted (not root, no /dev/fuse). All code
// is in _test.go files: it uses kfake, which must not link into anything
// else.
package faults
