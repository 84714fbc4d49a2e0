// Package netstack owns an INS's gVisor netstack: its NICs, one per uplink,
// their addresses and routes, the choice of uplink for a new flow, and each
// uplink's health (carrier, gateway probes, drain). It opens links through
// package link and knows nothing of application sockets, the control
// channel or the INS process.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/link"
	"github.com/mpshim/mpshim/isolator/uplink"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// DefaultProbeInterval is how often each uplink's carrier is read and its
// gateway pinged. 200 ms with uplink.LossThreshold=3 steers new flows off a
// dead uplink in under a second, at 5 tiny packets per second per uplink.
const DefaultProbeInterval = 200 * time.Millisecond

// txQueueLen bounds the frames queued for transmission on one NIC; a full
// queue drops, which TCP answers like any loss. The queue's one dispatcher
// can be starved of CPU while many connections keep sending: at 1000
// frames (gVisor's usual figure) 64 keep-alive downloads of 256 KiB on a
// loaded 2-core machine lost enough to stall into 30 s timeouts; 8192
// absorbs such bursts (at most ~12 MiB of frames in flight per NIC).
const txQueueLen = 8192

// Config configures one INS stack.
type Config struct {
	// ID is the INS id (for logs).
	ID int
	// Uplinks are the NICs, one per uplink.
	Uplinks []UplinkConfig
	// Policy names the outbound uplink policy (see uplink.ParsePolicy).
	Policy string
	// GOMAXPROCS, if > 0, is applied to the process so that N INS
	// processes do not oversubscribe the cores (see GOMAXPROCSFor).
	GOMAXPROCS int
	// ProbeInterval is the health-check period; 0 means
	// DefaultProbeInterval and a negative value disables health checks.
	ProbeInterval time.Duration
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
	// Taps see every NIC's packets from the first (see AddTap).
	Taps []link.Tap `json:"-"`
}

// UplinkConfig is one uplink of an INS.
type UplinkConfig struct {
	// Name identifies the uplink in policies, counters and Drain.
	Name string
	// Interface is the interface inside the INS network namespace that an
	// AF_PACKET socket is opened on. Ignored when Endpoint is set.
	Interface string
	// Addr4 is the INS's IPv4 address with the on-link prefix length.
	Addr4 netip.Prefix
	// Gateway4 is the IPv4 default gateway of this uplink (optional).
	Gateway4 netip.Addr
	// Addr6 and Gateway6 are the IPv6 counterparts (optional).
	Addr6    netip.Prefix
	Gateway6 netip.Addr
	// Weight is the uplink's relative capacity for weighted policies;
	// 0 means 1.
	Weight int
	// RXChecksumOffload skips checksum verification of received frames.
	// Only safe when every frame comes from a local kernel over virtual
	// links (veth), whose offloaded partial checksums would otherwise be
	// rejected; frames from a physical wire must be verified (false).
	RXChecksumOffload bool
	// Backend is how frames reach the netstack; "" is link.BackendPacket.
	Backend link.Backend
	// GSO lets TCP hand segments of up to 64 KiB to the kernel, which
	// splits them into frames (PACKET_VNET_HDR on the sending socket).
	GSO bool
	// VIPs are service addresses a load balancer in front of the INS
	// steers to this uplink: the INS accepts packets for them and replies
	// from them, but never answers ARP for them nor sends a neighbour
	// request from them (see vipGuard). They are never the source address
	// of a flow the INS opens.
	VIPs []netip.Addr
	// Endpoint, if set, is used as the NIC's link endpoint instead of an
	// AF_PACKET socket on Interface (tests, other link types).
	Endpoint stack.LinkEndpoint
}

// Link returns the link settings of u.
func (u UplinkConfig) Link() link.Config {
	return link.Config{Interface: u.Interface, RXChecksumOffload: u.RXChecksumOffload, Backend: u.Backend, GSO: u.GSO}
}

// GOMAXPROCSFor returns the GOMAXPROCS for each of n INS processes sharing
// the machine's CPUs: an equal share, at least 1.
func GOMAXPROCSFor(n int) int {
	if n <= 0 {
		n = 1
	}
	return max(1, runtime.NumCPU()/n)
}

