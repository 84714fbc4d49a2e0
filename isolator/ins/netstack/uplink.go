package netstack

// Uplinks added and watched at run time: a NIC on a link socket the daemon
// opened for a sandboxed INS, the parent interface's carrier as the daemon
// sees it, and the connections each uplink carries (for draining).

import (
	"fmt"
	"net/netip"
	"os"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/mpshim/mpshim/isolator/uplink"
	"github.com/mpshim/mpshim/msgproto"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Families returns the msgproto.ResolveHas4/ResolveHas6 bits of the
// address families the stack has an uplink address of.
func (s *Stack) Families() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var f uint32
	for _, l := range s.links {
		if l.cfg.Addr4.IsValid() {
			f |= msgproto.ResolveHas4
		}
		if l.cfg.Addr6.IsValid() {
			f |= msgproto.ResolveHas6
		}
	}
	return f
}

// SourceFor returns the address a flow to a would leave from: that of the
// first healthy uplink (in NIC order) with a route to a, of a's family; false
// when no uplink reaches a. It picks nothing (see ChooseUplink).
func (s *Stack) SourceFor(a netip.Addr) (netip.Addr, bool) {
	a = a.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *nicLink
	for name, l := range s.links {
		if st, err := s.set.State(name); err != nil || st != uplink.StateUp || !l.routes(a) {
			continue
		}
		if best == nil || l.nic < best.nic {
			best = l
		}
	}
	if best == nil {
		return netip.Addr{}, false
	}
	if a.Is4() {
		return best.cfg.Addr4.Addr(), true
	}
	return best.cfg.Addr6.Addr(), true
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
	return s.addUplink(u, f)
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
		if c, err := l.pkt.Carrier(); err == nil {
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
