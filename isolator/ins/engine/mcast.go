package engine

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Multicast options of UDP sockets, with Linux's checks. An interface index
// is the app's: 0 is any, 1 is the app namespace's lo, which is the INS's
// loopback NIC (loopback served by the INS); no other index names an INS
// NIC (ENODEV), so a group on an uplink is joined by the uplink's address
// or by index 0.

// defaults of the IPv4 and IPv6 multicast options Linux reads back.
const (
	mcastTTLDefault  = 1
	mcastLoopDefault = 1
)

// loopbackNIC returns the id of the stack's loopback NIC (0 if none).
func (e *Engine) loopbackNIC() tcpip.NICID {
	for id, info := range e.st.NICInfo() {
		if info.Flags.Loopback {
			return id
		}
	}
	return 0
}

// nicOfIndex maps the app's interface index to a NIC id; ok is false for
// an index no INS NIC answers to.
func (e *Engine) nicOfIndex(ifindex int32) (tcpip.NICID, bool) {
	switch ifindex {
	case 0:
		return 0, true
	case 1:
		if lo := e.loopbackNIC(); lo != 0 {
			return lo, true
		}
	}
	return 0, false
}

// indexOfNIC is nicOfIndex's inverse for what getsockopt reads back.
func (e *Engine) indexOfNIC(nic tcpip.NICID) int32 {
	if nic != 0 && nic == e.loopbackNIC() {
		return 1
	}
	return int32(nic)
}

// isMcastIPOpt reports whether name is an IPPROTO_IP multicast option
// that setIPMcastOpt serves.
func isMcastIPOpt(name int) bool {
	switch name {
	case unix.IP_MULTICAST_TTL, unix.IP_MULTICAST_LOOP, unix.IP_MULTICAST_IF,
		unix.IP_ADD_MEMBERSHIP, unix.IP_DROP_MEMBERSHIP:
		return true
	}
	return false
}

// setIPMcastOpt sets an IPPROTO_IP multicast option (ip_setsockopt).
func (s *sock) setIPMcastOpt(name int, val []byte) unix.Errno {
	if s.typ != unix.SOCK_DGRAM {
		return unix.ENOPROTOOPT
	}
	switch name {
	case unix.IP_MULTICAST_TTL, unix.IP_MULTICAST_LOOP:
		if len(val) < 1 {
			return unix.EINVAL
		}
		v := int32(val[0])
		if len(val) >= 4 {
			v = int32(binary.NativeEndian.Uint32(val))
		}
		if name == unix.IP_MULTICAST_LOOP {
			v = bool32(v != 0)
			s.ep.SocketOptions().SetMulticastLoop(v != 0)
		} else {
			if v == -1 {
				v = mcastTTLDefault
			}
			if v < 0 || v > 255 {
				return unix.EINVAL
			}
			if terr := s.ep.SetSockOptInt(tcpip.MulticastTTLOption, int(v)); terr != nil {
				return ErrnoOf(terr)
			}
		}
		s.o.set(unix.IPPROTO_IP, name, v)
		return 0
	case unix.IP_MULTICAST_IF:
		// struct ip_mreqn, struct ip_mreq or struct in_addr.
		var ifindex int32
		var addr [4]byte
		switch {
		case len(val) >= unix.SizeofIPMreqn:
			copy(addr[:], val[4:8])
			ifindex = int32(binary.NativeEndian.Uint32(val[8:12]))
		case len(val) >= unix.SizeofIPMreq:
			copy(addr[:], val[4:8])
		case len(val) >= 4:
			copy(addr[:], val[:4])
		default:
			return unix.EINVAL
		}
		nic, ok := s.e.nicOfIndex(ifindex)
		if !ok {
			return unix.EADDRNOTAVAIL
		}
		o := tcpip.MulticastInterfaceOption{NIC: nic, InterfaceAddr: ifAddr(addr)}
		if terr := s.ep.SetSockOpt(&o); terr != nil {
			if _, bad := terr.(*tcpip.ErrBadLocalAddress); bad {
				return unix.EADDRNOTAVAIL
			}
			return ErrnoOf(terr)
		}
		return 0
	default: // IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP
		// struct ip_mreqn or struct ip_mreq.
		if len(val) < unix.SizeofIPMreq {
			return unix.EINVAL
		}
		var group, addr [4]byte
		copy(group[:], val[:4])
		copy(addr[:], val[4:8])
		var ifindex int32
		if len(val) >= unix.SizeofIPMreqn {
			ifindex = int32(binary.NativeEndian.Uint32(val[8:12]))
		}
		g := tcpip.AddrFrom4(group)
		if !header.IsV4MulticastAddress(g) {
			return unix.EINVAL
		}
		nic, ok := s.e.nicOfIndex(ifindex)
		if !ok {
			return unix.ENODEV
		}
		return s.membership(name == unix.IP_ADD_MEMBERSHIP, tcpip.MembershipOption{NIC: nic, InterfaceAddr: ifAddr(addr), MulticastAddr: g})
	}
}