// Stack is the netstack of one INS with its uplinks.
type Stack struct {
	ns       *stack.Stack
	set      *uplink.Set
	log      *slog.Logger
	interval time.Duration
	taps     link.Taps // see AddTap

	mu      sync.Mutex
	links   map[string]*nicLink // by uplink name
	nextNIC tcpip.NICID
	closed  bool
	wg      sync.WaitGroup
}

type nicLink struct {
	cfg    UplinkConfig
	nic    tcpip.NICID
	pkt    link.NIC // nil for injected endpoints
	tap    *link.TapEndpoint
	cancel context.CancelFunc
	done   chan struct{}
	dropMu sync.Mutex

	// parentDown is set while the daemon reports that the parent of this
	// uplink's interface has lost its carrier (SetParentCarrier).
	parentDown atomic.Bool
	// stateMu guards lastState, the state last logged (noteState).
	stateMu   sync.Mutex
	lastState string
}

// New builds the netstack and adds a NIC per configured uplink. The
// AF_PACKET sockets are opened in the calling thread's network namespace,
// so call it inside the INS namespace (and before Sandbox).
func New(cfg Config) (*Stack, error) {
	pol, err := uplink.ParsePolicy(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("ins %d: %w", cfg.ID, err)
	}
	if cfg.GOMAXPROCS > 0 {
		runtime.GOMAXPROCS(cfg.GOMAXPROCS)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	interval := cfg.ProbeInterval
	if interval == 0 {
		interval = DefaultProbeInterval
	}
	s := &Stack{
		ns: stack.New(stack.Options{
			NetworkProtocols: []stack.NetworkProtocolFactory{
				ipv4.NewProtocol,
				ipv6.NewProtocolWithOptions(ipv6.Options{
					// Link-local address from the MAC: NDP and
					// router traffic need one.
					AutoGenLinkLocal: true,
					// The daemon owns the address plan; DAD would
					// hold every address back for a second at
					// each INS spawn.
					DADConfigs: stack.DADConfigurations{DupAddrDetectTransmits: 0},
				}),
				arp.NewProtocol,
			},
			TransportProtocols: []stack.TransportProtocolFactory{
				tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6,
			},
			// Packets to the INS's own addresses are delivered inside
			// the INS (through its loopback NIC): apps under the shim
			// reach each other by the INS's addresses, and by loopback
			// with MPSHIM_LOOPBACK=ins.
			HandleLocal: true,
		}),
		set:      uplink.NewSet(pol),
		log:      logger.With("ins", cfg.ID),
		interval: interval,
		links:    map[string]*nicLink{},
		nextNIC:  1,
	}
	if err := s.tune(); err != nil {
		s.ns.Destroy()
		return nil, fmt.Errorf("ins %d: %w", cfg.ID, err)
	}
	if err := s.addLoopback(); err != nil {
		s.ns.Destroy()
		return nil, fmt.Errorf("ins %d: %w", cfg.ID, err)
	}
	for _, t := range cfg.Taps {
		s.AddTap(t)
	}
	for _, u := range cfg.Uplinks {
		if err := s.AddUplink(u); err != nil {
			s.Close()
			return nil, fmt.Errorf("ins %d: %w", cfg.ID, err)
		}
	}
	return s, nil
}

// tune sets the protocol options. gVisor's current defaults are set
// explicitly so a change of default upstream does not silently change us.
func (s *Stack) tune() error {
	opts := []struct {
		what  string
		proto tcpip.TransportProtocolNumber
		opt   tcpip.SettableTransportProtocolOption
	}{
		// Selective ACKs: recover several losses per RTT (RFC 2018).
		{"SACK", tcp.ProtocolNumber, ptr(tcpip.TCPSACKEnabled(true))},
		// RACK-TLP loss detection (RFC 8985): time-based, robust to the
		// reordering that multi-path uplinks cause.
		{"RACK", tcp.ProtocolNumber, ptr(tcpip.TCPRACKLossDetection)},
		// Grow each receive window with the measured BDP instead of
		// reserving the maximum for every connection.
		{"receive buffer moderation", tcp.ProtocolNumber, ptr(tcpip.TCPModerateReceiveBufferOption(true))},
		// CUBIC, the netstack's and Linux's default.
		{"congestion control", tcp.ProtocolNumber, ptr(tcpip.CongestionControlOption("cubic"))},
		// Buffers are limits, not allocations: 4 KiB minimum keeps many
		// idle connections cheap, 1 MiB default covers ~80 Mbit/s at
		// 100 ms, 8 MiB maximum lets moderation reach ~650 Mbit/s at
		// 100 ms for one bulk flow.
		{"send buffer range", tcp.ProtocolNumber, &tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}},
		{"receive buffer range", tcp.ProtocolNumber, &tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}},
		// 30 s TIME_WAIT (Linux: 60 s) halves the ports and endpoints a
		// busy proxy holds; 30 s is still well above any sane MSL here.
		{"TIME_WAIT timeout", tcp.ProtocolNumber, ptr(tcpip.TCPTimeWaitTimeoutOption(30 * time.Second))},
		// Let new outbound connections reuse ports held in TIME_WAIT
		// (as Linux tcp_tw_reuse), so many short upstream connections
		// do not exhaust the ephemeral range.
		{"TIME_WAIT reuse", tcp.ProtocolNumber, ptr(tcpip.TCPTimeWaitReuseGlobal)},
	}
	for _, o := range opts {
		if err := s.ns.SetTransportProtocolOption(o.proto, o.opt); err != nil {
			return fmt.Errorf("set TCP %s: %s", o.what, err)
		}
	}
	// The whole unprivileged range for ephemeral ports: one INS may hold
	// tens of thousands of upstream connections per uplink address.
	if err := s.ns.SetPortRange(1024, 65535); err != nil {
		return fmt.Errorf("set port range: %s", err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// Stack returns the underlying gVisor stack.
func (s *Stack) Stack() *stack.Stack { return s.ns }

// Uplinks reports the policy/health state of every uplink.
func (s *Stack) Uplinks() []uplink.Info { return s.set.Snapshot() }

// Policy returns the uplink set's policy.
func (s *Stack) Policy() uplink.Policy { return s.set.Policy() }

// SetPolicy changes the outbound uplink policy.
func (s *Stack) SetPolicy(p uplink.Policy) { s.set.SetPolicy(p) }

func validateUplink(u UplinkConfig) error {
	if u.Name == "" {
		return errors.New("uplink without a name")
	}
	if u.Endpoint == nil && u.Interface == "" {
		return fmt.Errorf("uplink %q: no interface", u.Name)
	}
	if !u.Addr4.IsValid() && !u.Addr6.IsValid() {
		return fmt.Errorf("uplink %q: needs an IPv4 or IPv6 address", u.Name)
	}
	if u.Addr4.IsValid() && (!u.Addr4.Addr().Is4() || u.Addr4.Bits() < 1) {
		return fmt.Errorf("uplink %q: bad IPv4 prefix %v", u.Name, u.Addr4)
	}
	if u.Addr6.IsValid() && (!u.Addr6.Addr().Is6() || u.Addr6.Addr().Is4In6() || u.Addr6.Bits() < 1) {
		return fmt.Errorf("uplink %q: bad IPv6 prefix %v", u.Name, u.Addr6)
	}
	if u.Gateway4.IsValid() && (!u.Addr4.IsValid() || !u.Addr4.Masked().Contains(u.Gateway4)) {
		return fmt.Errorf("uplink %q: IPv4 gateway %v not on link %v", u.Name, u.Gateway4, u.Addr4)
	}
	if u.Gateway6.IsValid() && (!u.Addr6.IsValid() || !(u.Addr6.Masked().Contains(u.Gateway6) || u.Gateway6.IsLinkLocalUnicast())) {
		return fmt.Errorf("uplink %q: IPv6 gateway %v not on link %v", u.Name, u.Gateway6, u.Addr6)
	}
	if u.Weight < 0 {
		return fmt.Errorf("uplink %q: negative weight", u.Name)
	}
	if _, err := link.ParseBackend(string(u.Backend)); err != nil {
		return fmt.Errorf("uplink %q: %w", u.Name, err)
	}
	for _, v := range u.VIPs {
		if !validVIP(v, u.Addr4, u.Addr6) {
			return fmt.Errorf("uplink %q: VIP %v: want a unicast address, not the uplink's own, of a family the uplink has an address of", u.Name, v)
		}
	}
	return nil
}

// AddUplink adds a NIC for u at run time: opens its link, assigns the
// addresses, rebuilds the routes and starts health checks. New flows may use
// it immediately.
func (s *Stack) AddUplink(u UplinkConfig) error { return s.addUplink(u, nil) }

// addUplink is AddUplink on an already open link socket f (nil: open one
// on u.Interface); f is closed if the uplink cannot be added.
func (s *Stack) addUplink(u UplinkConfig, f *os.File) (err error) {
	l := &nicLink{cfg: u, nic: 0}
	defer func() {
		if err != nil {
			if f != nil && l.pkt == nil {
				f.Close()
			}
			l.closeFD()
		}
	}()
	if err := validateUplink(u); err != nil {
		return err
	}
	if u.Weight == 0 {
		u.Weight = 1
		l.cfg.Weight = 1
	}
	u.Backend, _ = link.ParseBackend(string(u.Backend)) // validated
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("add uplink: stack closed")
	}
	if _, dup := s.links[u.Name]; dup {
		return fmt.Errorf("add uplink %q: already present", u.Name)
	}
	l.nic = s.nextNIC
	ep := u.Endpoint
	if ep == nil {
		if f != nil {
			// A socket the daemon opened (uplink added at run time).
			l.pkt, ep, err = link.Adopt(u.Link(), f)
			f = nil // Adopt owns it
		} else {
			l.pkt, ep, err = link.Open(u.Link())
		}
		if err != nil {
			return fmt.Errorf("add uplink %q: %w", u.Name, err)
		}
	}
	if len(u.VIPs) > 0 {
		ep = newVIPGuard(ep, u)
	}
	// Every NIC goes through the taps (flow accounting, rules).
	l.tap = link.Tapped(u.Name, ep, &s.taps)
	opts := stack.NICOptions{Name: u.Name}
	if l.pkt != nil {
		// A FIFO queue with its own dispatcher hands the packet socket
		// batches of up to fifo.BatchSize frames per sendmmsg, where the
		// transport would otherwise make one system call per frame. It
		// writes through the taps.
		opts.QDisc = fifo.New(l.tap, 1, txQueueLen)
		// A request's ACK rides on its response (Linux's delayed ACK).
		l.tap.DelayAcks(link.AckDelay)
	}
	if terr := s.ns.CreateNICWithOptions(l.nic, l.tap, opts); terr != nil {
		if opts.QDisc != nil {
			opts.QDisc.Close()
		}
		return fmt.Errorf("add uplink %q: create NIC: %s", u.Name, terr)
	}
	defer func() {
		if err != nil {
			s.ns.RemoveNIC(l.nic)
		}
	}()
	for _, p := range []netip.Prefix{u.Addr4, u.Addr6} {
		if !p.IsValid() {
			continue
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(p.Addr()),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(p.Addr()), PrefixLen: p.Bits()},
		}
		if terr := s.ns.AddProtocolAddress(l.nic, pa, stack.AddressProperties{}); terr != nil {
			return fmt.Errorf("add uplink %q: address %v: %s", u.Name, p, terr)
		}
	}
	for _, v := range u.VIPs {
		v = v.Unmap()
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(v),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(v), PrefixLen: v.BitLen()},
		}
		if terr := s.ns.AddProtocolAddress(l.nic, pa, stack.AddressProperties{PEB: stack.NeverPrimaryEndpoint}); terr != nil {
			return fmt.Errorf("add uplink %q: VIP %v: %s", u.Name, v, terr)
		}
	}
	if err := s.set.Add(u.Name, u.Weight); err != nil {
		return fmt.Errorf("add uplink: %w", err)
	}
	s.nextNIC++
	s.links[u.Name] = l
	l.lastState = s.stateOf(u.Name)
	s.rebuildRoutesLocked()
	if s.interval > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		l.cancel, l.done = cancel, make(chan struct{})
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer close(l.done)
			s.monitor(ctx, l)
		}()
	}
	s.log.Info("uplink added", "uplink", u.Name, "nic", l.nic, "if", u.Interface, "addr4", u.Addr4, "addr6", u.Addr6, "weight", u.Weight, "backend", u.Backend, "gso", u.GSO, "vips", u.VIPs)
	return nil
}

