package xdp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mpshim/mpshim/lb/maglev"
	"github.com/mpshim/mpshim/test/topo"
)

var (
	vip4    = netip.MustParseAddr("10.99.0.1")
	vip6    = netip.MustParseAddr("fd99::1")
	client4 = netip.MustParseAddr("10.1.2.3")
	client6 = netip.MustParseAddr("fd01::3")
)

func backendMAC(id uint32) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xbb, 0, 0, byte(id >> 8), byte(id)}
}

func backends(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{ID: uint32(i), Name: fmt.Sprintf("ins-%d", i), MAC: backendMAC(uint32(i)), Weight: 1, State: Up}
	}
	return bs
}

// newBalancer loads the program with both VIPs and n backends.
func newBalancer(t testing.TB, cfg Config, n int) *Balancer {
	t.Helper()
	topo.RequireRoot(t)
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	for _, v := range []netip.Addr{vip4, vip6} {
		if err := b.AddVIP(v, lbMAC); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.SetBackends(backends(n)); err != nil {
		t.Fatal(err)
	}
	return b
}

// run runs the program on frame in the kernel and returns the verdict and
// the frame as the program left it.
func run(t testing.TB, b *Balancer, frame []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+256)
	opts := &ebpf.RunOptions{Data: frame, DataOut: out}
	ret, err := b.Program().Run(opts)
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return ret, opts.DataOut
}

// steer runs frame and returns the backend id whose MAC it got, or -1 if
// the frame passed unchanged; a drop fails the test.
func steer(t testing.TB, b *Balancer, frame []byte) int {
	t.Helper()
	v, out := run(t, b, frame)
	if v != ActionPass {
		t.Fatalf("verdict %d, want pass", v)
	}
	return macOwner(t, frame, out)
}

