package engine

import (
	"encoding/binary"

	"github.com/mpshim/mpshim/msgproto"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// Control data of received datagrams (docs/protocol.md, "Datagram
// framing"). When a UDP socket asks for ancillary data on receive
// (IP_PKTINFO, IP_RECVTOS, IP_RECVTTL, IP_RECVORIGDSTADDR and their IPv6
// forms), every datagram the INS delivers carries a control block of
// ctlSize bytes between the framing and the payload, and the framing's
// Flags has flagCtl. The shim turns the block into the app's control
// messages. Layout (native byte order):
//
//	0  u32 mask (ctlTOS | ctlTTL | ...: which fields hold a value)
//	4  u8 TOS, u8 TTL, u8 hop limit, u8 zero
//	8  u32 traffic class
//	12 i32 interface index (the app's: lo is 1)
//	16 [4] IPv4 packet info: local address (ipi_spec_dst)
//	20 [16] packet info: destination address (IPv4 in the first 4 bytes;
//	   with both packet infos, the IPv6 one is its IPv4-mapped form)
//	36 u16 original destination family, u16 port (host order), [16] address
//	56 i64 receive time, ns since the Unix epoch (ctlStamp, ctlStampNS)
const (
	ctlSize = 64
	flagCtl = 1

	ctlTOS      = 1
	ctlTTL      = 2
	ctlHopLimit = 4
	ctlTClass   = 8
	ctlPktInfo4 = 16
	ctlPktInfo6 = 32
	ctlOrigDst  = 64
	ctlStamp    = 128 // receive time for SO_TIMESTAMP (struct timeval)
	ctlStampNS  = 256 // receive time for SO_TIMESTAMPNS (struct timespec)
)

// setStamp records which receive timestamp the socket asks for (s.mu
// held): SO_TIMESTAMPNS wins over SO_TIMESTAMP, as Linux.
func (s *sock) setStamp() {
	var v uint32
	if x, _ := s.o.get(unix.SOL_SOCKET, unix.SO_TIMESTAMP); x != 0 {
		v = ctlStamp
	}
	if x, _ := s.o.get(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS); x != 0 {
		v = ctlStampNS
	}
	s.stamp.Store(v)
}

// recvCtlOpt applies an option that asks for control data on receive and
// reports whether name is one.
func (s *sock) recvCtlOpt(level, name int, on bool) bool {
	ops := s.ep.SocketOptions()
	switch {
	case level == unix.IPPROTO_IP && name == unix.IP_RECVTOS:
		ops.SetReceiveTOS(on)
	case level == unix.IPPROTO_IP && name == unix.IP_RECVTTL:
		ops.SetReceiveTTL(on)
	case level == unix.IPPROTO_IP && name == unix.IP_PKTINFO:
		// An IPv6 socket asking for IPV6_PKTINFO needs the IPv4
		// packet info too: its IPv4 datagrams get an IPV6_PKTINFO
		// made from it (the netstack gives IPv6 packet info for
		// IPv6 datagrams only).
		v6, _ := s.o.get(unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO)
		ops.SetReceivePacketInfo(on || (s.family == unix.AF_INET6 && v6 != 0))
	case level == unix.IPPROTO_IP && name == unix.IP_RECVORIGDSTADDR,
		level == unix.IPPROTO_IPV6 && name == unix.IPV6_RECVORIGDSTADDR:
		ops.SetReceiveOriginalDstAddress(on)
	case level == unix.IPPROTO_IPV6 && name == unix.IPV6_RECVTCLASS:
		ops.SetReceiveTClass(on)
	case level == unix.IPPROTO_IPV6 && name == unix.IPV6_RECVPKTINFO:
		ops.SetIPv6ReceivePacketInfo(on)
		v4, _ := s.o.get(unix.IPPROTO_IP, unix.IP_PKTINFO)
		ops.SetReceivePacketInfo(on || v4 != 0)
	case level == unix.IPPROTO_IPV6 && name == unix.IPV6_RECVHOPLIMIT:
		ops.SetReceiveHopLimit(on)
	default:
		return false
	}
	return true
}

// wantsCtl reports whether a datagram socket asks for any control data.
func (s *sock) wantsCtl() bool {
	ops := s.ep.SocketOptions()
	return s.stamp.Load() != 0 || ops.GetReceiveTOS() || ops.GetReceiveTTL() || ops.GetReceivePacketInfo() ||
		ops.GetReceiveOriginalDstAddress() || ops.GetReceiveTClass() ||
		ops.GetIPv6ReceivePacketInfo() || ops.GetReceiveHopLimit()
}

// pktInfoWanted reports which packet infos the app asked for: IP_PKTINFO
// and (on an IPv6 socket) IPV6_RECVPKTINFO.
func (s *sock) pktInfoWanted() (v4, v6 bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, _ := s.o.get(unix.IPPROTO_IP, unix.IP_PKTINFO)
	b, _ := s.o.get(unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO)
	return a != 0, s.family == unix.AF_INET6 && b != 0
}

// putCtl writes the control block of cm, a datagram of s, into b[:ctlSize].
func (e *Engine) putCtl(s *sock, b []byte, cm *tcpip.ReceivableControlMessages) {
	if cm.HasIPPacketInfo && !cm.HasIPv6PacketInfo {
		want4, want6 := s.pktInfoWanted()
		if want6 {
			cm.HasIPv6PacketInfo = true // from the IPv4 one, below
		}
		cm.HasIPPacketInfo = want4 || want6
		if !want4 && want6 {
			// Only the IPv6 form: its address is the IPv4-mapped
			// destination.
			cm.HasIPPacketInfo = false
			cm.IPv6PacketInfo = tcpip.IPv6PacketInfo{NIC: cm.PacketInfo.NIC, Addr: mapped(cm.PacketInfo.DestinationAddr)}
		}
	}
	clear(b[:ctlSize])
	var mask uint32
	if cm.HasTOS {
		mask |= ctlTOS
		b[4] = cm.TOS
	}
	if cm.HasTTL {
		mask |= ctlTTL
		b[5] = cm.TTL
	}
	if cm.HasHopLimit {
		mask |= ctlHopLimit
		b[6] = cm.HopLimit
	}
	if cm.HasTClass {
		mask |= ctlTClass
		binary.NativeEndian.PutUint32(b[8:], cm.TClass)
	}
	// An IPv4 datagram on an IPv6 socket may carry both: the IPv6 one
	// is then the IPv4-mapped destination of the IPv4 one.
	if cm.HasIPPacketInfo {
		mask |= ctlPktInfo4
		binary.NativeEndian.PutUint32(b[12:], uint32(e.indexOfNIC(cm.PacketInfo.NIC)))
		spec := cm.PacketInfo.LocalAddr
		if header.IsV4MulticastAddress(spec) || spec == header.IPv4Broadcast {
			// Linux's ipi_spec_dst of a multicast or broadcast
			// datagram is the receiving interface's address.
			if a, terr := e.st.GetMainNICAddress(cm.PacketInfo.NIC, ipv4.ProtocolNumber); terr == nil {
				spec = a.Address
			}
		}
		copy(b[16:20], spec.AsSlice())
		copy(b[20:36], cm.PacketInfo.DestinationAddr.AsSlice())
	}
	if cm.HasIPv6PacketInfo {
		mask |= ctlPktInfo6
		if !cm.HasIPPacketInfo {
			binary.NativeEndian.PutUint32(b[12:], uint32(e.indexOfNIC(cm.IPv6PacketInfo.NIC)))
			copy(b[20:36], cm.IPv6PacketInfo.Addr.AsSlice())
		}
	}
	if cm.HasOriginalDstAddress {
		mask |= ctlOrigDst
		a := cm.OriginalDstAddress.Addr
		fam := uint16(unix.AF_INET)
		if a.Len() == 16 {
			fam = unix.AF_INET6
		}
		binary.NativeEndian.PutUint16(b[36:], fam)
		binary.NativeEndian.PutUint16(b[38:], cm.OriginalDstAddress.Port)
		copy(b[40:56], a.AsSlice())
	}
	if st := s.stamp.Load(); st != 0 && cm.HasTimestamp {
		mask |= st
		binary.NativeEndian.PutUint64(b[56:], uint64(cm.Timestamp.UnixNano()))
	}
	binary.NativeEndian.PutUint32(b[0:], mask)
}

// dgramBufSize is the staging buffer of a datagram pump: framing, control
// block and the largest payload.
const dgramBufSize = msgproto.DatagramSize + ctlSize + maxDgram

// mapped returns the IPv4-mapped IPv6 form of an IPv4 address.
func mapped(a tcpip.Address) tcpip.Address {
	if a.Len() != 4 {
		return a
	}
	var b [16]byte
	b[10], b[11] = 0xff, 0xff
	a4 := a.As4()
	copy(b[12:], a4[:])
	return tcpip.AddrFrom16(b)
}
