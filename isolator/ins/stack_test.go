package ins

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/uplink"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// serverAddr is a WAN-side address reachable over both uplinks.
var serverAddr = netip.MustParseAddr("198.51.100.1")

// memNet is an INS Stack whose two uplinks are in-memory pipes to a second
// netstack playing the WAN side (gateways 10.1.0.1 and 10.2.0.1, and a
// server address 198.51.100.1 on both).
type memNet struct {
	ins *Stack
	wan *stack.Stack
}

func newMemNet(t testing.TB, policy string, w1, w2 int, probe time.Duration) *memNet {
	t.Helper()
	wan := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, icmp.NewProtocol4},
	})
	t.Cleanup(wan.Destroy)
	var ups []UplinkConfig
	for i, w := range []int{w1, w2} {
		insEP, wanEP := pipe.New("", "", 1500)
		nic := tcpip.NICID(i + 1)
		if err := wan.CreateNIC(nic, wanEP); err != nil {
			t.Fatalf("wan NIC: %s", err)
		}
		for _, a := range []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 1}), 24), netip.PrefixFrom(serverAddr, 32)} {
			pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(a.Addr()), PrefixLen: a.Bits()}}
			if err := wan.AddProtocolAddress(nic, pa, stack.AddressProperties{}); err != nil {
				t.Fatalf("wan addr: %s", err)
			}
		}
		wan.AddRoute(tcpip.Route{Destination: tcpip.AddressWithPrefix{Address: tcpAddr(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 0})), PrefixLen: 24}.Subnet(), NIC: nic})
		ups = append(ups, UplinkConfig{
			Name:     []string{"a", "b"}[i],
			Endpoint: insEP,
			Addr4:    netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 2}), 24),
			Gateway4: netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 1}),
			Weight:   w,
		})
	}
	s, err := NewStack(Config{ID: 1, Uplinks: ups, Policy: policy, ProbeInterval: probe})
	if err != nil {
		t.Fatalf("NewStack: %v", err)
	}
	t.Cleanup(s.Close)
	return &memNet{ins: s, wan: wan}
}

// dialAll makes n connections from the INS, each placed by ChooseUplink,
// and returns how many the WAN server saw from each INS source address.
func (m *memNet) dialAll(t *testing.T, n int) map[netip.Addr]int {
	t.Helper()
	ln, err := gonet.ListenTCP(m.wan, tcpip.FullAddress{Addr: tcpAddr(serverAddr), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("wan listen: %v", err)
	}
	defer ln.Close()
	seen := map[netip.Addr]int{}
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr()
			mu.Lock()
			seen[a]++
			mu.Unlock()
			c.Close()
		}
	}()
	remote := netip.AddrPortFrom(serverAddr, 80)
	for i := 0; i < n; i++ {
		nic, local, err := m.ins.ChooseUplink(remote, tcp.ProtocolNumber)
		if err != nil {
			t.Fatalf("ChooseUplink: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := gonet.DialTCPWithBind(ctx, m.ins.Stack(), tcpip.FullAddress{NIC: nic, Addr: local},
			tcpip.FullAddress{Addr: tcpAddr(serverAddr), Port: 80}, ipv4.ProtocolNumber)
		cancel()
		if err != nil {
			t.Fatalf("dial %d via NIC %d: %v", i, nic, err)
		}
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		total := 0
		for _, v := range seen {
			total += v
		}
		mu.Unlock()
		if total >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ln.Close()
	<-done
	return seen
}

func TestOutboundSpreadByWeight(t *testing.T) {
	cases := []struct {
		name   string
		w1, w2 int
	}{{"1:1", 1, 1}, {"3:1", 3, 1}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemNet(t, "wrr", tc.w1, tc.w2, -1)
			const n = 100
			seen := m.dialAll(t, n)
			a, b := seen[netip.MustParseAddr("10.1.0.2")], seen[netip.MustParseAddr("10.2.0.2")]
			if a+b != n {
				t.Fatalf("server saw %d+%d connections (%v), want %d", a, b, seen, n)
			}
			want := float64(n) * float64(tc.w1) / float64(tc.w1+tc.w2)
			if math.Abs(float64(a)-want) > 0.1*n {
				t.Fatalf("uplink a carried %d of %d, want %.0f ±10%%", a, n, want)
			}
		})
	}
}