func macOwner(t testing.TB, in, out []byte) int {
	t.Helper()
	if !bytes.Equal(in[6:], out[6:len(in)]) {
		t.Fatalf("program changed more than the destination MAC")
	}
	if bytes.Equal(in[:6], out[:6]) {
		return -1
	}
	if out[0] != 0x02 || out[1] != 0xbb {
		if bytes.Equal(out[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) && len(in) > 54 && in[12] == 0x86 && in[20] == 58 && in[54] >= 133 && in[54] <= 137 {
			return -2 // NDP, to every backend
		}
		t.Fatalf("destination MAC %v is no backend's", net.HardwareAddr(out[:6]))
	}
	return int(out[4])<<8 | int(out[5])
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func pick(t testing.TB, b *Balancer, src, dst netip.AddrPort, proto uint8) int {
	t.Helper()
	be, ok := b.Pick(FlowKey(src, dst, proto))
	if !ok {
		t.Fatal("empty table")
	}
	return int(be.ID)
}

func counters(t testing.TB, b *Balancer) [NumCounters]uint64 {
	t.Helper()
	c, err := b.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestVerdicts runs frames that must pass untouched or be dropped, first
// with none of their flows known, then with those flows established (so
// that the frames meet the established path's checks).
func TestVerdicts(t *testing.T) {
	for _, established := range []bool{false, true} {
		t.Run(map[bool]string{false: "new", true: "established"}[established], func(t *testing.T) {
			verdicts(t, established)
		})
	}
}

func verdicts(t *testing.T, established bool) {
	b := newBalancer(t, Config{}, 8)
	if established {
		for _, f := range [][]byte{
			tcp4(ap(client4, 4000), ap(vip4, 80), tcpSYN), tcp4(ap(client4, 4000), ap(vip4, 80), tcpACK),
			tcp6(ap(client6, 1), ap(vip6, 80), tcpSYN), tcp6(ap(client6, 1), ap(vip6, 80), tcpACK),
			udp4(ap(client4, 1), ap(vip4, 53), nil), udp4(ap(client4, 1), ap(vip4, 53), nil),
		} {
			steer(t, b, f)
		}
		if est, _, _, err := b.Flows(); err != nil || est != 3 {
			t.Fatalf("%d established flows, %v; want 3", est, err)
		}
	}
	other := netip.MustParseAddr("10.99.0.2")
	good := tcp4(ap(client4, 4000), ap(vip4, 80), tcpSYN)
	trunc := func(f []byte, n int) []byte { return append([]byte{}, f[:len(f)-n]...) }
	set := func(f []byte, i int, v byte) []byte { g := append([]byte{}, f...); g[i] = v; return g }
	hopByHop := eth(0x86dd, ipv6(client6, vip6, 0, append([]byte{6, 0, 0, 0, 0, 0, 0, 0}, tcp(4000, 80, tcpSYN, nil)...)))
	for _, tc := range []struct {
		name    string
		frame   []byte
		verdict uint32
		counter int
	}{
		{"arp", eth(0x0806, make([]byte, 28)), ActionPass, CountPass},
		{"arp cut", arpRequest(clientMAC, client4, vip4)[:40], ActionPass, CountPass},
		{"ethernet header only", eth(0x0800, nil), ActionPass, CountShort},
		{"ipv4 header cut", trunc(good, 25), ActionPass, CountShort},
		{"ipv6 header cut", trunc(tcp6(ap(client6, 1), ap(vip6, 80), tcpSYN), 21), ActionPass, CountShort},
		{"ipv4 not a VIP", tcp4(ap(client4, 4000), ap(other, 80), tcpSYN), ActionPass, CountPass},
		{"ipv6 not a VIP", tcp6(ap(client6, 4000), ap(netip.MustParseAddr("fd99::2"), 80), tcpSYN), ActionPass, CountPass},
		{"ipv4 VIP sent to another MAC", set(good, 5, 0x77), ActionPass, CountPass},
		{"ipv6 VIP sent to another MAC", set(tcp6(ap(client6, 1), ap(vip6, 80), tcpSYN), 0, 0x33), ActionPass, CountPass},
		{"ipv4 version 5", set(good, 14, 0x55), ActionDrop, CountMalformed},
		{"ipv4 ihl 4", set(good, 14, 0x44), ActionDrop, CountMalformed},
		{"ipv4 ihl beyond frame", set(good, 14, 0x4f), ActionDrop, CountMalformed},
		{"ipv4 total length beyond frame", set(good, 16, 0xff), ActionDrop, CountMalformed},
		{"ipv4 total length below header", set(set(good, 16, 0), 17, 10), ActionDrop, CountMalformed},
		{"tcp header cut", eth(0x0800, ipv4(client4, vip4, 6, 1, 0, tcp(1, 80, tcpSYN, nil)[:12])), ActionDrop, CountMalformed},
		{"udp header cut", eth(0x0800, ipv4(client4, vip4, 17, 1, 0, udp(1, 53, nil)[:6])), ActionDrop, CountMalformed},
		{"ipv6 payload length beyond frame", set(tcp6(ap(client6, 1), ap(vip6, 80), tcpSYN), 18, 0x10), ActionDrop, CountMalformed},
		{"ipv6 version 4", set(tcp6(ap(client6, 1), ap(vip6, 80), tcpSYN), 14, 0x40), ActionDrop, CountMalformed},
		{"ipv6 hop-by-hop header", hopByHop, ActionDrop, CountUnsupported},
		{"icmp error quoting another source", eth(0x0800, ipv4(client4, vip4, 1, 1, 0, icmp(3, 4,
			ipv4(other, client4, 6, 9, 0, tcp(80, 4000, tcpACK, nil)[:8])))), ActionDrop, CountUnsupported},
		{"icmp error quoting nothing", eth(0x0800, ipv4(client4, vip4, 1, 1, 0, icmp(3, 4, nil))), ActionDrop, CountMalformed},
		{"non-first fragment never seen", eth(0x0800, ipv4(client4, vip4, 17, 77, 100, make([]byte, 64))), ActionDrop, CountFragMiss},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counters(t, b)
			v, out := run(t, b, tc.frame)
			if v != tc.verdict {
				t.Fatalf("verdict %d, want %d", v, tc.verdict)
			}
			if v == ActionPass && !bytes.Equal(out[:len(tc.frame)], tc.frame) {
				t.Fatalf("passed frame was changed")
			}
			after := counters(t, b)
			if after[tc.counter] != before[tc.counter]+1 {
				t.Fatalf("counter %s did not count the frame: %v -> %v", CounterNames[tc.counter], before, after)
			}
		})
	}
}

// TestSteering: each flow goes where the Maglev table says, every packet of
// it to the same backend, IPv4 and IPv6, TCP and UDP; a handshake's ACK
// promotes a flow into the established table, a SYN does not.
func TestSteering(t *testing.T) {
	b := newBalancer(t, Config{}, 8)
	for i := range 200 {
		for _, tc := range []struct {
			src, dst netip.AddrPort
			mk       func(src, dst netip.AddrPort, flags uint8) []byte
		}{
			{ap(client4, uint16(10000+i)), ap(vip4, 80), tcp4},
			{ap(client6, uint16(10000+i)), ap(vip6, 443), tcp6},
		} {
			want := pick(t, b, tc.src, tc.dst, 6)
			for _, fl := range []uint8{tcpSYN, tcpACK, tcpACK, tcpACK} {
				if got := steer(t, b, tc.mk(tc.src, tc.dst, fl)); got != want {
					t.Fatalf("%v -> %v flags %#x: backend %d, table says %d", tc.src, tc.dst, fl, got, want)
				}
			}
		}
		src := ap(client4, uint16(20000+i))
		want := pick(t, b, src, ap(vip4, 53), 17)
		for range 3 {
			if got := steer(t, b, udp4(src, ap(vip4, 53), []byte("q"))); got != want {
				t.Fatalf("udp %v: backend %d, table says %d", src, got, want)
			}
		}
	}
	est, nw, _, err := b.Flows()
	if err != nil {
		t.Fatal(err)
	}
	if est != 600 || nw != 600 {
		t.Fatalf("established %d, new %d: want 600 and 600 (each flow promoted once)", est, nw)
	}
	// A SYN alone is never promoted.
	steer(t, b, tcp4(ap(client4, 999), ap(vip4, 80), tcpSYN))
	steer(t, b, tcp4(ap(client4, 999), ap(vip4, 80), tcpSYN))
	if est2, _, _, _ := b.Flows(); est2 != est {
		t.Fatalf("SYNs promoted a flow: %d established", est2)
	}
}

// TestAffinity: a table change (a backend added, one drained, one removed)
// leaves established flows where they were, except those of the removed
// backend; new flows follow the new table and never reach the draining one.
func TestAffinity(t *testing.T) {
	b := newBalancer(t, Config{}, 6)
	type flow struct {
		src     netip.AddrPort
		backend int
	}
	var flows []flow
	for i := range 600 {
		src := ap(client4, uint16(1000+i))
		steer(t, b, tcp4(src, ap(vip4, 80), tcpSYN))
		flows = append(flows, flow{src, steer(t, b, tcp4(src, ap(vip4, 80), tcpACK))})
	}
	bs := backends(8)
	bs[2].State = Draining
	bs = append(bs[:5], bs[6:]...) // backend 5 removed; 6 and 7 added
	if err := b.SetBackends(bs); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, f := range flows {
		got := steer(t, b, tcp4(f.src, ap(vip4, 80), tcpACK))
		switch {
		case f.backend == 5:
			if got == 5 {
				t.Fatalf("flow %v still reaches removed backend 5", f.src)
			}
			if want := pick(t, b, f.src, ap(vip4, 80), 6); got != want {
				t.Fatalf("flow %v of the removed backend went to %d, table says %d", f.src, got, want)
			}
			moved++
		case got != f.backend:
			t.Fatalf("established flow %v moved from %d to %d", f.src, f.backend, got)
		}
	}
	if moved == 0 {
		t.Fatal("no flow was on backend 5: the test did not test removal")
	}
	seen := map[int]int{}
	for i := range 2000 {
		src := ap(client4, uint16(30000+i))
		seen[steer(t, b, tcp4(src, ap(vip4, 80), tcpSYN))]++
	}
	if seen[2] != 0 || seen[5] != 0 {
		t.Fatalf("new flows reached the draining (%d) or removed (%d) backend", seen[2], seen[5])
	}
	if seen[6] == 0 || seen[7] == 0 {
		t.Fatalf("new flows did not reach the added backends: %v", seen)
	}
}

// TestSYNFloodKeepsEstablished: a flood of spoofed SYNs many times the size
// of the new-flow table leaves every established flow in place, even after
// a table change that would send them elsewhere, and the tables bounded.
func TestSYNFloodKeepsEstablished(t *testing.T) {
	b := newBalancer(t, Config{EstEntries: 1024, NewEntries: 256}, 4)
	type flow struct {
		src     netip.AddrPort
		backend int
	}
	var flows []flow
	for i := range 300 {
		src := ap(client4, uint16(1000+i))
		steer(t, b, tcp4(src, ap(vip4, 80), tcpSYN))
		flows = append(flows, flow{src, steer(t, b, tcp4(src, ap(vip4, 80), tcpACK))})
	}
	if err := b.SetBackends(backends(12)); err != nil {
		t.Fatal(err)
	}
	for i := range 20000 {
		a := netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)})
		steer(t, b, tcp4(ap(a, uint16(i)), ap(vip4, 80), tcpSYN))
	}
	est, nw, _, err := b.Flows()
	if err != nil {
		t.Fatal(err)
	}
	if est > 1024 || nw > 256 {
		t.Fatalf("tables grew past their bounds: established %d, new %d", est, nw)
	}
	wouldMove := 0
	for _, f := range flows {
		if pick(t, b, f.src, ap(vip4, 80), 6) != f.backend {
			wouldMove++
		}
		if got := steer(t, b, tcp4(f.src, ap(vip4, 80), tcpACK)); got != f.backend {
			t.Fatalf("after the flood, established flow %v went to %d, not %d", f.src, got, f.backend)
		}
	}
	if wouldMove == 0 {
		t.Fatal("the new table moves no flow: the test did not test the flow table")
	}
	t.Logf("20000 spoofed SYNs: established %d (300 flows, %d of which the new table would move, all kept), new-flow table %d/256", est, wouldMove, nw)
}

