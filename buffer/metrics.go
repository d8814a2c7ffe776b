package buffer

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// counters of what the buffer wrote, for operators watching flash wear.
type counters struct {
	commits atomic.Uint64 // group commits that stored records
	records atomic.Uint64 // records stored by them
	purges  atomic.Uint64 // purge commits
	// checkpoints: journal generations written into the bbolt file
	checkpoints atomic.Uint64
	// repacked: small blocks merged away by repacks
	repacked atomic.Uint64
}

// Counters is a snapshot of the buffer's write activity since open.
type Counters struct {
	Commits     uint64 // group commits that stored records
	Records     uint64 // records they stored
	Purges      uint64 // purge commits (deleting delivered blocks)
	Repacked    uint64 // small blocks merged into larger ones (see repack.go)
	Checkpoints uint64 // journal generations written into the bbolt file (see journal.go)
	NodeWrites  uint64 // bbolt node writes (a node is one or more pages), meta pages included
}

// Counters returns what the buffer has written since it opened.
func (b *Buffer) Counters() Counters {
	b.dbMu.RLock()
	st := b.db.Stats()
	b.dbMu.RUnlock()
	return Counters{
		Commits: b.ctr.commits.Load(), Records: b.ctr.records.Load(), Purges: b.ctr.purges.Load(),
		Repacked: b.ctr.repacked.Load(), Checkpoints: b.ctr.checkpoints.Load(),
		NodeWrites: uint64(st.TxStats.GetWrite()) + b.pagesBefore.Load(),
	}
}

var (
	descCommits = prometheus.NewDesc("gateway_buffer_commits_total",
		"Group commits (one fdatasync'd journal entry each) that stored publishes.", nil, nil)
	descRecords = prometheus.NewDesc("gateway_buffer_committed_records_total",
		"Publishes stored by group commits; divided by commits: records per fsync.", nil, nil)
	descPurges = prometheus.NewDesc("gateway_buffer_purges_total",
		"Purge commits that deleted delivered blocks from the buffer file.", nil, nil)
	descRepacked = prometheus.NewDesc("gateway_buffer_repacked_blocks_total",
		"Small blocks of a waiting backlog merged into larger ones, so the backlog takes about its own size on disk.", nil, nil)
	descCheckpoints = prometheus.NewDesc("gateway_buffer_checkpoints_total",
		"Checkpoints: transactions that moved a generation of the journal's blocks into the buffer file.", nil, nil)
	descWritten = prometheus.NewDesc("gateway_buffer_node_writes_total",
		"Writes of B-tree nodes (one or more pages each) and meta pages to the buffer file, by checkpoints, purges and repacks (a group commit writes the journal only).", nil, nil)
)

// Collector reports the buffer's write counters to Prometheus.
func (b *Buffer) Collector() prometheus.Collector { return bufferCollector{b} }

type bufferCollector struct{ b *Buffer }

func (c bufferCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCommits
	ch <- descRecords
	ch <- descPurges
	ch <- descRepacked
	ch <- descCheckpoints
	ch <- descWritten
}

func (c bufferCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.b.Counters()
	ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(n.Commits))
	ch <- prometheus.MustNewConstMetric(descRecords, prometheus.CounterValue, float64(n.Records))
	ch <- prometheus.MustNewConstMetric(descPurges, prometheus.CounterValue, float64(n.Purges))
	ch <- prometheus.MustNewConstMetric(descRepacked, prometheus.CounterValue, float64(n.Repacked))
	ch <- prometheus.MustNewConstMetric(descCheckpoints, prometheus.CounterValue, float64(n.Checkpoints))
	ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(n.NodeWrites))
}
