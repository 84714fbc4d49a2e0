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
	loadBefore     string
	loadAfter      string
	main           []*report.Metric
	scale          []*report.Metric
	ring           *ringbench.Report
	ringN          int
	profile        string
	notes          []string
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
	res := &results{started: time.Now(), machine: describeMachine(), loadBefore: loadAvg()}
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
	slog.Info("every side serves the file", "targets", fmt.Sprint(e.targets()))
	if err := e.warmUp(ctx); err != nil {
		return err
	}
	h := newHTTPMetrics()
	if o.phase("http") {
		if err := e.runHTTP(ctx, h); err != nil {
			return err
		}
		res.main = append(res.main, h.wrkList()...)
	}
	if o.phase("ab") {
		if err := e.runAB(ctx, h); err != nil {
			return err
		}
		res.main = append(res.main, h.conns)
	}
	if o.phase("bulk") {
		ms, err := e.runBulk(ctx)
		if err != nil {
			return err
		}
		res.main = append(res.main, ms...)
	}
	if o.profile {
		if res.profile, err = e.runProfile(ctx); err != nil {
			return err
		}
	}
	if o.phase("scale") {
		sm := newScaleMetrics(1, o.scaleN)
		if err := e.runScale(ctx, report.Sides, sm); err != nil {
			return err
		}
		res.scale = append(res.scale, sm.list()...)
	}
	if o.phase("scale20") {
		slog.Info("restarting the isolator with 20 INS")
		e.stopApps()
		e.iso.stop()
		if err := e.startIsolator(ctx, scaleINS); err != nil {
			return err
		}
		if err := e.startServers(ctx, false); err != nil {
			return err
		}
		sm := newScaleMetrics(scaleINS, o.scaleN)
		if err := e.runScale(ctx, []string{report.Netstack, report.MPShim}, sm); err != nil {
			return err
		}
		res.scale = append(res.scale, sm.list()...)
	}
	if o.phase("ring") {
		res.ringN = 200_000
		if o.quick {
			res.ringN = 20_000
		}
		rep, err := ringbench.Run(res.ringN, 64)
		if err != nil {
			return err
		}
		res.ring = &rep
	}
	res.notes = e.notes
	res.ended = time.Now()
	res.loadAfter = loadAvg()
	return write(o, res)
}