// TestICMPErrors: an ICMP error about a flow (fragmentation needed, packet
// too big) reaches the backend of that flow, also after a table change.
func TestICMPErrors(t *testing.T) {
	b := newBalancer(t, Config{}, 8)
	for i := range 100 {
		c4, c6 := ap(client4, uint16(5000+i)), ap(client6, uint16(5000+i))
		steer(t, b, tcp4(c4, ap(vip4, 80), tcpSYN))
		want4 := steer(t, b, tcp4(c4, ap(vip4, 80), tcpACK))
		steer(t, b, tcp6(c6, ap(vip6, 80), tcpSYN))
		want6 := steer(t, b, tcp6(c6, ap(vip6, 80), tcpACK))
		if i == 50 {
			if err := b.SetBackends(backends(9)); err != nil {
				t.Fatal(err)
			}
		}
		router := netip.MustParseAddr("10.5.5.5")
		// The quoted packet: from the VIP to the client, as the INS sent it.
		q4 := ipv4(vip4, client4, 6, 3, 0x4000, tcp(80, c4.Port(), tcpACK, make([]byte, 100)))
		e4 := eth(0x0800, ipv4(router, vip4, 1, 1, 0, icmp(3, 4, q4[:28])))
		if got := steer(t, b, e4); got != want4 {
			t.Fatalf("frag-needed for %v went to %d, flow is on %d", c4, got, want4)
		}
		q6 := ipv6(vip6, client6, 6, tcp(80, c6.Port(), tcpACK, make([]byte, 100)))
		e6 := eth(0x86dd, ipv6(netip.MustParseAddr("fd05::5"), vip6, 58, icmp(2, 0, q6[:48])))
		if got := steer(t, b, e6); got != want6 {
			t.Fatalf("packet-too-big for %v went to %d, flow is on %d", c6, got, want6)
		}
	}
	// Echo requests go by addresses, each to one backend.
	ping := eth(0x0800, ipv4(client4, vip4, 1, 1, 0, icmp(8, 0, []byte("abcdefgh"))))
	first := steer(t, b, ping)
	for range 5 {
		if got := steer(t, b, ping); got != first {
			t.Fatalf("echo requests of one client went to %d and %d", first, got)
		}
	}
}

