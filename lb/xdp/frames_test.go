package xdp

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Frame builders for the program tests. Checksums are left zero: the
// program never looks at them.

var (
	lbMAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xc1}
)

func eth(etype uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], lbMAC)
	copy(f[6:12], clientMAC)
	binary.BigEndian.PutUint16(f[12:], etype)
	return append(f, payload...)
}

// ipv4 is an IPv4 header (no options) with the given fragment field
// (flags and offset in 8-byte units) and payload.
func ipv4(src, dst netip.Addr, proto uint8, id, frag uint16, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[4:], id)
	binary.BigEndian.PutUint16(h[6:], frag)
	h[8] = 64
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return append(h, payload...)
}

func ipv6(src, dst netip.Addr, next uint8, payload []byte) []byte {
	h := make([]byte, 40, 40+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = next
	h[7] = 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, payload...)
}

// frag6 is an IPv6 fragment header followed by payload.
func frag6(next uint8, offset8 uint16, more bool, id uint32, payload []byte) []byte {
	h := make([]byte, 8, 8+len(payload))
	h[0] = next
	fo := offset8 << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(h[2:], fo)
	binary.BigEndian.PutUint32(h[4:], id)
	return append(h, payload...)
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

func tcp(sport, dport uint16, flags uint8, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	h[12] = 5 << 4
	h[13] = flags
	return append(h, payload...)
}

func udp(sport, dport uint16, payload []byte) []byte {
	h := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return append(h, payload...)
}

// icmp is an ICMP or ICMPv6 message of type and code quoting quoted.
func icmp(typ, code uint8, quoted []byte) []byte {
	h := make([]byte, 8, 8+len(quoted))
	h[0], h[1] = typ, code
	return append(h, quoted...)
}

func tcp4(src, dst netip.AddrPort, flags uint8) []byte {
	return eth(0x0800, ipv4(src.Addr(), dst.Addr(), 6, 1, 0x4000, tcp(src.Port(), dst.Port(), flags, nil)))
}

func tcp6(src, dst netip.AddrPort, flags uint8) []byte {
	return eth(0x86dd, ipv6(src.Addr(), dst.Addr(), 6, tcp(src.Port(), dst.Port(), flags, nil)))
}

func udp4(src, dst netip.AddrPort, payload []byte) []byte {
	return eth(0x0800, ipv4(src.Addr(), dst.Addr(), 17, 1, 0, udp(src.Port(), dst.Port(), payload)))
}
