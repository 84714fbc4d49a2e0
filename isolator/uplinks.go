package isolator

// Uplinks of a running daemon: added to every INS at run time, drained and
// removed, listed with their state and counters.
//
// Adding or removing an uplink and spawning INS hold spawnMu, so an INS is
// either spawned with an uplink or gets it from the add, never neither. The
// drain of a removal runs without it: an INS spawned meanwhile simply does
// not get the draining uplink.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/link"
	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
	"github.com/mpshim/mpshim/isolator/uplink"
)

// uplinkOpTimeout bounds one uplink operation on one INS.
const uplinkOpTimeout = 10 * time.Second

// drainPoll is how often a removal checks whether the uplink has drained.
const drainPoll = 100 * time.Millisecond

// maxParallelINS bounds how many INS an uplink change works on at once
// (each costs a handful of ip(8) runs).
const maxParallelINS = 4

// uplinkState is one uplink of the daemon. The fields below the line are
// guarded by Daemon.mu.
type uplinkState struct {
	cfg          config.Uplink
	ifname       string // the macvlan's name inside every INS namespace
	pool4, pool6 *addrPool
	gw4, gw6     netip.Addr
	vips         []netip.Addr // service addresses every INS holds (lb.go)

	draining   bool // being removed: no new INS gets it
	parentDown bool // the host interface has no carrier (carrier.go)
}

func newUplinkState(u config.Uplink, ifname string) (*uplinkState, error) {
	s := &uplinkState{cfg: u, ifname: ifname}
	var err error
	if s.pool4, err = newAddrPool(u.Pool4); err != nil {
		return nil, fmt.Errorf("uplink %s: %w", u.Name, err)
	}
	if s.pool6, err = newAddrPool(u.Pool6); err != nil {
		return nil, fmt.Errorf("uplink %s: %w", u.Name, err)
	}
	if s.vips, err = u.VIPAddrs(); err != nil {
		return nil, err
	}
	if u.Gateway4 != "" {
		s.gw4, _ = netip.ParseAddr(u.Gateway4)
	}
	if u.Gateway6 != "" {
		s.gw6, _ = netip.ParseAddr(u.Gateway6)
	}
	return s, nil
}

// nextIfNameLocked names the interface of a new uplink inside the INS
// namespaces: up0, up1, … in order of creation, never reused while the
// daemon runs (a removed uplink's name may still be on its way out).
func (d *Daemon) nextIfNameLocked() string {
	n := fmt.Sprintf("up%d", d.nextIf)
	d.nextIf++
	return n
}

// insUplink is one uplink as one INS has it.
type insUplink struct {
	u   *uplinkState
	cfg netstack.UplinkConfig
}

// uplinkConfigs returns the uplinks of the INS, in the order it got them.
func (p *insProc) uplinkConfigs() []netstack.UplinkConfig {
	p.upMu.Lock()
	defer p.upMu.Unlock()
	out := make([]netstack.UplinkConfig, len(p.ups))
	for i, u := range p.ups {
		out[i] = u.cfg
	}
	return out
}

// has reports whether the INS has uplink u.
func (p *insProc) has(u *uplinkState) bool {
	p.upMu.Lock()
	defer p.upMu.Unlock()
	return slices.ContainsFunc(p.ups, func(x insUplink) bool { return x.u == u })
}

// dropUplink forgets uplink u and returns its addresses to the pool.
func (p *insProc) dropUplink(u *uplinkState) (netstack.UplinkConfig, bool) {
	p.upMu.Lock()
	defer p.upMu.Unlock()
	i := slices.IndexFunc(p.ups, func(x insUplink) bool { return x.u == u })
	if i < 0 {
		return netstack.UplinkConfig{}, false
	}
	c := p.ups[i].cfg
	p.ups = slices.Delete(p.ups, i, i+1)
	u.pool4.put(c.Addr4)
	u.pool6.put(c.Addr6)
	return c, true
}

