// Package xdp is the data path of mpshim's load balancer: an XDP program,
// assembled here with cilium/ebpf's asm (no C toolchain), that steers every
// packet for a VIP to one backend (an INS's NIC on a macvlan of the
// interface the program is attached to) by rewriting the frame's
// destination MAC address, and the maps it works from.
//
// Per packet to a VIP: the established-flow table (an LRU hash) first, then
// the new-flow table (a second, smaller LRU hash), then the Maglev table
// (package lb/maglev) on a hash of the 5-tuple. A flow's first packet (for
// TCP the SYN) goes into the new-flow table; its next non-SYN packet (for
// TCP the handshake's ACK, for UDP the second datagram) promotes it to the
// established table. A flood of spoofed SYNs or one-packet flows therefore
// churns only the new-flow table and cannot evict an established flow.
//
// The Maglev table is an array of two halves with an index saying which
// half is live: SetBackends writes the idle half (through a memory mapping)
// and then flips the index, so a change applies to the next packet and no
// packet sees a half-written table. A backend removed from the set is
// marked down: its flows fall back to the table. A draining backend has no
// table entries but keeps its flows.
//
// Non-first fragments go where their first fragment went (a fragment map
// keyed by addresses, protocol and fragment ID); without that record they
// are dropped rather than guessed. ICMP errors about a flow (unreachable,
// fragmentation needed, packet too big, time exceeded) go by the reversed
// flow key of the packet they quote, so PMTU discovery reaches the INS
// that owns the flow. Frames too short to hold an IP header, non-IP frames
// and packets for other addresses pass untouched; malformed or truncated
// packets for a VIP are dropped.
//
// The program answers ARP requests and neighbour solicitations for a VIP
// itself (XDP_TX) with the VIP's MAC, the address of the interface it is
// attached to, so the VIP is answered once and no backend sees the
// question. Backends must hold the VIP without answering for it or
// soliciting from it (as with direct server return anywhere). Other NDP
// messages for a VIP go to every backend (broadcast MAC).
//
// A backend may be on another host (Backend.Tunnel): its packets leave the
// interface again (XDP_TX) inside an IPv4 header to that host (IP-in-IP,
// protocol 41 for IPv6 packets), or inside IPv4 and UDP headers to a port
// of it (GUE's variant 1, Tunnel.GUEPort), as Katran sends them; the
// balancer there, with that address as a tunnel endpoint
// (AddTunnelEndpoint, AddGUEEndpoint), removes the headers and steers the
// packet to one of its own backends, which reply to the client directly.
// The outer headers add 20 bytes (28 with GUE): the path between the hosts
// needs an MTU that much above the clients'.
package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/mpshim/mpshim/lb/maglev"
)

// Defaults of Config.
const (
	DefaultMaxBackends = 256
	DefaultEstEntries  = 1 << 18
	DefaultNewEntries  = 1 << 16
	DefaultFragEntries = 1 << 13
	DefaultFlowCache   = 1 << 16
	maxVIPs            = 64
)

// tableValue is the size of a Maglev table entry: the backend id and 4
// bytes of padding, because the kernel lays array elements out 8 bytes apart
// and the table is written through a memory mapping.
const tableValue = 8

// mmapable is BPF_F_MMAPABLE.
const mmapable = 1 << 10

// Config sizes the balancer's maps; zero fields take the defaults.
type Config struct {
	// TableSize is the Maglev table size, a prime (maglev.DefaultSize).
	TableSize int
	// MaxBackends bounds backend IDs (0..MaxBackends-1).
	MaxBackends int
	// EstEntries bounds the established-flow table, NewEntries the
	// new-flow table, FragEntries the fragment map.
	EstEntries, NewEntries, FragEntries int
	// FlowCache is the number of slots (a power of two) of the flow
	// cache in front of the established table: one cache line per flow,
	// so that an established packet usually reads one line of the maps.
	FlowCache int
	// PinDir, if set, is a directory on the BPF file system (see
	// MountBPFFS) where the maps, the program and the XDP link are
	// pinned, so that the program stays attached and the connection table
	// survives the process. New takes over a balancer pinned there (see
	// TookOver) instead of loading one; Close removes the pins and
	// detaches, Release keeps them.
	PinDir string
}

