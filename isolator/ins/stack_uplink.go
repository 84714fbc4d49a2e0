package ins

// Uplinks added and watched at run time: a NIC on a link socket the daemon
// opened for a sandboxed INS, the parent interface's carrier as the daemon
// sees it, and the connections each uplink carries (for draining).

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// OpenLinkFile opens the AF_PACKET socket for interface ifname inside the
// network namespace bound at nsPath, configured exactly as NewStack
// configures its own, and returns it as a file to hand to an INS that can no
// longer open one itself (see Stack.AddUplinkFD). The caller needs
// CAP_NET_RAW and CAP_NET_ADMIN (the daemon).
func OpenLinkFile(nsPath, ifname string) (*os.File, error) {
	if !validIfName(ifname) {
		return nil, fmt.Errorf("open link: bad interface name %q", ifname)
	}
	// A goroutine of its own: a thread that cannot return to the
	// daemon's namespace dies with it (see DoInNetNS).
	type result struct {
		pl  *packetLink
		err error
	}
	res := make(chan result, 1)
	go func() {
		var r result
		r.err = DoInNetNS(nsPath, func() (err error) {
			r.pl, err = openPacketLink(ifname)
			return err
		})
		if r.err != nil && r.pl != nil {
			closeFD(r.pl.fd)
			r.pl = nil
		}
		res <- r
	}()
	r := <-res
	if r.err != nil {
		return nil, r.err
	}
	return os.NewFile(uintptr(r.pl.fd), "packet:"+ifname), nil
}

// packetLinkFromFile adopts an AF_PACKET socket opened elsewhere (by
// OpenLinkFile) for interface ifname of this namespace. It checks that the
// descriptor is a raw packet socket bound to that very interface, so a wrong
// or stale descriptor is refused rather than wired to the wrong NIC. f is
// closed in every case; the returned link owns a duplicate.
func packetLinkFromFile(ifname string, f *os.File) (*packetLink, error) {
	defer f.Close()
	if !validIfName(ifname) {
		return nil, fmt.Errorf("link %q: bad interface name", ifname)
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("link %s: dup descriptor: %w", ifname, err)
	}
	ok := false
	defer func() {
		if !ok {
			closeFD(fd)
		}
	}()
	if d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || d != unix.AF_PACKET {
		return nil, fmt.Errorf("link %s: descriptor is not an AF_PACKET socket (domain %d, %v)", ifname, d, err)
	}
	if ty, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || ty != unix.SOCK_RAW {
		return nil, fmt.Errorf("link %s: packet socket is not SOCK_RAW (type %d, %v)", ifname, ty, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("link %s: getsockname: %w", ifname, err)
	}
	ll, isLL := sa.(*unix.SockaddrLinklayer)
	if !isLL || ll.Ifindex <= 0 || ll.Halen != 6 {
		return nil, fmt.Errorf("link %s: packet socket not bound to an Ethernet interface (%+v)", ifname, sa)
	}
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", ifname, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return nil, fmt.Errorf("link %s: SIOCGIFINDEX: %w", ifname, err)
	}
	if idx := int(ifr.Uint32()); idx != ll.Ifindex {
		return nil, fmt.Errorf("link %s: socket is bound to interface %d, %s is %d", ifname, ll.Ifindex, ifname, idx)
	}
	if ifr, err = unix.NewIfreq(ifname); err != nil {
		return nil, fmt.Errorf("link %s: %w", ifname, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
		return nil, fmt.Errorf("link %s: SIOCGIFMTU: %w", ifname, err)
	}
	mtu := int(ifr.Uint32())
	if mtu < 68 || mtu > 1<<16 {
		return nil, fmt.Errorf("link %s: MTU %d out of range", ifname, mtu)
	}
	ok = true
	mac := net.HardwareAddr(append([]byte(nil), ll.Addr[:6]...))
	return &packetLink{fd: fd, ifname: ifname, ifindex: ll.Ifindex, mac: mac, mtu: mtu}, nil
}

// AddUplinkFD adds a NIC for u (as AddUplink) on the AF_PACKET socket f that
// the daemon opened on u.Interface in this INS's namespace: a sandboxed INS
// may not open packet sockets. Ownership of f passes to the call.
func (s *Stack) AddUplinkFD(u UplinkConfig, f *os.File) error {
	if f == nil {
		return fmt.Errorf("add uplink %q: no link socket", u.Name)
	}
	if u.Endpoint != nil {
		f.Close()
		return fmt.Errorf("add uplink %q: both an endpoint and a link socket", u.Name)
	}
	pkt, err := packetLinkFromFile(u.Interface, f)
	if err != nil {
		return fmt.Errorf("add uplink %q: %w", u.Name, err)
	}
	return s.addUplink(u, pkt)
}

// SetParentCarrier records the carrier of the parent of an uplink's
// interface, as the daemon watching it reports. While the parent has no
// carrier the uplink is down whatever its own link says, so new flows leave
// it at once; when the carrier returns the uplink's own checks decide again.
func (s *Stack) SetParentCarrier(name string, up bool) error {
	s.mu.Lock()
	l := s.links[name]
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("parent carrier: uplink %q not found", name)
	}
	l.parentDown.Store(!up)
	carrier := up
	if up && l.pkt != nil {
		if c, err := l.pkt.carrier(); err == nil {
			carrier = c
		}
	}
	if err := s.set.ObserveCarrier(name, carrier); err != nil {
		return fmt.Errorf("parent carrier: %w", err)
	}
	s.noteState(l, "parent carrier")
	return nil
}