func TestRepliesLeaveOnArrivalUplink(t *testing.T) {
	m := newMemNet(t, "wrr", 1, 1, -1)
	ln, err := gonet.ListenTCP(m.ins.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	// The client's address 198.51.100.1 is off-link for the INS: without
	// per-arrival routing the reply would take the first default route
	// (uplink a) whichever uplink the SYN came in on.
	for _, tc := range []struct {
		dst      string
		in, idle string
	}{{"10.2.0.2", "b", "a"}, {"10.1.0.2", "a", "b"}} {
		t.Run("via_"+tc.in, func(t *testing.T) {
			before := settledCounters(m.ins) // earlier flows' FINs are done
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			wanNIC, _ := m.ins.NIC(tc.in) // the WAN NIC ids mirror the INS ones
			c, err := gonet.DialTCPWithBind(ctx, m.wan, tcpip.FullAddress{NIC: wanNIC, Addr: tcpAddr(serverAddr)},
				tcpip.FullAddress{Addr: tcpAddr(netip.MustParseAddr(tc.dst)), Port: 7}, ipv4.ProtocolNumber)
			if err != nil {
				t.Fatalf("dial %s: %v", tc.dst, err)
			}
			defer c.Close()
			msg := bytes.Repeat([]byte("reply-path "), 1000)
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo: %v (equal=%v)", err, bytes.Equal(got, msg))
			}
			after := countersByName(m.ins)
			if d := after[tc.idle].TxPackets - before[tc.idle].TxPackets; d != 0 {
				t.Errorf("uplink %s sent %d packets for a flow that arrived on %s", tc.idle, d, tc.in)
			}
			if d := after[tc.in].TxPackets - before[tc.in].TxPackets; d < 3 {
				t.Errorf("uplink %s sent only %d packets; the replies went elsewhere", tc.in, d)
			}
		})
	}
}

// settledCounters waits until no uplink has sent a packet for 200 ms.
func settledCounters(s *Stack) map[string]UplinkCounters {
	prev := countersByName(s)
	for i := 0; i < 50; i++ {
		time.Sleep(200 * time.Millisecond)
		cur := countersByName(s)
		same := true
		for n, c := range cur {
			same = same && c.TxPackets == prev[n].TxPackets
		}
		if same {
			return cur
		}
		prev = cur
	}
	return prev
}

func countersByName(s *Stack) map[string]UplinkCounters {
	out := map[string]UplinkCounters{}
	for _, c := range s.Counters() {
		out[c.Name] = c
	}
	return out
}

func TestProbeDetectsDeadUplink(t *testing.T) {
	m := newMemNet(t, "lowest-rtt", 1, 1, DefaultProbeInterval)
	remote := netip.AddrPortFrom(serverAddr, 80)
	// Both uplinks get RTT samples.
	waitFor(t, 3*time.Second, func() bool {
		for _, i := range m.ins.Uplinks() {
			if i.RTT == 0 {
				return false
			}
		}
		return true
	})
	// Kill the WAN side of uplink b: the pipe delivers into a disabled NIC.
	nicB, _ := m.ins.NIC("b")
	if err := m.wan.DisableNIC(nicB); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 2*time.Second, func() bool {
		st, _ := m.ins.set.State("b")
		return st == uplink.StateDown
	})
	if d := time.Since(start); d > time.Second {
		t.Errorf("dead uplink detected after %v, want < 1s", d)
	}
	for i := 0; i < 20; i++ {
		nic, _, err := m.ins.ChooseUplink(remote, tcp.ProtocolNumber)
		if err != nil || nic == nicB {
			t.Fatalf("ChooseUplink after b died = %d, %v", nic, err)
		}
	}
	if err := m.wan.EnableNIC(nicB); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, func() bool {
		st, _ := m.ins.set.State("b")
		return st == uplink.StateUp
	})
}