// RemoveUplink stops health checks, removes the NIC (existing flows on it
// die: their packets have nowhere to go) and closes its socket.
func (s *Stack) RemoveUplink(name string) error {
	s.mu.Lock()
	l, ok := s.links[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("remove uplink %q: not found", name)
	}
	delete(s.links, name)
	_ = s.set.Remove(name)
	s.rebuildRoutesLocked()
	s.mu.Unlock()
	l.stop()
	if terr := s.ns.RemoveNIC(l.nic); terr != nil {
		return fmt.Errorf("remove uplink %q: %s", name, terr)
	}
	l.closeFD()
	s.log.Info("uplink removed", "uplink", name)
	return nil
}

// Drain stops (true) or resumes (false) new flows on an uplink; flows
// already on it continue.
func (s *Stack) Drain(name string, drain bool) error {
	if err := s.set.Drain(name, drain); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	s.mu.Lock()
	l := s.links[name]
	s.mu.Unlock()
	if l != nil {
		s.noteState(l, "drain")
	}
	return nil
}

// SetWeight changes an uplink's weight (relative capacity).
func (s *Stack) SetWeight(name string, weight int) error {
	if err := s.set.SetWeight(name, weight); err != nil {
		return fmt.Errorf("set weight: %w", err)
	}
	return nil
}

