// Package lbctl is the daemon side of mpshim's load balancer (package lb):
// for every uplink that has VIPs it loads the XDP program (lb/xdp) on the
// uplink's interface and keeps a pool of the INS behind it (lb.Pool)
// current as INS come up (spawn, replacement), go (kill, death), change
// weight or drain. The daemon tells it about INS through one small
// interface (INSUp, INSGone); `isolator lb` reads and changes it.
package lbctl

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
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/lb"
	"github.com/mpshim/mpshim/lb/xdp"
)

// Uplink is one balanced uplink.
type Uplink struct {
	// Name is the uplink's name; Interface the host interface (the lower
	// device of the INS macvlans) the program is attached to.
	Name, Interface string
	// VIPs are the service addresses steered on it.
	VIPs []netip.Addr
	// Tunnel4 is this host's tunnel endpoint on the interface (invalid:
	// none); Remotes the other hosts behind this balancer.
	Tunnel4 netip.Addr
	Remotes []Remote
	// GUEPort, if set, is the UDP port of GUE: packets to Remotes go in
	// GUE to that port of theirs instead of IP-in-IP, and this host's
	// endpoint takes GUE on it too.
	GUEPort uint16
}

// Remote is another isolator host behind the balancer.
type Remote struct {
	Name   string
	Addr   netip.Addr // its tunnel endpoint
	Weight int
}

// RemoteIDBase numbers remote hosts in the pools: the i-th remote of an
// uplink (from 0) is member RemoteIDBase+1+i, above any INS id.
const RemoteIDBase = 100000

// Manager holds the balancers of the daemon's uplinks. The hooks the
// daemon calls (INSUp, INSGone, Forget, Uplinks, Close) do nothing on a nil
// Manager.
type Manager struct {
	log   *slog.Logger
	netNS string // the uplinks' network namespace ("" the daemon's)

	// PinRoot is where balancers are pinned (DefaultPinRoot; "" pins
	// nothing): PinRoot/<namespace>/<interface>, see PinDir.
	PinRoot string
	// StaleGrace is how long a taken-over balancer keeps the INS of the
	// previous daemon that have not been adopted (DefaultStaleGrace).
	StaleGrace time.Duration

	mu      sync.Mutex
	uplinks map[string]*balanced
	// down are INS that died and whose replacement is not up yet.
	down map[int]bool
	// weights are weights set with SetWeight, kept across replacements.
	weights map[int]uint32
	// policy is the autoscaling policy ("" off), decisions its record.
	policy    string
	decisions []api.LBDecision
}

type balanced struct {
	Uplink
	bal    *xdp.Balancer
	pool   *lb.Pool
	pinDir string // "" when not pinned
}

// DefaultPinRoot is where a Manager pins its balancers: the XDP program
// and its maps outlive a killed daemon there, and the next daemon takes
// them over with their connection table.
const DefaultPinRoot = xdp.BPFFS + "/mpshim"

// DefaultStaleGrace is Manager.StaleGrace's default.
const DefaultStaleGrace = 30 * time.Second

// PinDir is where the balancer of interface ifname in the network
// namespace with inode nsInode is pinned under root: two daemons in
// different namespaces never share one, a restarted daemon in the same
// namespace finds its predecessor's.
func PinDir(root string, nsInode uint64, ifname string) string {
	return filepath.Join(root, fmt.Sprintf("netns-%d", nsInode), ifname)
}

// nsInode is the inode of the calling thread's network namespace.
func nsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("network namespace: %w", err)
	}
	return st.Ino, nil
}

// New returns a manager without uplinks; netNS names the network namespace
// of the uplink interfaces ("" is the caller's).
func New(log *slog.Logger, netNS string) *Manager {
	return &Manager{log: log, netNS: netNS, PinRoot: DefaultPinRoot, StaleGrace: DefaultStaleGrace, uplinks: map[string]*balanced{}, down: map[int]bool{}, weights: map[int]uint32{}}
}

// inNS runs f in the uplinks' network namespace.
func (m *Manager) inNS(f func() error) error {
	if m.netNS == "" {
		return f()
	}
	p := m.netNS
	if !filepath.IsAbs(p) {
		p = filepath.Join("/run/netns", p)
	}
	return netns.Do(p, f)
}

