// Package addrcheck finds out whether an address is already in use on a
// link before an INS takes it: an ARP probe (RFC 5227) for IPv4 and
// duplicate address detection (RFC 4862, a Neighbor Solicitation from the
// unspecified address) for IPv6, sent from the INS's own MAC on its own
// link, before the INS process starts.
//
// The timings are shorter than RFC 5227's (three probes over one to two
// seconds, then two seconds of waiting): an INS replacing a dead one must
// be back within a second, so Probe sends Probes probes Interval apart and
// listens for Wait in all. A host that answers an ARP request at all
// answers within that time on a LAN; what this trades away is the
// detection of a host that is itself only just probing the address.
package addrcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Probe timings (see the package comment).
const (
	Probes   = 2
	Interval = 100 * time.Millisecond
	Wait     = 300 * time.Millisecond
)

// Conflict reports an address that another host answered for.
type Conflict struct {
	Addr netip.Addr
	// MAC is the hardware address of the host that answered.
	MAC net.HardwareAddr
}

func (c *Conflict) Error() string {
	return fmt.Sprintf("address %s is in use on the link by %s", c.Addr, c.MAC)
}

// Probe checks addr on the link ifname (in the calling thread's network
// namespace, where the socket is opened) from hardware address mac. It
// returns nil when nobody answered, a *Conflict when a host did, or another
// error when the probe could not be made.
func Probe(ifname string, mac net.HardwareAddr, addr netip.Addr) error {
	if len(mac) != 6 {
		return fmt.Errorf("probe %s on %s: MAC %s is not Ethernet", addr, ifname, mac)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("probe %s: %w", addr, err)
	}
	proto := uint16(unix.ETH_P_ARP)
	if addr.Is6() && !addr.Is4In6() {
		proto = unix.ETH_P_IPV6
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(proto)))
	if err != nil {
		return fmt.Errorf("probe %s on %s: packet socket: %w", addr, ifname, err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifi.Index}); err != nil {
		return fmt.Errorf("probe %s on %s: bind: %w", addr, ifname, err)
	}
	var frame []byte
	var dst [8]byte
	if proto == unix.ETH_P_ARP {
		frame = arpProbe(mac, addr.Unmap())
		copy(dst[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	} else {
		// The answer to a DAD solicitation goes to all-nodes multicast,
		// which a kernel link without IPv6 does not listen to.
		mr := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_ALLMULTI}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mr); err != nil {
			return fmt.Errorf("probe %s on %s: all-multicast: %w", addr, ifname, err)
		}
		frame = dadSolicit(mac, addr)
		copy(dst[:], frame[:6])
	}
	to := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifi.Index, Halen: 6, Addr: dst}
	start := time.Now()
	sent := 0
	buf := make([]byte, 2048)
	for {
		now := time.Since(start)
		if sent < Probes && now >= time.Duration(sent)*Interval {
			if err := unix.Sendto(fd, frame, 0, to); err != nil {
				return fmt.Errorf("probe %s on %s: send: %w", addr, ifname, err)
			}
			sent++
			continue
		}
		if now >= Wait {
			return nil
		}
		next := Wait - now
		if sent < Probes {
			next = min(next, time.Duration(sent)*Interval-now)
		}
		tv := unix.NsecToTimeval(max(next, time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("probe %s on %s: %w", addr, ifname, err)
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("probe %s on %s: receive: %w", addr, ifname, err)
		}
		var by net.HardwareAddr
		if proto == unix.ETH_P_ARP {
			by = arpConflict(buf[:n], mac, addr.Unmap())
		} else {
			by = dadConflict(buf[:n], mac, addr)
		}
		if by != nil {
			return &Conflict{Addr: addr, MAC: by}
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// arpProbe is an ARP request from mac for addr with sender address 0.0.0.0
// (RFC 5227 section 2.1.1), as an Ethernet frame.
func arpProbe(mac net.HardwareAddr, addr netip.Addr) []byte {
	f := make([]byte, 14+28)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_ARP)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], mac)
	// sender IP 0.0.0.0, target MAC zero
	b := addr.As4()
	copy(a[24:28], b[:])
	return f
}

