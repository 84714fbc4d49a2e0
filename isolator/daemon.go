// Package isolator is the isolator daemon: it supervises the INS processes
// (each a sandboxed netstack with a NIC on every uplink, see package ins),
// registers apps and serves their socket calls from shared-memory rings,
// routing each to the INS that holds the socket, and answers the CLIs on its
// API socket.
package isolator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/mpshim/mpshim/internal/sdnotify"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/isolator/lbctl"
)

// Daemon is one isolator: its INS processes, uplinks and sockets.
type Daemon struct {
	cfg  config.Config
	log  *slog.Logger
	self string // executable re-run as INS processes

	mu       sync.Mutex
	uplinks  []*uplinkState
	nextIf   int             // see nextIfNameLocked
	linkDown map[string]bool // host interfaces without carrier (carrier.go)
	ins      map[int]*insProc
	nextID   int
	stopping bool
	hist     map[int]*insHistory // restarts and exits per INS id (restart.go)
	runCtx   context.Context     // Run's context: the lifetime of replacements
	spawnMu  sync.Mutex          // one spawn batch, or one uplink change, at a time

	stateMu   sync.Mutex // one state file write at a time (adopt.go)
	lastState []byte     // what the state file says

	// onSpawn is called for every INS that comes up (listener replication).
	onSpawn func(Backend)

	mit *mitigator // rules and tunings (rules.go)
	// lb balances the uplinks' VIPs over the INS (lb.go).
	lb *lbctl.Manager
	// app serves the registered apps; flows is the flow collector.
	app   *AppServer
	flows *flowService
	split *splitState // the split gateway, if the configuration has one (split.go)
}

// New validates cfg and prepares a daemon; Run starts it.
func New(cfg config.Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if _, err := cfg.INSIdentity(1); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cloexecInherited()
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	d := &Daemon{cfg: cfg, log: log, self: self, ins: map[int]*insProc{}, nextID: 1, linkDown: map[string]bool{}}
	d.lb = lbctl.New(log, cfg.NetNS)
	if d.mit, err = newMitigator(cfg.StateDir, log); err != nil {
		return nil, err
	}
	for _, u := range cfg.Uplinks {
		us, err := newUplinkState(u, d.nextIfNameLocked())
		if err != nil {
			return nil, err
		}
		d.uplinks = append(d.uplinks, us)
	}
	return d, nil
}

// Run starts the configured INS, opens the sockets and serves until ctx
// ends; then it stops every INS and removes its sockets.
func (d *Daemon) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(d.cfg.API), 0o755); err != nil {
		return fmt.Errorf("api socket directory: %w", err)
	}
	_ = os.Remove(d.cfg.API)
	old := unixUmask(0o077)
	apiLn, err := net.Listen("unix", d.cfg.API)
	unixUmask(old)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	defer os.Remove(d.cfg.API)
	defer d.lb.Close()
	defer d.removeState()
	defer d.stopAll()
	if err := d.startLB(ctx); err != nil {
		apiLn.Close()
		return err
	}
	d.mu.Lock()
	d.runCtx = ctx
	d.mu.Unlock()
	// INS of a daemon that died serve on: take them over.
	adopted, err := d.adoptAll(ctx)
	if err != nil {
		apiLn.Close()
		return err
	}
	// Namespaces left by daemons killed before they could clean up (and
	// whose INS are gone too).
	if _, err := netns.Reap(ctx, d.log); err != nil {
		d.log.Warn("namespaces of gone daemons", "err", err)
	}
	go d.watchCarrier(ctx)
	go d.keepStateFresh(ctx)

	d.mu.Lock()
	more := d.cfg.INS - len(d.ins) - len(adopted.replace)
	d.mu.Unlock()
	if more > 0 {
		if _, err := d.Spawn(ctx, more); err != nil {
			apiLn.Close()
			return err
		}
	}
	d.startAutoscale(ctx)
	serveApp, err := d.startApp(ctx)
	if err != nil {
		apiLn.Close()
		return err
	}
	d.app.Adopt(ctx, adopted.listeners, adopted.groups)
	for _, r := range adopted.replace {
		r()
	}
	if err := d.startSplit(ctx); err != nil {
		apiLn.Close()
		return err
	}
	stopMonitoring, err := d.startMonitoring(ctx)
	if err != nil {
		apiLn.Close()
		return err
	}
	defer stopMonitoring()
	errc := make(chan error, 2)
	go func() { errc <- api.Serve(ctx, apiLn, d.handle, d.log) }()
	go func() { errc <- serveApp() }()
	d.log.Info("isolator running", "api", d.cfg.API, "socket", d.cfg.Socket, "ins", d.cfg.INS)
	// Both sockets accept now: tell a Type=notify service manager, and
	// tell it again when stopping begins.
	if _, err := sdnotify.Notify(sdnotify.Ready); err != nil {
		d.log.Warn("readiness notification", "err", err)
	}
	defer context.AfterFunc(ctx, func() { sdnotify.Notify(sdnotify.Stopping) })()
	if n := noFileLimit(); n < sandbox.DefaultNoFile {
		d.log.Warn("INS descriptor limit lowered to the isolator's hard RLIMIT_NOFILE: each INS holds at most about that many sockets; raise the hard limit (ulimit -Hn, LimitNOFILE=) to lift it",
			"limit", n, "default", sandbox.DefaultNoFile)
	}
	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil {
			first = err
			d.log.Error("isolator", "err", err)
		}
	}
	return first
}