// AddUplink loads a balancer on u.Interface for u.VIPs. The VIPs are
// answered (ARP, NDP) with the interface's MAC from here on; until INS
// join, packets for them find no backend and are dropped.
func (m *Manager) AddUplink(ctx context.Context, u Uplink) (err error) {
	if len(u.VIPs) == 0 {
		return fmt.Errorf("lb: uplink %s: no VIPs", u.Name)
	}
	m.mu.Lock()
	_, dup := m.uplinks[u.Name]
	m.mu.Unlock()
	if dup {
		return fmt.Errorf("lb: uplink %s is balanced already", u.Name)
	}
	var cfg xdp.Config
	if m.PinRoot != "" {
		var ino uint64
		var err error
		if strings.HasPrefix(m.PinRoot, xdp.BPFFS+"/") {
			err = xdp.MountBPFFS()
		} else if !xdp.IsBPFFS(filepath.Dir(m.PinRoot)) {
			err = fmt.Errorf("%s is not on a BPF file system", m.PinRoot)
		}
		if err == nil {
			err = m.inNS(func() (err error) { ino, err = nsInode(); return err })
		}
		if err != nil {
			m.log.Warn("lb: balancer not pinned: it stops with the daemon", "uplink", u.Name, "err", err)
		} else {
			cfg.PinDir = PinDir(m.PinRoot, ino, u.Interface)
		}
	}
	bal, err := xdp.New(cfg)
	if err != nil {
		return fmt.Errorf("lb: uplink %s: %w", u.Name, err)
	}
	defer func() {
		if err != nil {
			bal.Close()
		}
	}()
	var mac net.HardwareAddr
	err = m.inNS(func() error {
		ifc, err := net.InterfaceByName(u.Interface)
		if err != nil {
			return fmt.Errorf("interface %s: %w", u.Interface, err)
		}
		mac = ifc.HardwareAddr
		// Generic (socket buffer) mode works on every interface, the
		// virtual ones the INS macvlans often sit on included.
		return bal.Attach(ifc.Index, true)
	})
	if err != nil {
		return fmt.Errorf("lb: uplink %s: %w", u.Name, err)
	}
	if len(mac) != 6 {
		return fmt.Errorf("lb: uplink %s: interface %s has no Ethernet address", u.Name, u.Interface)
	}
	for _, v := range u.VIPs {
		if err := bal.AddVIP(v, mac); err != nil {
			return fmt.Errorf("lb: uplink %s: %w", u.Name, err)
		}
	}
	if u.Tunnel4.IsValid() {
		add := bal.AddTunnelEndpoint
		if u.GUEPort != 0 {
			add = func(a netip.Addr) error { return bal.AddGUEEndpoint(a, u.GUEPort) }
		}
		if err := add(u.Tunnel4); err != nil {
			return fmt.Errorf("lb: uplink %s: %w", u.Name, err)
		}
	}
	b := &balanced{Uplink: u, bal: bal, pool: lb.NewPool(bal, 0), pinDir: cfg.PinDir}
	m.mu.Lock()
	m.uplinks[u.Name] = b
	m.mu.Unlock()
	m.log.Info("load balancer on", "uplink", u.Name, "interface", u.Interface, "vips", u.VIPs, "mac", mac.String(), "tunnel4", u.Tunnel4,
		"pinned", cfg.PinDir, "taken_over", bal.TookOver(), "program_replaced", bal.Replaced())
	if bal.TookOver() {
		// INS of the previous daemon that are not adopted by then lose
		// their flows to the table.
		time.AfterFunc(m.StaleGrace, func() { m.dropStale(b) })
	}
	for i, r := range u.Remotes {
		go m.addRemote(ctx, b, RemoteIDBase+1+i, r, mac)
	}
	return nil
}

