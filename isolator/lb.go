package isolator

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mpshim/mpshim/isolator/addrcheck"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/lbctl"
	"github.com/mpshim/mpshim/lb/autoscale"
	"github.com/mpshim/mpshim/lb/xdp"
)

// startLB loads a balancer on every uplink that has VIPs (package lbctl);
// the INS join as they come up.
//
// The balancers are pinned under /sys/fs/bpf/mpshim, or under
// <state dir>/bpf/mpshim when a BPF file system is mounted on
// <state dir>/bpf (a daemon whose /sys is private to it, as under
// `ip netns exec`, pins there so that the pins outlive it).
func (d *Daemon) startLB(ctx context.Context) error {
	if alt := filepath.Join(d.cfg.StateDir, "bpf"); d.cfg.StateDir != "" && xdp.IsBPFFS(alt) {
		d.lb.PinRoot = filepath.Join(alt, "mpshim")
	}
	d.mu.Lock()
	ups := append([]*uplinkState(nil), d.uplinks...)
	d.mu.Unlock()
	for _, u := range ups {
		if len(u.vips) == 0 {
			continue
		}
		own, addrs, err := u.cfg.TunnelAddrs()
		if err != nil {
			return err
		}
		lu := lbctl.Uplink{Name: u.cfg.Name, Interface: u.cfg.Interface, VIPs: u.vips, Tunnel4: own, GUEPort: uint16(u.cfg.GUE)}
		for i, r := range u.cfg.Remotes {
			lu.Remotes = append(lu.Remotes, lbctl.Remote{Name: r.Name, Addr: addrs[i], Weight: r.Weight})
		}
		if err := d.lb.AddUplink(ctx, lu); err != nil {
			return err
		}
	}
	return nil
}

// lbUp puts INS p behind the balancers of its uplinks.
func (d *Daemon) lbUp(p *insProc) {
	if d.lb.Uplinks() == 0 {
		return
	}
	macs := map[string]net.HardwareAddr{}
	for _, u := range p.uplinkConfigs() {
		a := u.Addr4.Addr()
		if !a.IsValid() {
			a = u.Addr6.Addr()
		}
		// The MAC claimAddrs gave the INS's macvlan.
		macs[u.Name] = net.HardwareAddr(addrcheck.StableMAC(u.Name, a))
	}
	d.lb.INSUp(p.id, macs)
}

// handleLB answers the `isolator lb` operations.
func (d *Daemon) handleLB(req api.Request) api.Response {
	var err error
	switch req.Op {
	case api.OpLBStatus:
		st, err := d.lb.Status()
		if err != nil {
			return api.Errorf("%v", err)
		}
		d.lbLiveConns(st)
		return api.Response{OK: true, LB: st}
	case api.OpLBWeight:
		err = d.lb.SetWeight(req.ID, req.N)
	case api.OpLBDrain:
		err = d.lb.Drain(req.ID)
	case api.OpLBUndrain:
		err = d.lb.Undrain(req.ID)
	default:
		err = fmt.Errorf("unknown lb operation %q", req.Op)
	}
	if err != nil {
		return api.Errorf("%v", err)
	}
	return api.Response{OK: true}
}

// lbLiveConns fills in the live connections of every local INS in st,
// asking each INS once (its count covers all its uplinks).
func (d *Daemon) lbLiveConns(st *api.LBStatus) {
	live := map[int]int{}
	for _, u := range st.Uplinks {
		for i := range u.Members {
			m := &u.Members[i]
			if m.ID >= lbctl.RemoteIDBase || m.State == "down" {
				continue
			}
			n, ok := live[m.ID]
			if !ok {
				n = -1
				if c, _, err := (lbFleet{d}).Load(context.Background(), m.ID); err == nil {
					n = c
				}
				live[m.ID] = n
			}
			m.Connections = n
		}
	}
}

// startAutoscale runs the autoscaler of cfg.Autoscale (validated) until
// ctx ends.
func (d *Daemon) startAutoscale(ctx context.Context) {
	if d.cfg.Autoscale == "" {
		return
	}
	cfg, _ := autoscale.ParseConfig(d.cfg.Autoscale)
	go d.lb.Autoscale(ctx, cfg, lbFleet{d}, autoscaleInterval)
}

// autoscaleInterval is the autoscaler's sampling period.
const autoscaleInterval = time.Second

// lbFleet is the daemon as the autoscaler sees it.
type lbFleet struct{ d *Daemon }

func (f lbFleet) Spawn(ctx context.Context, n int) ([]int, error) { return f.d.Spawn(ctx, n) }

func (f lbFleet) Kill(id int) error { return f.d.Kill(id) }

// Load returns INS id's live connections (its engine's count) and the CPU
// time it has used (from /proc: a sealed INS has none of its own).
func (f lbFleet) Load(ctx context.Context, id int) (int, time.Duration, error) {
	b, ok := f.d.Get(id)
	if !ok {
		return 0, 0, fmt.Errorf("no INS %d", id)
	}
	p := b.(*insProc)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := p.manage(ctx, ins.ManageRequest{Op: ins.ManageStats})
	if err != nil {
		return 0, 0, err
	}
	return st.Engine.Connected, procCPU(p.pid()), nil
}

// procCPU is the user and system time process pid has used.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) in parentheses:
	// utime and stime are the 14th and 15th fields of the line.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	sy, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(ut+sy) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100
