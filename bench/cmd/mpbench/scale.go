package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/mpshim/mpshim/bench/internal/hold"
	"github.com/mpshim/mpshim/bench/internal/report"
	"github.com/mpshim/mpshim/test/topo"
)

// scaleSources are the wan's client addresses for the scale runs: .1 (the
// wan end) and .2-.9 added on uplink 0.
func (e *env) scaleSources(ctx context.Context) ([]netip.Addr, error) {
	up := e.tp.Uplinks[0]
	srcs := []netip.Addr{up.WANAddr4}
	for i := 2; i <= 9; i++ {
		a := up.Subnet4.Addr().As4()
		a[3] = byte(i)
		srcs = append(srcs, netip.AddrFrom4(a))
	}
	if !e.sourcesAdded {
		for _, a := range srcs[1:] {
			if _, err := e.tp.WAN.Run(ctx, "ip", "addr", "add", a.String()+"/24", "dev", up.WANIf); err != nil {
				return nil, err
			}
		}
		e.sourcesAdded = true
	}
	return srcs, nil
}

// memory is a snapshot of the resident sets a scale run watches.
type memory struct {
	ins, iso, server uint64
	slab             uint64 // the kernel's slab memory, machine-wide
	conns            int    // connections the INS report
}

var slabRE = regexp.MustCompile(`(?m)^Slab:\s+(\d+) kB`)

// kernelSlab reads the kernel's slab memory in bytes.
func kernelSlab() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	m := slabRE.FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return v << 10
}

func (e *env) snapshot(side string) memory {
	m := memory{slab: kernelSlab()}
	if side != report.Native && e.iso != nil {
		if infos, err := e.iso.list(); err == nil {
			for _, in := range infos {
				m.ins += in.RSS
				m.conns += in.Connections
			}
		}
		m.iso = rss(e.iso.proc.PID())
	}
	switch side {
	case "native":
		for _, w := range e.natNginx.workers() {
			m.server += rss(w)
		}
	case "mpshim":
		for _, w := range e.shmNginx.workers() {
			m.server += rss(w)
		}
	case "netstack":
		if e.netstack != nil {
			m.server = rss(e.netstack.PID())
		}
	}
	return m
}

// scaleMetrics are the figures of one scale run (one INS count).
type scaleMetrics struct {
	nINS                  int
	est, ins, iso, server *report.Metric
	total, slab           *report.Metric
	n                     map[string]int // connections per side
}

func newScaleMetrics(nINS int) *scaleMetrics {
	p := fmt.Sprintf("idle conns, %d INS", nINS)
	k := fmt.Sprintf("scale-%dins", nINS)
	return &scaleMetrics{
		nINS:   nINS,
		est:    &report.Metric{Key: k + "-establish", Name: p + ": time to establish", Unit: "s"},
		ins:    &report.Metric{Key: k + "-ins", Name: p + ": INS memory per conn", Unit: "KiB"},
		iso:    &report.Metric{Key: k + "-iso", Name: p + ": isolator memory per conn", Unit: "KiB"},
		server: &report.Metric{Key: k + "-server", Name: p + ": server processes' memory per conn", Unit: "KiB"},
		total:  &report.Metric{Key: k + "-total", Name: p + ": server side's memory per conn (server, INS and isolator)", Unit: "KiB", Kind: report.Memory},
		slab:   &report.Metric{Key: k + "-slab", Name: p + ": kernel slab per conn (client sockets included)", Unit: "KiB"},
		n:      map[string]int{},
	}
}

func (s *scaleMetrics) list() []*report.Metric {
	return []*report.Metric{s.est, s.ins, s.iso, s.server, s.total, s.slab}
}

// describeN says how many connections each side held.
func (s *scaleMetrics) describeN() string {
	var parts []string
	for _, side := range report.Sides {
		if n, ok := s.n[side]; ok {
			parts = append(parts, fmt.Sprintf("%s %d", side, n))
		}
	}
	return fmt.Sprintf("%d INS: connections held: %s", s.nINS, strings.Join(parts, ", "))
}

// fdCap is how many connections one process may hold under the hard
// RLIMIT_NOFILE (which no process here may raise without
// CAP_SYS_RESOURCE), with room for its other descriptors.
func (e *env) fdCap() int { return max(1000, int(e.noFile)-2048) }

// scaleN returns the connections side holds through nINS INS: the
// requested N, less where one process would hold more descriptors than
// the hard limit allows (an INS holds one per connection, as does the Go
// server).
func (e *env) scaleN(side string, nINS int, sameN bool) int {
	n := e.o.scaleN
	if sameN {
		return min(n, e.fdCap())
	}
	switch side {
	case report.Netstack:
		n = min(n, e.fdCap())
	case report.MPShim:
		n = min(n, nINS*e.fdCap())
	}
	return n
}

