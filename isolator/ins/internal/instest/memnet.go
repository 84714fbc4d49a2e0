// Package instest holds the fixtures the INS packages' tests share: an INS
// netstack on in-memory links to a WAN netstack, and a small namespace
// topology (wan and gw namespaces joined by veth pairs, never in the root
// namespace) with INS namespaces on it. It is imported by tests only.
package instest

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

// ServerAddr is a WAN-side address reachable over both uplinks.
var ServerAddr = netip.MustParseAddr("198.51.100.1")

// MemNet is an INS netstack whose two uplinks, "a" and "b" (10.1.0.2/24 and
// 10.2.0.2/24), are in-memory pipes to a second netstack playing the WAN
// side (gateways 10.1.0.1 and 10.2.0.1, and a server address 198.51.100.1
// on both).
type MemNet struct {
	INS *netstack.Stack
	WAN *stack.Stack
}

// NewMemNet builds a MemNet with the given outbound policy, uplink weights
// and probe interval (negative: no health checks); t's cleanup closes it.
func NewMemNet(t testing.TB, policy string, w1, w2 int, probe time.Duration) *MemNet {
	t.Helper()
	wan := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, icmp.NewProtocol4},
	})
	t.Cleanup(wan.Destroy)
	var ups []netstack.UplinkConfig
	for i, w := range []int{w1, w2} {
		insEP, wanEP := pipe.New("", "", 1500)
		nic := tcpip.NICID(i + 1)
		if err := wan.CreateNIC(nic, wanEP); err != nil {
			t.Fatalf("wan NIC: %s", err)
		}
		for _, a := range []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 1}), 24), netip.PrefixFrom(ServerAddr, 32)} {
			pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: TCPAddr(a.Addr()), PrefixLen: a.Bits()}}
			if err := wan.AddProtocolAddress(nic, pa, stack.AddressProperties{}); err != nil {
				t.Fatalf("wan addr: %s", err)
			}
		}
		wan.AddRoute(tcpip.Route{Destination: tcpip.AddressWithPrefix{Address: TCPAddr(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 0})), PrefixLen: 24}.Subnet(), NIC: nic})
		ups = append(ups, netstack.UplinkConfig{
			Name:     []string{"a", "b"}[i],
			Endpoint: insEP,
			Addr4:    netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 2}), 24),
			Gateway4: netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 1}),
			Weight:   w,
		})
	}
	s, err := netstack.New(netstack.Config{ID: 1, Uplinks: ups, Policy: policy, ProbeInterval: probe})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(s.Close)
	return &MemNet{INS: s, WAN: wan}
}

// DialAll makes n connections from the INS, each placed by ChooseUplink,
// and returns how many the WAN server saw from each INS source address.
func (m *MemNet) DialAll(t *testing.T, n int) map[netip.Addr]int {
	t.Helper()
	ln, err := gonet.ListenTCP(m.WAN, tcpip.FullAddress{Addr: TCPAddr(ServerAddr), Port: 80}, ipv4.ProtocolNumber)
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
	remote := netip.AddrPortFrom(ServerAddr, 80)
	for i := 0; i < n; i++ {
		nic, local, err := m.INS.ChooseUplink(remote, tcp.ProtocolNumber)
		if err != nil {
			t.Fatalf("ChooseUplink: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := gonet.DialTCPWithBind(ctx, m.INS.Stack(), tcpip.FullAddress{NIC: nic, Addr: local},
			tcpip.FullAddress{Addr: TCPAddr(ServerAddr), Port: 80}, ipv4.ProtocolNumber)
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

// TCPAddr converts a to a netstack address.
func TCPAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// WaitFor polls cond every 20 ms and fails t if it is not met within d.
func WaitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Proto returns the network protocol of a.
func Proto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}
