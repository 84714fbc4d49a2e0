package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/mpshim/mpshim/bench/internal/parse"
	"github.com/mpshim/mpshim/bench/internal/report"
	"github.com/mpshim/mpshim/bench/internal/udpping"
)

// smallSides are the sides that run the small-message servers.
func (e *env) smallSides() []string {
	var out []string
	for _, s := range e.sides {
		if e.targets()[s].redisPort != 0 {
			out = append(out, s)
		}
	}
	return out
}

// redisPipelines are the redis-benchmark -P depths measured.
var redisPipelines = []int{1, 16}

// redisRequests returns how many requests each test of one
// redis-benchmark run of a side makes at pipeline depth p: what the side
// served in a short calibration run, scaled to the run length, so that
// every side's run lasts about as long whatever its rate and the load on
// the machine.
func (e *env) redisRequests(ctx context.Context, side string, p int) (int, error) {
	n := 1000 * p
	res, err := e.redisBench(ctx, e.targets()[side], n, p)
	if err != nil {
		return 0, fmt.Errorf("%s: calibration: %w", side, err)
	}
	rate := min(res["GET"].RPS, res["SET"].RPS)
	return max(n, int(rate*e.o.duration.Seconds())), nil
}

// redisBench runs redis-benchmark GET and SET with 64 connections.
func (e *env) redisBench(ctx context.Context, t target, n, p int) (map[string]parse.Redis, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	args := []string{"-h", t.addr.String(), "-p", strconv.Itoa(t.redisPort), "-t", "get,set", "-n", strconv.Itoa(n),
		"-c", "64", "-P", strconv.Itoa(p), "--csv"}
	name, args := e.client("redis-benchmark", args...)
	out, err := e.tp.WAN.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("redis-benchmark %v: %w: %s", args, err, tail(string(out), 1000))
	}
	return parse.ParseRedisBenchmark(string(out), "GET", "SET")
}

// memaslap runs memaslap (Debian's memcaslap) with one thread and 64
// concurrent connections for d: 90% get, 10% set.
func (e *env) memaslap(ctx context.Context, t target, d time.Duration) (parse.Memaslap, error) {
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-s", t.hostPort(t.memcachedPort), "-T", "1", "-c", "64", "-t", strconv.Itoa(secs) + "s"}
	name, args := e.client("memcaslap", args...)
	out, err := e.tp.WAN.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return parse.Memaslap{}, fmt.Errorf("memaslap %v: %w: %s", args, err, tail(string(out), 1000))
	}
	return parse.ParseMemaslap(string(out))
}

// udpPing measures UDP echo round trips from wan for d.
func (e *env) udpPing(ctx context.Context, t target, d time.Duration) (udpping.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	name, args := e.client(e.self, "udpping", "--addr", t.hostPort(t.udpEchoPort), "--duration", d.String())
	out, err := e.tp.WAN.Command(ctx, name, args...).Output()
	var r udpping.Result
	if err != nil {
		return r, fmt.Errorf("udpping %s: %w: %s", t.hostPort(t.udpEchoPort), err, tail(string(out), 1000))
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("udpping output %q: %w", tail(string(out), 200), err)
	}
	return r, nil
}