// runScale holds idle connections to each side in turn and records the
// time to open them and the memory they cost. With sameN every side holds
// the same number, the most one INS can.
func (e *env) runScale(ctx context.Context, sides []string, sm *scaleMetrics, sameN bool) error {
	srcs, err := e.scaleSources(ctx)
	if err != nil {
		return err
	}
	var srcList []string
	for _, a := range srcs {
		srcList = append(srcList, a.String())
	}
	for _, side := range sides {
		n := e.scaleN(side, sm.nINS, sameN)
		if n < e.o.scaleN {
			e.note("%s, %d INS: %d connections instead of %d: the hard RLIMIT_NOFILE here is %d and cannot be raised (no CAP_SYS_RESOURCE), and one process holds one descriptor per connection", side, sm.nINS, n, e.o.scaleN, e.noFile)
		}
		sm.n[side] = n
		t := e.targets()[side]
		var dsts []string
		if side == report.Native {
			dsts = []string{netip.AddrPortFrom(t.addr, uint16(t.httpPort)).String()}
		} else {
			for _, a := range e.iso.insAddrs() {
				dsts = append(dsts, netip.AddrPortFrom(a, uint16(t.httpPort)).String())
			}
		}
		before := e.snapshot(side)
		// One holder per fdCap connections, all at once.
		var procs []*topo.Proc
		stopAll := func() {
			for _, p := range procs {
				_ = p.Stop()
			}
		}
		for left := n; left > 0; {
			k := min(left, e.fdCap())
			left -= k
			name, args := e.client(e.self, "hold", "-n", strconv.Itoa(k),
				"--src", strings.Join(srcList, ","), "--dst", strings.Join(dsts, ","))
			p, err := e.tp.WAN.Start(ctx, name, args...)
			if err != nil {
				stopAll()
				return err
			}
			procs = append(procs, p)
		}
		var res hold.Result
		for _, p := range procs {
			line, err := waitOutput(p.Output, p.Done(), "{", 10*time.Minute)
			if err != nil {
				stopAll()
				return fmt.Errorf("%s: hold: %w", side, err)
			}
			var r hold.Result
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				stopAll()
				return fmt.Errorf("%s: hold result %q: %w", side, line, err)
			}
			res.Established += r.Established
			res.Failed += r.Failed
			res.Elapsed = max(res.Elapsed, r.Elapsed)
			if res.FirstError == "" {
				res.FirstError = r.FirstError
			}
		}
		if res.Failed > 0 {
			e.note("%s, %d INS: %d of %d connections failed (first: %s)", side, sm.nINS, res.Failed, n, res.FirstError)
		}
		// Let the servers accept the last of them and the INS report.
		after := e.snapshot(side)
		for deadline := time.Now().Add(30 * time.Second); side != report.Native && after.conns < before.conns+res.Established && time.Now().Before(deadline); {
			time.Sleep(500 * time.Millisecond)
			after = e.snapshot(side)
		}
		time.Sleep(time.Second)
		after = e.snapshot(side)
		per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(max(res.Established, 1)) / 1024 }
		sm.est.Add(side, res.Elapsed.Seconds())
		if side != report.Native {
			sm.ins.Add(side, per(after.ins, before.ins))
			sm.iso.Add(side, per(after.iso, before.iso))
			if got := after.conns - before.conns; got < res.Established {
				e.note("%s, %d INS: the INS report %d new connections for %d established", side, sm.nINS, got, res.Established)
			}
		}
		sm.server.Add(side, per(after.server, before.server))
		sm.total.Add(side, per(after.server+after.ins+after.iso, before.server+before.ins+before.iso))
		sm.slab.Add(side, per(after.slab, before.slab))
		slog.Info("scale", "side", side, "ins", sm.nINS, "established", res.Established, "failed", res.Failed,
			"elapsed", res.Elapsed.Round(time.Millisecond), "ins KiB/conn", fmt.Sprintf("%.1f", per(after.ins, before.ins)),
			"isolator KiB/conn", fmt.Sprintf("%.1f", per(after.iso, before.iso)), "server KiB/conn", fmt.Sprintf("%.1f", per(after.server, before.server)))
		stopAll()
		// Wait for the connections to go before the next side.
		for deadline := time.Now().Add(60 * time.Second); side != report.Native && time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			if e.snapshot(side).conns <= before.conns+res.Established/100 {
				break
			}
		}
		time.Sleep(2 * time.Second)
	}
	return nil
}
