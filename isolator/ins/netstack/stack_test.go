package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/netstack"

	"github.com/mpshim/mpshim/isolator/uplink"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

func TestOutboundSpreadByWeight(t *testing.T) {
	cases := []struct {
		name   string
		w1, w2 int
	}{{"1:1", 1, 1}, {"3:1", 3, 1}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := instest.NewMemNet(t, "wrr", tc.w1, tc.w2, -1)
			const n = 100
			seen := m.DialAll(t, n)
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
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	ln, err := gonet.ListenTCP(m.INS.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
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
			before := settledCounters(m.INS) // earlier flows' FINs are done
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			wanNIC, _ := m.INS.NIC(tc.in) // the WAN NIC ids mirror the INS ones
			c, err := gonet.DialTCPWithBind(ctx, m.WAN, tcpip.FullAddress{NIC: wanNIC, Addr: instest.TCPAddr(instest.ServerAddr)},
				tcpip.FullAddress{Addr: instest.TCPAddr(netip.MustParseAddr(tc.dst)), Port: 7}, ipv4.ProtocolNumber)
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
			after := countersByName(m.INS)
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
func settledCounters(s *netstack.Stack) map[string]netstack.UplinkCounters {
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

func countersByName(s *netstack.Stack) map[string]netstack.UplinkCounters {
	out := map[string]netstack.UplinkCounters{}
	for _, c := range s.Counters() {
		out[c.Name] = c
	}
	return out
}

func TestProbeDetectsDeadUplink(t *testing.T) {
	m := instest.NewMemNet(t, "lowest-rtt", 1, 1, netstack.DefaultProbeInterval)
	remote := netip.AddrPortFrom(instest.ServerAddr, 80)
	// Both uplinks get RTT samples.
	instest.WaitFor(t, 3*time.Second, func() bool {
		for _, i := range m.INS.Uplinks() {
			if i.RTT == 0 {
				return false
			}
		}
		return true
	})
	// Kill the WAN side of uplink b: the pipe delivers into a disabled NIC.
	nicB, _ := m.INS.NIC("b")
	if err := m.WAN.DisableNIC(nicB); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	instest.WaitFor(t, 2*time.Second, func() bool {
		st := uplinkState(m.INS, "b")
		return st == uplink.StateDown
	})
	if d := time.Since(start); d > time.Second {
		t.Errorf("dead uplink detected after %v, want < 1s", d)
	}
	for i := 0; i < 20; i++ {
		nic, _, err := m.INS.ChooseUplink(remote, tcp.ProtocolNumber)
		if err != nil || nic == nicB {
			t.Fatalf("ChooseUplink after b died = %d, %v", nic, err)
		}
	}
	if err := m.WAN.EnableNIC(nicB); err != nil {
		t.Fatal(err)
	}
	instest.WaitFor(t, 2*time.Second, func() bool {
		st := uplinkState(m.INS, "b")
		return st == uplink.StateUp
	})
}

func TestUplinkAdminAndRuntimeChanges(t *testing.T) {
	m := instest.NewMemNet(t, "wrr", 1, 1, -1)
	remote := netip.AddrPortFrom(instest.ServerAddr, 80)
	nicA, _ := m.INS.NIC("a")
	nicB, _ := m.INS.NIC("b")
	only := func(want tcpip.NICID) {
		t.Helper()
		for i := 0; i < 10; i++ {
			nic, _, err := m.INS.ChooseUplink(remote, tcp.ProtocolNumber)
			if err != nil || nic != want {
				t.Fatalf("ChooseUplink = %d, %v; want NIC %d", nic, err, want)
			}
		}
	}
	if err := m.INS.Drain("a", true); err != nil {
		t.Fatal(err)
	}
	only(nicB)
	if err := m.INS.Drain("a", false); err != nil {
		t.Fatal(err)
	}
	if err := m.INS.SetAdminDown("b", true); err != nil {
		t.Fatal(err)
	}
	only(nicA)
	if err := m.INS.RemoveUplink("a"); err != nil {
		t.Fatal(err)
	}
	_, _, err := m.INS.ChooseUplink(remote, tcp.ProtocolNumber)
	if !errors.Is(err, uplink.ErrNoUplink) {
		t.Fatalf("no usable uplink: err %v, want ErrNoUplink", err)
	}
	// Add a fresh uplink c at run time and make a real connection over it.
	insEP, wanEP := pipe.New("", "", 1500)
	if err := m.WAN.CreateNIC(9, wanEP); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.3.0.1/24", "198.51.100.1/32"} {
		p := netip.MustParsePrefix(a)
		m.WAN.AddProtocolAddress(9, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: instest.TCPAddr(p.Addr()), PrefixLen: p.Bits()}}, stack.AddressProperties{})
	}
	m.WAN.AddRoute(tcpip.Route{Destination: tcpip.AddressWithPrefix{Address: instest.TCPAddr(netip.MustParseAddr("10.3.0.0")), PrefixLen: 24}.Subnet(), NIC: 9})
	if err := m.INS.AddUplink(netstack.UplinkConfig{Name: "c", Endpoint: insEP, Addr4: netip.MustParsePrefix("10.3.0.2/24"), Gateway4: netip.MustParseAddr("10.3.0.1")}); err != nil {
		t.Fatal(err)
	}
	seen := m.DialAll(t, 5)
	if seen[netip.MustParseAddr("10.3.0.2")] != 5 {
		t.Fatalf("after adding c: server saw %v, want 5 from 10.3.0.2", seen)
	}
	if err := m.INS.AddUplink(netstack.UplinkConfig{Name: "c", Endpoint: insEP, Addr4: netip.MustParsePrefix("10.4.0.2/24")}); err == nil {
		t.Fatal("duplicate AddUplink succeeded")
	}
	if err := m.INS.RemoveUplink("nope"); err == nil {
		t.Fatal("RemoveUplink of unknown uplink succeeded")
	}
}

func TestChooseUplinkFamilies(t *testing.T) {
	m := instest.NewMemNet(t, "sticky-hash", 1, 1, -1)
	cases := []struct {
		remote  netip.AddrPort
		wantErr string
	}{
		{netip.MustParseAddrPort("[2001:db8::1]:80"), "no usable uplink"},
		{netip.AddrPort{}, "invalid remote"},
		{netip.MustParseAddrPort("[::ffff:198.51.100.1]:80"), ""},
	}
	for _, tc := range cases {
		nic, local, err := m.INS.ChooseUplink(tc.remote, tcp.ProtocolNumber)
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
	first, _, _ := m.INS.ChooseUplink(netip.MustParseAddrPort("198.51.100.1:1"), tcp.ProtocolNumber)
	for p := uint16(2); p < 50; p++ {
		if nic, _, _ := m.INS.ChooseUplink(netip.AddrPortFrom(instest.ServerAddr, p), tcp.ProtocolNumber); nic != first {
			t.Fatalf("sticky-hash moved %v from NIC %d to %d", instest.ServerAddr, first, nic)
		}
	}
}

// TestChooseUplinkRoutes checks that a flow is only placed on an uplink that
// has a route to its destination (its subnet or a gateway of its family),
// and still spread over every uplink that has one.
func TestChooseUplinkRoutes(t *testing.T) {
	epA, _ := pipe.New("", "", 1500)
	epB, _ := pipe.New("", "", 1500)
	s, err := netstack.New(netstack.Config{ID: 1, Policy: "wrr", ProbeInterval: -1, Uplinks: []netstack.UplinkConfig{
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
		nicA: {true: instest.TCPAddr(netip.MustParseAddr("10.1.0.2")), false: instest.TCPAddr(netip.MustParseAddr("fd00:1::2"))},
		nicB: {true: instest.TCPAddr(netip.MustParseAddr("10.2.0.2")), false: instest.TCPAddr(netip.MustParseAddr("fd00:2::2"))},
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
	good := netstack.UplinkConfig{Name: "a", Endpoint: ep, Addr4: netip.MustParsePrefix("10.1.0.2/24")}
	mod := func(f func(*netstack.UplinkConfig)) netstack.UplinkConfig { u := good; f(&u); return u }
	cases := []struct {
		name string
		cfg  netstack.Config
	}{
		{"bad policy", netstack.Config{Policy: "coin-toss", Uplinks: []netstack.UplinkConfig{good}}},
		{"no name", netstack.Config{Uplinks: []netstack.UplinkConfig{mod(func(u *netstack.UplinkConfig) { u.Name = "" })}}},
		{"no address", netstack.Config{Uplinks: []netstack.UplinkConfig{mod(func(u *netstack.UplinkConfig) { u.Addr4 = netip.Prefix{} })}}},
		{"v6 in v4 slot", netstack.Config{Uplinks: []netstack.UplinkConfig{mod(func(u *netstack.UplinkConfig) { u.Addr4 = netip.MustParsePrefix("2001:db8::2/64") })}}},
		{"gateway off link", netstack.Config{Uplinks: []netstack.UplinkConfig{mod(func(u *netstack.UplinkConfig) { u.Gateway4 = netip.MustParseAddr("10.9.0.1") })}}},
		{"no interface", netstack.Config{Uplinks: []netstack.UplinkConfig{mod(func(u *netstack.UplinkConfig) { u.Endpoint = nil })}}},
		{"missing interface", netstack.Config{Uplinks: []netstack.UplinkConfig{mod(func(u *netstack.UplinkConfig) { u.Endpoint = nil; u.Interface = "mpshim-nope0" })}}},
		{"duplicate", netstack.Config{Uplinks: []netstack.UplinkConfig{good, good}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.ProbeInterval = -1
			s, err := netstack.New(tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("netstack.New succeeded")
			}
		})
	}
}

// uplinkState returns the state of the uplink named name (-1: none).
func uplinkState(s *netstack.Stack, name string) uplink.State {
	for _, i := range s.Uplinks() {
		if i.Name == name {
			return i.State
		}
	}
	return -1
}
