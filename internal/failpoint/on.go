//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Enabled reports whether this binary was built with failpoints.
const Enabled = true

var (
	once  sync.Once
	mu    sync.Mutex
	armed map[string]int // name -> hits left before the kill
)

func load() {
	armed = map[string]int{}
	for _, item := range strings.Split(os.Getenv("GATEWAY_FAILPOINT"), ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, n := item, 1
		if i := strings.IndexByte(item, '@'); i >= 0 {
			name = item[:i]
			if v, err := strconv.Atoi(item[i+1:]); err == nil && v > 0 {
				n = v
			}
		}
		armed[name] = n
	}
}

// Hit kills the process with SIGKILL when name is armed and this is the hit
// it waits for. It says so on stderr first, so a test can tell the failpoint
// from another death.
func Hit(name string) {
	once.Do(load)
	mu.Lock()
	n, ok := armed[name]
	if ok {
		n--
		armed[name] = n
	}
	mu.Unlock()
	if !ok || n != 0 {
		return
	}
	fmt.Fprintf(os.Stderr, "failpoint %s: SIGKILL\n", name)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