func TestUplinkAdminAndRuntimeChanges(t *testing.T) {
	m := newMemNet(t, "wrr", 1, 1, -1)
	remote := netip.AddrPortFrom(serverAddr, 80)
	nicA, _ := m.ins.NIC("a")
	nicB, _ := m.ins.NIC("b")
	only := func(want tcpip.NICID) {
		t.Helper()
		for i := 0; i < 10; i++ {
			nic, _, err := m.ins.ChooseUplink(remote, tcp.ProtocolNumber)
			if err != nil || nic != want {
				t.Fatalf("ChooseUplink = %d, %v; want NIC %d", nic, err, want)
			}
		}
	}
	if err := m.ins.Drain("a", true); err != nil {
		t.Fatal(err)
	}
	only(nicB)
	if err := m.ins.Drain("a", false); err != nil {
		t.Fatal(err)
	}
	if err := m.ins.SetAdminDown("b", true); err != nil {
		t.Fatal(err)
	}
	only(nicA)
	if err := m.ins.RemoveUplink("a"); err != nil {
		t.Fatal(err)
	}
	_, _, err := m.ins.ChooseUplink(remote, tcp.ProtocolNumber)
	if !errors.Is(err, uplink.ErrNoUplink) {
		t.Fatalf("no usable uplink: err %v, want ErrNoUplink", err)
	}
	// Add a fresh uplink c at run time and make a real connection over it.
	insEP, wanEP := pipe.New("", "", 1500)
	if err := m.wan.CreateNIC(9, wanEP); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.3.0.1/24", "198.51.100.1/32"} {
		p := netip.MustParsePrefix(a)
		m.wan.AddProtocolAddress(9, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(p.Addr()), PrefixLen: p.Bits()}}, stack.AddressProperties{})
	}
	m.wan.AddRoute(tcpip.Route{Destination: tcpip.AddressWithPrefix{Address: tcpAddr(netip.MustParseAddr("10.3.0.0")), PrefixLen: 24}.Subnet(), NIC: 9})
	if err := m.ins.AddUplink(UplinkConfig{Name: "c", Endpoint: insEP, Addr4: netip.MustParsePrefix("10.3.0.2/24"), Gateway4: netip.MustParseAddr("10.3.0.1")}); err != nil {
		t.Fatal(err)
	}
	seen := m.dialAll(t, 5)
	if seen[netip.MustParseAddr("10.3.0.2")] != 5 {
		t.Fatalf("after adding c: server saw %v, want 5 from 10.3.0.2", seen)
	}
	if err := m.ins.AddUplink(UplinkConfig{Name: "c", Endpoint: insEP, Addr4: netip.MustParsePrefix("10.4.0.2/24")}); err == nil {
		t.Fatal("duplicate AddUplink succeeded")
	}
	if err := m.ins.RemoveUplink("nope"); err == nil {
		t.Fatal("RemoveUplink of unknown uplink succeeded")
	}
}