// arpConflict returns the sender of an ARP packet that claims addr (a reply
// or request with addr as sender address) or probes for it too (sender
// 0.0.0.0, target addr), unless it is our own.
func arpConflict(f []byte, mac net.HardwareAddr, addr netip.Addr) net.HardwareAddr {
	if len(f) < 14+28 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_ARP {
		return nil
	}
	a := f[14:]
	if binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != 0x0800 || a[4] != 6 || a[5] != 4 {
		return nil
	}
	sha := net.HardwareAddr(append([]byte(nil), a[8:14]...))
	if sha.String() == mac.String() {
		return nil
	}
	want := addr.As4()
	spa, tpa := [4]byte(a[14:18]), [4]byte(a[24:28])
	op := binary.BigEndian.Uint16(a[6:])
	if spa == want || (op == 1 && spa == [4]byte{} && tpa == want) {
		return sha
	}
	return nil
}

// solicitedNode is the solicited-node multicast address of a.
func solicitedNode(a netip.Addr) [16]byte {
	b := a.As16()
	return [16]byte{0xff, 0x02, 10: 0, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]}
}

// dadSolicit is a Neighbor Solicitation for addr from the unspecified
// address to addr's solicited-node group (RFC 4862 section 5.4.2).
func dadSolicit(mac net.HardwareAddr, addr netip.Addr) []byte {
	f := make([]byte, 14+40+24)
	grp := solicitedNode(addr)
	copy(f[0:6], []byte{0x33, 0x33, grp[12], grp[13], grp[14], grp[15]})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IPV6)
	ip := f[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], 24)
	ip[6] = unix.IPPROTO_ICMPV6
	ip[7] = 255
	// source :: (zero)
	copy(ip[24:40], grp[:])
	icmp := ip[40:]
	icmp[0] = 135 // Neighbor Solicitation
	t := addr.As16()
	copy(icmp[8:24], t[:])
	binary.BigEndian.PutUint16(icmp[2:], icmp6Checksum(ip[8:24], ip[24:40], icmp))
	return f
}

func icmp6Checksum(src, dst, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src)
	add(dst)
	var ph [8]byte
	binary.BigEndian.PutUint32(ph[0:], uint32(len(msg)))
	ph[7] = unix.IPPROTO_ICMPV6
	add(ph[:])
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// dadConflict returns the sender of a Neighbor Advertisement for addr, or
// of another host's DAD solicitation for it, unless it is our own frame.
func dadConflict(f []byte, mac net.HardwareAddr, addr netip.Addr) net.HardwareAddr {
	if len(f) < 14+40+24 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IPV6 {
		return nil
	}
	src := net.HardwareAddr(append([]byte(nil), f[6:12]...))
	if src.String() == mac.String() {
		return nil
	}
	ip := f[14:]
	if ip[0]>>4 != 6 || ip[6] != unix.IPPROTO_ICMPV6 || ip[7] != 255 {
		return nil
	}
	icmp := ip[40:]
	want := addr.As16()
	if [16]byte(icmp[8:24]) != want {
		return nil
	}
	switch icmp[0] {
	case 136: // Neighbor Advertisement: the owner answers
		return src
	case 135: // another host's DAD for the same address
		if [16]byte(ip[8:24]) == ([16]byte{}) {
			return src
		}
	}
	return nil
}

// StableMAC is the hardware address an INS uses on uplink for its address
// addr: locally administered, unicast, derived from both (FNV-1a), so an
// INS restarted with the same address has the same MAC and the neighbours'
// caches stay right.
func StableMAC(uplink string, addr netip.Addr) net.HardwareAddr {
	h := uint64(14695981039346656037)
	for _, b := range append([]byte(uplink+"\x00"), addr.AsSlice()...) {
		h ^= uint64(b)
		h *= 1099511628211
	}
	m := make(net.HardwareAddr, 6)
	binary.BigEndian.PutUint32(m[2:], uint32(h))
	m[0] = 0x02 // locally administered, unicast
	m[1] = byte(h >> 32)
	return m
}
