package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/mpshim/mpshim/bench/internal/hold"
	"github.com/mpshim/mpshim/bench/internal/report"
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
	conns            int // connections the INS report
}

func (e *env) snapshot(side string) memory {
	var m memory
	if side != "native" && e.iso != nil {
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
	est, ins, iso, server *report.Metric
}

func newScaleMetrics(nINS, n int) *scaleMetrics {
	p := fmt.Sprintf("%d idle conns, %d INS", n, nINS)
	k := fmt.Sprintf("scale-%dins", nINS)
	return &scaleMetrics{
		est:    &report.Metric{Key: k + "-establish", Name: p + ": time to establish", Unit: "s"},
		ins:    &report.Metric{Key: k + "-ins", Name: p + ": INS memory per conn", Unit: "KiB"},
		iso:    &report.Metric{Key: k + "-iso", Name: p + ": isolator memory per conn", Unit: "KiB"},
		server: &report.Metric{Key: k + "-server", Name: p + ": server process memory per conn", Unit: "KiB"},
	}
}

func (s *scaleMetrics) list() []*report.Metric {
	return []*report.Metric{s.est, s.ins, s.iso, s.server}
}

// runScale holds N idle connections to each side in turn and records the
// time to open them and the memory they cost.
func (e *env) runScale(ctx context.Context, sides []string, sm *scaleMetrics) error {
	srcs, err := e.scaleSources(ctx)
	if err != nil {
		return err
	}
	var srcList []string
	for _, a := range srcs {
		srcList = append(srcList, a.String())
	}
	for _, side := range sides {
		t := e.targets()[side]
		var dsts []string
		if side == "native" {
			dsts = []string{netip.AddrPortFrom(t.addr, uint16(t.httpPort)).String()}
		} else {
			for _, a := range e.iso.insAddrs() {
				dsts = append(dsts, netip.AddrPortFrom(a, uint16(t.httpPort)).String())
			}
		}
		before := e.snapshot(side)
		p, err := e.tp.WAN.Start(ctx, e.self, "hold", "-n", strconv.Itoa(e.o.scaleN),
			"--src", strings.Join(srcList, ","), "--dst", strings.Join(dsts, ","))
		if err != nil {
			return err
		}
		line, err := waitOutput(p.Output, p.Done(), "{", 10*time.Minute)
		if err != nil {
			_ = p.Stop()
			return fmt.Errorf("%s: hold: %w", side, err)
		}
		var res hold.Result
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			_ = p.Stop()
			return fmt.Errorf("%s: hold result %q: %w", side, line, err)
		}
		if res.Failed > 0 {
			e.note("%s, %d INS: %d of %d connections failed (first: %s)", side, len(e.iso.ins), res.Failed, e.o.scaleN, res.FirstError)
		}
		// Let the servers accept the last of them and the INS report.
		after := e.snapshot(side)
		for deadline := time.Now().Add(30 * time.Second); side != "native" && after.conns < before.conns+res.Established && time.Now().Before(deadline); {
			time.Sleep(500 * time.Millisecond)
			after = e.snapshot(side)
		}
		time.Sleep(time.Second)
		after = e.snapshot(side)
		n := float64(max(res.Established, 1))
		per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / n / 1024 }
		sm.est.Add(side, res.Elapsed.Seconds())
		if side != "native" {
			sm.ins.Add(side, per(after.ins, before.ins))
			sm.iso.Add(side, per(after.iso, before.iso))
			if got := after.conns - before.conns; got < res.Established {
				e.note("%s, %d INS: the INS report %d new connections for %d established", side, len(e.iso.ins), got, res.Established)
			}
		}
		sm.server.Add(side, per(after.server, before.server))
		slog.Info("scale", "side", side, "ins", len(e.iso.ins), "established", res.Established, "failed", res.Failed,
			"elapsed", res.Elapsed.Round(time.Millisecond), "ins KiB/conn", fmt.Sprintf("%.1f", per(after.ins, before.ins)),
			"isolator KiB/conn", fmt.Sprintf("%.1f", per(after.iso, before.iso)), "server KiB/conn", fmt.Sprintf("%.1f", per(after.server, before.server)))
		_ = p.Stop()
		// Wait for the connections to go before the next side.
		for deadline := time.Now().Add(60 * time.Second); side != "native" && time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			if e.snapshot(side).conns <= before.conns+res.Established/100 {
				break
			}
		}
		time.Sleep(2 * time.Second)
	}
	return nil
}
