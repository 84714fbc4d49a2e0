package isolator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/mitigate"
	"github.com/mpshim/mpshim/isolator/ins/tune"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/rules"
)

// stateFile is the name of the mitigation state in the state directory.
const stateFile = "mitigation.json"

// insTimeout bounds how long the daemon waits for one INS to apply a
// mitigation change.
const insTimeout = 2 * time.Second

// mitigationState is what survives a daemon restart: the rule set and the
// tunings of all INS.
type mitigationState struct {
	Rules       rules.Set   `json:"rules"`
	Tune        tune.Tuning `json:"tune,omitempty"`
	TuneVersion uint64      `json:"tune_version"`
}

// mitigator is the daemon's half of mitigation: the rule set with ids, the
// tunings, their state file, and the requests that push them to the INS.
type mitigator struct {
	path string
	log  *slog.Logger

	// mu serialises changes: each is stored, persisted and pushed to
	// every INS before the next, so INS see them in order.
	mu     sync.Mutex
	st     mitigationState
	perINS map[int]tune.Tuning // overrides of single INS (not persisted: INS ids restart with the daemon)
}

// newMitigator loads the state in dir, if there is one. A state file that
// cannot be read or is invalid stops the daemon: starting without the
// rules an operator set would silently lift them.
func newMitigator(dir string, log *slog.Logger) (*mitigator, error) {
	m := &mitigator{path: filepath.Join(dir, stateFile), log: log, perINS: map[int]tune.Tuning{}}
	b, err := os.ReadFile(m.path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mitigation state: %w", err)
	}
	if err := json.Unmarshal(b, &m.st); err != nil {
		return nil, fmt.Errorf("mitigation state %s: %w (fix or remove the file)", m.path, err)
	}
	if err := m.st.Rules.Validate(); err != nil {
		return nil, fmt.Errorf("mitigation state %s: %w (fix or remove the file)", m.path, err)
	}
	if _, err := m.st.Tune.Values(); err != nil {
		return nil, fmt.Errorf("mitigation state %s: tune: %w (fix or remove the file)", m.path, err)
	}
	log.Info("mitigation state loaded", "file", m.path, "rules", len(m.st.Rules.Rules), "version", m.st.Rules.Version, "tune", m.st.Tune)
	return m, nil
}

// save writes st atomically: a temporary file, synced, renamed over the
// state file, and the directory synced.
func (m *mitigator) save(st mitigationState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode mitigation state: %w", err)
	}
	dir := filepath.Dir(m.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	f, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return fmt.Errorf("save mitigation state: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("save mitigation state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save mitigation state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save mitigation state: %w", err)
	}
	if err := os.Rename(tmp, m.path); err != nil {
		return fmt.Errorf("save mitigation state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// tuneFor returns the overrides INS id runs with. Callers hold m.mu.
func (m *mitigator) tuneFor(id int) tune.Tuning {
	return tune.Merge(m.st.Tune, m.perINS[id])
}

// config is the mitigation an INS about to start gets in its
// ProcessConfig, so it filters from its first packet.
func (m *mitigator) config(id int) mitigate.Mitigation {
	m.mu.Lock()
	defer m.mu.Unlock()
	return mitigate.Mitigation{Rules: m.st.Rules.Clone(), Tune: m.tuneFor(id), TuneVersion: m.st.TuneVersion}
}

// catchUp brings an INS that has just joined up to date with changes made
// while it was starting (it was not yet among the INS they were pushed
// to).
func (d *Daemon) catchUp(ctx context.Context, p *insProc) {
	m := d.mit
	m.mu.Lock()
	defer m.mu.Unlock()
	started := p.cfg.Mitigation
	tune := m.tuneFor(p.id)
	if started.Rules.Version == m.st.Rules.Version && started.TuneVersion == m.st.TuneVersion {
		return
	}
	set := m.st.Rules.Clone()
	res := d.push(ctx, []*insProc{p}, mitigate.Request{Rules: &set, Tune: &tune, TuneVersion: m.st.TuneVersion})
	if !res[0].Applied {
		p.log.Warn("mitigation catch-up failed", "err", res[0].Error)
	}
}

// push sends req to every INS in procs at once and waits for all answers
// (each at most insTimeout).
func (d *Daemon) push(ctx context.Context, procs []*insProc, req mitigate.Request) []api.INSMitigation {
	out := make([]api.INSMitigation, len(procs))
	start := time.Now()
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, insTimeout)
			defer cancel()
			st, err := p.manage(cctx, ins.ManageRequest{Op: ins.ManageMitigate, Mitigate: &req})
			r := api.INSMitigation{ID: p.id, ElapsedMicros: time.Since(start).Microseconds()}
			switch {
			case err != nil:
				r.Error = err.Error()
			case st.Mitigate == nil:
				r.Error = "no mitigation reply"
			default:
				mr := st.Mitigate
				r.Applied = req.Rules == nil || mr.Version >= req.Rules.Version
				if !r.Applied {
					r.Error = fmt.Sprintf("still at rule set version %d", mr.Version)
				}
				r.Version, r.Reset, r.Rules, r.Tuning, r.ConnRefused = mr.Version, mr.Reset, mr.Rules, mr.Tuning, mr.ConnRefused
			}
			out[i] = r
		}()
	}
	wg.Wait()
	return out
}

