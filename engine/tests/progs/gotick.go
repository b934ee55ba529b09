// A Go program as a user would run one: eight goroutines spinning with no
// syscall (the runtime preempts them with SIGURG), a garbage-collected
// heap that changes every tick, a timer. Each tick it checks that a table
// it built at start is intact and, every 20 ticks, that every goroutine
// made progress, then appends `tick N ok` (or `FAIL ...`) to
// ./progress.log.
package main

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	f, err := os.OpenFile("progress.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		os.Exit(2)
	}
	table := make([]uint64, 1<<20)
	for i := range table {
		table[i] = uint64(i) * 2654435761
	}
	var counts [8]atomic.Uint64
	for g := 0; g < 8; g++ {
		go func(g int) {
			x := uint64(g)
			for {
				for i := 0; i < 200000; i++ {
					x = x*6364136223846793005 + 1442695040888963407
				}
				counts[g].Add(1 + x%2)
			}
		}(g)
	}
	heap := map[int][]byte{}
	var last [8]uint64
	for n := 1; ; n++ {
		heap[n%512] = make([]byte, 8192+n%4096)
		time.Sleep(100 * time.Millisecond)
		msg := "ok"
		for i := 0; i < len(table); i += 4099 {
			if table[i] != uint64(i)*2654435761 {
				msg = fmt.Sprintf("FAIL table[%d] = %d", i, table[i])
				break
			}
		}
		// every goroutine progressed over the last 20 ticks (not per
		// tick: the first tick after a restore may come before any ran)
		for g := range counts {
			if n%20 != 0 {
				break
			}
			c := counts[g].Load()
			if n > 20 && c == last[g] && msg == "ok" {
				msg = fmt.Sprintf("FAIL goroutine %d made no progress", g)
			}
			last[g] = c
		}
		if msg == "ok" {
			fmt.Fprintf(f, "tick %d ok\n", n)
		} else {
			fmt.Fprintf(f, "%s (tick %d)\n", msg, n)
		}
	}
}