// SetAdminDown forces an uplink down (no new flows) or hands it back to
// health checks.
func (s *Stack) SetAdminDown(name string, down bool) error {
	if err := s.set.SetAdminDown(name, down); err != nil {
		return fmt.Errorf("admin down: %w", err)
	}
	return nil
}

// NIC returns the NIC id of an uplink.
func (s *Stack) NIC(name string) (tcpip.NICID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.links[name]
	if !ok {
		return 0, fmt.Errorf("uplink %q: not found", name)
	}
	return l.nic, nil
}

// Link returns the kernel side of the uplink named name; nil for an
// unknown uplink or one on an injected endpoint.
func (s *Stack) Link(name string) link.NIC {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.links[name]; ok {
		return l.pkt
	}
	return nil
}

// LoopbackNIC is the NIC id of every INS's loopback interface, far above
// the uplinks' ids (1, 2, …).
const LoopbackNIC tcpip.NICID = 1 << 16

// Loopback subnets: 127.0.0.0/8 and ::1/128 are on the loopback NIC.
var (
	loopback4 = tcpip.AddressWithPrefix{Address: tcpAddr(netip.MustParseAddr("127.0.0.1")), PrefixLen: 8}
	loopback6 = tcpip.AddressWithPrefix{Address: tcpAddr(netip.IPv6Loopback()), PrefixLen: 128}
)