// udppingMain runs udpping and prints its udpping.Result as JSON.
func udppingMain(args []string) error {
	fs := flag.NewFlagSet("udpping", flag.ContinueOnError)
	addr := fs.String("addr", "", "UDP echo server HOST:PORT")
	d := fs.Duration("duration", 10*time.Second, "length of the run")
	size := fs.Int("size", 64, "datagram size in bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	r, err := udpping.Run(context.Background(), *addr, *size, *d, time.Second)
	if err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

// warmUpSmall runs each small-message client briefly against every side.
func (e *env) warmUpSmall(ctx context.Context) error {
	for _, side := range e.smallSides() {
		t := e.targets()[side]
		if _, err := e.redisBench(ctx, t, 2000, 1); err != nil {
			return fmt.Errorf("warm-up of %s: %w", side, err)
		}
		if _, err := e.memaslap(ctx, t, time.Second); err != nil {
			return fmt.Errorf("warm-up of %s: %w", side, err)
		}
		if _, err := e.udpPing(ctx, t, 500*time.Millisecond); err != nil {
			return fmt.Errorf("warm-up of %s: %w", side, err)
		}
	}
	return nil
}

// runSmall measures the small-message servers, alternating the sides:
// redis GET and SET at two pipeline depths, memcached, UDP echo.
func (e *env) runSmall(ctx context.Context) ([]*report.Metric, error) {
	var out []*report.Metric
	sides := e.smallSides()
	cpuMetrics := func(key, what, unit string) (*report.Metric, *report.Metric) {
		return &report.Metric{Key: key + "-cpu", Name: "… " + serverSide + " per " + what, Unit: unit, Kind: report.CPU},
			&report.Metric{Key: key + "-inscpu", Name: "… of which INS", Unit: unit}
	}
	for _, p := range redisPipelines {
		get := &report.Metric{Key: fmt.Sprintf("redis-get-P%d", p), Name: fmt.Sprintf("redis-benchmark GET -c64 -P%d", p), Unit: "req/s", Kind: report.Throughput}
		set := &report.Metric{Key: fmt.Sprintf("redis-set-P%d", p), Name: fmt.Sprintf("redis-benchmark SET -c64 -P%d", p), Unit: "req/s", Kind: report.Throughput}
		srv, ins := cpuMetrics(fmt.Sprintf("redis-P%d", p), "request", "µs")
		out = append(out, get, set, srv, ins)
		reqs := map[string]int{}
		for _, side := range sides {
			n, err := e.redisRequests(ctx, side, p)
			if err != nil {
				return out, err
			}
			reqs[side] = n
		}
		for r := range e.o.rounds {
			for _, side := range rotated(sides, r) {
				n := reqs[side]
				cpu := e.startCPU(side)
				res, err := e.redisBench(ctx, e.targets()[side], n, p)
				if err != nil {
					return out, fmt.Errorf("%s: %w", side, err)
				}
				ic, sc := cpu.stop()
				perUnit(side, srv, ins, ic, sc, float64(2*n), 1e6)
				slog.Info("redis-benchmark", "side", side, "P", p, "round", r+1, "GET req/s", int(res["GET"].RPS), "SET req/s", int(res["SET"].RPS))
				get.Add(side, res["GET"].RPS)
				set.Add(side, res["SET"].RPS)
			}
		}
	}
	mc := &report.Metric{Key: "memcached", Name: "memcached, memaslap -T1 -c64 (90% get)", Unit: "ops/s", Kind: report.Throughput}
	mcSrv, mcINS := cpuMetrics("memcached", "operation", "µs")
	out = append(out, mc, mcSrv, mcINS)
	for r := range e.o.rounds {
		for _, side := range rotated(sides, r) {
			cpu := e.startCPU(side)
			res, err := e.memaslap(ctx, e.targets()[side], e.o.duration)
			if err != nil {
				return out, fmt.Errorf("%s: %w", side, err)
			}
			ic, sc := cpu.stop()
			perUnit(side, mcSrv, mcINS, ic, sc, float64(res.Ops), 1e6)
			slog.Info("memaslap", "side", side, "round", r+1, "ops/s", int(res.TPS))
			mc.Add(side, res.TPS)
		}
	}
	rtt := &report.Metric{Key: "udp-p50", Name: "UDP echo, 64 bytes, one in flight: round trip p50", Unit: "µs", Kind: report.Latency}
	rtt99 := &report.Metric{Key: "udp-p99", Name: "… round trip p99", Unit: "µs", Kind: report.Latency}
	udpSrv, udpINS := cpuMetrics("udp", "round trip", "µs")
	out = append(out, rtt, rtt99, udpSrv, udpINS)
	for r := range e.o.rounds {
		for _, side := range rotated(sides, r) {
			cpu := e.startCPU(side)
			res, err := e.udpPing(ctx, e.targets()[side], e.o.duration)
			if err != nil {
				return out, fmt.Errorf("%s: %w", side, err)
			}
			ic, sc := cpu.stop()
			perUnit(side, udpSrv, udpINS, ic, sc, float64(res.Sent-res.Lost), 1e6)
			if res.Lost > 0 {
				e.note("%s: UDP echo: %d of %d datagrams unanswered within 1 s", side, res.Lost, res.Sent)
			}
			slog.Info("udpping", "side", side, "round", r+1, "p50", res.P50, "p99", res.P99, "lost", res.Lost)
			rtt.Add(side, float64(res.P50)/1e3)
			rtt99.Add(side, float64(res.P99)/1e3)
		}
	}
	return slices.Clip(out), nil
}