// addRemote puts a remote host into b's pool once the MAC of the next hop
// towards it is known (the host's neighbour table, after a datagram to it
// from the uplinks' namespace made the kernel resolve it), trying every
// second until ctx ends.
func (m *Manager) addRemote(ctx context.Context, b *balanced, id int, r Remote, srcMAC net.HardwareAddr) {
	log := m.log.With("uplink", b.Name, "remote", r.Name, "tunnel4", r.Addr)
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
		hop, err := m.nextHopMAC(ctx, b.Interface, r.Addr)
		if err != nil {
			log.Warn("lb: remote host not reachable yet", "err", err)
			continue
		}
		w := uint32(max(r.Weight, 1))
		mem := lb.Member{ID: id, Name: "remote-" + r.Name, MAC: hop, Weight: w,
			Tunnel: &xdp.Tunnel{Src: b.Tunnel4, Dst: r.Addr, SrcMAC: srcMAC, GUEPort: b.GUEPort}}
		m.mu.Lock()
		err = b.pool.Add(mem)
		m.mu.Unlock()
		if err != nil {
			log.Error("lb: add remote host", "err", err)
			return
		}
		log.Info("lb: remote host added", "id", id, "next_hop", hop.String(), "weight", w)
		m.watchRemote(ctx, b, id, r.Addr, log)
		return
	}
}

// Remote host health: an ICMP echo to its tunnel address every
// remoteProbe; after remoteMisses unanswered ones in a row the host gets no
// new flows (drained: the flows it has stay on it), and it gets them again
// at the next answer.
const (
	remoteProbe  = time.Second
	remoteMisses = 3
	// remoteRelearn is how many probes apart the next hop's MAC is
	// looked up again.
	remoteRelearn = 10
)

// relearn looks the MAC of the next hop towards remote id up again and
// gives it to the member if it changed.
func (m *Manager) relearn(ctx context.Context, b *balanced, id int, addr netip.Addr, log *slog.Logger) {
	hop, err := m.nextHopMAC(ctx, b.Interface, addr)
	if err != nil {
		log.Warn("lb: next hop towards remote host", "err", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, x := range b.pool.Members() {
		if x.ID != id || x.MAC.String() == hop.String() {
			continue
		}
		if err := b.pool.SetMAC(id, hop); err != nil {
			log.Error("lb: next hop towards remote host", "err", err)
			return
		}
		log.Info("lb: next hop towards remote host changed", "was", x.MAC.String(), "now", hop.String())
	}
}

// watchRemote probes remote host id (at addr) until ctx ends or it leaves
// the pool, draining and undraining it by its answers.
func (m *Manager) watchRemote(ctx context.Context, b *balanced, id int, addr netip.Addr, log *slog.Logger) {
	misses, drained := 0, false
	for seq := 1; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(remoteProbe):
		}
		err := m.ping(addr, id, seq, remoteProbe)
		m.mu.Lock()
		var change error
		switch {
		case err == nil && drained:
			change = b.pool.Undrain(id)
			if change == nil {
				drained = false
				log.Info("lb: remote host answers again; new flows to it")
			}
		case err == nil:
		default:
			misses++
			if misses >= remoteMisses && !drained {
				change = b.pool.Drain(id)
				if change == nil {
					drained = true
					log.Warn("lb: remote host does not answer; no new flows to it", "misses", misses, "err", err)
				}
			}
		}
		if err == nil {
			misses = 0
		}
		m.mu.Unlock()
		if err == nil && seq%remoteRelearn == 0 {
			m.relearn(ctx, b, id, addr, log)
		}
		if errors.Is(change, lb.ErrUnknown) {
			return
		}
		if change != nil {
			log.Error("lb: remote host state", "err", change)
		}
	}
}