// TestFragments: every fragment of a datagram reaches the backend of its
// first fragment, IPv4 and IPv6; fragments whose first was not seen are
// dropped, never guessed.
func TestFragments(t *testing.T) {
	b := newBalancer(t, Config{}, 8)
	for i := range 100 {
		src := ap(client4, uint16(7000+i))
		id := uint16(100 + i)
		first := eth(0x0800, ipv4(client4, vip4, 17, id, 0x2000, udp(src.Port(), 53, make([]byte, 64))))
		want := pick(t, b, src, ap(vip4, 53), 17)
		if got := steer(t, b, first); got != want {
			t.Fatalf("first fragment went to %d, table says %d", got, want)
		}
		for off := uint16(9); off < 40; off += 9 {
			mid := eth(0x0800, ipv4(client4, vip4, 17, id, 0x2000|off, make([]byte, 72)))
			if got := steer(t, b, mid); got != want {
				t.Fatalf("fragment at %d went to %d, first went to %d", off*8, got, want)
			}
		}
		last := eth(0x0800, ipv4(client4, vip4, 17, id, 45, make([]byte, 8)))
		if got := steer(t, b, last); got != want {
			t.Fatalf("last fragment went to %d, first went to %d", got, want)
		}
		src6 := ap(client6, uint16(7000+i))
		want6 := pick(t, b, src6, ap(vip6, 53), 17)
		f6 := eth(0x86dd, ipv6(client6, vip6, 44, frag6(17, 0, true, uint32(900+i), udp(src6.Port(), 53, make([]byte, 64)))))
		if got := steer(t, b, f6); got != want6 {
			t.Fatalf("first IPv6 fragment went to %d, table says %d", got, want6)
		}
		l6 := eth(0x86dd, ipv6(client6, vip6, 44, frag6(17, 9, false, uint32(900+i), make([]byte, 16))))
		if got := steer(t, b, l6); got != want6 {
			t.Fatalf("last IPv6 fragment went to %d, first went to %d", got, want6)
		}
	}
	v, _ := run(t, b, eth(0x86dd, ipv6(client6, vip6, 44, frag6(17, 9, false, 4242, make([]byte, 16)))))
	if v != ActionDrop {
		t.Fatalf("unknown IPv6 fragment: verdict %d, want drop", v)
	}
}

