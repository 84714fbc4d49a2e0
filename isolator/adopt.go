package isolator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/peercred"
	"github.com/mpshim/mpshim/internal/procstat"
	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/mitigate"
	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

// INS outlive the daemon (docs/design.md, "Survival"): each binds a
// successor socket under the state directory before it seals itself, and
// the daemon keeps a state file there naming every INS it runs. A daemon
// that starts reads the file, checks that each pid is still that INS (its
// start time), connects to its successor socket and takes it over: its
// channel, its addresses, its namespace and, through the app server, its
// listeners. INS that are gone or cannot be taken over are replaced as
// after a death.

// stateVersion is the version of the state file's layout.
const stateVersion = 1

// maxStateFile bounds the state file read at start.
const maxStateFile = 4 << 20

// insState is one INS in the state file.
type insState struct {
	ID       int                     `json:"id"`
	PID      int                     `json:"pid"`
	Start    uint64                  `json:"start"` // clock ticks after boot (procstat)
	Started  time.Time               `json:"started"`
	NetNS    *netns.NS               `json:"netns"`
	Config   ins.ProcessConfig       `json:"config"`
	Uplinks  []netstack.UplinkConfig `json:"uplinks"` // as they are now, with their addresses
	Restarts int                     `json:"restarts,omitempty"`
	LastExit string                  `json:"last_exit,omitempty"`
}

// daemonState is the state file: the daemon that wrote it and its INS.
type daemonState struct {
	Version     int        `json:"version"`
	DaemonPID   int        `json:"daemon_pid"`
	DaemonStart uint64     `json:"daemon_start"`
	INS         []insState `json:"ins"`
}

// statePath is the state file; "" without a state directory.
func (d *Daemon) statePath() string {
	if d.cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(d.cfg.StateDir, "ins.json")
}

// successorPath is INS id's successor socket; "" without a state
// directory (the INS then ends with the daemon).
func (d *Daemon) successorPath(id int) string {
	if d.cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(d.cfg.StateDir, "ins", strconv.Itoa(id)+".sock")
}

// parseState reads a state file, checking what a successor relies on.
func parseState(b []byte) (daemonState, error) {
	var st daemonState
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&st); err != nil {
		return daemonState{}, fmt.Errorf("state file: %w", err)
	}
	if st.Version != stateVersion {
		return daemonState{}, fmt.Errorf("state file: version %d, want %d", st.Version, stateVersion)
	}
	seen := map[int]bool{}
	for _, e := range st.INS {
		switch {
		case e.ID < 1 || e.ID > 1<<15:
			return daemonState{}, fmt.Errorf("state file: INS id %d", e.ID)
		case seen[e.ID]:
			return daemonState{}, fmt.Errorf("state file: INS %d twice", e.ID)
		case e.PID < 2 || e.PID > 1<<22:
			return daemonState{}, fmt.Errorf("state file: INS %d: pid %d", e.ID, e.PID)
		case e.NetNS == nil || !netns.ValidName(e.NetNS.Name) || e.NetNS.Path != filepath.Join(netns.Dir, e.NetNS.Name):
			return daemonState{}, fmt.Errorf("state file: INS %d: bad namespace", e.ID)
		case len(e.Uplinks) == 0:
			return daemonState{}, fmt.Errorf("state file: INS %d: no uplinks", e.ID)
		}
		seen[e.ID] = true
	}
	return st, nil
}

