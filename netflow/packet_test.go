package netflow

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

// ip4 builds an IPv4 packet: header (with ihl words), then l4.
func ip4(proto uint8, src, dst string, fragOff uint16, ihlWords int, l4 []byte) []byte {
	b := make([]byte, ihlWords*4+len(l4))
	b[0] = 0x40 | byte(ihlWords)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[6:], fragOff)
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[ihlWords*4:], l4)
	return b
}

// ip6 builds an IPv6 packet with the given extension headers (each 8 bytes,
// next-header byte filled in here), then l4.
func ip6(proto uint8, src, dst string, ext []uint8, fragOff uint16, l4 []byte) []byte {
	b := make([]byte, 40+8*len(ext)+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	next := proto
	if len(ext) > 0 {
		next = ext[0]
	}
	b[6] = next
	for i, e := range ext {
		off := 40 + 8*i
		nh := proto
		if i+1 < len(ext) {
			nh = ext[i+1]
		}
		b[off] = nh
		if e == 44 {
			binary.BigEndian.PutUint16(b[off+2:], fragOff<<3)
		}
	}
	copy(b[40+8*len(ext):], l4)
	return b
}

func tcpHdr(sp, dp uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sp)
	binary.BigEndian.PutUint16(b[2:], dp)
	b[12] = 5 << 4
	b[13] = flags
	return b
}

func udpHdr(sp, dp uint16) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:], sp)
	binary.BigEndian.PutUint16(b[2:], dp)
	return b
}

func TestParse(t *testing.T) {
	a4, b4 := "192.0.2.1", "198.51.100.2"
	a6, b6 := "2001:db8::1", "2001:db8::2"
	synPayload := append(tcpHdr(40000, 80, TCPSyn), make([]byte, 100)...)
	tests := []struct {
		name string
		pkt  []byte
		want Packet
		err  error
	}{
		{"tcp4", ip4(ProtoTCP, a4, b4, 0, 5, synPayload), Packet{Key: Key{netip.MustParseAddr(a4), netip.MustParseAddr(b4), 40000, 80, ProtoTCP}, Len: 140, Payload: 100, TCPFlags: TCPSyn}, nil},
		{"tcp4 options", ip4(ProtoTCP, a4, b4, 0, 7, tcpHdr(1, 2, TCPAck|TCPFin)), Packet{Key: Key{netip.MustParseAddr(a4), netip.MustParseAddr(b4), 1, 2, ProtoTCP}, Len: 48, TCPFlags: TCPAck | TCPFin}, nil},
		{"udp4", ip4(ProtoUDP, a4, b4, 0, 5, udpHdr(53, 5353)), Packet{Key: Key{netip.MustParseAddr(a4), netip.MustParseAddr(b4), 53, 5353, ProtoUDP}, Len: 28}, nil},
		{"icmp4 echo", ip4(ProtoICMP, a4, b4, 0, 5, []byte{8, 0, 0, 0, 0, 1, 0, 1}), Packet{Key: Key{netip.MustParseAddr(a4), netip.MustParseAddr(b4), 0, 8 << 8, ProtoICMP}, Len: 28, Payload: 8}, nil},
		{"fragment4", ip4(ProtoUDP, a4, b4, 185, 5, udpHdr(1, 2)), Packet{Key: Key{netip.MustParseAddr(a4), netip.MustParseAddr(b4), 0, 0, ProtoUDP}, Len: 28, Payload: 8, Fragment: true}, nil},
		{"first fragment4", ip4(ProtoUDP, a4, b4, 0x2000, 5, udpHdr(1, 2)), Packet{Key: Key{netip.MustParseAddr(a4), netip.MustParseAddr(b4), 1, 2, ProtoUDP}, Len: 28}, nil},
		{"tcp4 cut after IP", ip4(ProtoTCP, a4, b4, 0, 5, synPayload)[:30], Packet{Key: Key{netip.MustParseAddr(a4), netip.MustParseAddr(b4), 0, 0, ProtoTCP}, Len: 140}, nil},
		{"tcp6", ip6(ProtoTCP, a6, b6, nil, 0, tcpHdr(443, 50000, TCPSyn|TCPAck)), Packet{Key: Key{netip.MustParseAddr(a6), netip.MustParseAddr(b6), 443, 50000, ProtoTCP}, Len: 60, TCPFlags: TCPSyn | TCPAck}, nil},
		{"udp4 payload", ip4(ProtoUDP, a4, b4, 0, 6, append(udpHdr(1, 2), make([]byte, 33)...)), Packet{Key: Key{netip.MustParseAddr(a4), netip.MustParseAddr(b4), 1, 2, ProtoUDP}, Len: 65, Payload: 33}, nil},
		{"tcp6 payload", ip6(ProtoTCP, a6, b6, []uint8{0}, 0, append(tcpHdr(1, 2, TCPPsh), make([]byte, 1000)...)), Packet{Key: Key{netip.MustParseAddr(a6), netip.MustParseAddr(b6), 1, 2, ProtoTCP}, Len: 1068, Payload: 1000, TCPFlags: TCPPsh}, nil},
		{"udp6 ext", ip6(ProtoUDP, a6, b6, []uint8{0, 60}, 0, udpHdr(7, 9)), Packet{Key: Key{netip.MustParseAddr(a6), netip.MustParseAddr(b6), 7, 9, ProtoUDP}, Len: 64}, nil},
		{"icmp6", ip6(ProtoICMPv6, a6, b6, nil, 0, []byte{135, 0, 0, 0}), Packet{Key: Key{netip.MustParseAddr(a6), netip.MustParseAddr(b6), 0, 135 << 8, ProtoICMPv6}, Len: 44, Payload: 4}, nil},
		{"fragment6", ip6(ProtoTCP, a6, b6, []uint8{44}, 3, tcpHdr(1, 2, 0)), Packet{Key: Key{netip.MustParseAddr(a6), netip.MustParseAddr(b6), 0, 0, ProtoTCP}, Len: 68, Payload: 20, Fragment: true}, nil},
		{"empty", nil, Packet{}, ErrShort},
		{"short4", ip4(ProtoTCP, a4, b4, 0, 5, nil)[:19], Packet{}, ErrShort},
		{"short6", ip6(ProtoTCP, a6, b6, nil, 0, nil)[:39], Packet{}, ErrShort},
		{"ihl too small", func() []byte { b := ip4(ProtoTCP, a4, b4, 0, 5, nil); b[0] = 0x44; return b }(), Packet{}, ErrHeader},
		{"total below ihl", func() []byte { b := ip4(ProtoTCP, a4, b4, 0, 5, nil); b[3] = 10; return b }(), Packet{}, ErrHeader},
		{"version 5", []byte{0x50, 0, 0, 0}, Packet{}, ErrVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.pkt)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestKeyReverse(t *testing.T) {
	k := Key{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 1, 2, ProtoTCP}
	if r := k.Reverse(); r.Src != k.Dst || r.SrcPort != 2 || r.Reverse() != k {
		t.Fatalf("Reverse(%v) = %v", k, r)
	}
	if s := k.String(); s != "tcp 192.0.2.1:1 -> 192.0.2.2:2" {
		t.Fatalf("String = %q", s)
	}
}

// FuzzParse feeds arbitrary bytes: Parse must never panic, and what it
// accepts must be self-consistent.
func FuzzParse(f *testing.F) {
	f.Add(ip4(ProtoTCP, "192.0.2.1", "192.0.2.2", 0, 5, tcpHdr(1, 2, TCPSyn)))
	f.Add(ip4(ProtoUDP, "192.0.2.1", "192.0.2.2", 0x2000, 6, udpHdr(1, 2)))
	f.Add(ip6(ProtoTCP, "2001:db8::1", "2001:db8::2", []uint8{0, 43, 44}, 0, tcpHdr(1, 2, 0)))
	f.Add(ip6(ProtoICMPv6, "::1", "::2", nil, 0, []byte{128, 0}))
	f.Add([]byte{0x4f})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Is4() {
			t.Fatalf("accepted packet with addresses %v, %v", p.Src, p.Dst)
		}
		if p.Fragment && (p.SrcPort != 0 || p.DstPort != 0) {
			t.Fatalf("fragment with ports %+v", p)
		}
		if p.Payload < 0 || p.Payload > p.Len {
			t.Fatalf("payload %d outside 0..%d", p.Payload, p.Len)
		}
	})
}