// ifAddr is an interface address of an option: the zero Address for
// INADDR_ANY.
func ifAddr(a [4]byte) tcpip.Address {
	if a == [4]byte{} {
		return tcpip.Address{}
	}
	return tcpip.AddrFrom4(a)
}

// membership joins or leaves a group with Linux's errors: EADDRINUSE for a
// group joined already, EADDRNOTAVAIL to leave one not joined, ENODEV when
// no interface carries it.
func (s *sock) membership(join bool, m tcpip.MembershipOption) unix.Errno {
	var terr tcpip.Error
	if join {
		o := tcpip.AddMembershipOption(m)
		terr = s.ep.SetSockOpt(&o)
	} else {
		o := tcpip.RemoveMembershipOption(m)
		terr = s.ep.SetSockOpt(&o)
	}
	switch terr.(type) {
	case nil:
		return 0
	case *tcpip.ErrBadLocalAddress:
		return unix.EADDRNOTAVAIL
	case *tcpip.ErrUnknownDevice, *tcpip.ErrUnknownNICID:
		if !join {
			return unix.EADDRNOTAVAIL
		}
		return unix.ENODEV
	}
	return ErrnoOf(terr)
}

// getIPMcastOpt reads an IPPROTO_IP multicast option back; IP_MULTICAST_IF
// is the interface address (struct in_addr).
func (s *sock) getIPMcastOpt(name int) ([]byte, unix.Errno) {
	if s.typ != unix.SOCK_DGRAM {
		return nil, unix.ENOPROTOOPT
	}
	switch name {
	case unix.IP_MULTICAST_TTL, unix.IP_MULTICAST_LOOP:
		v, ok := s.o.get(unix.IPPROTO_IP, name)
		if !ok {
			v = mcastTTLDefault
			if name == unix.IP_MULTICAST_LOOP {
				v = mcastLoopDefault
			}
		}
		return int32Bytes(v), 0
	case unix.IP_MULTICAST_IF:
		var o tcpip.MulticastInterfaceOption
		s.ep.GetSockOpt(&o)
		b := make([]byte, 4)
		if o.InterfaceAddr.Len() == 4 {
			a := o.InterfaceAddr.As4()
			copy(b, a[:])
		}
		return b, 0
	}
	return nil, unix.ENOPROTOOPT
}

// isMcastIPv6Opt reports whether name is an IPPROTO_IPV6 multicast option
// that setIPv6McastOpt serves.
func isMcastIPv6Opt(name int) bool {
	switch name {
	case unix.IPV6_MULTICAST_HOPS, unix.IPV6_MULTICAST_LOOP, unix.IPV6_MULTICAST_IF,
		unix.IPV6_ADD_MEMBERSHIP, unix.IPV6_DROP_MEMBERSHIP:
		return true
	}
	return false
}