// procs returns the live INS.
func (d *Daemon) procs() []*insProc {
	var out []*insProc
	for _, b := range d.All() {
		out = append(out, b.(*insProc))
	}
	return out
}

// refused answers a request that changed nothing.
func refused(format string, args ...any) api.Response {
	msg := fmt.Sprintf(format, args...)
	return api.Response{Error: "refused: " + msg, Mitigation: &api.MitigationReply{Summary: msg}}
}

// handleMitigation answers the mitigation operations; ok is false for
// other operations.
func (d *Daemon) handleMitigation(ctx context.Context, req api.Request) (resp api.Response, ok bool) {
	start := time.Now()
	a := req.Mitigation
	if a == nil {
		a = &api.MitigationRequest{}
	}
	switch req.Op {
	case api.OpBlock, api.OpLimit:
		r := rules.Rule{Action: rules.Block, Created: time.Now().UTC().Truncate(time.Second)}
		if req.Op == api.OpLimit {
			r.Action, r.PPS, r.BPS, r.Burst = rules.Limit, a.PPS, a.BPS, a.Burst
		}
		p, err := rules.ParsePrefix(a.Prefix)
		if err != nil {
			return refused("%v", err), true
		}
		r.Prefix = p
		return d.changeRules(ctx, start, a, func(s *rules.Set) (rules.Rule, error) { return s.Add(r) }), true
	case api.OpUnblock, api.OpUnlimit:
		act := rules.Block
		if req.Op == api.OpUnlimit {
			act = rules.Limit
		}
		p, err := rules.ParsePrefix(a.Prefix)
		if err != nil {
			return refused("%v", err), true
		}
		return d.changeRules(ctx, start, a, func(s *rules.Set) (rules.Rule, error) {
			r, ok := s.Find(act, p)
			if !ok {
				return rules.Rule{}, fmt.Errorf("%w: no %s rule for %s (see `netflow rules`)", rules.ErrNotFound, act, p)
			}
			return s.Remove(r.ID)
		}), true
	case api.OpRuleRemove:
		return d.changeRules(ctx, start, a, func(s *rules.Set) (rules.Rule, error) { return s.Remove(a.Rule) }), true
	case api.OpRules:
		return d.listRules(ctx), true
	case api.OpReset:
		return d.resetFlow(ctx, start, a.Flow), true
	case api.OpTune:
		return d.tune(ctx, start, a.INS, a.Settings), true
	}
	return api.Response{}, false
}

