// Package failpoint names points in the gateway where a fault test can make
// the process die on the spot (SIGKILL to itself), so a crash lands exactly
// inside a commit, a delete or a file swap.
//
// In the product binary Hit is an empty function: the points exist only in a
// binary built with `-tags failpoints`. There, the environment variable
// GATEWAY_FAILPOINT=name[@n][,name[@n]...] arms points: the process kills
// itself at the n-th hit of name (default the first).
package failpoint

// Names of the points placed in the code, for tests to refer to.
const (
	// BufferCommitBeforeSync: inside the buffer's group commit, the batch's
	// records are in the transaction, which has not been written or synced.
	BufferCommitBeforeSync = "buffer.commit.before_sync"
	// BufferLazyDelete: inside the deletion of records Kafka acknowledged.
	BufferLazyDelete = "buffer.lazydelete"
	// BufferCompactSwap: compaction wrote and synced the new file and closed
	// the old one; the rename has not happened.
	BufferCompactSwap = "buffer.compact.swap"
	// BufferRepack: inside the commit that merges small blocks into one,
	// before it is written or synced.
	BufferRepack = "buffer.repack"
	// BufferCheckpoint: inside the commit that writes a journal generation's
	// blocks into the bbolt file, before its fsync.
	BufferCheckpoint = "buffer.checkpoint"
	// ReceiptsOutboxWrite: inside the receipts outbox transaction that stores
	// consumed receipts, before it commits.
	ReceiptsOutboxWrite = "receipts.outbox.write"
)