// UplinkConns counts, per uplink, the TCP connections whose local address is
// one of the uplink's: those being set up, established or closing, but not
// listeners and not connections in TIME_WAIT (which carry no data). This is
// what draining an uplink waits for.
func (s *Stack) UplinkConns() map[string]int {
	out := map[string]int{}
	s.eachUplinkConn(func(name string, _ tcpip.Endpoint) { out[name]++ })
	s.mu.Lock()
	for name := range s.links {
		if _, ok := out[name]; !ok {
			out[name] = 0 // every uplink is listed, also without connections
		}
	}
	s.mu.Unlock()
	return out
}

// ResetUplinkConns resets the connections UplinkConns counts on uplink
// name: the peer gets a RST and the app sees the connection aborted, so no
// flow hangs once the uplink is removed. It returns how many it reset.
func (s *Stack) ResetUplinkConns(name string) int {
	var eps []tcpip.Endpoint
	s.eachUplinkConn(func(n string, ep tcpip.Endpoint) {
		if n == name {
			eps = append(eps, ep)
		}
	})
	for _, ep := range eps {
		ep.Abort()
	}
	if len(eps) > 0 {
		s.log.Info("uplink connections reset", "uplink", name, "conns", len(eps))
	}
	return len(eps)
}

// eachUplinkConn calls f for every live TCP connection with the name of the
// uplink its local address belongs to.
func (s *Stack) eachUplinkConn(f func(name string, ep tcpip.Endpoint)) {
	s.mu.Lock()
	byAddr := make(map[tcpip.Address]string, 2*len(s.links))
	for name, l := range s.links {
		if l.cfg.Addr4.IsValid() {
			byAddr[tcpAddr(l.cfg.Addr4.Addr())] = name
		}
		if l.cfg.Addr6.IsValid() {
			byAddr[tcpAddr(l.cfg.Addr6.Addr())] = name
		}
	}
	s.mu.Unlock()
	seen := map[tcpip.Endpoint]bool{}
	for _, te := range s.ns.RegisteredEndpoints() {
		ep, ok := te.(tcpip.Endpoint)
		if !ok || seen[ep] {
			continue
		}
		seen[ep] = true
		info, ok := ep.Info().(*stack.TransportEndpointInfo)
		if !ok || info.TransProto != tcp.ProtocolNumber || !liveTCP(tcp.EndpointState(ep.State())) {
			continue
		}
		if name, ok := byAddr[info.ID.LocalAddress]; ok {
			f(name, ep)
		}
	}
}

// liveTCP reports whether a TCP state is a connection that still moves
// data or is about to.
func liveTCP(st tcp.EndpointState) bool {
	switch st {
	case tcp.StateConnecting, tcp.StateSynSent, tcp.StateSynRecv, tcp.StateEstablished,
		tcp.StateFinWait1, tcp.StateFinWait2, tcp.StateCloseWait, tcp.StateLastAck, tcp.StateClosing:
		return true
	}
	return false
}

// errNoUplinkOp is returned for an uplink management request without its
// arguments.
var errNoUplinkOp = errors.New("uplink request without arguments")