// TestNDP: neighbour discovery messages for a VIP go to every backend
// (broadcast destination), since only the backend that asked knows them.
func TestNDP(t *testing.T) {
	b := newBalancer(t, Config{}, 8)
	na := eth(0x86dd, ipv6(client6, vip6, 58, icmp(136, 0, make([]byte, 24))))
	v, out := run(t, b, na)
	if v != ActionPass {
		t.Fatalf("verdict %d, want pass", v)
	}
	if !bytes.Equal(out[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) || !bytes.Equal(out[6:len(na)], na[6:]) {
		t.Fatalf("advertisement went to %v, want the broadcast address and nothing else changed", net.HardwareAddr(out[:6]))
	}
	// Echo (128) is not NDP: it goes to one backend.
	if id := steer(t, b, eth(0x86dd, ipv6(client6, vip6, 58, icmp(128, 0, make([]byte, 8))))); id < 0 {
		t.Fatal("echo request passed untouched")
	}
}

// TestNoBackends: with an empty table packets for the VIP are dropped.
func TestNoBackends(t *testing.T) {
	b := newBalancer(t, Config{}, 0)
	v, _ := run(t, b, tcp4(ap(client4, 1), ap(vip4, 80), tcpSYN))
	if v != ActionDrop {
		t.Fatalf("verdict %d, want drop", v)
	}
	if c := counters(t, b); c[CountNoBackend] != 1 {
		t.Fatalf("no_backend counter %d", c[CountNoBackend])
	}
}

// FuzzProgram runs arbitrary frames (seeded with valid and broken ones)
// through the program: it passes or drops, changes nothing but the
// destination MAC, and only ever to a backend's.
func FuzzProgram(f *testing.F) {
	for _, s := range [][]byte{
		tcp4(ap(client4, 1), ap(vip4, 80), tcpSYN),
		tcp6(ap(client6, 1), ap(vip6, 80), tcpACK),
		udp4(ap(client4, 1), ap(vip4, 53), []byte("x")),
		eth(0x0800, ipv4(client4, vip4, 17, 5, 0x2000, udp(1, 53, make([]byte, 16)))),
		eth(0x0800, ipv4(client4, vip4, 17, 5, 3, make([]byte, 16))),
		eth(0x86dd, ipv6(client6, vip6, 44, frag6(17, 0, true, 1, udp(1, 53, nil)))),
		eth(0x0800, ipv4(client4, vip4, 1, 1, 0, icmp(3, 4, ipv4(vip4, client4, 6, 3, 0, tcp(80, 1, tcpACK, nil))[:28]))),
		eth(0x86dd, ipv6(client6, vip6, 58, icmp(2, 0, ipv6(vip6, client6, 6, tcp(80, 1, tcpACK, nil))[:48]))),
		eth(0x0806, make([]byte, 28)),
		arpRequest(clientMAC, client4, vip4),
		solicitation(client6, vip6, true),
	} {
		f.Add(s)
	}
	b := newBalancer(f, Config{}, 8)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return
		}
		v, out := run(t, b, frame)
		switch v {
		case ActionDrop:
		case ActionTX:
			// Only answers to ARP requests and neighbour solicitations,
			// from the VIP's MAC.
			arp := frame[12] == 0x08 && frame[13] == 0x06 && out[21] == 2
			na := frame[12] == 0x86 && frame[13] == 0xdd && out[54] == 136
			if !(arp || na) || !bytes.Equal(out[6:12], lbMAC) {
				t.Fatalf("XDP_TX of a frame that is no neighbour answer: %x", out[:min(len(frame), 64)])
			}
		case ActionPass:
			if id := macOwner(t, frame, out); id >= 8 {
				t.Fatalf("steered to backend %d of 8", id)
			}
		default:
			t.Fatalf("verdict %d", v)
		}
	})
}