// addLoopback creates the loopback NIC with 127.0.0.1/8 and ::1. With
// HandleLocal, the netstack also sends packets to its uplink addresses
// through it.
func (s *Stack) addLoopback() error {
	if terr := s.ns.CreateNICWithOptions(LoopbackNIC, loopback.New(), stack.NICOptions{Name: "lo"}); terr != nil {
		return fmt.Errorf("loopback NIC: %s", terr)
	}
	for _, a := range []tcpip.AddressWithPrefix{loopback4, loopback6} {
		proto := ipv4.ProtocolNumber
		if a.Address.Len() == 16 {
			proto = ipv6.ProtocolNumber
		}
		if terr := s.ns.AddProtocolAddress(LoopbackNIC, tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: a}, stack.AddressProperties{}); terr != nil {
			return fmt.Errorf("loopback address %s: %s", a, terr)
		}
	}
	s.mu.Lock()
	s.rebuildRoutesLocked()
	s.mu.Unlock()
	return nil
}

// rebuildRoutesLocked installs the loopback subnets, then, for every
// uplink, its on-link subnets and then a default route via its gateway. Lookups that name a NIC
// (bound or accepted endpoints) only see that NIC's routes, so replies and
// flows placed by ChooseUplink leave on their own uplink.
func (s *Stack) rebuildRoutesLocked() {
	links := make([]*nicLink, 0, len(s.links))
	for _, l := range s.links {
		links = append(links, l)
	}
	slices.SortFunc(links, func(a, b *nicLink) int { return int(a.nic) - int(b.nic) })
	onLink := []tcpip.Route{{Destination: loopback4.Subnet(), NIC: LoopbackNIC}, {Destination: loopback6.Subnet(), NIC: LoopbackNIC}}
	var defaults []tcpip.Route
	for _, l := range links {
		for _, fam := range []struct {
			pfx   netip.Prefix
			gw    netip.Addr
			empty tcpip.Subnet
		}{{l.cfg.Addr4, l.cfg.Gateway4, header.IPv4EmptySubnet}, {l.cfg.Addr6, l.cfg.Gateway6, header.IPv6EmptySubnet}} {
			if !fam.pfx.IsValid() {
				continue
			}
			sub := tcpip.AddressWithPrefix{Address: tcpAddr(fam.pfx.Addr()), PrefixLen: fam.pfx.Bits()}.Subnet()
			onLink = append(onLink, tcpip.Route{Destination: sub, NIC: l.nic})
			if fam.gw.IsValid() {
				defaults = append(defaults, tcpip.Route{Destination: fam.empty, Gateway: tcpAddr(fam.gw), NIC: l.nic})
			}
		}
		if l.cfg.Addr6.IsValid() {
			// IPv6 link-local destinations are on every IPv6 NIC.
			onLink = append(onLink, tcpip.Route{Destination: linkLocal6, NIC: l.nic})
		}
	}
	// Multicast that no uplink can take (its source is a loopback
	// address, or its interface is lo) leaves by the loopback, as Linux
	// routes it by its source; the default routes come first so that
	// multicast from an uplink's address or an unbound socket takes the
	// uplink.
	mcast := []tcpip.Route{{Destination: multicast4, NIC: LoopbackNIC}, {Destination: multicast6, NIC: LoopbackNIC}}
	s.ns.SetRouteTable(append(append(onLink, defaults...), mcast...))
}

