package xdp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

var (
	tunA    = netip.MustParseAddr("192.0.2.1") // the LB host in front
	tunB    = netip.MustParseAddr("192.0.2.2") // the host of the remote backends
	hopMAC  = net.HardwareAddr{0x02, 0xcc, 0, 0, 0, 0x01}
	bMACSet = net.HardwareAddr{0x02, 0xbb, 0, 0, 0x10, 0}
)

// headerSum is the one's complement sum of an IPv4 header: 0xffff when
// its checksum is right.
func headerSum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// TestTunnelEncap: packets the table gives a backend on another host leave
// again (XDP_TX) in an IPv4 header to that host, the packet itself
// unchanged behind it; packets for a local backend still only get its MAC.
func TestTunnelEncap(t *testing.T) {
	b := newBalancer(t, Config{}, 0)
	remote := Backend{ID: 1, Name: "host-b", MAC: hopMAC, Weight: 1, State: Up, Tunnel: &Tunnel{Src: tunA, Dst: tunB, SrcMAC: lbMAC}}
	if err := b.SetBackends([]Backend{remote}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		proto byte
	}{
		{"tcp4", tcp4(ap(client4, 4000), ap(vip4, 80), tcpSYN), 4},
		{"udp4", udp4(ap(client4, 4001), ap(vip4, 53), []byte("question")), 4},
		{"tcp6", tcp6(ap(client6, 4002), ap(vip6, 443), tcpSYN), 41},
	} {
		v, out := run(t, b, tc.frame)
		if v != ActionTX {
			t.Fatalf("%s: verdict %d, want XDP_TX", tc.name, v)
		}
		inner := tc.frame[14:]
		if len(out) != len(tc.frame)+20 {
			t.Fatalf("%s: %d bytes out of %d, want 20 more", tc.name, len(out), len(tc.frame))
		}
		if !bytes.Equal(out[0:6], hopMAC) || !bytes.Equal(out[6:12], lbMAC) || out[12] != 0x08 || out[13] != 0 {
			t.Errorf("%s: Ethernet header % x", tc.name, out[:14])
		}
		ip := out[14:34]
		s, d := tunA.As4(), tunB.As4()
		switch {
		case ip[0] != 0x45 || ip[9] != tc.proto || ip[8] != 64:
			t.Errorf("%s: outer header % x: want version 4, length 5, TTL 64, protocol %d", tc.name, ip, tc.proto)
		case int(binary.BigEndian.Uint16(ip[2:])) != 20+len(inner):
			t.Errorf("%s: outer total length %d, want %d", tc.name, binary.BigEndian.Uint16(ip[2:]), 20+len(inner))
		case !bytes.Equal(ip[12:16], s[:]) || !bytes.Equal(ip[16:20], d[:]):
			t.Errorf("%s: outer addresses % x -> % x", tc.name, ip[12:16], ip[16:20])
		case headerSum(ip) != 0xffff:
			t.Errorf("%s: outer header checksum %#x does not verify", tc.name, binary.BigEndian.Uint16(ip[10:]))
		case !bytes.Equal(out[34:], inner):
			t.Errorf("%s: the packet behind the outer header changed", tc.name)
		}
	}
	c := counters(t, b)
	if c[CountEncap] != 3 || c[CountTunnelFail] != 0 {
		t.Errorf("counters encap %d, tunnel_fail %d: want 3 and 0", c[CountEncap], c[CountTunnelFail])
	}
	// A local backend next to the remote one: its flows only get its MAC.
	if err := b.SetBackends([]Backend{remote, {ID: 2, Name: "ins-2", MAC: backendMAC(2), Weight: 1, State: Up}}); err != nil {
		t.Fatal(err)
	}
	local, tunnelled := 0, 0
	for port := uint16(5000); port < 5400; port++ {
		f := tcp4(ap(client4, port), ap(vip4, 80), tcpSYN)
		v, out := run(t, b, f)
		switch {
		case v == ActionTX:
			tunnelled++
		case v == ActionPass && macOwner(t, f, out) == 2:
			local++
		default:
			t.Fatalf("port %d: verdict %d", port, v)
		}
	}
	if local < 150 || tunnelled < 150 {
		t.Errorf("400 flows: %d local, %d to the other host; want about half each", local, tunnelled)
	}
}

