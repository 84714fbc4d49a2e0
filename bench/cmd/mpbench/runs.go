package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/mpshim/mpshim/bench/internal/parse"
	"github.com/mpshim/mpshim/bench/internal/report"
)

// rotated returns sides starting at round r, so that no side always runs
// first or last.
func rotated(sides []string, r int) []string {
	n := len(sides)
	out := make([]string, n)
	for i := range n {
		out[i] = sides[(i+r)%n]
	}
	return out
}

// wrk runs wrk -t1 -cC for d against url from wan.
func (e *env) wrk(ctx context.Context, url string, conns int, d time.Duration) (parse.Wrk, error) {
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(secs) + "s", "--latency", "--timeout", "10s", url}
	name, args := e.client("wrk", args...)
	out, err := e.tp.WAN.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return parse.Wrk{}, fmt.Errorf("wrk %v: %w: %s", args, err, tail(string(out), 1000))
	}
	w, err := parse.ParseWrk(string(out))
	if err != nil {
		return w, fmt.Errorf("%w: %s", err, tail(string(out), 1000))
	}
	return w, w.Err()
}

// ab runs ab without keep-alive, one connection per request: n requests
// or for d, whichever ends first.
func (e *env) ab(ctx context.Context, url string, n, c int, d time.Duration) (parse.AB, error) {
	ctx, cancel := context.WithTimeout(ctx, d+2*time.Minute)
	defer cancel()
	secs := max(1, int(d.Round(time.Second)/time.Second))
	// -t before -n: -t alone would cap the requests at 50,000.
	args := []string{"-q", "-t", strconv.Itoa(secs), "-n", strconv.Itoa(n), "-c", strconv.Itoa(c), "-s", "30", url}
	name, args := e.client("ab", args...)
	out, err := e.tp.WAN.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return parse.AB{}, fmt.Errorf("ab %v: %w: %s", args, err, tail(string(out), 1000))
	}
	a, err := parse.ParseAB(string(out))
	if err != nil {
		return a, fmt.Errorf("%w: %s", err, tail(string(out), 1000))
	}
	return a, a.Err()
}

// iperf3 runs a transfer of d with streams parallel streams: a download
// (-R: the server sends) when down is set, else an upload.
func (e *env) iperf3(ctx context.Context, t target, streams int, down bool, d time.Duration) (parse.Iperf3, error) {
	ctx, cancel := context.WithTimeout(ctx, d+time.Minute)
	defer cancel()
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-c", t.addr.String(), "-p", strconv.Itoa(t.iperfPort), "-t", strconv.Itoa(secs),
		"-P", strconv.Itoa(streams), "-J", "--connect-timeout", "5000"}
	if down {
		args = append(args, "-R")
	}
	name, args := e.client("iperf3", args...)
	out, err := e.tp.WAN.Command(ctx, name, args...).Output()
	r, perr := parse.ParseIperf3(out)
	if perr != nil {
		return r, fmt.Errorf("iperf3 %v: %v (%w)", args, err, perr)
	}
	return r, nil
}

// httpMetrics are the figures of the wrk and ab phases.
type httpMetrics struct {
	rps, p50, p99  []*report.Metric // by wrkConns
	srvCPU, insCPU []*report.Metric // CPU per request, by wrkConns
	txFrames       []*report.Metric // INS frames sent per request, by wrkConns
	rxFrames       []*report.Metric // INS frames received per request
	sysCalls       []*report.Metric // INS system calls per request (--count-calls)
	switches       []*report.Metric // INS context switches per request (--count-calls)
	conns          *report.Metric
	connSrv        *report.Metric // server side's CPU per connection (ab)
	connINS        *report.Metric // of which INS
}

// wrkConns are the wrk connection counts: 1 shows the latency a request
// pays without queueing; 64 loads the server.
var wrkConns = []int{1, 64}

// serverSide names what the server side's CPU counts.
const serverSide = "server side's CPU (all its processes, INS included)"

