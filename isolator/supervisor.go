package isolator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/procstat"
	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/link"
	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
	"github.com/mpshim/mpshim/isolator/ins/resolve"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/msgproto"
)

// insProc is one running INS process as the daemon supervises it.
type insProc struct {
	id    int
	cmd   *exec.Cmd   // nil for an INS adopted from a dead daemon (adopt.go)
	proc  *os.Process // the process, started or adopted
	pidfd int         // an adopted INS's pidfd (its exit is polled); -1 otherwise
	// startTicks is the process's start time (procstat), which with its
	// pid names it in the state file.
	startTicks uint64
	ch         *ctrl.Conn
	ns         *netns.NS
	cfg        ins.ProcessConfig // as started; uplinks change (ups)
	started    time.Time
	done       chan struct{} // closed when the process has exited
	log        *slog.Logger

	// placed counts the sockets placed on this INS (Socket calls that
	// succeeded); load is its last load notice (see liveSockets).
	placed atomic.Uint64
	load   atomic.Pointer[ins.Load]

	upMu sync.Mutex
	ups  []insUplink // the uplinks it has, with its addresses

	carrierKick chan struct{} // see syncCarrier

	restarts int // this id's replacements so far, this one included (restart.go)
}

func (p *insProc) ID() int { return p.id }

func (p *insProc) pid() int { return p.proc.Pid }

// wait waits for the process to exit and says how it ended. A started INS
// is this daemon's child; an adopted one is not, so its exit is seen on
// its pidfd and its status is unknown.
func (p *insProc) wait() string {
	if p.cmd != nil {
		err := p.cmd.Wait()
		return exitReason(p.cmd.ProcessState, err)
	}
	waitPidfd(p.pidfd, -1)
	unix.Close(p.pidfd)
	return "exited (adopted: status unknown)"
}

// Call forwards one socket request to the INS and decodes its reply.
func (p *insProc) Call(ctx context.Context, group uint64, m msgproto.Message, files ...*os.File) (msgproto.Message, error) {
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	b, err := msgproto.Append(nil, 0, flagsFor(files), m)
	if err != nil {
		return nil, fmt.Errorf("ins %d: encode %s: %w", p.id, m.Type(), err)
	}
	r, err := p.ch.Call(ctx, ctrl.Frame{Kind: ctrl.KindSocket, Group: group}, b, files...)
	if err != nil {
		return nil, fmt.Errorf("ins %d: %s: %w", p.id, m.Type(), err)
	}
	r.CloseFiles()
	_, reply, err := msgproto.Decode(r.Payload)
	if err != nil {
		return nil, fmt.Errorf("ins %d: reply to %s: %w", p.id, m.Type(), err)
	}
	if _, ok := reply.(*msgproto.SocketReply); ok {
		p.placed.Add(1)
	}
	return reply, nil
}

func flagsFor(files []*os.File) uint32 {
	if len(files) > 0 {
		return msgproto.FlagFD
	}
	return 0
}

// Forget tells the INS that a socket group is gone.
func (p *insProc) Forget(group uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.manage(ctx, ins.ManageRequest{Op: ins.ManageForget, Group: group}); err != nil {
		p.log.Debug("forget group", "group", group, "err", err)
	}
}

// manage sends a management request and decodes the answer.
func (p *insProc) manage(ctx context.Context, req ins.ManageRequest) (ins.Status, error) {
	b, _ := json.Marshal(req)
	r, err := p.ch.Call(ctx, ctrl.Frame{Kind: ctrl.KindManage}, b)
	if err != nil {
		return ins.Status{}, fmt.Errorf("ins %d: %s: %w", p.id, req.Op, err)
	}
	r.CloseFiles()
	var st ins.Status
	if err := json.Unmarshal(r.Payload, &st); err != nil {
		return st, fmt.Errorf("ins %d: %s reply: %w", p.id, req.Op, err)
	}
	if st.Error != "" {
		return st, fmt.Errorf("ins %d: %s: %s", p.id, req.Op, st.Error)
	}
	return st, nil
}