// Spawn starts n more INS processes.
func (d *Daemon) Spawn(ctx context.Context, n int) ([]int, error) {
	d.spawnMu.Lock()
	defer d.spawnMu.Unlock()
	d.mu.Lock()
	have := len(d.ins)
	if n < 1 || have+n > d.cfg.MaxINS {
		d.mu.Unlock()
		return nil, fmt.Errorf("spawn %d: want 1..%d more INS (have %d, max_ins %d)", n, d.cfg.MaxINS-have, have, d.cfg.MaxINS)
	}
	d.mu.Unlock()
	var ids []int
	for range n {
		d.mu.Lock()
		id := d.nextID
		d.nextID++
		total := len(d.ins) + 1
		d.mu.Unlock()
		p, err := d.startINS(ctx, id, max(total, have+n), nil)
		if err != nil {
			return ids, err
		}
		d.mu.Lock()
		d.ins[id] = p
		d.mu.Unlock()
		d.saveState()
		d.catchUp(ctx, p)
		p.kickCarrier() // a carrier change seen while it started
		ids = append(ids, id)
		d.mu.Lock()
		onSpawn := d.onSpawn
		d.mu.Unlock()
		if onSpawn != nil {
			onSpawn(p)
		}
		d.lbUp(p)
	}
	return ids, nil
}

// Kill stops INS id.
func (d *Daemon) Kill(id int) error {
	d.mu.Lock()
	p, ok := d.ins[id]
	if ok {
		delete(d.ins, id)
	}
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("no INS %d (see `isolator ls`)", id)
	}
	d.lb.INSGone(id, false) // no new flows to it from here on
	d.saveState()
	p.stop(insStopGrace)
	return nil
}

func (d *Daemon) stopAll() {
	d.mu.Lock()
	d.stopping = true
	procs := make([]*insProc, 0, len(d.ins))
	for _, p := range d.ins {
		procs = append(procs, p)
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(insStopGrace) }()
	}
	wg.Wait()
}

// Pick returns the live INS with the fewest live sockets (see
// insProc.liveSockets), the lowest id among equals.
func (d *Daemon) Pick() (Backend, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var best *insProc
	var bestLive int64
	for _, p := range d.ins {
		live := p.liveSockets()
		if best == nil || live < bestLive || (live == bestLive && p.id < best.id) {
			best, bestLive = p, live
		}
	}
	if best == nil {
		return nil, errors.New("no INS running")
	}
	return best, nil
}

// Get returns INS id if it is alive.
func (d *Daemon) Get(id int) (Backend, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.ins[id]
	if !ok {
		return nil, false
	}
	return p, true
}

// Owner returns the live INS that has address a on one of its uplinks.
func (d *Daemon) Owner(a netip.Addr) (Backend, bool) {
	a = a.Unmap()
	d.mu.Lock()
	procs := make([]*insProc, 0, len(d.ins))
	for _, p := range d.ins {
		procs = append(procs, p)
	}
	d.mu.Unlock()
	for _, p := range procs {
		for _, u := range p.uplinkConfigs() {
			if (u.Addr4.IsValid() && u.Addr4.Addr() == a) || (u.Addr6.IsValid() && u.Addr6.Addr() == a) {
				return p, true
			}
		}
	}
	return nil, false
}

