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
//	56 8 bytes of zero
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
)

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
		ops.SetReceivePacketInfo(on)
	case level == unix.IPPROTO_IP && name == unix.IP_RECVORIGDSTADDR,
		level == unix.IPPROTO_IPV6 && name == unix.IPV6_RECVORIGDSTADDR:
		ops.SetReceiveOriginalDstAddress(on)
	case level == unix.IPPROTO_IPV6 && name == unix.IPV6_RECVTCLASS:
		ops.SetReceiveTClass(on)
	case level == unix.IPPROTO_IPV6 && name == unix.IPV6_RECVPKTINFO:
		ops.SetIPv6ReceivePacketInfo(on)
	case level == unix.IPPROTO_IPV6 && name == unix.IPV6_RECVHOPLIMIT:
		ops.SetReceiveHopLimit(on)
	default:
		return false
	}
	return true
}

// wantsCtl reports whether a datagram socket asks for any control data.
func wantsCtl(ops *tcpip.SocketOptions) bool {
	return ops.GetReceiveTOS() || ops.GetReceiveTTL() || ops.GetReceivePacketInfo() ||
		ops.GetReceiveOriginalDstAddress() || ops.GetReceiveTClass() ||
		ops.GetIPv6ReceivePacketInfo() || ops.GetReceiveHopLimit()
}

// putCtl writes the control block of cm into b[:ctlSize].
func (e *Engine) putCtl(b []byte, cm *tcpip.ReceivableControlMessages) {
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
	binary.NativeEndian.PutUint32(b[0:], mask)
}

// dgramBufSize is the staging buffer of a datagram pump: framing, control
// block and the largest payload.
const dgramBufSize = msgproto.DatagramSize + ctlSize + maxDgram