func newHTTPMetrics() *httpMetrics {
	h := &httpMetrics{}
	for _, c := range wrkConns {
		h.rps = append(h.rps, &report.Metric{Key: fmt.Sprintf("nginx-c%d-rps", c), Name: fmt.Sprintf("nginx 1 KiB keep-alive, wrk -t1 -c%d", c), Unit: "req/s", Kind: report.Throughput})
		h.p50 = append(h.p50, &report.Metric{Key: fmt.Sprintf("nginx-c%d-p50", c), Name: fmt.Sprintf("… -c%d latency p50", c), Unit: "ms", Kind: report.Latency})
		h.p99 = append(h.p99, &report.Metric{Key: fmt.Sprintf("nginx-c%d-p99", c), Name: fmt.Sprintf("… -c%d latency p99", c), Unit: "ms", Kind: report.Latency})
		h.srvCPU = append(h.srvCPU, &report.Metric{Key: fmt.Sprintf("nginx-c%d-cpu", c), Name: fmt.Sprintf("… -c%d %s per request", c, serverSide), Unit: "µs", Kind: report.CPU})
		h.insCPU = append(h.insCPU, &report.Metric{Key: fmt.Sprintf("nginx-c%d-inscpu", c), Name: fmt.Sprintf("… -c%d of which INS", c), Unit: "µs"})
		h.txFrames = append(h.txFrames, &report.Metric{Key: fmt.Sprintf("nginx-c%d-txframes", c), Name: fmt.Sprintf("… -c%d INS frames sent per request", c), Unit: "frames"})
		h.rxFrames = append(h.rxFrames, &report.Metric{Key: fmt.Sprintf("nginx-c%d-rxframes", c), Name: fmt.Sprintf("… -c%d INS frames received per request", c), Unit: "frames"})
		h.sysCalls = append(h.sysCalls, &report.Metric{Key: fmt.Sprintf("nginx-c%d-syscalls", c), Name: fmt.Sprintf("… -c%d INS system calls per request", c), Unit: "calls"})
		h.switches = append(h.switches, &report.Metric{Key: fmt.Sprintf("nginx-c%d-switches", c), Name: fmt.Sprintf("… -c%d INS context switches per request", c), Unit: "switches"})
	}
	h.conns = &report.Metric{Key: "nginx-newconn", Name: "nginx, new connection per request (ab -c64, -t as wrk's -d)", Unit: "conn/s", Kind: report.Throughput}
	h.connSrv = &report.Metric{Key: "nginx-newconn-cpu", Name: "… " + serverSide + " per connection", Unit: "µs", Kind: report.CPU}
	h.connINS = &report.Metric{Key: "nginx-newconn-inscpu", Name: "… of which INS", Unit: "µs"}
	return h
}

// wrkList lists the wrk figures, by connection count.
func (h *httpMetrics) wrkList() []*report.Metric {
	var out []*report.Metric
	for i := range wrkConns {
		out = append(out, h.rps[i], h.p50[i], h.p99[i], h.srvCPU[i], h.insCPU[i], h.txFrames[i], h.rxFrames[i])
		if len(h.sysCalls[i].Samples) > 0 {
			out = append(out, h.sysCalls[i], h.switches[i])
		}
	}
	return out
}