// State is a backend's state.
type State uint8

// Backend states.
const (
	// Up backends get new flows by their weight and keep their flows.
	Up State = stateUp
	// Draining backends get no new flows but keep their flows.
	Draining State = stateDraining
)

// String names the state.
func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Draining:
		return "draining"
	}
	return "down"
}

// Backend is one destination.
type Backend struct {
	// ID is the backend's slot, 0..MaxBackends-1, stable for its life.
	ID uint32
	// Name places the backend in the Maglev table (see maglev.Backend).
	Name string
	// MAC is the address frames for this backend get.
	MAC net.HardwareAddr
	// Weight is its relative share of new flows.
	Weight uint32
	// State is Up or Draining.
	State State
	// Tunnel, if set, makes this a backend on another host: its packets
	// leave the interface again (XDP_TX) inside an IPv4 header (IP-in-IP,
	// or protocol 41 for IPv6) from Tunnel.Src to Tunnel.Dst, in a frame
	// to MAC (the next hop towards Tunnel.Dst) from Tunnel.SrcMAC. The
	// balancer there (AddTunnelEndpoint) removes the header and steers the
	// packet to one of its own backends, which reply directly.
	Tunnel *Tunnel
}

// Tunnel is the outer header of packets for a backend on another host.
type Tunnel struct {
	// Src and Dst are IPv4 addresses: this host's and the other's tunnel
	// endpoint.
	Src, Dst netip.Addr
	// SrcMAC is the source of the outer frame (the interface's MAC).
	SrcMAC net.HardwareAddr
	// GUEPort, if set, sends the packets in UDP to this port instead
	// (GUE's variant 1: the IP packet right after the UDP header, as
	// Katran sends them; the source port from the flow's hash), for a
	// balancer there that takes GUE on it (AddGUEEndpoint).
	GUEPort uint16
}

