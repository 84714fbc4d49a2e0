package netstack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// vipGuard sits between an uplink's NIC and its link when the uplink holds
// service addresses (VIPs) that a load balancer in front answers for. Every
// INS behind the balancer holds the VIP; none may speak for it on the link:
//
//   - gVisor resolves a next hop from the route's local address when that
//     address is on the outgoing NIC, so a reply from the VIP to a peer not
//     yet resolved would send an ARP request or neighbour solicitation from
//     the VIP, and the peer would learn this INS's MAC for the VIP, passing
//     the balancer by. The guard rewrites such a request's sender to the
//     INS's own address on the uplink (the ICMPv6 checksum updated).
//   - An ARP request for the VIP that reaches the INS (from a host that does
//     not go through the balancer's interface) is dropped unanswered; the
//     balancer answers for the VIP once.
type vipGuard struct {
	nested.Endpoint
	own4, own6 tcpip.Address // the uplink's own addresses (zero: none)
	vips       map[tcpip.Address]bool
}

func newVIPGuard(ep stack.LinkEndpoint, u UplinkConfig) *vipGuard {
	g := &vipGuard{vips: map[tcpip.Address]bool{}}
	if u.Addr4.IsValid() {
		g.own4 = tcpAddr(u.Addr4.Addr())
	}
	if u.Addr6.IsValid() {
		g.own6 = tcpAddr(u.Addr6.Addr())
	}
	for _, v := range u.VIPs {
		g.vips[tcpAddr(v.Unmap())] = true
	}
	g.Init(ep, g)
	return g
}

// DeliverNetworkPacket implements stack.NetworkDispatcher: ARP requests for
// a VIP are dropped.
func (g *vipGuard) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if proto == arp.ProtocolNumber {
		if b, ok := pkt.Data().PullUp(header.ARPSize); ok {
			h := header.ARP(b)
			if h.IsValid() && h.Op() == header.ARPRequest && g.vips[tcpip.AddrFromSlice(h.ProtocolAddressTarget())] {
				return
			}
		}
	}
	g.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// WritePackets implements stack.LinkEndpoint: neighbour requests from a VIP
// leave from the uplink's own address instead.
// (PullUp returns the payload's own memory, so the checksum is updated in
// place.)
func (g *vipGuard) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	for _, pkt := range pkts.AsSlice() {
		switch pkt.NetworkProtocolNumber {
		case arp.ProtocolNumber:
			g.fixARP(pkt)
		case header.IPv6ProtocolNumber:
			g.fixNS(pkt)
		}
	}
	return g.Endpoint.WritePackets(pkts)
}

func (g *vipGuard) fixARP(pkt *stack.PacketBuffer) {
	h := header.ARP(pkt.NetworkHeader().Slice())
	if len(h) < header.ARPSize || !h.IsValid() || h.Op() != header.ARPRequest || g.own4.BitLen() == 0 {
		return
	}
	if g.vips[tcpip.AddrFromSlice(h.ProtocolAddressSender())] {
		copy(h.ProtocolAddressSender(), g.own4.AsSlice())
	}
}

func (g *vipGuard) fixNS(pkt *stack.PacketBuffer) {
	ip := header.IPv6(pkt.NetworkHeader().Slice())
	if len(ip) < header.IPv6MinimumSize || g.own6.BitLen() == 0 || ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
		return
	}
	src := ip.SourceAddress()
	if !g.vips[src] {
		return
	}
	b, ok := pkt.Data().PullUp(header.ICMPv6MinimumSize)
	if !ok {
		return
	}
	icmp := header.ICMPv6(b)
	if icmp.Type() != header.ICMPv6NeighborSolicit {
		return
	}
	ip.SetSourceAddress(g.own6)
	icmp.UpdateChecksumPseudoHeaderAddress(src, g.own6)
}

// validVIP reports whether v can be a VIP of an uplink with addresses a4 and
// a6: a unicast address of a family the uplink has an address of (its
// neighbour requests need a sender).
func validVIP(v netip.Addr, a4, a6 netip.Prefix) bool {
	v = v.Unmap()
	if !v.IsValid() || v.IsUnspecified() || v.IsMulticast() || v.IsLoopback() || v.IsLinkLocalUnicast() {
		return false
	}
	if v.Is4() {
		return a4.IsValid() && a4.Addr() != v
	}
	return a6.IsValid() && a6.Addr() != v
}