// releaseUplinks returns the addresses of every uplink of a gone INS.
func (p *insProc) releaseUplinks() {
	p.upMu.Lock()
	defer p.upMu.Unlock()
	for _, x := range p.ups {
		x.u.pool4.put(x.cfg.Addr4)
		x.u.pool6.put(x.cfg.Addr6)
	}
	p.ups = nil
}

// manageUplink sends one uplink management request (with descriptors,
// whose ownership passes) and decodes the answer.
func (p *insProc) manageUplink(ctx context.Context, op string, arg ins.UplinkOp, files ...*os.File) (ins.UplinkReply, error) {
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	b, _ := json.Marshal(ins.ManageRequest{Op: op, Uplink: &arg})
	r, err := p.ch.Call(ctx, ctrl.Frame{Kind: ctrl.KindManage}, b, files...)
	if err != nil {
		return ins.UplinkReply{}, fmt.Errorf("INS %d: %s: %w", p.id, op, err)
	}
	r.CloseFiles()
	var rep ins.UplinkReply
	if err := json.Unmarshal(r.Payload, &rep); err != nil {
		return rep, fmt.Errorf("INS %d: %s reply: %w", p.id, op, err)
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("INS %d: %s", p.id, rep.Error)
	}
	return rep, nil
}

// eachINS runs f on every INS in procs, a few at a time, and collects the
// results in the order of procs.
func eachINS(procs []*insProc, f func(p *insProc) api.UplinkResult) []api.UplinkResult {
	out := make([]api.UplinkResult, len(procs))
	sem := make(chan struct{}, maxParallelINS)
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = f(p)
			out[i].INS = p.id
		}()
	}
	wg.Wait()
	return out
}