// TestTunnelDecap: host B's balancer takes IP-in-IP packets to its tunnel
// endpoint, removes the outer header and steers the packet to one of its
// own backends; the round trip from A's balancer to B's ends at B's
// backend with the client's packet unchanged. Tunnelled packets to another
// address, and outer headers with options, pass untouched.
func TestTunnelDecap(t *testing.T) {
	a := newBalancer(t, Config{}, 0)
	if err := a.SetBackends([]Backend{{ID: 0, Name: "host-b", MAC: lbMAC, Weight: 1, State: Up, Tunnel: &Tunnel{Src: tunA, Dst: tunB, SrcMAC: hopMAC}}}); err != nil {
		t.Fatal(err)
	}
	bb := newBalancer(t, Config{}, 4) // B's own backends, 0..3
	if err := bb.AddTunnelEndpoint(tunB); err != nil {
		t.Fatal(err)
	}
	if err := bb.AddTunnelEndpoint(netip.MustParseAddr("fd00::1")); err == nil {
		t.Errorf("an IPv6 tunnel endpoint was accepted")
	}
	for _, tc := range []struct {
		name  string
		src   netip.AddrPort
		dst   netip.AddrPort
		frame func(flags uint8) []byte
	}{
		{"tcp4", ap(client4, 6000), ap(vip4, 80), func(fl uint8) []byte { return tcp4(ap(client4, 6000), ap(vip4, 80), fl) }},
		{"tcp6", ap(client6, 6001), ap(vip6, 443), func(fl uint8) []byte { return tcp6(ap(client6, 6001), ap(vip6, 443), fl) }},
	} {
		want := pick(t, bb, tc.src, tc.dst, 6)
		for _, fl := range []uint8{tcpSYN, tcpACK, tcpACK} {
			orig := tc.frame(fl)
			v, enc := run(t, a, orig)
			if v != ActionTX {
				t.Fatalf("%s: A's verdict %d, want XDP_TX", tc.name, v)
			}
			// The frame arrives at B, sent to B's MAC (the VIPs' there).
			v, out := run(t, bb, enc)
			if v != ActionPass {
				t.Fatalf("%s: B's verdict %d, want pass", tc.name, v)
			}
			if len(out) != len(orig) || !bytes.Equal(out[12:], orig[12:]) {
				t.Fatalf("%s: B passed % x, want the client's packet % x", tc.name, out, orig)
			}
			if got := int(out[4])<<8 | int(out[5]); !bytes.Equal(out[:4], backendMAC(0)[:4]) || got != want {
				t.Fatalf("%s: B sent it to MAC %v, its table says backend %d", tc.name, net.HardwareAddr(out[:6]), want)
			}
			if !bytes.Equal(out[6:12], hopMAC) {
				t.Fatalf("%s: source MAC %v after decapsulation, want the outer frame's %v", tc.name, net.HardwareAddr(out[6:12]), hopMAC)
			}
		}
	}
	c := counters(t, bb)
	if c[CountDecap] != 6 {
		t.Errorf("B decapsulated %d packets, want 6", c[CountDecap])
	}
	// Not for this endpoint, or an outer header with options: untouched.
	inner := tcp4(ap(client4, 7000), ap(vip4, 80), tcpSYN)[14:]
	other := eth(0x0800, ipv4(tunA, netip.MustParseAddr("192.0.2.9"), 4, 1, 0, inner))
	if v, out := run(t, bb, other); v != ActionPass || !bytes.Equal(out, other) {
		t.Errorf("IP-in-IP to another address: verdict %d, changed %v", v, !bytes.Equal(out, other))
	}
	opts := ipv4(tunA, tunB, 4, 1, 0, append([]byte{1, 1, 1, 1}, inner...))
	opts[0] = 0x46
	withOpts := eth(0x0800, opts)
	if v, out := run(t, bb, withOpts); v != ActionPass || !bytes.Equal(out, withOpts) {
		t.Errorf("IP-in-IP with options: verdict %d, changed %v", v, !bytes.Equal(out, withOpts))
	}
	// Truncated: an outer header and half an inner one loses the outer
	// header and is then too short to steer: passed as it is.
	short := eth(0x0800, ipv4(tunA, tunB, 4, 1, 0, inner[:10]))
	if v, out := run(t, bb, short); v != ActionPass || len(out) != len(short)-20 || !bytes.Equal(out[14:], inner[:10]) {
		t.Errorf("truncated IP-in-IP: verdict %d, % x", v, out)
	}
}