// Multicast subnets: 224.0.0.0/4 and ff00::/8.
var (
	multicast4 = tcpip.AddressWithPrefix{Address: tcpAddr(netip.MustParseAddr("224.0.0.0")), PrefixLen: 4}.Subnet()
	multicast6 = tcpip.AddressWithPrefix{Address: tcpAddr(netip.MustParseAddr("ff00::")), PrefixLen: 8}.Subnet()
)

// routes reports whether the uplink has a route to a (unmapped): a is on
// its subnet, IPv6 link-local, or reached through its gateway of a's family.
func (l *nicLink) routes(a netip.Addr) bool {
	pfx, gw := l.cfg.Addr6, l.cfg.Gateway6
	if a.Is4() {
		pfx, gw = l.cfg.Addr4, l.cfg.Gateway4
	}
	return pfx.IsValid() && (gw.IsValid() || pfx.Masked().Contains(a) || a.IsLinkLocalUnicast())
}

var linkLocal6 = tcpip.AddressWithPrefix{Address: tcpAddr(netip.MustParseAddr("fe80::")), PrefixLen: 64}.Subnet()

// ChooseUplink picks the uplink for a new outbound flow to remote by the
// configured policy, among healthy uplinks that have a route to it: remote
// is on the uplink's subnet (or IPv6 link-local), or the uplink has a
// gateway of remote's family. It returns the NIC and local address to bind
// before connecting. The error wraps uplink.ErrNoUplink when none is usable
// (ENETUNREACH).
//
// A flow bound to a NIC only sees that NIC's routes: placed on an uplink
// without a route it would fail with ENETUNREACH although another uplink
// reaches the peer (an on-link IPv6 peer, with no IPv6 gateway configured,
// was unreachable from every uplink but its own).
func (s *Stack) ChooseUplink(remote netip.AddrPort, transport tcpip.TransportProtocolNumber) (tcpip.NICID, tcpip.Address, error) {
	ra := remote.Addr().Unmap()
	if !ra.IsValid() {
		return 0, tcpip.Address{}, fmt.Errorf("choose uplink: invalid remote address %v", remote)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.localLocked(ra) {
		// Delivered inside the INS: no uplink, no source address
		// chosen here (the netstack takes the destination's own).
		return 0, tcpip.Address{}, nil
	}
	routed := func(name string) bool {
		l := s.links[name]
		return l != nil && l.routes(ra)
	}
	// Sticky hashing keys on the remote host, not the port, so every flow
	// to one peer leaves from one source address.
	name, err := s.set.PickWhere(uplink.HashBytes(ra.AsSlice()), routed)
	if err != nil {
		return 0, tcpip.Address{}, fmt.Errorf("choose uplink for %v (transport %d): %w", remote, transport, err)
	}
	l := s.links[name]
	local := l.cfg.Addr6.Addr()
	if ra.Is4() {
		local = l.cfg.Addr4.Addr()
	}
	return l.nic, tcpAddr(local), nil
}

// localLocked reports whether a (unmapped) is an address of this INS: a
// loopback address or one of its uplinks' addresses.
func (s *Stack) localLocked(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	for _, l := range s.links {
		if (l.cfg.Addr4.IsValid() && l.cfg.Addr4.Addr() == a) || (l.cfg.Addr6.IsValid() && l.cfg.Addr6.Addr() == a) {
			return true
		}
	}
	return false
}

// UplinkCounters are the traffic counters of one uplink.
type UplinkCounters struct {
	Name      string
	NIC       tcpip.NICID
	State     uplink.State
	RxPackets uint64
	RxBytes   uint64
	TxPackets uint64
	TxBytes   uint64
	// RxDrops counts frames the kernel dropped because the AF_PACKET
	// receive buffer was full, plus frames the netstack could not parse
	// at layer 4.
	RxDrops uint64
	// TxDrops counts frames dropped because the link's queue was full.
	TxDrops uint64
	RTT     time.Duration
	Loss    float64
}

// Counters returns the counters of every uplink, ordered by NIC id.
func (s *Stack) Counters() []UplinkCounters {
	info := map[string]uplink.Info{}
	for _, i := range s.set.Snapshot() {
		info[i.Name] = i
	}
	nics := s.ns.NICInfo()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]UplinkCounters, 0, len(s.links))
	for name, l := range s.links {
		c := UplinkCounters{Name: name, NIC: l.nic, State: info[name].State, RTT: info[name].RTT, Loss: info[name].Loss}
		if ni, ok := nics[l.nic]; ok {
			st := ni.Stats
			c.RxPackets, c.RxBytes = st.Rx.Packets.Value(), st.Rx.Bytes.Value()
			c.TxPackets, c.TxBytes = st.Tx.Packets.Value(), st.Tx.Bytes.Value()
			c.RxDrops = st.MalformedL4RcvdPackets.Value()
			c.TxDrops = st.TxPacketsDroppedNoBufferSpace.Value()
		}
		if l.tap != nil {
			c.RxDrops += l.tap.Malformed()
			// The NIC counted the ACKs the link then dropped because
			// they rode on a later segment; they never left.
			a := l.tap.AckStats()
			c.TxPackets -= min(a.Dropped, c.TxPackets)
			c.TxBytes -= min(a.DroppedBytes, c.TxBytes)
		}
		if l.pkt != nil {
			l.dropMu.Lock()
			c.RxDrops += l.pkt.KernelDrops()
			l.dropMu.Unlock()
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b UplinkCounters) int { return int(a.NIC) - int(b.NIC) })
	return out
}

// Close stops health checks, aborts every endpoint, removes the NICs and
// closes the link sockets.
func (s *Stack) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	links := make([]*nicLink, 0, len(s.links))
	for _, l := range s.links {
		links = append(links, l)
	}
	s.mu.Unlock()
	for _, l := range links {
		l.stop()
	}
	s.wg.Wait()
	s.ns.Destroy() // removes NICs, which stops the link dispatchers
	for _, l := range links {
		l.closeFD()
	}
}

func (l *nicLink) stop() {
	if l.cancel != nil {
		l.cancel()
		<-l.done
	}
}

// closeFD stops the NIC's link reader and closes its sockets; the NIC must
// already be removed from the netstack (or never have been added).
func (l *nicLink) closeFD() {
	if l.tap != nil {
		l.tap.Release()
	}
	if l.pkt != nil {
		l.pkt.Close()
	}
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

func tcpAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// AddTap appends t to the taps of every NIC, present and future.
func (s *Stack) AddTap(t link.Tap) { s.taps.Add(t) }

// Tapped reports whether any tap has been added.
func (s *Stack) Tapped() bool { return !s.taps.Empty() }
