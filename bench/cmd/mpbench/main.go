// Command mpbench is mpshim's performance harness. In one run it builds the
// test topology and measures, alternating the sides so that drift hits all
// of them alike:
//
//   - native: nginx and iperf3 on the kernel stack, in a namespace of their
//     own behind a macvlan of the gw end of the same uplink the INS use;
//   - netstack: a Go net/http server and an iperf3-compatible Go server
//     listening through mpnet on one INS (the ceiling of any path through
//     an INS's socketpairs);
//   - mpshim: the same nginx and iperf3 under libmpshim.so in the app
//     namespace, served by the INS.
//
// Figures: nginx 1 KiB keep-alive (wrk -t1 -c64 and -c256: req/s, p50,
// p99), new connection per request (ab: connections/s), bulk download
// (iperf3 -R, 1 and 4 streams), N idle connections through 1 and 20 INS
// (memory per connection, time to establish), and the control-call ring
// against its baseline. It writes bench/results/DATE.md, a PNG plot, and
// (full runs) the latest table into BENCHMARKS.md.
//
//	mpbench [--quick] [--rounds 3] [--profile] [--out bench/results]
//
// The same binary runs the helpers it starts in the namespaces:
//
//	mpbench netstack --http ADDR --iperf ADDR --root DIR   (in app, via mpnet)
//	mpbench hold -n N --src A,B --dst H:P,H:P              (in wan)
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "netstack":
			exit(netstackMain(os.Args[2:]))
		case "hold":
			exit(holdMain(os.Args[2:]))
		}
	}
	var o options
	flag.BoolVar(&o.quick, "quick", false, "smoke run: one round, short runs, small N, 1 INS only (under a minute)")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds per figure (each round runs every side once, in rotated order)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each wrk and iperf3 run")
	flag.IntVar(&o.abN, "ab-n", 10000, "requests (connections) per ab run")
	flag.IntVar(&o.scaleN, "scale-n", 100000, "idle connections in the scale runs")
	flag.BoolVar(&o.profile, "profile", false, "profile the mpshim side under wrk load (pprof of INS and isolator, perf of nginx)")
	flag.StringVar(&o.out, "out", "bench/results", "directory for DATE.md, DATE.png and profiles")
	flag.StringVar(&o.doc, "doc", "BENCHMARKS.md", "file whose latest-run section a full run updates (empty: none)")
	flag.StringVar(&o.bin, "bin", "bin", "directory of the built isolator and libmpshim.so")
	flag.StringVar(&o.only, "only", "", "comma-separated phases to run (http,ab,bulk,scale,scale20,ring); default all")
	flag.Parse()
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
	quick, profile      bool
	rounds, abN, scaleN int
	duration            time.Duration
	out, doc, bin, only string
}