// saveState writes the state file atomically (a new file renamed over the
// old), so that a daemon killed at any moment leaves a whole file.
func (d *Daemon) saveState() {
	path := d.statePath()
	if path == "" {
		return
	}
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	self, err := procstat.Self()
	if err != nil {
		d.log.Warn("state file", "err", err)
		return
	}
	st := daemonState{Version: stateVersion, DaemonPID: os.Getpid(), DaemonStart: self.StartTime}
	for _, b := range d.All() {
		p := b.(*insProc)
		e := insState{ID: p.id, PID: p.pid(), Start: p.startTicks, Started: p.started, NetNS: p.ns, Config: p.cfg,
			Uplinks: p.uplinkConfigs(), Restarts: p.restarts}
		// Rules are kept in the state directory on their own (and may be
		// many): an adopted INS is brought up to date by catchUp, which
		// sends the whole set to an INS whose starting set is unknown.
		e.Config.Mitigation = mitigate.Mitigation{}
		d.mu.Lock()
		if h := d.hist[p.id]; h != nil {
			e.Restarts, e.LastExit = h.restarts, h.lastExit
		}
		d.mu.Unlock()
		st.INS = append(st.INS, e)
	}
	b, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		d.log.Warn("state file", "err", err)
		return
	}
	if bytes.Equal(b, d.lastState) {
		return
	}
	if err := writeFileAtomic(path, b); err != nil {
		d.log.Warn("state file", "err", err)
		return
	}
	d.lastState = b
}

// removeState removes the state file at a deliberate stop: the INS are
// stopped, nothing is left to adopt.
func (d *Daemon) removeState() {
	if path := d.statePath(); path != "" {
		d.stateMu.Lock()
		_ = os.Remove(path)
		d.lastState = nil
		d.stateMu.Unlock()
	}
}

func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ins-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// keepStateFresh writes the state file whenever what it says changed
// (uplinks added or removed on running INS), until ctx ends.
func (d *Daemon) keepStateFresh(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.mu.Lock()
			stopping := d.stopping
			d.mu.Unlock()
			if !stopping {
				d.saveState()
			}
		}
	}
}

// adoptedListeners are the listeners one adopted INS reported.
type adoptedListeners struct {
	ins   int
	list  []ins.AdoptListener
	files []*os.File
	// orphaned is how long the INS served without a daemon; refused
	// counts the strangers it hung up on meanwhile.
	orphaned time.Duration
	refused  int
}

// adoption is what adoptAll found: the listeners the adopted INS reported
// (for the app server), the socket groups that own sockets in them, and
// the replacements of the INS that could not be adopted, to be started
// once the app server has the listeners (so that the replacements get
// them).
type adoption struct {
	listeners []adoptedListeners
	groups    []uint64
	replace   []func()
}

// adoptAll takes over the INS the state file names. INS that cannot be
// taken over are stopped, and their replacements returned. It fails only
// when the daemon that wrote the file still runs.
func (d *Daemon) adoptAll(ctx context.Context) (adoption, error) {
	path := d.statePath()
	if path == "" {
		return adoption{}, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return adoption{}, nil
	}
	if err != nil {
		return adoption{}, fmt.Errorf("state file: %w", err)
	}
	b, err := readAtMost(f, maxStateFile)
	f.Close()
	if err != nil {
		return adoption{}, fmt.Errorf("state file %s: %w", path, err)
	}
	st, err := parseState(b)
	if err != nil {
		d.log.Warn("state file unusable; no INS adopted", "path", path, "err", err)
		return adoption{}, nil
	}
	if st.DaemonPID != os.Getpid() && running(st.DaemonPID, st.DaemonStart) {
		return adoption{}, fmt.Errorf("the daemon with pid %d still runs with state directory %s", st.DaemonPID, d.cfg.StateDir)
	}
	var a adoption
	for _, e := range st.INS {
		d.mu.Lock()
		h := d.historyLocked(e.ID)
		h.restarts, h.lastExit = e.Restarts, e.LastExit
		d.nextID = max(d.nextID, e.ID+1)
		d.mu.Unlock()
		p, al, gs, err := d.adopt(ctx, e)
		if err != nil {
			d.log.Warn("INS not adopted; replacing it", "ins", e.ID, "pid", e.PID, "err", err)
			d.retire(e)
			keep := d.reserve(e.Uplinks)
			id, why := e.ID, "not adopted: "+err.Error()
			a.replace = append(a.replace, func() { go d.replace(id, keep, why, stableUptime) })
			continue
		}
		a.listeners = append(a.listeners, al)
		for _, g := range gs {
			if !slices.Contains(a.groups, g) {
				a.groups = append(a.groups, g)
			}
		}
		p.log.Info("INS adopted", "pid", p.pid(), "netns", p.ns.Name, "listeners", len(al.list), "groups", len(gs),
			"served_without_daemon", al.orphaned.Round(time.Millisecond), "uplinks", addrList(p.uplinkConfigs()))
		if al.refused > 0 {
			p.log.Warn("INS refused strangers on its successor socket while no daemon ran", "peers", al.refused)
		}
		// Its listeners are there already: it may take flows for the VIPs
		// (a balancer taken over gives it back its backend slot).
		d.lbUp(p)
	}
	// The previous daemon's INS not adopted leave the balancers now.
	d.lb.AdoptionDone()
	d.saveState()
	return a, nil
}