// FuzzTunnel runs frames through a balancer that is a tunnel endpoint
// (IP-in-IP, and GUE on port 6080): a frame whose outer headers go comes
// out as the packet behind them, and is
// passed (steered or not) or dropped; nothing else changes but the
// destination MAC.
func FuzzTunnel(f *testing.F) {
	in4 := tcp4(ap(client4, 1), ap(vip4, 80), tcpSYN)[14:]
	in6 := tcp6(ap(client6, 1), ap(vip6, 80), tcpACK)[14:]
	for _, s := range [][]byte{
		eth(0x0800, ipv4(tunA, tunB, 4, 1, 0, in4)),
		eth(0x0800, ipv4(tunA, tunB, 41, 1, 0, in6)),
		eth(0x0800, ipv4(tunA, tunB, 4, 1, 0, in6)),
		eth(0x0800, ipv4(tunA, tunB, 41, 1, 0, in4[:30])),
		eth(0x0800, ipv4(tunA, tunB, 4, 1, 0, ipv4(tunA, tunB, 4, 1, 0, in4))),
		eth(0x0800, ipv4(tunA, tunB, 17, 1, 0, udp(50000, 6080, in4))),
		eth(0x0800, ipv4(tunA, tunB, 17, 1, 0, udp(50000, 6080, in6))),
		eth(0x0800, ipv4(tunA, tunB, 17, 1, 0, udp(50000, 6080, in4[:9]))),
	} {
		f.Add(s)
	}
	b := newBalancer(f, Config{}, 4)
	if err := b.AddGUEEndpoint(tunB, 6080); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return
		}
		v, out := run(t, b, frame)
		decap := len(frame) >= 34 && len(out) == len(frame)-20 && frame[12] == 8 && frame[13] == 0 && frame[14] == 0x45 &&
			(frame[23] == 4 || frame[23] == 41) && bytes.Equal(frame[30:34], tunB.AsSlice())
		gue := len(frame) >= 43 && len(out) == len(frame)-28 && frame[12] == 8 && frame[13] == 0 && frame[14] == 0x45 &&
			frame[23] == 17 && bytes.Equal(frame[30:34], tunB.AsSlice()) && binary.BigEndian.Uint16(frame[36:]) == 6080 &&
			(frame[42]>>4 == 4 || frame[42]>>4 == 6)
		switch v {
		case ActionDrop:
		case ActionTX:
			arp := len(out) > 21 && frame[12] == 0x08 && frame[13] == 0x06 && out[21] == 2
			na := len(out) > 54 && out[12] == 0x86 && out[13] == 0xdd && out[54] == 136
			if !(arp || na) {
				t.Fatalf("XDP_TX of a frame that is no neighbour answer: %x", out[:min(len(out), 64)])
			}
		case ActionPass:
			if gue {
				if !bytes.Equal(out[6:12], frame[6:12]) || !bytes.Equal(out[14:], frame[42:]) {
					t.Fatalf("decapsulated GUE %x into %x", frame, out)
				}
				return
			}
			if !decap {
				macOwner(t, frame, out)
				return
			}
			if !bytes.Equal(out[6:12], frame[6:12]) || !bytes.Equal(out[14:], frame[34:]) {
				t.Fatalf("decapsulated %x into %x", frame, out)
			}
		default:
			t.Fatalf("verdict %d", v)
		}
	})
}

// TestTunnelBackendRejects: a tunnel needs IPv4 endpoints and a source MAC.
func TestTunnelBackendRejects(t *testing.T) {
	b := newBalancer(t, Config{}, 0)
	for _, tun := range []*Tunnel{
		{Src: tunA, Dst: netip.MustParseAddr("fd00::2"), SrcMAC: lbMAC},
		{Src: netip.IPv4Unspecified(), Dst: tunB, SrcMAC: lbMAC},
		{Src: tunA, Dst: netip.MustParseAddr("224.0.0.1"), SrcMAC: lbMAC},
		{Src: tunA, Dst: tunB, SrcMAC: net.HardwareAddr{1, 2, 3}},
	} {
		if err := b.SetBackends([]Backend{{ID: 1, Name: "x", MAC: hopMAC, Weight: 1, State: Up, Tunnel: tun}}); err == nil {
			t.Errorf("tunnel %+v accepted", tun)
		}
	}
}