func TestFlowID(t *testing.T) {
	k := Key{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.10"), 40000, 80, ProtoTCP}
	id := FlowID(3, k)
	if id != FlowID(3, k.Reverse()) {
		t.Fatalf("directions differ: %s vs %s", id, FlowID(3, k.Reverse()))
	}
	if id == FlowID(4, k) || id == FlowID(3, Key{k.Src, k.Dst, 40001, 80, ProtoTCP}) {
		t.Fatal("different flows share an ID")
	}
	ins, _, err := ParseFlowID(id)
	if err != nil || ins != 3 {
		t.Fatalf("ParseFlowID(%q) = %d, %v", id, ins, err)
	}
	for _, bad := range []string{"", "3", "-0123456789ab", "x-0123456789ab", "3-0123456789a", "3-0123456789ag", "-1-0123456789ab"} {
		if _, _, err := ParseFlowID(bad); err == nil {
			t.Errorf("ParseFlowID(%q) accepted", bad)
		}
	}
}

func TestWire(t *testing.T) {
	for _, tc := range []struct {
		p           Packet
		pkts, bytes int
	}{
		{Packet{Len: 1500, Payload: 1448}, 1, 1500},
		{Packet{Len: 1500, Payload: 1448, Segments: 1}, 1, 1500},
		// 3 segments of a 4,000-byte payload with 52 bytes of headers.
		{Packet{Len: 4052, Payload: 4000, Segments: 3}, 3, 4156},
	} {
		if pkts, bytes := tc.p.Wire(); pkts != tc.pkts || bytes != tc.bytes {
			t.Errorf("%+v: Wire() = %d, %d; want %d, %d", tc.p, pkts, bytes, tc.pkts, tc.bytes)
		}
	}
}
