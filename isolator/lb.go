package isolator

import (
	"fmt"
	"net"

	"github.com/mpshim/mpshim/isolator/addrcheck"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/lbctl"
)

// startLB loads a balancer on every uplink that has VIPs (package lbctl);
// the INS join as they come up.
func (d *Daemon) startLB() error {
	d.mu.Lock()
	ups := append([]*uplinkState(nil), d.uplinks...)
	d.mu.Unlock()
	for _, u := range ups {
		if len(u.vips) == 0 {
			continue
		}
		if err := d.lb.AddUplink(lbctl.Uplink{Name: u.cfg.Name, Interface: u.cfg.Interface, VIPs: u.vips}); err != nil {
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
		d.autoscaleStatus(st)
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

// autoscaleStatus adds the autoscaler's policy and decisions to st.
func (d *Daemon) autoscaleStatus(st *api.LBStatus) {}