// startINS prepares the INS's network namespace, starts the process in it
// and waits until it answers. keep are the uplinks of the INS this one
// replaces: their addresses (still marked used in the pools) are taken
// again, and not returned to the pools if the start fails.
func (d *Daemon) startINS(ctx context.Context, id int, total int, keep []netstack.UplinkConfig) (_ *insProc, err error) {
	log := d.log.With("ins", id)
	d.mu.Lock()
	var uplinks []*uplinkState
	for _, u := range d.uplinks {
		if !u.draining {
			uplinks = append(uplinks, u)
		}
	}
	d.mu.Unlock()
	if len(uplinks) == 0 {
		return nil, errors.New("no uplinks configured: add one with --uplink or in the config file")
	}
	host := make([]netns.HostUplink, len(uplinks))
	for i, u := range uplinks {
		host[i] = netns.HostUplink{Parent: u.cfg.Interface, Name: u.ifname}
	}
	var release []func()
	defer func() {
		if err != nil {
			for _, r := range release {
				r()
			}
		}
	}()
	ns, err := netns.Prepare(ctx, id, d.cfg.NetNS, host)
	if err != nil {
		return nil, fmt.Errorf("INS %d: %w", id, err)
	}
	release = append(release, func() { ns.Close() })
	closeNS := release[0]

	nameservers, err := d.cfg.Nameservers()
	if err != nil {
		return nil, fmt.Errorf("INS %d: %w", id, err)
	}
	who, err := d.cfg.INSIdentity(id)
	if err != nil {
		return nil, fmt.Errorf("INS %d: %w", id, err)
	}
	pc := ins.ProcessConfig{
		Stack:   netstack.Config{ID: id, Policy: d.cfg.Policy, GOMAXPROCS: netstack.GOMAXPROCSFor(total)},
		DNS:     resolve.Config{Servers: nameservers, Timeout: d.cfg.DNSTimeout},
		Sandbox: sandbox.Options{NoFile: noFileLimit(), UID: who.UID, GID: who.GID, EmptyRoot: true},
		// Rules and tunings in force from the first packet.
		Mitigation: d.mit.config(id),
		Flows:      d.flowTableConfig(),
		Successor:  ins.SuccessorConfig{Socket: d.successorPath(id), DaemonUID: os.Getuid(), OrphanTimeout: d.cfg.Orphan()},
		Drain:      insDrain,
	}
	if pc.Successor.Socket != "" {
		if err := os.MkdirAll(filepath.Dir(pc.Successor.Socket), 0o700); err != nil {
			log.Warn("no successor socket directory: the INS will not outlive the daemon", "err", err)
			pc.Successor = ins.SuccessorConfig{}
		}
	}
	var ups []insUplink
	claims := make([]*claim, len(uplinks))
	for i, u := range uplinks {
		c := &claim{u: u, link: ns.Links[i].Name}
		claims[i] = c
		if k := slices.IndexFunc(keep, func(x netstack.UplinkConfig) bool { return x.Name == u.cfg.Name }); k >= 0 {
			c.a4, c.a6, c.kept = keep[k].Addr4, keep[k].Addr6, true
			continue
		}
		if c.a4, err = u.pool4.get(); err != nil {
			return nil, fmt.Errorf("INS %d: uplink %s: %w", id, u.cfg.Name, err)
		}
		if c.a6, err = u.pool6.get(); err != nil {
			u.pool4.put(c.a4)
			c.a4 = netip.Prefix{}
			return nil, fmt.Errorf("INS %d: uplink %s: %w", id, u.cfg.Name, err)
		}
	}
	release = append(release, func() {
		for _, c := range claims {
			if c != nil && !c.kept {
				c.u.pool4.put(c.a4)
				c.u.pool6.put(c.a6)
			}
		}
	})
	if err := d.claimAddrs(ctx, ns, claims); err != nil {
		return nil, fmt.Errorf("INS %d: %w", id, err)
	}
	for i, u := range uplinks {
		a4, a6 := claims[i].a4, claims[i].a6
		ns.Links[i].MAC = claims[i].mac()
		uc := netstack.UplinkConfig{
			Name: u.cfg.Name, Interface: ns.Links[i].Name,
			Addr4: a4, Gateway4: u.gw4, Addr6: a6, Gateway6: u.gw6,
			Weight: u.cfg.Weight,
			// Virtual parents (veth) hand partial checksums to AF_PACKET;
			// the netstack must not verify those.
			RXChecksumOffload: ns.Links[i].VirtualParent,
			Backend:           link.Backend(u.cfg.Backend),
			GSO:               u.cfg.GSOEnabled(),
			VIPs:              u.vips,
		}
		pc.Stack.Uplinks = append(pc.Stack.Uplinks, uc)
		ups = append(ups, insUplink{u: u, cfg: uc})
	}
	cfgJSON, err := json.Marshal(pc)
	if err != nil {
		return nil, fmt.Errorf("INS %d: config: %w", id, err)
	}
	mine, theirs, err := ctrl.Pair()
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	cmd := exec.Command(d.self, "ins")
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	cmd.Env = insEnv(ins.ConfigEnv + "=" + string(cfgJSON))
	out, started, err := insStdio(cmd)
	if err != nil {
		mine.Close()
		return nil, fmt.Errorf("INS %d: %w", id, err)
	}
	cmd.SysProcAttr = insSysProcAttr()
	err = startInNetNS(ns.Path, cmd)
	started()
	if err != nil {
		out.Close()
		mine.Close()
		return nil, fmt.Errorf("INS %d: start: %w", id, err)
	}
	go relayINSOutput(id, out)
	p := &insProc{id: id, cmd: cmd, proc: cmd.Process, pidfd: -1, ch: ctrl.New(mine), ns: ns, cfg: pc, started: time.Now(), done: make(chan struct{}), log: log,
		ups: ups, carrierKick: make(chan struct{}, 1)}
	if st, err := procstat.Read(cmd.Process.Pid); err == nil {
		p.startTicks = st.StartTime
	}
	// From here the process owns the addresses (reap returns them).
	release = nil
	go p.readCtrl()
	go d.reap(p, closeNS)
	go d.syncCarrier(p)

	// Ready once it answers a status request.
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := p.manage(rctx, ins.ManageRequest{Op: ins.ManageStats}); err != nil {
		stuckINS(p, log)
		return nil, fmt.Errorf("INS %d did not come up: %w", id, err)
	}
	log.Info("INS started", "pid", p.pid(), "netns", ns.Name, "uplinks", addrList(pc.Stack.Uplinks))
	return p, nil
}