// TestTunnelGUE: a backend on another host reached with GUE (variant 1)
// gets the client's packet behind an IPv4 and a UDP header to its port
// (the source port the same for every packet of a flow), and the balancer
// there, a GUE endpoint on that port, removes both and steers the packet
// to its own backend. UDP to another port, or to an endpoint without GUE,
// is no tunnel.
func TestTunnelGUE(t *testing.T) {
	const port = 6080
	a := newBalancer(t, Config{}, 0)
	if err := a.SetBackends([]Backend{{ID: 0, Name: "host-b", MAC: lbMAC, Weight: 1, State: Up,
		Tunnel: &Tunnel{Src: tunA, Dst: tunB, SrcMAC: hopMAC, GUEPort: port}}}); err != nil {
		t.Fatal(err)
	}
	bb := newBalancer(t, Config{}, 4)
	if err := bb.AddGUEEndpoint(tunB, port); err != nil {
		t.Fatal(err)
	}
	if err := bb.AddGUEEndpoint(tunB, 0); err == nil {
		t.Error("a GUE endpoint on port 0 was accepted")
	}
	for _, tc := range []struct {
		name  string
		src   netip.AddrPort
		dst   netip.AddrPort
		frame func(flags uint8) []byte
	}{
		{"tcp4", ap(client4, 6000), ap(vip4, 80), func(fl uint8) []byte { return tcp4(ap(client4, 6000), ap(vip4, 80), fl) }},
		{"tcp6", ap(client6, 6001), ap(vip6, 443), func(fl uint8) []byte { return tcp6(ap(client6, 6001), ap(vip6, 443), fl) }},
	} {
		want := pick(t, bb, tc.src, tc.dst, 6)
		var sport uint16
		for i, fl := range []uint8{tcpSYN, tcpACK, tcpACK} {
			orig := tc.frame(fl)
			v, enc := run(t, a, orig)
			if v != ActionTX {
				t.Fatalf("%s: A's verdict %d, want XDP_TX", tc.name, v)
			}
			inner := orig[14:]
			ip, udp := enc[14:34], enc[34:42]
			s, d := tunA.As4(), tunB.As4()
			switch {
			case len(enc) != len(orig)+28:
				t.Fatalf("%s: %d bytes out of %d, want 28 more", tc.name, len(enc), len(orig))
			case !bytes.Equal(enc[0:6], lbMAC) || !bytes.Equal(enc[6:12], hopMAC) || enc[12] != 0x08 || enc[13] != 0:
				t.Fatalf("%s: Ethernet header % x", tc.name, enc[:14])
			case ip[0] != 0x45 || ip[9] != 17 || int(binary.BigEndian.Uint16(ip[2:])) != 28+len(inner) ||
				!bytes.Equal(ip[12:16], s[:]) || !bytes.Equal(ip[16:20], d[:]) || headerSum(ip) != 0xffff:
				t.Fatalf("%s: outer header % x", tc.name, ip)
			case binary.BigEndian.Uint16(udp[2:]) != port || int(binary.BigEndian.Uint16(udp[4:])) != 8+len(inner) ||
				binary.BigEndian.Uint16(udp[6:]) != 0 || binary.BigEndian.Uint16(udp[0:]) < 0xc000:
				t.Fatalf("%s: UDP header % x", tc.name, udp)
			case !bytes.Equal(enc[42:], inner):
				t.Fatalf("%s: the packet behind the UDP header changed", tc.name)
			}
			if sp := binary.BigEndian.Uint16(udp[0:]); i == 0 {
				sport = sp
			} else if sp != sport {
				t.Fatalf("%s: source port %d, the flow's first packet had %d", tc.name, sp, sport)
			}
			v, out := run(t, bb, enc)
			if v != ActionPass {
				t.Fatalf("%s: B's verdict %d, want pass", tc.name, v)
			}
			if len(out) != len(orig) || !bytes.Equal(out[12:], orig[12:]) {
				t.Fatalf("%s: B passed % x, want the client's packet % x", tc.name, out, orig)
			}
			if got := int(out[4])<<8 | int(out[5]); !bytes.Equal(out[:4], backendMAC(0)[:4]) || got != want {
				t.Fatalf("%s: B sent it to MAC %v, its table says backend %d", tc.name, net.HardwareAddr(out[:6]), want)
			}
		}
	}
	if c := counters(t, bb); c[CountDecap] != 6 {
		t.Errorf("B decapsulated %d packets, want 6", c[CountDecap])
	}
	if c := counters(t, a); c[CountEncap] != 6 {
		t.Errorf("A encapsulated %d packets, want 6", c[CountEncap])
	}
	// UDP to another port of the endpoint, or to an endpoint that takes
	// IP-in-IP only: untouched.
	inner := tcp4(ap(client4, 7000), ap(vip4, 80), tcpSYN)[14:]
	for _, tc := range []struct {
		name string
		b    *Balancer
		port uint16
	}{{"another port", bb, port + 1}, {"no GUE there", a, port}} {
		if tc.b == a {
			if err := a.AddTunnelEndpoint(tunB); err != nil {
				t.Fatal(err)
			}
		}
		f := eth(0x0800, ipv4(tunA, tunB, 17, 1, 0, udp(50000, tc.port, inner)))
		if v, out := run(t, tc.b, f); v != ActionPass || !bytes.Equal(out, f) {
			t.Errorf("%s: verdict %d, changed %v", tc.name, v, !bytes.Equal(out, f))
		}
	}
}