// value is the backend's entry in the backend map (see prog.go).
func (x Backend) value() ([backendValue]byte, error) {
	var v [backendValue]byte
	copy(v[beMAC:], x.MAC)
	v[beState] = byte(x.State)
	if x.Tunnel == nil {
		return v, nil
	}
	t := x.Tunnel
	if !t.Src.Is4() || !t.Dst.Is4() || t.Src.IsUnspecified() || t.Dst.IsUnspecified() || t.Dst.IsMulticast() {
		return v, fmt.Errorf("lb/xdp: backend %d: tunnel %v -> %v: want IPv4 unicast addresses", x.ID, t.Src, t.Dst)
	}
	if len(t.SrcMAC) != 6 {
		return v, fmt.Errorf("lb/xdp: backend %d: tunnel source MAC %v is not 6 bytes", x.ID, t.SrcMAC)
	}
	v[beKind] = kindTunnel
	if t.GUEPort != 0 {
		v[beKind] = kindGUE
		binary.BigEndian.PutUint16(v[beTunPort:], t.GUEPort)
	}
	s, d := t.Src.As4(), t.Dst.As4()
	copy(v[beTunSrc:], s[:])
	copy(v[beTunDst:], d[:])
	copy(v[beTunSrcMAC:], t.SrcMAC)
	// The outer header's words that do not change: version and length,
	// the DF flag and both addresses (TTL, protocol and total length are
	// added per packet).
	sum := uint32(0x4500) + 0x4000
	for _, a := range [][4]byte{s, d} {
		sum += uint32(a[0])<<8 | uint32(a[1])
		sum += uint32(a[2])<<8 | uint32(a[3])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.NativeEndian.PutUint16(v[beTunSum:], uint16(sum))
	return v, nil
}

// Balancer is the loaded program with its maps.
type Balancer struct {
	cfg Config

	vips, est, new, frags, ctlMap, table, backends, bstats, stats, tunnels, cache *ebpf.Map
	prog                                                                          *ebpf.Program
	mem                                                                           *ebpf.Memory

	mu sync.Mutex
	// ctl is the control entry as last written (see prog.go): the live
	// table half, the generation, the fast path's prefilter.
	ctl      [ctlValue]byte
	current  []Backend
	tab      *maglev.Table
	links    []link.Link
	tookOver bool
	// replaced says the taken-over program was of another version and
	// this one's took its place.
	replaced bool
	// stale are the backends of a taken-over balancer not named since.
	stale map[uint32]net.HardwareAddr
}

// New creates the maps and loads the program, without attaching it.
func New(cfg Config) (_ *Balancer, err error) {
	if cfg.TableSize == 0 {
		cfg.TableSize = maglev.DefaultSize
	}
	if cfg.MaxBackends == 0 {
		cfg.MaxBackends = DefaultMaxBackends
	}
	if cfg.EstEntries == 0 {
		cfg.EstEntries = DefaultEstEntries
	}
	if cfg.NewEntries == 0 {
		cfg.NewEntries = DefaultNewEntries
	}
	if cfg.FragEntries == 0 {
		cfg.FragEntries = DefaultFragEntries
	}
	if cfg.FlowCache == 0 {
		cfg.FlowCache = DefaultFlowCache
	}
	if cfg.FlowCache < 1 || cfg.FlowCache > 1<<24 || cfg.FlowCache&(cfg.FlowCache-1) != 0 {
		return nil, fmt.Errorf("lb/xdp: flow cache of %d slots: want a power of two up to %d", cfg.FlowCache, 1<<24)
	}
	if _, err := maglev.New(nil, cfg.TableSize); err != nil {
		return nil, fmt.Errorf("lb/xdp: %w", err)
	}
	if cfg.MaxBackends < 1 || cfg.MaxBackends > 1<<16 {
		return nil, fmt.Errorf("lb/xdp: %d backends: want 1..65536", cfg.MaxBackends)
	}
	for _, n := range []int{cfg.EstEntries, cfg.NewEntries, cfg.FragEntries} {
		if n < 1 || n > 1<<24 {
			return nil, fmt.Errorf("lb/xdp: table of %d entries: want 1..%d", n, 1<<24)
		}
	}
	b := &Balancer{cfg: cfg}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	specs := map[string]ebpf.MapSpec{
		"vips":     {Name: "lb_vips", Type: ebpf.Hash, KeySize: 16, ValueSize: 8, MaxEntries: maxVIPs},
		"est":      {Name: "lb_est", Type: ebpf.LRUHash, KeySize: KeySize, ValueSize: flowValue, MaxEntries: uint32(cfg.EstEntries)},
		"new":      {Name: "lb_new", Type: ebpf.LRUHash, KeySize: KeySize, ValueSize: flowValue, MaxEntries: uint32(cfg.NewEntries)},
		"frags":    {Name: "lb_frags", Type: ebpf.LRUHash, KeySize: KeySize, ValueSize: flowValue, MaxEntries: uint32(cfg.FragEntries)},
		"ctl":      {Name: "lb_ctl", Type: ebpf.Array, KeySize: 4, ValueSize: ctlValue, MaxEntries: 1},
		"table":    {Name: "lb_table", Type: ebpf.Array, KeySize: 4, ValueSize: tableValue, MaxEntries: uint32(2 * cfg.TableSize), Flags: mmapable},
		"backends": {Name: "lb_backends", Type: ebpf.Array, KeySize: 4, ValueSize: backendValue, MaxEntries: uint32(cfg.MaxBackends)},
		"tunnels":  {Name: "lb_tunnels", Type: ebpf.Hash, KeySize: 16, ValueSize: 8, MaxEntries: maxVIPs},
		"bstats":   {Name: "lb_bstats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(cfg.MaxBackends)},
		"stats":    {Name: "lb_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: NumCounters},
		// Memory-mapped only so that every slot is a line of its own.
		"cache": {Name: "lb_cache", Type: ebpf.Array, KeySize: 4, ValueSize: cacheValue, MaxEntries: uint32(cfg.FlowCache), Flags: mmapable},
	}
	if cfg.PinDir != "" {
		ok, err := b.takeOver(cfg.PinDir, specs)
		if err == nil && ok {
			if b.mem, err = b.table.Memory(); err != nil {
				return nil, fmt.Errorf("lb/xdp: map the table: %w", err)
			}
			b.tookOver = true
			return b, nil
		}
		// Nothing pinned, or something that does not fit: start afresh.
		b.close(false)
		*b = Balancer{cfg: cfg}
		if err := os.RemoveAll(cfg.PinDir); err != nil {
			return nil, fmt.Errorf("lb/xdp: remove stale pins: %w", err)
		}
	}
	for _, p := range b.pinned() {
		s := specs[p.name]
		m, err := ebpf.NewMap(&s)
		if err != nil {
			return nil, fmt.Errorf("lb/xdp: create map %s: %w", s.Name, err)
		}
		*p.m = m
	}
	if b.mem, err = b.table.Memory(); err != nil {
		return nil, fmt.Errorf("lb/xdp: map the table: %w", err)
	}
	empty := make([]byte, 2*tableValue*cfg.TableSize)
	for i := range empty {
		empty[i] = 0xff
	}
	if _, err := b.mem.WriteAt(empty, 0); err != nil {
		return nil, fmt.Errorf("lb/xdp: clear the table: %w", err)
	}
	binary.NativeEndian.PutUint32(b.ctl[ctlGen:], 1)
	if err := b.writeCtl(); err != nil {
		return nil, err
	}
	if b.prog, err = b.load(); err != nil {
		return nil, err
	}
	if cfg.PinDir != "" {
		if err := b.pin(cfg.PinDir); err != nil {
			return nil, fmt.Errorf("lb/xdp: %w", err)
		}
	}
	return b, nil
}

// progVariant, when not zero, adds an instruction that changes nothing to
// the program: a test's stand-in for a program of another version.
var progVariant int32

// load loads this version's program on b's maps.
func (b *Balancer) load() (*ebpf.Program, error) {
	fds := mapFDs{vips: b.vips.FD(), est: b.est.FD(), new: b.new.FD(), frags: b.frags.FD(), ctl: b.ctlMap.FD(),
		table: b.table.FD(), backends: b.backends.FD(), bstats: b.bstats.FD(), stats: b.stats.FD(), tunnels: b.tunnels.FD(), cache: b.cache.FD()}
	insns := instructions(fds, uint32(b.cfg.TableSize), uint32(b.cfg.FlowCache))
	if progVariant != 0 {
		insns = append(asm.Instructions{asm.Mov.Imm(asm.R0, progVariant)}, insns...)
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "mpshim_lb",
		Type:         ebpf.XDP,
		Instructions: insns,
		// Map lookups and updates only; any licence may call them.
		License: "Apache-2.0",
	})
	if err != nil {
		return nil, fmt.Errorf("lb/xdp: load program: %w", err)
	}
	return p, nil
}

// Program is the loaded program (for BPF_PROG_TEST_RUN and statistics).
func (b *Balancer) Program() *ebpf.Program { return b.prog }

// Attach attaches the program to the interface with index ifindex in the
// calling thread's network namespace, in generic (socket buffer) mode when
// generic is set, else in the driver's native mode. The program stays
// attached until Close. A taken-over balancer whose pinned link is on
// ifindex already stays as it is.
func (b *Balancer) Attach(ifindex int, generic bool) error {
	b.mu.Lock()
	for _, l := range b.links {
		if info, err := l.Info(); err == nil && info.XDP() != nil && int(info.XDP().Ifindex) == ifindex {
			b.mu.Unlock()
			return nil
		}
	}
	b.mu.Unlock()
	opts := link.XDPOptions{Program: b.prog, Interface: ifindex}
	if generic {
		opts.Flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(opts)
	if err != nil {
		return fmt.Errorf("lb/xdp: attach to interface %d: %w", ifindex, err)
	}
	if b.cfg.PinDir != "" {
		p := filepath.Join(b.cfg.PinDir, pinLink)
		_ = os.Remove(p) // a link whose interface is gone
		if err := l.Pin(p); err != nil {
			l.Close()
			return fmt.Errorf("lb/xdp: pin link: %w", err)
		}
	}
	b.mu.Lock()
	b.links = append(b.links, l)
	b.mu.Unlock()
	return nil
}

// vipKey is the VIP map's key: the address as 16 bytes, IPv4 v4-mapped.
func vipKey(a netip.Addr) ([16]byte, error) {
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
		return [16]byte{}, fmt.Errorf("lb/xdp: %v is not a unicast address", a)
	}
	return a.Unmap().As16(), nil
}

// AddVIP makes the program steer packets for a (IPv4 or IPv6) that arrive
// in frames sent to mac, the address the VIP's ARP and NDP answers give
// (normally the MAC of the interface the program is attached to). Frames
// for a with another destination MAC pass untouched.
func (b *Balancer) AddVIP(a netip.Addr, mac net.HardwareAddr) error {
	k, err := vipKey(a)
	if err != nil {
		return err
	}
	if len(mac) != 6 {
		return fmt.Errorf("lb/xdp: VIP %v: MAC %v is not 6 bytes", a, mac)
	}
	var v [8]byte
	copy(v[:], mac)
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.vips.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb/xdp: add VIP %v: %w", a, err)
	}
	// No established flow is of a VIP just added, and one whose MAC
	// changed meets the fast path's check of the frame's MAC.
	return b.vipsChanged(false)
}

// vipsChanged sets the fast path's prefilter from the VIPs' MACs and,
// with removed, moves the generation on, so that established flows are
// checked against the VIPs again. The caller holds b.mu.
func (b *Balancer) vipsChanged(removed bool) error {
	var k [16]byte
	var v [8]byte
	var macs [][6]byte
	it := b.vips.Iterate()
	for it.Next(&k, &v) {
		if m := [6]byte(v[:6]); !slices.Contains(macs, m) {
			macs = append(macs, m)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("lb/xdp: walk the VIPs: %w", err)
	}
	clear(b.ctl[ctlMAC : ctlMAC+6])
	switch len(macs) {
	case 0:
		b.ctl[ctlMode] = modeNoVIP
	case 1:
		b.ctl[ctlMode] = modeOneMAC
		copy(b.ctl[ctlMAC:], macs[0][:])
	default:
		b.ctl[ctlMode] = modeAny
	}
	if removed {
		b.nextGen()
	}
	return b.writeCtl()
}

// nextGen moves the generation on (never to 0, the value of an entry
// nothing wrote). The caller holds b.mu and writes the control entry.
func (b *Balancer) nextGen() {
	g := binary.NativeEndian.Uint32(b.ctl[ctlGen:]) + 1
	if g == 0 {
		g = 1
	}
	binary.NativeEndian.PutUint32(b.ctl[ctlGen:], g)
}

// writeCtl writes the control entry. The caller holds b.mu (or owns b).
func (b *Balancer) writeCtl() error {
	if err := b.ctlMap.Update(uint32(0), b.ctl, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb/xdp: write the control entry: %w", err)
	}
	return nil
}

// AddTunnelEndpoint makes a (IPv4) a tunnel endpoint of this host: IP-in-IP
// and IPv6-in-IPv4 packets to it that arrive on the interface lose their
// outer header and are steered to this balancer's backends (an LB host in
// front chose this host for them; see Tunnel).
func (b *Balancer) AddTunnelEndpoint(a netip.Addr) error {
	if !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("lb/xdp: tunnel endpoint %v: want an IPv4 unicast address", a)
	}
	if err := b.tunnels.Update(a.As16(), [8]byte{}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb/xdp: add tunnel endpoint %v: %w", a, err)
	}
	return nil
}

// AddGUEEndpoint is AddTunnelEndpoint that also takes GUE (variant 1) in
// UDP to port on a: the outer IPv4 and UDP headers go and the packet is
// steered like one that arrived directly.
func (b *Balancer) AddGUEEndpoint(a netip.Addr, port uint16) error {
	if !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("lb/xdp: tunnel endpoint %v: want an IPv4 unicast address", a)
	}
	if port == 0 {
		return fmt.Errorf("lb/xdp: GUE endpoint %v: port 0", a)
	}
	var v [8]byte
	binary.BigEndian.PutUint16(v[:], port)
	if err := b.tunnels.Update(a.As16(), v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb/xdp: add GUE endpoint %v:%d: %w", a, port, err)
	}
	return nil
}

