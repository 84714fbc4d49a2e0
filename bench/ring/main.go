// Command ring benchmarks the shared-memory request ring against an
// AF_UNIX SOCK_SEQPACKET request/response baseline (see package
// bench/internal/ringbench). It prints p50/p99 round-trip latency and
// requests/s for 1 and 8 client threads, and the ring/baseline ratios.
//
//	go run ./bench/ring [-quick] [-n requests-per-thread] [-size 64]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/mpshim/mpshim/bench/internal/ringbench"
)

func main() {
	quick := flag.Bool("quick", false, "short run")
	n := flag.Int("n", 200_000, "requests per client thread and mode")
	size := flag.Int("size", 64, "request size in bytes (8..256)")
	flag.Parse()
	if *quick {
		*n = 20_000
	}
	rep, err := ringbench.Run(*n, *size)
	if err != nil {
		slog.Error("bench/ring failed", "err", err)
		os.Exit(1)
	}
	fmt.Printf("%d-byte request/response round trips, %d per thread, GOMAXPROCS=%d, %d CPUs\n",
		*size, *n, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Printf("%-10s %7s %12s %10s %10s\n", "transport", "threads", "req/s", "p50", "p99")
	for _, t := range ringbench.Threads {
		for _, m := range []string{"ring", "seqpacket"} {
			r := rep.Results[ringbench.Key(m, t)]
			fmt.Printf("%-10s %7d %12.0f %10v %10v\n", r.Mode, r.Threads, r.Rate(), r.P50, r.P99)
		}
	}
	fmt.Printf("ring futex wakes per request: consumer %.4f, callers %.4f\n", rep.ConsumerWakes, rep.CallerWakes)
	for _, t := range ringbench.Threads {
		rg, sp := rep.Results[ringbench.Key("ring", t)], rep.Results[ringbench.Key("seqpacket", t)]
		fmt.Printf("%d thread(s): ring/seqpacket rate %.2fx, p50 %.2fx lower, p99 %.2fx lower\n",
			t, rg.Rate()/sp.Rate(), float64(sp.P50)/float64(rg.P50), float64(sp.P99)/float64(rg.P99))
	}
}
