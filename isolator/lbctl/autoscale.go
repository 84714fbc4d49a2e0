package lbctl

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/lb"
	"github.com/mpshim/mpshim/lb/autoscale"
)

// Fleet is what the autoscaler asks of the daemon.
type Fleet interface {
	// Spawn starts n INS; they join the pools as they come up.
	Spawn(ctx context.Context, n int) ([]int, error)
	// Kill stops INS id.
	Kill(id int) error
	// Load returns INS id's live connections and the CPU time it has used
	// so far.
	Load(ctx context.Context, id int) (conns int, cpu time.Duration, err error)
}

// keepDecisions bounds the decisions `isolator lb status` shows.
const keepDecisions = 20

// Autoscale grows and shrinks the pool by cfg until ctx ends, sampling the
// INS that take new flows every interval: a grow spawns (the new INS join
// the pools), a shrink drains the least loaded INS, waits up to cfg.Drain
// for its connections to end, then stops it. Every decision that acts is
// logged with its reason and kept for Status.
func (m *Manager) Autoscale(ctx context.Context, cfg autoscale.Config, f Fleet, interval time.Duration) {
	m.mu.Lock()
	m.policy = cfg.String()
	m.mu.Unlock()
	m.log.Info("autoscale on", "policy", cfg.String())
	sc := autoscale.New(cfg)
	prevCPU := map[int]time.Duration{}
	prevAt := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ids := m.upINS()
		now := time.Now()
		x := autoscale.Sample{At: now}
		cpuNow := map[int]time.Duration{}
		for _, id := range ids {
			conns, cpu, err := f.Load(ctx, id)
			if err != nil {
				m.log.Debug("autoscale: INS load", "ins", id, "err", err)
			}
			cpuNow[id] = cpu
			used := 0.0
			if p, ok := prevCPU[id]; ok && cpu >= p {
				used = (cpu - p).Seconds() / now.Sub(prevAt).Seconds()
			}
			x.Conns = append(x.Conns, conns)
			x.CPU = append(x.CPU, used)
		}
		prevCPU, prevAt = cpuNow, now
		d := sc.Observe(x)
		rec := api.LBDecision{At: d.At, Action: d.Action.String(), Count: d.Count, Reason: d.Reason}
		switch d.Action {
		case autoscale.Grow:
			got, err := f.Spawn(ctx, d.Count)
			rec.INS = got
			if err != nil {
				rec.Reason += fmt.Sprintf("; spawn failed: %v", err)
			}
			m.log.Info("autoscale: grow", "spawned", got, "reason", rec.Reason)
		case autoscale.Shrink:
			if d.Victim < 0 || d.Victim >= len(ids) {
				break
			}
			id := ids[d.Victim]
			rec.INS = []int{id}
			m.log.Info("autoscale: shrink", "drain", id, "reason", rec.Reason)
			if err := m.Drain(id); err != nil {
				rec.Reason += fmt.Sprintf("; drain failed: %v", err)
				break
			}
			m.record(rec)
			m.retire(ctx, f, id, cfg.Drain)
			continue
		}
		m.record(rec)
	}
}

// retire waits until draining INS id has no connections, or limit, then
// stops it.
func (m *Manager) retire(ctx context.Context, f Fleet, id int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for {
		conns, _, err := f.Load(ctx, id)
		if err != nil || conns == 0 {
			break
		}
		if time.Now().After(deadline) {
			m.log.Warn("autoscale: drain timed out; stopping the INS with connections", "ins", id, "conns", conns, "waited", limit)
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := f.Kill(id); err != nil {
		m.log.Error("autoscale: stop drained INS", "ins", id, "err", err)
		return
	}
	m.log.Info("autoscale: drained INS stopped", "ins", id)
}

// record keeps a decision: every one that acted, and the latest hold.
func (m *Manager) record(d api.LBDecision) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := len(m.decisions); n > 0 && m.decisions[n-1].Action == "hold" {
		m.decisions = m.decisions[:n-1]
	}
	m.decisions = append(m.decisions, d)
	if len(m.decisions) > keepDecisions {
		m.decisions = slices.Delete(m.decisions, 0, len(m.decisions)-keepDecisions)
	}
}

// upINS returns the INS that take new flows on any balanced uplink, by id.
func (m *Manager) upINS() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []int
	for _, b := range m.uplinks {
		for _, x := range b.pool.Members() {
			if x.State == lb.Up && x.Tunnel == nil && !slices.Contains(ids, x.ID) {
				ids = append(ids, x.ID)
			}
		}
	}
	slices.Sort(ids)
	return ids
}
