// Package netflow is mpshim's per-flow monitor: the packet headers every INS
// reads at its link layer, the flow table they are counted into, and the
// records operators watch, export and act on.
package netflow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// IP protocol numbers the parser understands beyond the IP header.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// TCP flag bits as in the TCP header (and IPFIX tcpControlBits).
const (
	TCPFin = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
	TCPUrg
	TCPEce
	TCPCwr
)

// HeaderBytes is how much of a packet Parse needs at most: an IPv6 header,
// a few extension headers and a TCP header with options fit.
const HeaderBytes = 160

// Direction is a packet's direction at an uplink, seen from the INS.
type Direction uint8

// Directions.
const (
	// In is a packet received from an uplink.
	In Direction = iota
	// Out is a packet sent to an uplink.
	Out
)

func (d Direction) String() string {
	if d == In {
		return "in"
	}
	return "out"
}

// Key is a flow's 5-tuple, as the packet carries it (source first).
type Key struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
}

// Reverse returns the key of the opposite direction.
func (k Key) Reverse() Key {
	return Key{Src: k.Dst, Dst: k.Src, SrcPort: k.DstPort, DstPort: k.SrcPort, Proto: k.Proto}
}

func (k Key) String() string {
	return fmt.Sprintf("%s %s -> %s", protoName(k.Proto),
		netip.AddrPortFrom(k.Src, k.SrcPort), netip.AddrPortFrom(k.Dst, k.DstPort))
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoICMPv6:
		return "icmpv6"
	}
	return fmt.Sprintf("proto-%d", p)
}

// Packet is what the link layer learns from one IP packet's headers.
type Packet struct {
	Key
	// Len is the IP packet's length in bytes (IP header included, link
	// header excluded), from the IP header.
	Len int
	// Payload is the transport payload's length in bytes: Len minus the
	// IP header, IPv6 extension headers and the TCP or UDP header. For
	// other protocols and for non-first fragments it is what follows the
	// IP headers. It is 0 when the headers are not all in the buffer.
	Payload int
	// TCPFlags are the TCP header's flags (0 for other protocols).
	TCPFlags uint8
	// Fragment is set for a non-first fragment: its ports are unknown
	// (zero), as flow exporters report them.
	Fragment bool
	// Segments is how many packets this one leaves as on the wire when
	// the kernel segments it (GSO); 0 and 1 both mean one packet. Each
	// segment repeats the headers, Len-Payload bytes.
	Segments int
}

// Wire returns the packets and IP bytes p stands for on the wire: one
// packet of Len bytes, or Segments packets that share Payload and each
// carry the headers.
func (p *Packet) Wire() (packets, bytes int) {
	if p.Segments <= 1 {
		return 1, p.Len
	}
	return p.Segments, p.Len + (p.Segments-1)*(p.Len-p.Payload)
}

// Errors of Parse. Every malformed packet is reported, never trusted.
var (
	ErrShort   = errors.New("netflow: packet too short")
	ErrVersion = errors.New("netflow: not an IPv4 or IPv6 packet")
	ErrHeader  = errors.New("netflow: malformed IP header")
)

