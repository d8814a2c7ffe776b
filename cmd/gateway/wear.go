package main

import (
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// storageWritten reports the bytes this process caused to be written to
// storage (Linux /proc/self/io write_bytes): all files, page-cache pages as
// they are dirtied. It is the flash-wear figure make bench measures, so an
// operator can watch it on a box; absent where /proc has no io file.
func storageWritten() prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "gateway_storage_written_bytes_total",
		Help: "Bytes the gateway process caused to be written to storage (/proc/self/io write_bytes): its flash wear.",
	}, func() float64 {
		n, _ := processWriteBytes()
		return float64(n)
	})
}

func processWriteBytes() (int64, bool) {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "write_bytes: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