// warmUp runs a short wrk on every side, which also proves each serves.
func (e *env) warmUp(ctx context.Context) error {
	for _, side := range e.sides {
		t := e.targets()[side]
		if _, err := e.wrk(ctx, t.url(), 64, time.Second); err != nil {
			return fmt.Errorf("warm-up of %s: %w", side, err)
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// perUnit records the CPU a run cost per unit of work (scale: µs per
// request is 1e6, s per GiB 1) on the server side and in the INS.
func perUnit(side string, srv, ins *report.Metric, insCPU, srvCPU time.Duration, units, scale float64) {
	if units <= 0 {
		return
	}
	srv.Add(side, (insCPU+srvCPU).Seconds()*scale/units)
	if side == report.MPShim || side == report.Netstack {
		ins.Add(side, insCPU.Seconds()*scale/units)
	}
}

// runHTTP measures keep-alive wrk runs, alternating the sides.
func (e *env) runHTTP(ctx context.Context, h *httpMetrics) error {
	for i, c := range wrkConns {
		for r := range e.o.rounds {
			for _, side := range rotated(e.sides, r) {
				t := e.targets()[side]
				cpu := e.startCPU(side)
				w, err := e.wrk(ctx, t.url(), c, e.o.duration)
				if err != nil {
					return fmt.Errorf("%s: %w", side, err)
				}
				insCPU, srvCPU := cpu.stop()
				perUnit(side, h.srvCPU[i], h.insCPU[i], insCPU, srvCPU, float64(w.Requests), 1e6)
				if len(cpu.ins) > 0 {
					tx, rx := cpu.frames()
					h.txFrames[i].Add(side, float64(tx)/float64(w.Requests))
					h.rxFrames[i].Add(side, float64(rx)/float64(w.Requests))
				}
				if cpu.calls != nil {
					h.sysCalls[i].Add(side, float64(cpu.calls.syscalls)/float64(w.Requests))
					h.switches[i].Add(side, float64(cpu.calls.switches)/float64(w.Requests))
				}
				slog.Info("wrk", "side", side, "conns", c, "round", r+1, "req/s", int(w.RPS), "p50", w.P50, "p99", w.P99)
				h.rps[i].Add(side, w.RPS)
				h.p50[i].Add(side, ms(w.P50))
				h.p99[i].Add(side, ms(w.P99))
			}
		}
	}
	return nil
}

// runAB measures connections per second with ab, alternating the sides.
func (e *env) runAB(ctx context.Context, h *httpMetrics) error {
	for r := range e.o.rounds {
		for _, side := range rotated(e.sides, r) {
			t := e.targets()[side]
			cpu := e.startCPU(side)
			a, err := e.ab(ctx, t.url(), e.o.abN, 64, e.o.duration)
			if err != nil {
				return fmt.Errorf("%s: %w", side, err)
			}
			ic, sc := cpu.stop()
			perUnit(side, h.connSrv, h.connINS, ic, sc, float64(a.Complete), 1e6)
			slog.Info("ab", "side", side, "round", r+1, "conn/s", int(a.RPS), "p50", a.P50, "p99", a.P99)
			h.conns.Add(side, a.RPS)
		}
	}
	return nil
}

// runBulk measures one-stream iperf3 transfers both ways, alternating the
// sides.
func (e *env) runBulk(ctx context.Context) ([]*report.Metric, error) {
	var ms []*report.Metric
	for _, down := range []bool{false, true} {
		what, key := "iperf3 to the server, 1 stream", "bulk-up"
		if down {
			what, key = "iperf3 from the server (-R), 1 stream", "bulk-down"
		}
		m := &report.Metric{Key: key, Name: what, Unit: "Gbit/s", Kind: report.Throughput}
		srvCPU := &report.Metric{Key: key + "-cpu", Name: "… " + serverSide + " per GiB", Unit: "s", Kind: report.CPU}
		insCPU := &report.Metric{Key: key + "-inscpu", Name: "… of which INS", Unit: "s"}
		ms = append(ms, m, srvCPU, insCPU)
		for r := range e.o.rounds {
			for _, side := range rotated(e.sides, r) {
				cpu := e.startCPU(side)
				res, err := e.iperf3(ctx, e.targets()[side], 1, down, e.o.duration)
				if err != nil {
					return ms, fmt.Errorf("%s: %w", side, err)
				}
				ic, sc := cpu.stop()
				perUnit(side, srvCPU, insCPU, ic, sc, float64(res.ReceivedBytes)/(1<<30), 1)
				slog.Info("iperf3", "side", side, "down", down, "round", r+1, "Gbit/s", fmt.Sprintf("%.2f", res.ReceivedBps/1e9))
				m.Add(side, res.ReceivedBps/1e9)
			}
		}
	}
	return ms, nil
}
