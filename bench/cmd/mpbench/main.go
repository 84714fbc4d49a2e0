// Command mpbench is mpshim's performance harness. In one run it builds a
// test topology whose uplink is a plain veth pair (test/topo's Direct: no
// link emulator) and measures, alternating the sides so that drift hits
// all of them alike, with every side's servers pinned to one CPU and the
// load generators to the other:
//
//   - native: the servers on the kernel stack, in a namespace of their own
//     behind a macvlan of the gw end of the same uplink the INS use;
//   - mpshim: the same servers under libmpshim.so in the app namespace,
//     served by one INS;
//   - peers (--peers): runsc, the same servers inside gVisor's runsc with
//     --network=sandbox behind a macvlan of their own; netstack, a Go
//     net/http server and an iperf3-compatible Go server listening through
//     mpnet on the INS.
//
// Figures: nginx 1 KiB keep-alive (wrk -t1 -c1 and -c64: req/s, p50, p99),
// new connection per request (ab), iperf3 one stream both ways,
// redis-benchmark GET/SET at -P1 and -P16, memcached under memaslap, a UDP
// echo round trip, CPU per unit of work on the server side, N idle
// connections through 1 and 20 INS (memory per connection), and the
// control-call ring against its baseline. It writes bench/results/DATE.md,
// a PNG plot with a panel per kind of figure, and (full runs) the latest
// table into BENCHMARKS.md.
//
//	mpbench [--quick] [--rounds 3] [--peers runsc,netstack] [--profile] [--out bench/results]
//
// The same binary runs the helpers it starts in the namespaces:
//
//	mpbench netstack --http ADDR --iperf ADDR --root DIR   (in app, via mpnet)
//	mpbench hold -n N --src A,B --dst H:P,H:P              (in wan)
//	mpbench udpping --addr H:P --duration D                 (in wan)
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/mpshim/mpshim/bench/internal/report"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "netstack":
			exit(netstackMain(os.Args[2:]))
		case "hold":
			exit(holdMain(os.Args[2:]))
		case "udpping":
			exit(udppingMain(os.Args[2:]))
		}
	}
	var o options
	flag.BoolVar(&o.quick, "quick", false, "smoke run: one round, short runs, small N, 1 INS only (under a minute)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds per figure (each round runs every side once, in rotated order)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each wrk and iperf3 run")
	flag.IntVar(&o.abN, "ab-n", 10000, "requests (connections) per ab run at most (each run also ends after --duration)")
	flag.IntVar(&o.scaleN, "scale-n", 100000, "idle connections in the scale runs")
	flag.BoolVar(&o.profile, "profile", false, "profile the mpshim side under wrk load (pprof of INS and isolator, perf of nginx)")
	flag.StringVar(&o.out, "out", "bench/results", "directory for DATE.md, DATE.png and profiles")
	flag.StringVar(&o.doc, "doc", "BENCHMARKS.md", "file whose latest-run section a full run updates (empty: none)")
	flag.StringVar(&o.bin, "bin", "bin", "directory of the built isolator and libmpshim.so")
	flag.StringVar(&o.only, "only", "", "comma-separated phases to run (http,ab,bulk,small,scale,scale20,ring); default all")
	flag.StringVar(&o.peers, "peers", "", "comma-separated peers measured besides native and mpshim: runsc (gVisor, --network=sandbox), netstack (a Go server through mpnet)")
	flag.BoolVar(&o.countCalls, "count-calls", false, "count the INS's system calls and context switches per request in the wrk runs (perf stat on tracepoints; the VM has no instruction counter)")
	flag.StringVar(&o.runsc, "runsc", "bin/runsc", "runsc binary for --peers runsc (make bench builds it from the pinned gVisor module)")
	defServer, defClient := "1", "0"
	if runtime.NumCPU() < 2 {
		defServer, defClient = "", ""
	}
	flag.StringVar(&o.serverCPU, "server-cpu", defServer, "CPU list (taskset -c) of every side's servers, INS and runsc sandbox included; empty: no pinning")
	flag.StringVar(&o.clientCPU, "client-cpu", defClient, "CPU list (taskset -c) of the load generators; empty: no pinning")
	flag.Parse()
	for _, p := range splitList(o.peers) {
		if p != report.Runsc && p != report.Netstack {
			exit(fmt.Errorf("--peers: unknown peer %q (want runsc, netstack)", p))
		}
	}
	if o.quick {
		o.rounds = 1
		o.duration = time.Second
		o.abN = 2000
		o.scaleN = 2000
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	exit(run(ctx, o))
}

func exit(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "mpbench:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// options are the flags of a run.
type options struct {
	quick, profile       bool
	countCalls           bool
	rounds, abN, scaleN  int
	duration             time.Duration
	out, doc, bin, only  string
	peers, runsc         string
	serverCPU, clientCPU string
}

// peer reports whether side is one of the peers asked for.
func (o options) peer(side string) bool {
	for _, p := range splitList(o.peers) {
		if p == side {
			return true
		}
	}
	return false
}
