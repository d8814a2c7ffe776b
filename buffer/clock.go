package buffer

// The buffer clock measures how long a message has waited, for max_age.
//
// Boxes without a battery-backed clock boot in 1970 or 2000 until NTP
// corrects them by decades, and a ship's clock may be set while at sea: a
// wall clock makes a forward jump expire messages that waited seconds, and a
// backward one keep them for years. So ages are not wall-clock differences.
// The buffer clock is a count of milliseconds that advances with the
// process's monotonic clock while the gateway runs, and goes on from where it
// stopped at the next start (it is stored in every block and with every
// purge). Each block records the buffer clock of its commit; a message is
// past max_age when the buffer clock has advanced max_age since then.
//
// What follows, written in the docs: time while the box is powered off does
// not count towards max_age; a clock jump of any size changes no age and no
// drain order (which follows gw.seq). The wall clock is used only for the
// Kafka record timestamp and the "oldest" shown in /status.

// clockMillis is the buffer clock now.
func (b *Buffer) clockMillis() uint64 {
	return b.clockBase.Load() + uint64(b.opts.Elapsed().Milliseconds())
}

// raiseClockBase makes the clock go on from at least ms (read at open).
func (b *Buffer) raiseClockBase(ms uint64) {
	for {
		old := b.clockBase.Load()
		if ms <= old || b.clockBase.CompareAndSwap(old, ms) {
			return
		}
	}
}