func readAtMost(f *os.File, n int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, n+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > n {
		return nil, fmt.Errorf("longer than %d bytes", n)
	}
	return b, nil
}

// reserve marks the addresses of ups used in their pools and returns
// those of uplinks this daemon has.
func (d *Daemon) reserve(ups []netstack.UplinkConfig) []netstack.UplinkConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	var kept []netstack.UplinkConfig
	for _, uc := range ups {
		for _, u := range d.uplinks {
			if u.cfg.Name == uc.Name {
				u.pool4.take(uc.Addr4)
				u.pool6.take(uc.Addr6)
				kept = append(kept, uc)
			}
		}
	}
	return kept
}

// retire ends an INS of the state file that is not adopted, if it still
// runs, and deletes its namespace.
func (d *Daemon) retire(e insState) {
	if running(e.PID, e.Start) {
		if pfd, err := unix.PidfdOpen(e.PID, 0); err == nil {
			if running(e.PID, e.Start) {
				_ = unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0)
				waitPidfd(pfd, 3*time.Second)
			}
			unix.Close(pfd)
		}
	}
	if err := e.NetNS.Close(); err != nil {
		d.log.Debug("namespace of an INS not adopted", "err", err)
	}
	_ = os.Remove(d.successorPath(e.ID))
}

// waitPidfd waits until the process of pfd has exited or limit passed
// (limit < 0: for ever); it reports whether it exited.
func waitPidfd(pfd int, limit time.Duration) bool {
	ms := -1
	if limit >= 0 {
		ms = int(limit / time.Millisecond)
	}
	fds := []unix.PollFd{{Fd: int32(pfd), Events: unix.POLLIN}}
	deadline := time.Now().Add(limit)
	for {
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			if limit >= 0 {
				ms = max(0, int(time.Until(deadline)/time.Millisecond))
			}
			continue
		}
		return err == nil && n > 0
	}
}

// running reports whether the process pid that started at start still
// runs: not a zombie (an INS whose daemon died is reparented, and its exit
// may not be reaped at once).
func running(pid int, start uint64) bool {
	st, err := procstat.Read(pid)
	return err == nil && st.StartTime == start && st.State != 'Z' && st.State != 'X'
}