// changeRules applies change to a copy of the rule set, persists it, makes
// it the daemon's and pushes it to every INS (with a reset of the rule's
// prefix if asked).
func (d *Daemon) changeRules(ctx context.Context, start time.Time, a *api.MitigationRequest, change func(*rules.Set) (rules.Rule, error)) api.Response {
	m := d.mit
	m.mu.Lock()
	defer m.mu.Unlock()
	next := m.st
	next.Rules = m.st.Rules.Clone()
	r, err := change(&next.Rules)
	if err != nil {
		return refused("%v", err)
	}
	if err := m.save(next); err != nil {
		return refused("%v", err)
	}
	m.st = next
	req := mitigate.Request{Rules: &next.Rules}
	added := slices.ContainsFunc(next.Rules.Rules, func(x rules.Rule) bool { return x.ID == r.ID })
	if a.Reset && added && r.Action == rules.Block {
		req.ResetPeers = &r.Prefix
	}
	res := d.push(ctx, d.procs(), req)
	verb := "added"
	if !added {
		verb = "removed"
	}
	summary := fmt.Sprintf("rule %d %s: %s", r.ID, verb, r)
	reply := &api.MitigationReply{Rule: &r, Version: next.Rules.Version, INS: res}
	return d.finish(start, reply, summary, req.ResetPeers != nil)
}

// finish completes a reply from the INS results: applied when all INS
// applied, else which did not.
func (d *Daemon) finish(start time.Time, reply *api.MitigationReply, summary string, counted bool) api.Response {
	var failed []string
	for _, r := range reply.INS {
		reply.Reset += r.Reset
		if !r.Applied {
			failed = append(failed, fmt.Sprintf("INS %d: %s", r.ID, r.Error))
		}
	}
	reply.ElapsedMicros = time.Since(start).Microseconds()
	if counted {
		summary += fmt.Sprintf("; connections reset: %d", reply.Reset)
	}
	reply.Applied = len(failed) == 0
	if reply.Applied {
		reply.Summary = fmt.Sprintf("applied: %s (in %d INS, %.1f ms)", summary, len(reply.INS), float64(reply.ElapsedMicros)/1000)
		d.log.Info("mitigation applied", "change", summary, "ins", len(reply.INS), "elapsed", time.Duration(reply.ElapsedMicros)*time.Microsecond)
		return api.Response{OK: true, Mitigation: reply}
	}
	reply.Summary = fmt.Sprintf("%s, stored but not applied in %d of %d INS: %s", summary, len(failed), len(reply.INS), strings.Join(failed, "; "))
	d.log.Warn("mitigation not applied everywhere", "change", summary, "failed", failed)
	return api.Response{Error: reply.Summary, Mitigation: reply}
}

// listRules collects every INS's counters and sums them per rule.
func (d *Daemon) listRules(ctx context.Context) api.Response {
	m := d.mit
	m.mu.Lock()
	set := m.st.Rules.Clone()
	m.mu.Unlock()
	res := d.push(ctx, d.procs(), mitigate.Request{})
	sum := map[uint64]*rules.Stats{}
	reply := &api.MitigationReply{Applied: true, Version: set.Version, INS: res}
	for _, r := range set.Rules {
		reply.Rules = append(reply.Rules, rules.Stats{Rule: r})
	}
	for i := range reply.Rules {
		sum[reply.Rules[i].ID] = &reply.Rules[i]
	}
	var failed []string
	for _, r := range res {
		if r.Error != "" {
			failed = append(failed, fmt.Sprintf("INS %d: %s", r.ID, r.Error))
		}
		for _, st := range r.Rules {
			if s := sum[st.ID]; s != nil {
				s.Add(st)
			}
		}
	}
	reply.Summary = fmt.Sprintf("%d rules, version %d, counters of %d INS", len(set.Rules), set.Version, len(res)-len(failed))
	if len(failed) > 0 {
		reply.Summary += "; no counters from " + strings.Join(failed, "; ")
	}
	return api.Response{OK: true, Mitigation: reply}
}