// All returns every live INS, by id.
func (d *Daemon) All() []Backend {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := make([]int, 0, len(d.ins))
	for id := range d.ins {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]Backend, len(ids))
	for i, id := range ids {
		out[i] = d.ins[id]
	}
	return out
}

// List describes every INS.
func (d *Daemon) List(ctx context.Context) []api.INSInfo { return d.list(ctx, false) }

// list describes every INS; with gc each collects garbage and returns the
// freed memory to the system before it answers (api.Request.GC).
func (d *Daemon) list(ctx context.Context, gc bool) []api.INSInfo {
	var out []api.INSInfo
	for _, b := range d.All() {
		p := b.(*insProc)
		info := api.INSInfo{ID: p.id, PID: p.pid(), State: "running", NetNS: p.ns.Name, Started: p.started}
		d.mu.Lock()
		if h := d.hist[p.id]; h != nil {
			info.Restarts, info.LastExit, info.LastExitAt = h.restarts, h.lastExit, h.lastAt
		}
		d.mu.Unlock()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := p.manage(ctx, ins.ManageRequest{Op: ins.ManageStats, GC: gc, TCP: true})
		cancel()
		if err != nil {
			info.State = "unresponsive"
		}
		info.Sockets = st.Engine.Sockets
		info.Connections = st.Engine.Connected
		info.TCP = st.TCP
		info.RSS = p.rss()
		counters := map[string]netstack.UplinkCounters{}
		for _, c := range st.Uplinks {
			counters[c.Name] = c
			info.RxBytes += c.RxBytes
			info.TxBytes += c.TxBytes
		}
		for _, u := range p.uplinkConfigs() {
			c := counters[u.Name]
			iu := api.INSUplink{Name: u.Name, Addr4: u.Addr4.String(), State: c.State.String(),
				RxBytes: c.RxBytes, TxBytes: c.TxBytes, RxPackets: c.RxPackets, TxPackets: c.TxPackets}
			if u.Addr6.IsValid() {
				iu.Addr6 = u.Addr6.String()
			}
			info.Uplinks = append(info.Uplinks, iu)
		}
		out = append(out, info)
	}
	return out
}

// handle answers one API request.
func (d *Daemon) handle(ctx context.Context, req api.Request) api.Response {
	switch req.Op {
	case api.OpSpawn:
		ids, err := d.Spawn(ctx, req.N)
		resp := api.Response{OK: err == nil}
		if err != nil {
			resp.Error = err.Error()
		}
		all := d.List(ctx)
		for _, i := range all {
			if slices.Contains(ids, i.ID) {
				resp.INS = append(resp.INS, i)
			}
		}
		return resp
	case api.OpList:
		infos := d.list(ctx, req.GC)
		if req.GC {
			// Last, after the INS's: what the daemon allocated while
			// it waited for them is garbage too, and the caller reads
			// the daemon's RSS as soon as it has the answer.
			ins.FreeMemory()
		}
		return api.Response{OK: true, INS: infos}
	case api.OpFlows:
		return d.flowsOp(req)
	case api.OpKill:
		if err := d.Kill(req.ID); err != nil {
			return api.Errorf("%v", err)
		}
		return api.Response{OK: true}
	case api.OpUplinkAdd, api.OpUplinkDel, api.OpUplinkList:
		return d.handleUplink(ctx, req)
	case api.OpSandboxProbe:
		return d.sandboxProbe(ctx)
	case api.OpLBStatus, api.OpLBWeight, api.OpLBDrain, api.OpLBUndrain:
		return d.handleLB(req)
	case api.OpPeerAdd:
		return d.peerAdd(ctx, req.PeerAdd)
	case api.OpSplitStatus:
		return d.splitStatus(ctx)
	default:
		if resp, ok := d.handleMitigation(ctx, req); ok {
			return resp
		}
		return api.Errorf("unknown operation %q (spawn, ls, kill, uplink-add, uplink-del, uplink-ls, flows, peer-add, split-status, and the mitigation ops)", req.Op)
	}
}