// adopt takes over the running INS e: it checks the pid is that INS,
// connects to its successor socket (whose peer must be that pid), asks what
// it serves and gives it a log pipe.
func (d *Daemon) adopt(ctx context.Context, e insState) (_ *insProc, _ adoptedListeners, _ []uint64, err error) {
	if !running(e.PID, e.Start) {
		return nil, adoptedListeners{}, nil, errors.New("the process is gone")
	}
	pfd, err := unix.PidfdOpen(e.PID, 0)
	if err != nil {
		return nil, adoptedListeners{}, nil, fmt.Errorf("pidfd: %w", err)
	}
	// The pidfd names the process for good; the start time is checked
	// again so that the pid was not recycled in between.
	if !running(e.PID, e.Start) {
		unix.Close(pfd)
		return nil, adoptedListeners{}, nil, errors.New("the process is gone")
	}
	var ch *ctrl.Conn
	defer func() {
		if err != nil {
			if ch != nil {
				ch.Close()
			}
			unix.Close(pfd)
		}
	}()
	sock := d.successorPath(e.ID)
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		return nil, adoptedListeners{}, nil, fmt.Errorf("successor socket: %w", err)
	}
	cred, err := peercred.Of(c)
	if err != nil || int(cred.Pid) != e.PID {
		c.Close()
		return nil, adoptedListeners{}, nil, fmt.Errorf("successor socket %s is not INS pid %d's (peer %v, %v)", sock, e.PID, cred, err)
	}
	f, err := c.File()
	c.Close()
	if err != nil {
		return nil, adoptedListeners{}, nil, fmt.Errorf("successor socket: %w", err)
	}
	ch = ctrl.New(f)
	log := d.log.With("ins", e.ID)
	d.mu.Lock()
	var ups []insUplink
	for _, uc := range e.Uplinks {
		i := slices.IndexFunc(d.uplinks, func(u *uplinkState) bool { return u.cfg.Name == uc.Name })
		if i < 0 {
			d.mu.Unlock()
			return nil, adoptedListeners{}, nil, fmt.Errorf("uplink %s is not configured", uc.Name)
		}
		ups = append(ups, insUplink{u: d.uplinks[i], cfg: uc})
	}
	d.mu.Unlock()
	cfg := e.Config
	cfg.Stack.Uplinks = e.Uplinks
	proc, _ := os.FindProcess(e.PID)
	p := &insProc{id: e.ID, proc: proc, pidfd: pfd, startTicks: e.Start, ch: ch, ns: e.NetNS, cfg: cfg, started: e.Started,
		done: make(chan struct{}), log: log, ups: ups, carrierKick: make(chan struct{}, 1), restarts: e.Restarts}
	go p.readCtrl()

	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, _ := json.Marshal(ins.ManageRequest{Op: ins.ManageAdopt})
	r, err := ch.Call(cctx, ctrl.Frame{Kind: ctrl.KindManage}, b)
	if err != nil {
		return nil, adoptedListeners{}, nil, fmt.Errorf("adopt: %w", err)
	}
	var rep ins.AdoptReply
	if err := json.Unmarshal(r.Payload, &rep); err != nil || rep.Version != ins.AdoptVersion || rep.ID != e.ID ||
		len(rep.Listeners) != len(r.Files) {
		r.CloseFiles()
		return nil, adoptedListeners{}, nil, fmt.Errorf("adopt: INS of another version or a malformed answer (version %d, id %d, %d listeners, %d descriptors, %v)",
			rep.Version, rep.ID, len(rep.Listeners), len(r.Files), err)
	}
	al := adoptedListeners{ins: e.ID, list: rep.Listeners, files: r.Files, orphaned: rep.Orphaned, refused: rep.Refused}
	// Its output comes to this daemon's log from now on.
	if pr, pw, err := os.Pipe(); err == nil {
		lb, _ := json.Marshal(ins.ManageRequest{Op: ins.ManageLog})
		if lr, err := ch.Call(cctx, ctrl.Frame{Kind: ctrl.KindManage}, lb, pw); err == nil {
			lr.CloseFiles()
			go relayINSOutput(e.ID, pr)
		} else {
			pr.Close()
			log.Warn("INS output not relayed", "err", err)
		}
		pw.Close()
	}
	// The namespace is this daemon's from now on (no daemon reaps it).
	ns, err := netns.Adopt(ctx, e.ID, e.PID, e.NetNS.Name, e.NetNS.Links)
	if err != nil {
		for _, f := range al.files {
			f.Close()
		}
		return nil, adoptedListeners{}, nil, err
	}
	p.ns = ns
	d.reserve(e.Uplinks)
	d.mu.Lock()
	d.ins[e.ID] = p
	d.mu.Unlock()
	go d.reap(p, func() { p.ns.Close() })
	go d.syncCarrier(p)
	d.catchUp(ctx, p)
	p.kickCarrier()
	return p, al, rep.Groups, nil
}