// RemoveVIP stops steering for a; its packets pass untouched.
func (b *Balancer) RemoveVIP(a netip.Addr) error {
	k, err := vipKey(a)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.vips.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("lb/xdp: remove VIP %v: %w", a, err)
	}
	return b.vipsChanged(true)
}

// SetBackends makes bs the backend set: their entries are written first,
// then the Maglev table of the Up backends into the idle half, then the
// live half is flipped, and last the backends no longer in the set are
// marked down (their flows fall back to the table).
func (b *Balancer) SetBackends(bs []Backend) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := map[uint32]bool{}
	var mb []maglev.Backend
	for _, x := range bs {
		if int(x.ID) >= b.cfg.MaxBackends {
			return fmt.Errorf("lb/xdp: backend id %d: want 0..%d", x.ID, b.cfg.MaxBackends-1)
		}
		if seen[x.ID] {
			return fmt.Errorf("lb/xdp: backend id %d twice", x.ID)
		}
		seen[x.ID] = true
		if len(x.MAC) != 6 {
			return fmt.Errorf("lb/xdp: backend %d: MAC %v is not 6 bytes", x.ID, x.MAC)
		}
		if x.State != Up && x.State != Draining {
			return fmt.Errorf("lb/xdp: backend %d: state %d", x.ID, x.State)
		}
		w := x.Weight
		if x.State == Draining {
			w = 0
		}
		mb = append(mb, maglev.Backend{Name: x.Name, Weight: w})
	}
	tab, err := maglev.New(mb, b.cfg.TableSize)
	if err != nil {
		return fmt.Errorf("lb/xdp: %w", err)
	}
	vals := make([][backendValue]byte, len(bs))
	for i, x := range bs {
		if vals[i], err = x.value(); err != nil {
			return err
		}
	}
	for i, x := range bs {
		if err := b.backends.Update(x.ID, vals[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("lb/xdp: backend %d: %w", x.ID, err)
		}
	}
	idle := 1 - binary.NativeEndian.Uint32(b.ctl[ctlActive:])
	buf := make([]byte, tableValue*tab.Size())
	for i := range tab.Size() {
		id := uint32(noBackend)
		if e := tab.Entry(i); e != maglev.None {
			id = bs[e].ID
		}
		binary.NativeEndian.PutUint32(buf[tableValue*i:], id)
	}
	if _, err := b.mem.WriteAt(buf, int64(idle)*int64(len(buf))); err != nil {
		return fmt.Errorf("lb/xdp: write table: %w", err)
	}
	binary.NativeEndian.PutUint32(b.ctl[ctlActive:], idle)
	if err := b.writeCtl(); err != nil {
		return fmt.Errorf("lb/xdp: switch table: %w", err)
	}
	for id := range b.stale {
		if seen[id] {
			delete(b.stale, id)
		}
	}
	for _, old := range b.current {
		if !seen[old.ID] && b.stale[old.ID] == nil {
			if err := b.backends.Update(old.ID, [backendValue]byte{}, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("lb/xdp: remove backend %d: %w", old.ID, err)
			}
		}
	}
	b.current = slices.Clone(bs)
	b.tab = tab
	// Established flows take the full path once more: the backends they
	// name may be down or have moved.
	b.nextGen()
	return b.writeCtl()
}