// setIPv6McastOpt sets an IPPROTO_IPV6 multicast option (ipv6_setsockopt).
func (s *sock) setIPv6McastOpt(name int, val []byte) unix.Errno {
	if s.typ != unix.SOCK_DGRAM {
		return unix.ENOPROTOOPT
	}
	if name == unix.IPV6_ADD_MEMBERSHIP || name == unix.IPV6_DROP_MEMBERSHIP {
		if len(val) < unix.SizeofIPv6Mreq {
			return unix.EINVAL
		}
		var group [16]byte
		copy(group[:], val[:16])
		g := tcpip.AddrFrom16(group)
		if !header.IsV6MulticastAddress(g) {
			return unix.EINVAL
		}
		nic, ok := s.e.nicOfIndex(int32(binary.NativeEndian.Uint32(val[16:20])))
		if !ok {
			return unix.ENODEV
		}
		return s.membership(name == unix.IPV6_ADD_MEMBERSHIP, tcpip.MembershipOption{NIC: nic, MulticastAddr: g})
	}
	if len(val) < 4 {
		return unix.EINVAL
	}
	v := int32(binary.NativeEndian.Uint32(val))
	switch name {
	case unix.IPV6_MULTICAST_HOPS:
		if v < -1 || v > 255 {
			return unix.EINVAL
		}
		if v == -1 {
			v = mcastTTLDefault
		}
		if terr := s.ep.SetSockOptInt(tcpip.MulticastTTLOption, int(v)); terr != nil {
			return ErrnoOf(terr)
		}
	case unix.IPV6_MULTICAST_LOOP:
		if v < 0 || v > 1 {
			return unix.EINVAL
		}
		s.ep.SocketOptions().SetMulticastLoop(v != 0)
	case unix.IPV6_MULTICAST_IF:
		nic, ok := s.e.nicOfIndex(v)
		if !ok {
			return unix.ENODEV
		}
		if terr := s.ep.SetSockOptInt(tcpip.IPv6MulticastInterfaceOption, int(nic)); terr != nil {
			return ErrnoOf(terr)
		}
	}
	s.o.set(unix.IPPROTO_IPV6, name, v)
	return 0
}

// getIPv6McastOpt reads an IPPROTO_IPV6 multicast option back.
func (s *sock) getIPv6McastOpt(name int) (int32, unix.Errno) {
	if s.typ != unix.SOCK_DGRAM {
		return 0, unix.ENOPROTOOPT
	}
	switch name {
	case unix.IPV6_MULTICAST_HOPS:
		if v, ok := s.o.get(unix.IPPROTO_IPV6, name); ok {
			return v, 0
		}
		return mcastTTLDefault, 0
	case unix.IPV6_MULTICAST_LOOP:
		if v, ok := s.o.get(unix.IPPROTO_IPV6, name); ok {
			return v, 0
		}
		return mcastLoopDefault, 0
	case unix.IPV6_MULTICAST_IF:
		v, _ := s.ep.GetSockOptInt(tcpip.IPv6MulticastInterfaceOption)
		return s.e.indexOfNIC(tcpip.NICID(v)), 0
	}
	return 0, unix.ENOPROTOOPT
}

// mcastRouted reports whether a datagram to addr is left to the netstack's
// routes rather than to the uplink chooser: a multicast destination of a
// socket bound to an address or given a multicast interface leaves by that
// address's or interface's NIC (the loopback's too), as Linux routes it.
func mcastRouted(s *sock, addr netip.AddrPort) bool {
	a := addr.Addr().Unmap()
	if !a.IsMulticast() || s.typ != unix.SOCK_DGRAM {
		return false
	}
	if cur, terr := s.ep.GetLocalAddress(); terr == nil && cur.Addr.Len() != 0 && !cur.Addr.Unspecified() {
		return true
	}
	if a.Is4() {
		var o tcpip.MulticastInterfaceOption
		s.ep.GetSockOpt(&o)
		return o.NIC != 0 || (o.InterfaceAddr.Len() != 0 && !o.InterfaceAddr.Unspecified())
	}
	nic, _ := s.ep.GetSockOptInt(tcpip.IPv6MulticastInterfaceOption)
	return nic != 0
}