// ping sends one ICMP echo request to addr from the uplinks' namespace and
// waits up to limit for its answer.
func (m *Manager) ping(addr netip.Addr, id, seq int, limit time.Duration) error {
	var c net.PacketConn
	err := m.inNS(func() error {
		var err error
		c, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	defer c.Close()
	msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'm', 'p', 's', 'h', 'i', 'm'}
	var sum uint32
	for i := 0; i < len(msg); i += 2 {
		sum += uint32(msg[i])<<8 | uint32(msg[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	msg[2], msg[3] = byte(^sum>>8), byte(^sum)
	c.SetDeadline(time.Now().Add(limit))
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		return fmt.Errorf("echo request to %v: %w", addr, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("no echo reply from %v: %w", addr, err)
		}
		ip, ok := from.(*net.IPAddr)
		if !ok || n < 8 || buf[0] != 0 || !ip.IP.Equal(addr.AsSlice()) {
			continue
		}
		if int(buf[4])<<8|int(buf[5]) == id&0xffff && int(buf[6])<<8|int(buf[7]) == seq&0xffff {
			return nil
		}
	}
}

// nextHopMAC is the MAC of the next hop from iface towards dst in the
// uplinks' namespace.
func (m *Manager) nextHopMAC(ctx context.Context, iface string, dst netip.Addr) (net.HardwareAddr, error) {
	out, err := netns.RunIP(ctx, m.netNS, "-4", "route", "get", dst.String(), "oif", iface)
	if err != nil {
		return nil, err
	}
	hop := dst
	f := strings.Fields(string(out))
	if i := slices.Index(f, "via"); i >= 0 && i+1 < len(f) {
		if hop, err = netip.ParseAddr(f[i+1]); err != nil {
			return nil, fmt.Errorf("route to %v: via %q", dst, f[i+1])
		}
	}
	// A datagram to the next hop makes the kernel resolve it.
	_ = m.inNS(func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(hop, 9)))
		if err == nil {
			c.Write([]byte{0})
			c.Close()
		}
		return nil
	})
	for range 20 {
		out, err := netns.RunIP(ctx, m.netNS, "neigh", "show", hop.String(), "dev", iface)
		if err != nil {
			return nil, err
		}
		f := strings.Fields(string(out))
		if i := slices.Index(f, "lladdr"); i >= 0 && i+1 < len(f) && !slices.Contains(f, "FAILED") {
			return net.ParseMAC(f[i+1])
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("next hop %v towards %v on %s not resolved", hop, dst, iface)
}

// Uplinks reports whether any uplink is balanced.
func (m *Manager) Uplinks() int {
	if m == nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.uplinks)
}

// INSUp puts INS id behind every balanced uplink it has a NIC on: macs
// maps uplink names to the MAC of its NIC there. A replacement of a dead
// INS takes the weight its predecessor had; an INS adopted from a previous
// daemon gets the backend slot its MAC had in a balancer taken over, so
// the connections it holds stay its own (call AdoptionDone after the last).
func (m *Manager) INSUp(id int, macs map[string]net.HardwareAddr) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	w := uint32(1)
	if x, ok := m.weights[id]; ok {
		w = x
	}
	delete(m.down, id)
	for name, b := range m.uplinks {
		mac, ok := macs[name]
		if !ok {
			continue
		}
		_ = b.pool.Remove(id) // a replacement whose predecessor's removal raced
		if err := b.pool.Add(lb.Member{ID: id, Name: fmt.Sprintf("ins-%d", id), MAC: mac, Weight: w}); err != nil {
			m.log.Error("lb: add INS", "uplink", name, "ins", id, "err", err)
			continue
		}
		m.log.Info("lb: INS added", "uplink", name, "ins", id, "mac", mac.String(), "weight", w)
	}
}

// AdoptionDone tells the balancers that every INS of the previous daemon
// that will be adopted has been: the flows of the others fall back to the
// table now rather than after StaleGrace.
func (m *Manager) AdoptionDone() {
	if m == nil {
		return
	}
	m.mu.Lock()
	bs := make([]*balanced, 0, len(m.uplinks))
	for _, b := range m.uplinks {
		bs = append(bs, b)
	}
	m.mu.Unlock()
	for _, b := range bs {
		m.dropStale(b)
	}
}

func (m *Manager) dropStale(b *balanced) {
	m.mu.Lock()
	live := m.uplinks[b.Name] == b
	m.mu.Unlock()
	if !live {
		return
	}
	if err := b.bal.DropStale(); err != nil {
		m.log.Error("lb: drop the previous daemon's INS", "uplink", b.Name, "err", err)
	}
	m.sweep(b)
}

// sweep deletes b's established flows of INS no longer in its pool.
func (m *Manager) sweep(b *balanced) {
	m.mu.Lock()
	live := m.uplinks[b.Name] == b
	m.mu.Unlock()
	if !live {
		return
	}
	n, err := b.bal.Sweep()
	if err != nil {
		m.log.Debug("lb: sweep established flows", "uplink", b.Name, "err", err)
		return
	}
	m.log.Debug("lb: established flows of removed INS deleted", "uplink", b.Name, "flows", n)
}