func arpRequest(senderMAC net.HardwareAddr, sender, target netip.Addr) []byte {
	p := make([]byte, 28)
	binary.BigEndian.PutUint16(p[0:], 1)
	binary.BigEndian.PutUint16(p[2:], 0x0800)
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], 1)
	copy(p[8:14], senderMAC)
	s, tg := sender.As4(), target.As4()
	copy(p[14:18], s[:])
	copy(p[24:28], tg[:])
	f := eth(0x0806, p)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], senderMAC)
	return f
}

// solicitation is a neighbour solicitation for target from src, to the
// solicited-node address, with a source link-layer address option when
// withOption.
func solicitation(src, target netip.Addr, withOption bool) []byte {
	body := make([]byte, 24)
	body[0] = 135
	t16 := target.As16()
	copy(body[8:], t16[:])
	if withOption {
		body = append(body, 1, 1)
		body = append(body, clientMAC...)
	}
	dst := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: t16[13], 14: t16[14], 15: t16[15]})
	ip := ipv6(src, dst, 58, body)
	ip[7] = 255
	sum := icmp6Sum(ip)
	binary.BigEndian.PutUint16(ip[42:], ^sum)
	return eth(0x86dd, ip)
}

// icmp6Sum is the ones' complement sum of an IPv6 packet's ICMPv6 message
// with its pseudo-header (0xffff when the checksum is right).
func icmp6Sum(ip []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(ip[8:40])
	n := len(ip) - 40
	add([]byte{0, 0, byte(n >> 8), byte(n), 0, 0, 0, 58})
	add(ip[40:])
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// TestNeighbourAnswers: the program answers ARP requests and neighbour
// solicitations for a VIP itself, with the VIP's MAC, so that no backend
// sees them; requests for other addresses pass.
func TestNeighbourAnswers(t *testing.T) {
	b := newBalancer(t, Config{}, 4)
	t.Run("arp", func(t *testing.T) {
		req := arpRequest(clientMAC, client4, vip4)
		v, out := run(t, b, req)
		if v != ActionTX {
			t.Fatalf("verdict %d, want XDP_TX", v)
		}
		out = out[:len(req)]
		want := append([]byte{}, req...)
		copy(want[0:6], clientMAC)
		copy(want[6:12], lbMAC)
		binary.BigEndian.PutUint16(want[20:], 2)
		copy(want[22:28], lbMAC)
		v4, c4 := vip4.As4(), client4.As4()
		copy(want[28:32], v4[:])
		copy(want[32:38], clientMAC)
		copy(want[38:42], c4[:])
		if !bytes.Equal(out, want) {
			t.Fatalf("reply\n%x\nwant\n%x", out, want)
		}
		other := arpRequest(clientMAC, client4, netip.MustParseAddr("10.99.0.2"))
		if v, out := run(t, b, other); v != ActionPass || !bytes.Equal(out[:len(other)], other) {
			t.Fatalf("request for another address: verdict %d, changed %v", v, !bytes.Equal(out[:len(other)], other))
		}
	})
	for _, withOption := range []bool{true, false} {
		t.Run(fmt.Sprint("ns option ", withOption), func(t *testing.T) {
			req := solicitation(client6, vip6, withOption)
			if !withOption { // a unicast probe to the VIP itself
				d := vip6.As16()
				copy(req[38:54], d[:])
				binary.BigEndian.PutUint16(req[56:], 0)
				binary.BigEndian.PutUint16(req[56:], ^icmp6Sum(req[14:]))
			}
			v, out := run(t, b, req)
			if v != ActionTX {
				t.Fatalf("verdict %d, want XDP_TX", v)
			}
			out = out[:len(req)]
			ip := out[14:]
			switch {
			case !bytes.Equal(out[0:6], clientMAC) || !bytes.Equal(out[6:12], lbMAC):
				t.Fatalf("ethernet %x", out[:12])
			case netip.AddrFrom16([16]byte(ip[8:24])) != vip6 || netip.AddrFrom16([16]byte(ip[24:40])) != client6:
				t.Fatalf("addresses %x", ip[8:40])
			case ip[40] != 136 || ip[41] != 0 || ip[44] != 0x60 || netip.AddrFrom16([16]byte(ip[48:64])) != vip6:
				t.Fatalf("advertisement %x", ip[40:])
			case icmp6Sum(ip) != 0xffff:
				t.Fatalf("checksum wrong: sum %#x", icmp6Sum(ip))
			}
			if withOption && (ip[64] != 2 || ip[65] != 1 || !bytes.Equal(ip[66:72], lbMAC)) {
				t.Fatalf("target link-layer option %x", ip[64:])
			}
		})
	}
	t.Run("ns for another address", func(t *testing.T) {
		req := solicitation(client6, netip.MustParseAddr("fd99::2"), true)
		if v, out := run(t, b, req); v != ActionPass || !bytes.Equal(out[:len(req)], req) {
			t.Fatalf("verdict %d", v)
		}
	})
	t.Run("dad", func(t *testing.T) {
		req := solicitation(netip.IPv6Unspecified(), vip6, false)
		if v, out := run(t, b, req); v != ActionPass || !bytes.Equal(out[:len(req)], req) {
			t.Fatalf("verdict %d", v)
		}
	})
}

// TestFastPath checks the established path that looks at the established
// table only: a promoted flow's packets reach its backend without the
// program counting anything (the full path counts every packet), a change
// of the backends or of the VIPs sends the next packet down the full path
// once, and frames the full path would pass untouched (sent to another MAC,
// for a removed VIP) still pass untouched.
func TestFastPath(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
		frame    func(src, dst netip.AddrPort, flags uint8) []byte
	}{
		{"ipv4", ap(client4, 5000), ap(vip4, 80), tcp4},
		{"ipv6", ap(client6, 5000), ap(vip6, 80), tcp6},
		{"udp4", ap(client4, 5001), ap(vip4, 53), func(src, dst netip.AddrPort, _ uint8) []byte {
			return eth(0x0800, ipv4(src.Addr(), dst.Addr(), 17, 1, 0x4000, udp(src.Port(), dst.Port(), []byte("q"))))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBalancer(t, Config{}, 6)
			ack := tc.frame(tc.src, tc.dst, tcpACK)
			first := steer(t, b, tc.frame(tc.src, tc.dst, tcpSYN))
			if got := steer(t, b, ack); got != first { // promoted
				t.Fatalf("second packet to %d, first to %d", got, first)
			}
			quiet := func(what string, want int) {
				t.Helper()
				c0 := counters(t, b)
				for range 3 {
					if got := steer(t, b, ack); got != want {
						t.Fatalf("%s: packet to %d, want %d", what, got, want)
					}
				}
				if c1 := counters(t, b); c1 != c0 {
					t.Fatalf("%s: the program counted %v (before %v): it took the full path", what, c1, c0)
				}
			}
			quiet("established", first)

			// The flow's cache slot holds it; a slot whose MAC word is
			// another backend's (as two CPUs writing it at once could
			// leave it) fails the check and is written again.
			proto := uint8(6)
			if tc.name == "udp4" {
				proto = 17
			}
			k := FlowKey(tc.src, tc.dst, proto)
			slot := uint32(maglev.FlowHash(k) & (DefaultFlowCache - 1))
			var cv [cacheValue]byte
			if err := b.cache.Lookup(slot, &cv); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cv[:KeySize], k[:]) || !bytes.Equal(cv[cacheMAC:cacheMAC+6], backendMAC(uint32(first))) {
				t.Fatalf("flow cache slot %d: % x, want the flow's key and backend %d's MAC", slot, cv, first)
			}
			torn := cv
			copy(torn[cacheMAC:], backendMAC(uint32(first+1)%6))
			if err := b.cache.Update(slot, torn, ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
			quiet("torn cache slot", first)
			if err := b.cache.Lookup(slot, &cv); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cv[cacheMAC:cacheMAC+6], backendMAC(uint32(first))) {
				t.Fatalf("torn cache slot not written again: MAC %v", net.HardwareAddr(cv[cacheMAC:cacheMAC+6]))
			}

			// The same set again moves the generation on: one packet on
			// the full path (an established hit), then the fast path.
			if err := b.SetBackends(backends(6)); err != nil {
				t.Fatal(err)
			}
			c0 := counters(t, b)
			if got := steer(t, b, ack); got != first {
				t.Fatalf("after SetBackends: packet to %d, want %d", got, first)
			}
			if c1 := counters(t, b); c1[CountEstHit]-c0[CountEstHit] != 1 {
				t.Fatalf("after SetBackends: %d established hits on the full path, want 1", c1[CountEstHit]-c0[CountEstHit])
			}
			quiet("checked again", first)

			// Sent to another MAC: untouched, whether every VIP has one
			// MAC or not.
			other := append([]byte{}, ack...)
			other[5] ^= 0x77
			for _, mixed := range []bool{false, true} {
				if mixed {
					if err := b.AddVIP(netip.MustParseAddr("10.99.0.77"), net.HardwareAddr{0x02, 0x77, 0, 0, 0, 1}); err != nil {
						t.Fatal(err)
					}
				}
				if v, out := run(t, b, other); v != ActionPass || !bytes.Equal(out[:len(other)], other) {
					t.Fatalf("frame to another MAC (VIPs of several MACs: %v): verdict %d, changed %v", mixed, v, !bytes.Equal(out[:len(other)], other))
				}
				quiet("after the MAC check", first)
			}

			// A removed VIP: its established flows are no longer steered.
			if err := b.RemoveVIP(tc.dst.Addr()); err != nil {
				t.Fatal(err)
			}
			if v, out := run(t, b, ack); v != ActionPass || macOwner(t, ack, out) != -1 {
				t.Fatal("an established flow of a removed VIP is still steered")
			}
		})
	}
}