// Parse reads the IP and transport headers at the start of b, which holds
// the first bytes of an IP packet (at least the IP header; HeaderBytes are
// enough for every case). Transport ports and TCP flags are filled in when
// b holds them; a packet cut short after the IP header still yields its
// addresses and protocol. Parse never reads beyond b and does not retain it.
func Parse(b []byte) (Packet, error) {
	var p Packet
	if len(b) < 1 {
		return p, ErrShort
	}
	var rest []byte
	hdr := 0 // bytes of IP (and extension) headers
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return p, ErrShort
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < 20 || total < ihl {
			return p, ErrHeader
		}
		if len(b) < ihl {
			return p, ErrShort
		}
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.Proto = b[9]
		p.Len = total
		// A non-zero fragment offset: the transport header is in the
		// first fragment only.
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			p.Fragment = true
			p.Payload = total - ihl
			return p, nil
		}
		rest = b[ihl:min(len(b), total)]
		hdr = ihl
	case 6:
		if len(b) < 40 {
			return p, ErrShort
		}
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		p.Len = 40 + int(binary.BigEndian.Uint16(b[4:6]))
		next, off := b[6], 40
		end := min(len(b), p.Len)
		// Walk the extension headers to the transport header.
	walk:
		for {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if off+8 > end {
					p.Proto = next
					return p, nil
				}
				next, off = b[off], off+8+int(b[off+1])*8
			case 44: // fragment
				if off+8 > end {
					p.Proto = next
					return p, nil
				}
				fragOff := binary.BigEndian.Uint16(b[off+2:off+4]) >> 3
				next, off = b[off], off+8
				if fragOff != 0 {
					p.Proto = next
					p.Fragment = true
					p.Payload = max(p.Len-off, 0)
					return p, nil
				}
			default:
				break walk
			}
		}
		p.Proto = next
		if off > end {
			return p, nil
		}
		rest = b[off:end]
		hdr = off
	default:
		return p, ErrVersion
	}
	switch p.Proto {
	case ProtoTCP:
		if len(rest) >= 14 {
			p.SrcPort = binary.BigEndian.Uint16(rest[0:2])
			p.DstPort = binary.BigEndian.Uint16(rest[2:4])
			p.TCPFlags = rest[13]
			p.Payload = max(p.Len-hdr-int(rest[12]>>4)*4, 0)
		}
	case ProtoUDP:
		if len(rest) >= 4 {
			p.SrcPort = binary.BigEndian.Uint16(rest[0:2])
			p.DstPort = binary.BigEndian.Uint16(rest[2:4])
			p.Payload = max(p.Len-hdr-8, 0)
		}
	case ProtoICMP, ProtoICMPv6:
		// As flow exporters do, type and code go in the destination
		// port (type*256+code) so echo requests and replies stay apart.
		if len(rest) >= 2 {
			p.DstPort = uint16(rest[0])<<8 | uint16(rest[1])
		}
		p.Payload = p.Len - hdr
	default:
		p.Payload = p.Len - hdr
	}
	return p, nil
}

// Canonical returns the key with the lower (address, port) end as source,
// so both directions of a conversation have the same canonical key.
func (k Key) Canonical() Key {
	if c := k.Src.Compare(k.Dst); c > 0 || (c == 0 && k.SrcPort > k.DstPort) {
		return k.Reverse()
	}
	return k
}

// FlowID names the conversation k belongs to in INS ins, the same for both
// directions: "<ins>-<12 hex digits>". Operators copy it from `netflow ls`
// into `netflow reset`; an INS finds the connection by computing the ID of
// its endpoints' 5-tuples.
func FlowID(ins int, k Key) string {
	c := k.Canonical()
	// FNV-1a, 64 bits, over the canonical tuple.
	h := uint64(14695981039346656037)
	mix := func(b []byte) {
		for _, x := range b {
			h ^= uint64(x)
			h *= 1099511628211
		}
	}
	s, d := c.Src.As16(), c.Dst.As16()
	mix(s[:])
	mix(d[:])
	mix([]byte{byte(c.SrcPort >> 8), byte(c.SrcPort), byte(c.DstPort >> 8), byte(c.DstPort), c.Proto})
	return fmt.Sprintf("%d-%012x", ins, h&(1<<48-1))
}

// ParseFlowID splits an ID made by FlowID into its INS id and hash.
func ParseFlowID(id string) (ins int, hash uint64, err error) {
	var rest string
	i := strings.IndexByte(id, '-')
	if i <= 0 || len(id)-i-1 != 12 {
		return 0, 0, fmt.Errorf("flow id %q: want <ins>-<12 hex digits>", id)
	}
	ins, err = strconv.Atoi(id[:i])
	rest = id[i+1:]
	if err != nil || ins < 0 {
		return 0, 0, fmt.Errorf("flow id %q: bad INS id", id)
	}
	if hash, err = strconv.ParseUint(rest, 16, 64); err != nil {
		return 0, 0, fmt.Errorf("flow id %q: bad hash", id)
	}
	return ins, hash, nil
}