// INSGone takes INS id out of every pool: its flows fall back to the
// table, which no longer names it. died marks it down until INSUp (its
// replacement) or Forget.
func (m *Manager) INSGone(id int, died bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	removed := false
	for name, b := range m.uplinks {
		if err := b.pool.Remove(id); err != nil {
			if !errors.Is(err, lb.ErrUnknown) {
				m.log.Error("lb: remove INS", "uplink", name, "ins", id, "err", err)
			}
			continue
		}
		removed = true
		m.log.Info("lb: INS removed", "uplink", name, "ins", id, "died", died)
		go m.sweep(b)
	}
	if died && removed {
		m.down[id] = true
	}
	if !died {
		delete(m.weights, id)
		delete(m.down, id)
	}
}

// Forget drops what is remembered of INS id (it will not be replaced).
func (m *Manager) Forget(id int) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.down, id)
	delete(m.weights, id)
}

// SetWeight sets INS id's weight (≥ 1) on every balanced uplink.
func (m *Manager) SetWeight(id int, w int) error {
	if w < 1 || w > 1<<16 {
		return fmt.Errorf("lb: weight %d: want 1..65536 (drain an INS to give it no new flows)", w)
	}
	return m.each(id, func(p *lb.Pool) error { return p.SetWeight(id, uint32(w)) }, func() { m.weights[id] = uint32(w) })
}

// Drain gives INS id no new flows; its connections stay.
func (m *Manager) Drain(id int) error {
	return m.each(id, func(p *lb.Pool) error { return p.Drain(id) }, nil)
}

// Undrain gives a draining INS new flows again.
func (m *Manager) Undrain(id int) error {
	return m.each(id, func(p *lb.Pool) error { return p.Undrain(id) }, nil)
}

func (m *Manager) each(id int, f func(*lb.Pool) error, done func()) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.uplinks) == 0 {
		return errors.New("lb: no uplink has VIPs (--vip or vips: in the configuration)")
	}
	found := false
	for name, b := range m.uplinks {
		err := f(b.pool)
		if errors.Is(err, lb.ErrUnknown) {
			continue
		}
		if err != nil {
			return fmt.Errorf("uplink %s: %w", name, err)
		}
		found = true
	}
	if !found {
		return fmt.Errorf("lb: INS %d is behind no balancer (see `isolator lb status`)", id)
	}
	if done != nil {
		done()
	}
	return nil
}

// Status describes every balanced uplink and its INS.
func (m *Manager) Status() (*api.LBStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := &api.LBStatus{Uplinks: []api.LBUplink{}}
	names := make([]string, 0, len(m.uplinks))
	for n := range m.uplinks {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		b := m.uplinks[n]
		u := api.LBUplink{Name: n, Interface: b.Interface, Members: []api.LBMember{}}
		for _, v := range b.VIPs {
			u.VIPs = append(u.VIPs, v.String())
		}
		est, nw, _, err := b.bal.Flows()
		if err != nil {
			return nil, fmt.Errorf("lb: uplink %s: %w", n, err)
		}
		u.Established, u.New = est, nw
		ms, err := b.pool.Status()
		if err != nil {
			return nil, fmt.Errorf("lb: uplink %s: %w", n, err)
		}
		for _, x := range ms {
			lm := api.LBMember{ID: x.ID, Name: x.Name, MAC: x.MAC.String(), Weight: x.Weight,
				State: string(x.State), Share: x.Share, Connections: -1, Flows: x.Connections, NewFlows: x.NewFlows, NewFlowsPerSec: x.NewFlowsPerSec}
			if x.Tunnel != nil {
				lm.Remote = x.Tunnel.Dst.String()
			}
			u.Members = append(u.Members, lm)
		}
		for id := range m.down {
			if !slices.ContainsFunc(u.Members, func(x api.LBMember) bool { return x.ID == id }) {
				u.Members = append(u.Members, api.LBMember{ID: id, Name: fmt.Sprintf("ins-%d", id), State: "down", Connections: -1})
			}
		}
		slices.SortFunc(u.Members, func(a, b api.LBMember) int { return a.ID - b.ID })
		st.Uplinks = append(st.Uplinks, u)
	}
	st.Autoscale = m.policy
	st.Decisions = slices.Clone(m.decisions)
	return st, nil
}

// Close detaches every program and removes its pins.
func (m *Manager) Close() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, b := range m.uplinks {
		errs = append(errs, b.bal.Close())
		if b.pinDir != "" {
			_ = os.Remove(filepath.Dir(b.pinDir)) // the namespace's, once empty
		}
	}
	m.uplinks = map[string]*balanced{}
	return errors.Join(errs...)
}