func uplinkNames(ups []*uplinkState) string {
	var names []string
	for _, u := range ups {
		names = append(names, u.cfg.Name)
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// AddUplink adds an uplink to the running daemon: every running INS gets a
// macvlan of the uplink's interface in its namespace, an address from the
// uplink's pools and a NIC on it; INS spawned later get it at start. It is
// refused (nothing changes) if the configuration is invalid, the name is
// taken, a pool overlaps another uplink's, the interface is missing, or no
// running INS could take it.
func (d *Daemon) AddUplink(ctx context.Context, u config.Uplink) (*api.UplinkChange, error) {
	if u.Weight == 0 {
		u.Weight = 1
	}
	if err := u.Validate(); err != nil {
		return nil, err
	}
	if len(u.VIPs) > 0 {
		return nil, fmt.Errorf("uplink %q: VIPs are only balanced on uplinks configured at start (--uplink, --vip or the configuration file)", u.Name)
	}
	d.spawnMu.Lock()
	defer d.spawnMu.Unlock()
	d.mu.Lock()
	if err := d.checkNewUplinkLocked(u); err != nil {
		d.mu.Unlock()
		return nil, err
	}
	d.mu.Unlock()
	if err := netns.CheckHostLink(ctx, d.cfg.NetNS, u.Interface); err != nil {
		return nil, fmt.Errorf("uplink %q: %w", u.Name, err)
	}
	d.mu.Lock()
	us, err := newUplinkState(u, d.nextIfNameLocked())
	if err != nil {
		d.mu.Unlock()
		return nil, err
	}
	us.parentDown = d.linkDown[u.Interface]
	d.mu.Unlock()

	procs := d.procs()
	results := eachINS(procs, func(p *insProc) api.UplinkResult { return d.addUplinkTo(ctx, p, us) })
	ok := 0
	for _, r := range results {
		if r.OK {
			ok++
		}
	}
	change := &api.UplinkChange{Name: u.Name, Action: "added", Results: results}
	if len(procs) > 0 && ok == 0 {
		return change, fmt.Errorf("uplink %q: no INS could take it (see the results per INS)", u.Name)
	}
	d.mu.Lock()
	d.uplinks = append(d.uplinks, us)
	d.mu.Unlock()
	d.log.Info("uplink added", "uplink", u.Name, "interface", u.Interface, "pool4", u.Pool4, "pool6", u.Pool6,
		"weight", u.Weight, "ins", ok, "failed", len(procs)-ok)
	if us.parentDown {
		for _, p := range procs {
			p.kickCarrier()
		}
	}
	return change, nil
}

// checkNewUplinkLocked refuses a name in use and pools that overlap those
// of another uplink (the INS routes by subnet).
func (d *Daemon) checkNewUplinkLocked(u config.Uplink) error {
	for _, o := range d.uplinks {
		if o.cfg.Name == u.Name {
			if o.draining {
				return fmt.Errorf("uplink %q is being removed; add it again once `isolator uplink del` has finished", u.Name)
			}
			return fmt.Errorf("uplink %q exists (remove it first with `isolator uplink del %s`, or choose another name)", u.Name, u.Name)
		}
		for _, pair := range [][2]string{{u.Pool4, o.cfg.Pool4}, {u.Pool6, o.cfg.Pool6}} {
			a, errA := netip.ParsePrefix(pair[0])
			b, errB := netip.ParsePrefix(pair[1])
			if errA == nil && errB == nil && a.Masked().Overlaps(b.Masked()) {
				return fmt.Errorf("uplink %q: pool %s overlaps pool %s of uplink %q; give each uplink its own subnet", u.Name, pair[0], pair[1], o.cfg.Name)
			}
		}
	}
	return nil
}

// addUplinkTo gives one running INS uplink us.
func (d *Daemon) addUplinkTo(ctx context.Context, p *insProc, us *uplinkState) (res api.UplinkResult) {
	ctx, cancel := context.WithTimeout(ctx, uplinkOpTimeout)
	defer cancel()
	var undo []func()
	defer func() {
		if !res.OK {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	fail := func(err error) api.UplinkResult { return api.UplinkResult{Error: err.Error()} }
	macvlan, err := p.ns.AddLink(ctx, d.cfg.NetNS, us.cfg.Interface, us.ifname)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() {
		if err := p.ns.RemoveLink(context.Background(), us.ifname); err != nil {
			p.log.Warn("uplink add: remove macvlan", "err", err)
		}
	})
	// Its stable MAC and probed addresses, as at an INS's start.
	c := &claim{u: us, link: us.ifname}
	if c.a4, err = us.pool4.get(); err != nil {
		return fail(err)
	}
	if c.a6, err = us.pool6.get(); err != nil {
		us.pool4.put(c.a4)
		return fail(err)
	}
	undo = append(undo, func() { us.pool4.put(c.a4); us.pool6.put(c.a6) })
	if err := d.claimAddrs(ctx, p.ns, []*claim{c}); err != nil {
		return fail(err)
	}
	a4, a6 := c.a4, c.a6
	f, err := link.OpenFile(p.ns.Path, us.ifname)
	if err != nil {
		return fail(err)
	}
	cfg := netstack.UplinkConfig{
		Name: us.cfg.Name, Interface: us.ifname,
		Addr4: a4, Gateway4: us.gw4, Addr6: a6, Gateway6: us.gw6,
		Weight: us.cfg.Weight, RXChecksumOffload: macvlan.VirtualParent,
	}
	if _, err := p.manageUplink(ctx, ins.ManageUplinkAdd, ins.UplinkOp{Config: &cfg}, f); err != nil {
		return fail(err)
	}
	p.upMu.Lock()
	p.ups = append(p.ups, insUplink{u: us, cfg: cfg})
	p.upMu.Unlock()
	res = api.UplinkResult{OK: true, Addr4: a4.String()}
	if a6.IsValid() {
		res.Addr6 = a6.String()
	}
	return res
}

// DelUplink removes uplink name: at once no INS places new outbound flows
// on it (and no INS spawned from now on gets it); connections already on it
// keep running until they end or timeout passes; then every INS loses the
// NIC, the macvlans are deleted and the addresses return to the pool. It is
// refused for an unknown name, an uplink already being removed and the last
// uplink.
func (d *Daemon) DelUplink(ctx context.Context, name string, timeout time.Duration) (*api.UplinkChange, error) {
	if timeout <= 0 {
		timeout = api.DefaultDrainTimeout
	}
	d.spawnMu.Lock()
	d.mu.Lock()
	var us *uplinkState
	usable := 0
	for _, u := range d.uplinks {
		if u.cfg.Name == name {
			us = u
		}
		if !u.draining {
			usable++
		}
	}
	var refuse error
	switch {
	case us == nil:
		refuse = fmt.Errorf("no uplink %q (have: %s; see `isolator uplink ls`)", name, uplinkNames(d.uplinks))
	case us.draining:
		refuse = fmt.Errorf("uplink %q is already being removed", name)
	case usable <= 1:
		refuse = fmt.Errorf("uplink %q is the last one: the INS would have no way out; add another uplink first", name)
	default:
		us.draining = true
	}
	d.mu.Unlock()
	if refuse != nil {
		d.spawnMu.Unlock()
		return nil, refuse
	}
	var procs []*insProc
	for _, p := range d.procs() {
		if p.has(us) {
			procs = append(procs, p)
		}
	}
	eachINS(procs, func(p *insProc) api.UplinkResult {
		ctx, cancel := context.WithTimeout(ctx, uplinkOpTimeout)
		defer cancel()
		if _, err := p.manageUplink(ctx, ins.ManageUplinkDrain, ins.UplinkOp{Name: name, Drain: true}); err != nil {
			p.log.Warn("uplink drain", "uplink", name, "err", err)
		}
		return api.UplinkResult{}
	})
	d.spawnMu.Unlock()
	d.log.Info("uplink draining", "uplink", name, "ins", len(procs), "timeout", timeout)

	start := time.Now()
	drained := d.waitDrained(ctx, procs, name, start.Add(timeout))
	waited := time.Since(start)

	d.spawnMu.Lock()
	defer d.spawnMu.Unlock()
	var holders []*insProc
	for _, p := range d.procs() {
		if p.has(us) {
			holders = append(holders, p)
		}
	}
	results := eachINS(holders, func(p *insProc) api.UplinkResult { return d.delUplinkFrom(ctx, p, us) })
	d.mu.Lock()
	d.uplinks = slices.DeleteFunc(d.uplinks, func(u *uplinkState) bool { return u == us })
	d.mu.Unlock()
	cut := 0
	for _, r := range results {
		cut += r.Conns
	}
	d.log.Info("uplink removed", "uplink", name, "drained", drained, "waited", waited.Round(time.Millisecond), "cut", cut, "ins", len(holders))
	return &api.UplinkChange{Name: name, Action: "removed", Drained: drained, WaitedMS: waited.Milliseconds(), Results: results}, nil
}

// waitDrained waits until no INS in procs has a connection on uplink name,
// or deadline, or ctx ends; it reports whether the uplink drained.
func (d *Daemon) waitDrained(ctx context.Context, procs []*insProc, name string, deadline time.Time) bool {
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for {
		conns := 0
		for _, p := range procs {
			conns += p.uplinkConns(ctx, name)
		}
		if conns == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// uplinkConns asks an INS for its connections on uplink name; an INS that
// does not answer (it died) has none.
func (p *insProc) uplinkConns(ctx context.Context, name string) int {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rep, err := p.manageUplink(ctx, ins.ManageUplinkStats, ins.UplinkOp{})
	if err != nil {
		return 0
	}
	for _, u := range rep.Uplinks {
		if u.Name == name {
			return u.Conns
		}
	}
	return 0
}

// delUplinkFrom removes uplink us from one INS: NIC, macvlan, addresses.
func (d *Daemon) delUplinkFrom(ctx context.Context, p *insProc, us *uplinkState) api.UplinkResult {
	ctx, cancel := context.WithTimeout(ctx, uplinkOpTimeout)
	defer cancel()
	var res api.UplinkResult
	conns := p.uplinkConns(ctx, us.cfg.Name)
	var errs []error
	if _, err := p.manageUplink(ctx, ins.ManageUplinkDel, ins.UplinkOp{Name: us.cfg.Name}); err != nil && !errors.Is(err, ctrl.ErrClosed) {
		errs = append(errs, err)
	}
	if err := p.ns.RemoveLink(ctx, us.ifname); err != nil {
		errs = append(errs, err)
	}
	if c, ok := p.dropUplink(us); ok {
		res.Addr4 = c.Addr4.String()
		if c.Addr6.IsValid() {
			res.Addr6 = c.Addr6.String()
		}
	}
	res.Conns = conns
	if err := errors.Join(errs...); err != nil {
		res.Error = err.Error()
		return res
	}
	res.OK = true
	return res
}

// UplinkList describes every uplink with its state and its counters summed
// over the INS.
func (d *Daemon) UplinkList(ctx context.Context) []api.UplinkInfo {
	type stat struct {
		p   *insProc
		rep ins.UplinkReply
		err error
	}
	procs := d.procs()
	stats := make([]stat, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			rep, err := p.manageUplink(ctx, ins.ManageUplinkStats, ins.UplinkOp{})
			stats[i] = stat{p, rep, err}
		}()
	}
	wg.Wait()
	d.mu.Lock()
	ups := slices.Clone(d.uplinks)
	state := make(map[*uplinkState][2]bool, len(ups))
	for _, u := range ups {
		state[u] = [2]bool{u.draining, u.parentDown}
	}
	d.mu.Unlock()
	var out []api.UplinkInfo
	for _, u := range ups {
		st := state[u]
		info := api.UplinkInfo{Uplink: u.cfg, Carrier: !st[1]}
		for _, s := range stats {
			if s.err != nil || !s.p.has(u) {
				continue
			}
			for _, c := range s.rep.Uplinks {
				if c.Name != u.cfg.Name {
					continue
				}
				info.INS++
				if c.State == uplink.StateUp {
					info.INSUp++
				}
				info.Conns += c.Conns
				info.RxBytes += c.RxBytes
				info.TxBytes += c.TxBytes
			}
		}
		switch {
		case st[0]:
			info.State = "draining"
		case st[1], info.INS > 0 && info.INSUp == 0:
			info.State = "down"
		default:
			info.State = "up"
		}
		out = append(out, info)
	}
	return out
}

// handleUplink answers uplink-add, uplink-del and uplink-ls.
func (d *Daemon) handleUplink(ctx context.Context, req api.Request) api.Response {
	switch req.Op {
	case api.OpUplinkAdd:
		if req.Uplink == nil {
			return api.Errorf("uplink-add: no uplink given (want NAME=IFACE,pool4=ADDR/LEN,…)")
		}
		ch, err := d.AddUplink(ctx, *req.Uplink)
		if err != nil {
			r := api.Errorf("%v", err)
			r.Change = ch
			return r
		}
		return api.Response{OK: true, Change: ch}
	case api.OpUplinkDel:
		if req.Name == "" {
			return api.Errorf("uplink-del: no uplink name given")
		}
		if req.TimeoutMS < 0 || req.TimeoutMS > int64(24*time.Hour/time.Millisecond) {
			return api.Errorf("uplink-del: timeout %d ms: want 0 (default) to 24 h", req.TimeoutMS)
		}
		ch, err := d.DelUplink(ctx, req.Name, time.Duration(req.TimeoutMS)*time.Millisecond)
		if err != nil {
			return api.Errorf("%v", err)
		}
		return api.Response{OK: true, Change: ch}
	default:
		return api.Response{OK: true, Uplinks: d.UplinkList(ctx)}
	}
}