func TestChooseUplinkFamilies(t *testing.T) {
	m := newMemNet(t, "sticky-hash", 1, 1, -1)
	cases := []struct {
		remote  netip.AddrPort
		wantErr string
	}{
		{netip.MustParseAddrPort("[2001:db8::1]:80"), "no usable uplink"},
		{netip.AddrPort{}, "invalid remote"},
		{netip.MustParseAddrPort("[::ffff:198.51.100.1]:80"), ""},
	}
	for _, tc := range cases {
		nic, local, err := m.ins.ChooseUplink(tc.remote, tcp.ProtocolNumber)
		if tc.wantErr == "" {
			if err != nil || nic == 0 || local.Len() != 4 {
				t.Errorf("ChooseUplink(%v) = %d, %v, %v", tc.remote, nic, local, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ChooseUplink(%v) err = %v, want %q", tc.remote, err, tc.wantErr)
		}
	}
	// Sticky: the same remote host always maps to the same uplink.
	first, _, _ := m.ins.ChooseUplink(netip.MustParseAddrPort("198.51.100.1:1"), tcp.ProtocolNumber)
	for p := uint16(2); p < 50; p++ {
		if nic, _, _ := m.ins.ChooseUplink(netip.AddrPortFrom(serverAddr, p), tcp.ProtocolNumber); nic != first {
			t.Fatalf("sticky-hash moved %v from NIC %d to %d", serverAddr, first, nic)
		}
	}
}

// TestChooseUplinkRoutes checks that a flow is only placed on an uplink that
// has a route to its destination (its subnet or a gateway of its family),
// and still spread over every uplink that has one.
func TestChooseUplinkRoutes(t *testing.T) {
	epA, _ := pipe.New("", "", 1500)
	epB, _ := pipe.New("", "", 1500)
	s, err := NewStack(Config{ID: 1, Policy: "wrr", ProbeInterval: -1, Uplinks: []UplinkConfig{
		{Name: "a", Endpoint: epA, Addr4: netip.MustParsePrefix("10.1.0.2/24"), Gateway4: netip.MustParseAddr("10.1.0.1"),
			Addr6: netip.MustParsePrefix("fd00:1::2/64")},
		{Name: "b", Endpoint: epB, Addr4: netip.MustParsePrefix("10.2.0.2/24"),
			Addr6: netip.MustParsePrefix("fd00:2::2/64"), Gateway6: netip.MustParseAddr("fd00:2::1")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nicA, _ := s.NIC("a")
	nicB, _ := s.NIC("b")
	local := map[tcpip.NICID]map[bool]tcpip.Address{
		nicA: {true: tcpAddr(netip.MustParseAddr("10.1.0.2")), false: tcpAddr(netip.MustParseAddr("fd00:1::2"))},
		nicB: {true: tcpAddr(netip.MustParseAddr("10.2.0.2")), false: tcpAddr(netip.MustParseAddr("fd00:2::2"))},
	}
	cases := []struct {
		remote string
		down   string        // uplink set administratively down first
		want   []tcpip.NICID // every pick is one of these, and each is picked; nil: ErrNoUplink
	}{
		{"10.2.0.1:80", "", []tcpip.NICID{nicA, nicB}}, // on b's subnet, and a has a gateway
		{"10.1.0.9:80", "", []tcpip.NICID{nicA}},       // b has no IPv4 gateway
		{"198.51.100.1:80", "", []tcpip.NICID{nicA}},
		{"[fd00:1::1]:80", "", []tcpip.NICID{nicA, nicB}},
		{"[fd00:2::1]:80", "", []tcpip.NICID{nicB}}, // a has no IPv6 gateway
		{"[2001:db8::1]:80", "", []tcpip.NICID{nicB}},
		{"[fe80::1]:80", "", []tcpip.NICID{nicA, nicB}},
		{"10.2.0.1:80", "a", []tcpip.NICID{nicB}},
		{"198.51.100.1:80", "a", nil},
		{"[fd00:2::1]:80", "b", nil},
		{"[2001:db8::1]:80", "b", nil},
	}
	for _, tc := range cases {
		if tc.down != "" {
			s.SetAdminDown(tc.down, true)
		}
		ra := netip.MustParseAddrPort(tc.remote)
		seen := map[tcpip.NICID]bool{}
		for i := 0; i < 6; i++ {
			nic, addr, err := s.ChooseUplink(ra, tcp.ProtocolNumber)
			if tc.want == nil {
				if !errors.Is(err, uplink.ErrNoUplink) {
					t.Errorf("ChooseUplink(%s) with %s down = %d, %v; want ErrNoUplink", tc.remote, tc.down, nic, err)
				}
				break
			}
			if err != nil || !slices.Contains(tc.want, nic) || addr != local[nic][ra.Addr().Is4()] {
				t.Errorf("ChooseUplink(%s) with %q down = %d, %v, %v; want one of %v with its address", tc.remote, tc.down, nic, addr, err, tc.want)
				break
			}
			seen[nic] = true
		}
		if tc.want != nil && len(seen) != len(tc.want) {
			t.Errorf("ChooseUplink(%s) with %q down picked %v, want each of %v", tc.remote, tc.down, seen, tc.want)
		}
		if tc.down != "" {
			s.SetAdminDown(tc.down, false)
		}
	}
}

func TestNewStackRejectsBadConfig(t *testing.T) {
	ep, _ := pipe.New("", "", 1500)
	good := UplinkConfig{Name: "a", Endpoint: ep, Addr4: netip.MustParsePrefix("10.1.0.2/24")}
	mod := func(f func(*UplinkConfig)) UplinkConfig { u := good; f(&u); return u }
	cases := []struct {
		name string
		cfg  Config
	}{
		{"bad policy", Config{Policy: "coin-toss", Uplinks: []UplinkConfig{good}}},
		{"no name", Config{Uplinks: []UplinkConfig{mod(func(u *UplinkConfig) { u.Name = "" })}}},
		{"no address", Config{Uplinks: []UplinkConfig{mod(func(u *UplinkConfig) { u.Addr4 = netip.Prefix{} })}}},
		{"v6 in v4 slot", Config{Uplinks: []UplinkConfig{mod(func(u *UplinkConfig) { u.Addr4 = netip.MustParsePrefix("2001:db8::2/64") })}}},
		{"gateway off link", Config{Uplinks: []UplinkConfig{mod(func(u *UplinkConfig) { u.Gateway4 = netip.MustParseAddr("10.9.0.1") })}}},
		{"no interface", Config{Uplinks: []UplinkConfig{mod(func(u *UplinkConfig) { u.Endpoint = nil })}}},
		{"missing interface", Config{Uplinks: []UplinkConfig{mod(func(u *UplinkConfig) { u.Endpoint = nil; u.Interface = "mpshim-nope0" })}}},
		{"duplicate", Config{Uplinks: []UplinkConfig{good, good}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.ProbeInterval = -1
			s, err := NewStack(tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("NewStack succeeded")
			}
		})
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