// stuckINS ends an INS that did not answer its first status request and
// leaves in the log where it was: the kernel function each of its threads
// waited in, then the Go runtime's dump of its goroutines (SIGQUIT, which
// the INS does not handle, makes the runtime print every goroutine's stack
// to the INS's output, relayed to this log, and exit). SIGKILL follows if
// the dump does not end it within 2 s.
func stuckINS(p *insProc, log *slog.Logger) {
	if where, err := procstat.Threads(p.pid()); err == nil {
		log.Warn("INS did not answer its first status request; its threads (tid:state:kernel wait)", "pid", p.pid(), "threads", where)
	}
	_ = p.proc.Signal(unix.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
		_ = p.proc.Kill()
		<-p.done
	}
}

// reap waits for an INS process to exit, reports it and releases what it
// held. A process that dies is noticed at once (wait returns). An INS that
// died while the daemon still counted on it (not stopped by `isolator kill`
// or at shutdown) is replaced (restart.go): its addresses stay reserved for
// the replacement.
func (d *Daemon) reap(p *insProc, closeNS func()) {
	status := p.wait()
	p.ch.Close()
	d.mu.Lock()
	cur, known := d.ins[p.id]
	known = known && cur == p
	if known {
		delete(d.ins, p.id)
	}
	stopping := d.stopping
	d.mu.Unlock()
	if known && !stopping {
		d.lb.INSGone(p.id, true) // new flows elsewhere at once
	}
	uptime := time.Since(p.started)
	died := known && !stopping
	if died {
		p.log.Warn("INS died", "pid", p.pid(), "status", status, "after", uptime.Round(time.Millisecond))
	} else {
		p.log.Info("INS stopped", "pid", p.pid(), "status", status)
	}
	// The namespace goes first: its macvlans carry the MACs the
	// replacement takes again.
	closeNS()
	if path := d.successorPath(p.id); path != "" && !died {
		_ = os.Remove(path)
	}
	if known && !stopping {
		d.saveState()
	}
	var keep []netstack.UplinkConfig
	if died {
		keep = p.uplinkConfigs()
	} else {
		p.releaseUplinks()
	}
	close(p.done)
	if died {
		d.onINSGone(p.id)
		go d.replace(p.id, keep, status, uptime)
	}
}

// stop ends an INS: SIGTERM (or, where the daemon may not signal it, a
// stop request on its channel), then SIGKILL after grace.
func (p *insProc) stop(grace time.Duration) {
	if err := p.proc.Signal(unix.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		// An INS runs as another user: without CAP_KILL the daemon
		// cannot signal it. It is asked to stop on its channel instead;
		// a hang-up alone would leave it waiting for a successor.
		p.log.Warn("INS stop: SIGTERM failed; asking on its control channel", "pid", p.pid(), "err", err)
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		if _, err := p.manage(ctx, ins.ManageRequest{Op: ins.ManageStop}); err != nil {
			p.log.Warn("INS stop request", "err", err)
		}
		cancel()
	}
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	if err := p.proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.log.Error("INS stop: SIGKILL failed; asking on its control channel", "pid", p.pid(), "err", err)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = p.manage(ctx, ins.ManageRequest{Op: ins.ManageStop})
		cancel()
	}
	select {
	case <-p.done:
	case <-time.After(grace):
		p.log.Error("INS did not exit; left running", "pid", p.pid())
	}
}

// insDrain is how long an INS told to stop lets its open connections
// finish; insStopGrace is how long the daemon waits for it to exit before
// SIGKILL.
const (
	insDrain     = 5 * time.Second
	insStopGrace = insDrain + 2*time.Second
)

// noFileLimit is the descriptor limit for an INS: the sandbox default,
// unless this process's hard limit is lower (an INS cannot raise it where
// the daemon could not either).
func noFileLimit() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Max < sandbox.DefaultNoFile {
		return rl.Max
	}
	return sandbox.DefaultNoFile
}

func addrList(ups []netstack.UplinkConfig) []string {
	var out []string
	for _, u := range ups {
		s := u.Name + "=" + u.Addr4.String()
		if u.Addr6.IsValid() {
			s += "," + u.Addr6.String()
		}
		out = append(out, s)
	}
	return out
}