// Table returns the live Maglev table and the backends its indexes refer
// to (nil before the first SetBackends).
func (b *Balancer) Table() (*maglev.Table, []Backend) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tab, slices.Clone(b.current)
}

// Pick returns the backend the live table gives a new flow with key k, and
// false when the table is empty. It is what the program does for a key in
// neither flow table.
func (b *Balancer) Pick(k [KeySize]byte) (Backend, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tab == nil {
		return Backend{}, false
	}
	i := b.tab.Lookup(maglev.FlowHash(k))
	if i == maglev.None {
		return Backend{}, false
	}
	return b.current[i], true
}

// FlowKey is the program's key of a flow from src to dst (a VIP) with IP
// protocol proto: addresses as 16 bytes (IPv4 v4-mapped), ports in network
// order, then the protocol.
func FlowKey(src, dst netip.AddrPort, proto uint8) [KeySize]byte {
	var k [KeySize]byte
	// As16 gives IPv4 addresses v4-mapped.
	a, c := src.Addr().Unmap().As16(), dst.Addr().Unmap().As16()
	copy(k[0:16], a[:])
	copy(k[16:32], c[:])
	binary.BigEndian.PutUint16(k[32:], src.Port())
	binary.BigEndian.PutUint16(k[34:], dst.Port())
	k[36] = proto
	return k
}

