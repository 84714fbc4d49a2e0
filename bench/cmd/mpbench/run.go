package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/mpshim/mpshim/bench/internal/report"
	"github.com/mpshim/mpshim/bench/internal/ringbench"
)

// scaleINS is the INS count of the second scale run.
const scaleINS = 20

// results is everything a run measured.
type results struct {
	started, ended time.Time
	machine        string
	sides          []string
	pinning        string
	loadBefore     string
	loadAfter      string
	main           []*report.Metric
	scale          []*report.Metric
	ring           *ringbench.Report
	ringN          int
	profile        string
	notes          []string
	scaleN         []string // connections each side held, per scale run
	aborted        bool
}

func (o options) phase(name string) bool {
	if o.only == "" {
		return name != "scale20" || !o.quick
	}
	for _, p := range strings.Split(o.only, ",") {
		if strings.TrimSpace(p) == name {
			return true
		}
	}
	return false
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces)")
	}
	res := &results{started: time.Now(), machine: describeMachine(), loadBefore: report.LoadAvg()}
	e, err := setup(ctx, o)
	if e != nil {
		defer e.close()
	}
	if err != nil {
		return err
	}
	if err := e.startIsolator(ctx, 1); err != nil {
		return err
	}
	if err := e.startServers(ctx, true); err != nil {
		return err
	}
	res.sides, res.pinning = e.sides, e.pinning
	if e.runsc != nil {
		res.machine += "; " + e.runsc.version()
	}
	for _, side := range e.sides {
		t := e.targets()[side]
		slog.Info("serving the file", "side", side, "url", t.url(), "iperf3", fmt.Sprintf("%s:%d", t.addr, t.iperfPort))
	}
	if err := e.warmUp(ctx); err != nil {
		return err
	}
	if o.phase("small") {
		if err := e.warmUpSmall(ctx); err != nil {
			return err
		}
	}
	// A phase that fails still leaves the figures measured so far in the
	// results file, with the error.
	fail := func(err error) error {
		e.note("run aborted: %v", err)
		res.notes, res.ended, res.loadAfter = e.notes, time.Now(), report.LoadAvg()
		res.aborted = true
		if werr := write(o, res); werr != nil {
			slog.Error("writing partial results", "err", werr)
		}
		return err
	}
	h := newHTTPMetrics()
	if o.phase("http") {
		err := e.runHTTP(ctx, h)
		res.main = append(res.main, h.wrkList()...)
		if err != nil {
			return fail(err)
		}
	}
	if o.phase("ab") {
		err := e.runAB(ctx, h)
		res.main = append(res.main, h.conns, h.connSrv, h.connINS)
		if err != nil {
			return fail(err)
		}
	}
	if o.phase("bulk") {
		ms, err := e.runBulk(ctx)
		res.main = append(res.main, ms...)
		if err != nil {
			return fail(err)
		}
	}
	if o.phase("small") {
		ms, err := e.runSmall(ctx)
		res.main = append(res.main, ms...)
		if err != nil {
			return fail(err)
		}
	}
	if o.profile {
		if res.profile, err = e.runProfile(ctx); err != nil {
			return fail(err)
		}
	}
	if o.phase("scale") || o.phase("scale20") {
		// Enough nginx workers for the idle connections: each holds at
		// most one descriptor limit's worth.
		e.workers = max(2, (3*o.scaleN/2+e.fdCap()-1)/e.fdCap())
		if e.workers != 2 {
			slog.Info("restarting both nginx with more workers for the scale runs", "workers", e.workers)
			if err := e.restartNginx(ctx); err != nil {
				return fail(err)
			}
		}
	}
	if o.phase("scale") {
		sm := newScaleMetrics(1)
		err := e.runScale(ctx, e.scaleSides(), sm, true)
		res.scale = append(res.scale, sm.list()...)
		res.scaleN = append(res.scaleN, sm.describeN())
		if err != nil {
			return fail(err)
		}
	}
	if o.phase("scale20") {
		slog.Info("restarting the isolator with 20 INS")
		e.stopApps()
		e.iso.stop()
		if err := e.startIsolator(ctx, scaleINS); err != nil {
			return fail(err)
		}
		if err := e.startServers(ctx, false); err != nil {
			return fail(err)
		}
		sm := newScaleMetrics(scaleINS)
		err := e.runScale(ctx, e.scaleSides(), sm, false)
		res.scale = append(res.scale, sm.list()...)
		res.scaleN = append(res.scaleN, sm.describeN())
		if err != nil {
			return fail(err)
		}
	}
	if o.phase("ring") {
		res.ringN = 200_000
		if o.quick {
			res.ringN = 20_000
		}
		rep, err := ringbench.Run(res.ringN, 64)
		if err != nil {
			return fail(err)
		}
		res.ring = &rep
	}
	res.notes = e.notes
	res.ended = time.Now()
	res.loadAfter = report.LoadAvg()
	return write(o, res)
}

// scaleSides are the sides of the scale runs: those whose memory per
// connection the harness can attribute (not runsc's sandbox).
func (e *env) scaleSides() []string {
	var out []string
	for _, s := range e.sides {
		if s != report.Runsc {
			out = append(out, s)
		}
	}
	return out
}