// resetFlow sends a flow reset to the INS named in the flow ID.
func (d *Daemon) resetFlow(ctx context.Context, start time.Time, flow string) api.Response {
	id, _, err := netflow.ParseFlowID(flow)
	if err != nil {
		return refused("%v", err)
	}
	b, ok := d.Get(id)
	if !ok {
		return refused("flow %s: no INS %d (see `isolator ls`)", flow, id)
	}
	res := d.push(ctx, []*insProc{b.(*insProc)}, mitigate.Request{ResetFlow: flow})
	reply := &api.MitigationReply{INS: res, Reset: res[0].Reset, Version: res[0].Version}
	reply.ElapsedMicros = time.Since(start).Microseconds()
	switch {
	case res[0].Error != "":
		reply.Summary = fmt.Sprintf("flow %s: %s", flow, res[0].Error)
		return api.Response{Error: reply.Summary, Mitigation: reply}
	case res[0].Reset == 0:
		reply.Summary = fmt.Sprintf("flow %s: not found (no TCP connection with this ID in INS %d)", flow, id)
		return api.Response{Error: reply.Summary, Mitigation: reply}
	}
	reply.Applied = true
	reply.Summary = fmt.Sprintf("applied: flow %s reset (%.1f ms)", flow, float64(reply.ElapsedMicros)/1000)
	d.log.Info("flow reset", "flow", flow)
	return api.Response{OK: true, Mitigation: reply}
}

// tune sets (or, without settings, shows) the tunings of one INS or all.
func (d *Daemon) tune(ctx context.Context, start time.Time, target string, settings []string) api.Response {
	m := d.mit
	m.mu.Lock()
	defer m.mu.Unlock()
	var procs []*insProc
	all := target == api.TuneAll
	id := 0
	if all {
		procs = d.procs()
	} else {
		n, err := strconv.Atoi(target)
		if err != nil {
			return refused("INS %q: want an INS id from `isolator ls` or %q", target, api.TuneAll)
		}
		b, ok := d.Get(n)
		if !ok {
			return refused("no INS %d (see `isolator ls`)", n)
		}
		id, procs = n, []*insProc{b.(*insProc)}
	}
	over, err := tune.Parse(settings)
	if err != nil {
		return refused("%v", err)
	}
	next := m.st
	perINS := m.perINS[id]
	if all {
		next.Tune = tune.Merge(m.st.Tune, over)
	} else {
		perINS = tune.Merge(perINS, over)
	}
	// The result must be consistent for all INS to come and every INS
	// concerned, or nothing changes.
	if _, err := next.Tune.Values(); err != nil {
		return refused("%v", err)
	}
	for _, p := range procs {
		t := tune.Merge(next.Tune, m.perINS[p.id])
		if !all {
			t = tune.Merge(next.Tune, perINS)
		}
		if _, err := t.Values(); err != nil {
			return refused("INS %d: %v", p.id, err)
		}
	}
	stored := next.Tune
	if !all {
		stored = perINS
	}
	if len(settings) == 0 {
		res := d.push(ctx, procs, mitigate.Request{})
		reply := &api.MitigationReply{Applied: true, INS: res, Tune: stored, Version: m.st.Rules.Version}
		reply.Summary = fmt.Sprintf("tunings of %s", target)
		return api.Response{OK: true, Mitigation: reply}
	}
	next.TuneVersion++
	if all {
		if err := m.save(next); err != nil {
			return refused("%v", err)
		}
	} else {
		m.perINS[id] = perINS
	}
	m.st = next
	res := make([]api.INSMitigation, 0, len(procs))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, p := range procs {
		t := m.tuneFor(p.id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := d.push(ctx, []*insProc{p}, mitigate.Request{Tune: &t, TuneVersion: next.TuneVersion})
			r[0].ElapsedMicros = time.Since(start).Microseconds()
			mu.Lock()
			res = append(res, r[0])
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.SortFunc(res, func(a, b api.INSMitigation) int { return a.ID - b.ID })
	keys := slices.Sorted(maps.Keys(over))
	var kv []string
	for _, k := range keys {
		kv = append(kv, k+"="+over[k])
	}
	reply := &api.MitigationReply{INS: res, Tune: stored, Version: m.st.Rules.Version}
	return d.finish(start, reply, fmt.Sprintf("tune %s %s", target, strings.Join(kv, " ")), false)
}