// Counters returns the program's counters summed over CPUs, indexed by
// Count*.
func (b *Balancer) Counters() ([NumCounters]uint64, error) {
	var out [NumCounters]uint64
	for i := range uint32(NumCounters) {
		var per []uint64
		if err := b.stats.Lookup(i, &per); err != nil {
			return out, fmt.Errorf("lb/xdp: counter %d: %w", i, err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	out[CountSteered] = out[CountEstHit] + out[CountNewHit] + out[CountMaglev] + out[CountFragHit]
	return out, nil
}

// BackendStats are one backend's counters.
type BackendStats struct {
	// NewFlows counts the flows the Maglev table sent to the backend.
	NewFlows uint64
}

// BackendStats returns the counters of backend id, summed over CPUs.
func (b *Balancer) BackendStats(id uint32) (BackendStats, error) {
	var per []uint64
	if err := b.bstats.Lookup(id, &per); err != nil {
		return BackendStats{}, fmt.Errorf("lb/xdp: stats of backend %d: %w", id, err)
	}
	var s BackendStats
	for _, v := range per {
		s.NewFlows += v
	}
	return s, nil
}

// Flows counts the entries of the established and new-flow tables, and
// how many established ones point at each backend id.
func (b *Balancer) Flows() (est, new int, perBackend map[uint32]int, err error) {
	perBackend = map[uint32]int{}
	var k [KeySize]byte
	var v [flowValue]byte
	it := b.est.Iterate()
	for it.Next(&k, &v) {
		est++
		perBackend[binary.NativeEndian.Uint32(v[fvBackend:])]++
	}
	if err := it.Err(); err != nil {
		return 0, 0, nil, fmt.Errorf("lb/xdp: walk established flows: %w", err)
	}
	it = b.new.Iterate()
	for it.Next(&k, &v) {
		new++
	}
	if err := it.Err(); err != nil {
		return 0, 0, nil, fmt.Errorf("lb/xdp: walk new flows: %w", err)
	}
	return est, new, perBackend, nil
}

// Close detaches the program, removes the pins and releases everything.
func (b *Balancer) Close() error {
	return b.close(true)
}

func (b *Balancer) close(unpin bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	if unpin && b.cfg.PinDir != "" {
		// Removing a pin of the link detaches it once its descriptor
		// closes below.
		if err := os.RemoveAll(b.cfg.PinDir); err != nil {
			errs = append(errs, fmt.Errorf("lb/xdp: remove pins: %w", err))
		}
	}
	for _, l := range b.links {
		errs = append(errs, l.Close())
	}

	b.links = nil
	if b.prog != nil {
		errs = append(errs, b.prog.Close())
	}
	for _, m := range []*ebpf.Map{b.vips, b.est, b.new, b.frags, b.ctlMap, b.table, b.backends, b.bstats, b.stats, b.tunnels, b.cache} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// Sweep deletes the established-table entries of flows whose backend is
// down (removed, or dropped after a take-over): their next packet would go
// by the table anyway, and until then they would count as flows. It
// returns how many it deleted.
func (b *Balancer) Sweep() (int, error) {
	down := map[uint32]bool{}
	var k [KeySize]byte
	var fv [flowValue]byte
	var dead [][KeySize]byte
	it := b.est.Iterate()
	for it.Next(&k, &fv) {
		v := binary.NativeEndian.Uint32(fv[fvBackend:])
		d, ok := down[v]
		if !ok {
			var be [backendValue]byte
			d = int(v) >= b.cfg.MaxBackends || b.backends.Lookup(v, &be) != nil || be[beState] == stateDown
			down[v] = d
		}
		if d {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("lb/xdp: walk established flows: %w", err)
	}
	n := 0
	for _, k := range dead {
		if err := b.est.Delete(k); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("lb/xdp: delete an established flow: %w", err)
		}
	}
	return n, nil
}
