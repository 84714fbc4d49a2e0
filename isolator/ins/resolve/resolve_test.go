package resolve

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/netstack"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/mpshim/mpshim/internal/dnstest"
	"github.com/mpshim/mpshim/msgproto"
)

// dnsNet is an INS stack with one uplink (10.1.0.2/24, fd00:1::2/64, no
// gateways) piped to a WAN netstack (10.1.0.1, fd00:1::1) that runs a
// dnstest server on port 53, UDP and TCP, on both addresses.
func dnsNet(t *testing.T, servers ...netip.AddrPort) (*Resolver, *dnstest.Server) {
	t.Helper()
	wan := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	t.Cleanup(wan.Destroy)
	insEP, wanEP := pipe.New("", "", 1500)
	if err := wan.CreateNIC(1, wanEP); err != nil {
		t.Fatalf("wan NIC: %s", err)
	}
	srv := dnstest.New()
	t.Cleanup(func() { srv.Close() })
	for _, p := range []netip.Prefix{netip.MustParsePrefix("10.1.0.1/24"), netip.MustParsePrefix("fd00:1::1/64")} {
		pa := tcpip.ProtocolAddress{Protocol: instest.Proto(p.Addr()), AddressWithPrefix: tcpip.AddressWithPrefix{Address: instest.TCPAddr(p.Addr()), PrefixLen: p.Bits()}}
		if err := wan.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
			t.Fatalf("wan addr: %s", err)
		}
		wan.AddRoute(tcpip.Route{Destination: tcpip.AddressWithPrefix{Address: instest.TCPAddr(p.Masked().Addr()), PrefixLen: p.Bits()}.Subnet(), NIC: 1})
		fa := tcpip.FullAddress{Addr: instest.TCPAddr(p.Addr()), Port: 53}
		pc, err := gonet.DialUDP(wan, &fa, nil, instest.Proto(p.Addr()))
		if err != nil {
			t.Fatalf("dns server UDP: %v", err)
		}
		ln, err := gonet.ListenTCP(wan, fa, instest.Proto(p.Addr()))
		if err != nil {
			t.Fatalf("dns server TCP: %v", err)
		}
		srv.ServePacket(pc)
		srv.ServeStream(ln)
	}
	s, err := netstack.New(netstack.Config{ID: 1, ProbeInterval: -1,
		Uplinks: []netstack.UplinkConfig{{Name: "a", Endpoint: insEP,
			Addr4: netip.MustParsePrefix("10.1.0.2/24"), Addr6: netip.MustParsePrefix("fd00:1::2/64")}}})
	if err != nil {
		t.Fatalf("NewStack: %v", err)
	}
	t.Cleanup(s.Close)
	return New(s, Config{Servers: servers, Timeout: 300 * time.Millisecond, Attempts: 1}, slog.Default()), srv
}

var (
	onLink4  = netip.MustParseAddr("10.1.0.80")
	onLink6  = netip.MustParseAddr("fd00:1::80")
	offLink4 = netip.MustParseAddr("192.0.2.80") // no uplink has a route there
)

// TestResolveOverNetstack resolves through the INS's own netstack, with an
// IPv4 and with an IPv6 nameserver, and checks the replies the shim gets.
func TestResolveOverNetstack(t *testing.T) {
	for _, ns := range []string{"10.1.0.1:53", "[fd00:1::1]:53"} {
		t.Run(ns, func(t *testing.T) {
			rs, srv := dnsNet(t, netip.MustParseAddrPort(ns))
			srv.Set("web.test", dnstest.Record{A: []netip.Addr{offLink4, onLink4}, AAAA: []netip.Addr{onLink6}, TTL: 90})
			srv.Set("alias.test", dnstest.Record{CNAME: "web.test"})
			srv.Set("drop.test", dnstest.Record{Behavior: dnstest.Drop})
			var big []netip.Addr
			for i := range 80 {
				big = append(big, netip.AddrFrom4([4]byte{10, 1, 0, byte(100 + i)}))
			}
			srv.Set("big.test", dnstest.Record{A: big})
			srv.SetPTR(onLink4, "web.test")
			ctx := context.Background()
			both := uint32(msgproto.ResolveHas4 | msgproto.ResolveHas6)
			cases := []struct {
				name   string
				req    msgproto.Resolve
				status int32
				canon  string
				addrs  []netip.Addr
			}{
				// glibc's order: an address no uplink routes to goes
				// last, a ULA before IPv4.
				{"both", msgproto.Resolve{Name: []byte("web.test")}, msgproto.ResolveOK, "web.test", []netip.Addr{onLink6, onLink4, offLink4}},
				{"v4", msgproto.Resolve{Family: msgproto.FamilyInet, Name: []byte("alias.test")}, msgproto.ResolveOK, "web.test", []netip.Addr{onLink4, offLink4}},
				{"v6", msgproto.Resolve{Family: msgproto.FamilyInet6, Name: []byte("web.test.")}, msgproto.ResolveOK, "web.test", []netip.Addr{onLink6}},
				{"nxdomain", msgproto.Resolve{Name: []byte("nx.test")}, msgproto.ResolveNoName, "", nil},
				{"timeout", msgproto.Resolve{Family: msgproto.FamilyInet, Name: []byte("drop.test")}, msgproto.ResolveAgain, "", nil},
				{"families only", msgproto.Resolve{}, msgproto.ResolveOK, "", nil},
				{"reverse", msgproto.Resolve{Flags: msgproto.ResolveReverse, Addr: msgproto.AddrFromNetip(netip.AddrPortFrom(onLink4, 0))}, msgproto.ResolveOK, "web.test", nil},
				{"reverse unknown", msgproto.Resolve{Flags: msgproto.ResolveReverse, Addr: msgproto.AddrFromNetip(netip.AddrPortFrom(onLink6, 0))}, msgproto.ResolveNoName, "", nil},
			}
			for _, tc := range cases {
				rep, ok := rs.Resolve(ctx, &tc.req).(*msgproto.ResolveReply)
				if !ok {
					t.Fatalf("%s: reply %#v", tc.name, rep)
				}
				addrs, err := msgproto.ParseAddrList(rep.Addrs)
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if rep.Status != tc.status || string(rep.Canon) != tc.canon || !slices.Equal(addrs, tc.addrs) || rep.Families != both {
					t.Errorf("%s: status %d canon %q addrs %v families %d; want %d %q %v %d", tc.name, rep.Status, rep.Canon, addrs, rep.Families, tc.status, tc.canon, tc.addrs, both)
				}
			}
			// 80 addresses: the UDP answer is truncated, TCP brings all of
			// them, the reply carries the first MaxResolveAddrs.
			rep := rs.Resolve(ctx, &msgproto.Resolve{Family: msgproto.FamilyInet, Name: []byte("big.test")}).(*msgproto.ResolveReply)
			if addrs, _ := msgproto.ParseAddrList(rep.Addrs); rep.Status != msgproto.ResolveOK || !slices.Equal(addrs, big[:msgproto.MaxResolveAddrs]) {
				t.Errorf("big.test: status %d, %d addresses", rep.Status, len(addrs))
			}
			if rep.TTL == 0 || rep.TTL > 60 {
				t.Errorf("big.test TTL %d, want the server's default 60", rep.TTL)
			}
		})
	}
}

func TestResolveRejectsBadRequests(t *testing.T) {
	rs, _ := dnsNet(t)
	ctx := context.Background()
	for name, req := range map[string]msgproto.Resolve{
		"unknown flag":           {Flags: 2, Name: []byte("a.test")},
		"bad family":             {Family: 1, Name: []byte("a.test")},
		"reverse without addr":   {Flags: msgproto.ResolveReverse},
		"reverse with a name":    {Flags: msgproto.ResolveReverse, Addr: msgproto.AddrFromNetip(netip.MustParseAddrPort("10.1.0.1:0")), Name: []byte("x")},
		"reverse with a port":    {Flags: msgproto.ResolveReverse, Addr: msgproto.AddrFromNetip(netip.MustParseAddrPort("10.1.0.1:53"))},
		"forward with an addr":   {Addr: msgproto.AddrFromNetip(netip.MustParseAddrPort("10.1.0.1:0")), Name: []byte("a.test")},
		"non-canonical v4 addr":  {Flags: msgproto.ResolveReverse, Addr: msgproto.Addr{Family: msgproto.FamilyInet, ScopeID: 1}},
		"unknown address family": {Flags: msgproto.ResolveReverse, Addr: msgproto.Addr{Family: 7}},
	} {
		rep, ok := rs.Resolve(ctx, &req).(*msgproto.Reply)
		if !ok || rep.Errno == 0 {
			t.Errorf("%s: reply %#v, want an errno", name, rep)
		}
	}
	// No nameservers: every lookup is "try again", at once.
	start := time.Now()
	rep := rs.Resolve(ctx, &msgproto.Resolve{Name: []byte("a.test")}).(*msgproto.ResolveReply)
	if rep.Status != msgproto.ResolveAgain || time.Since(start) > time.Second {
		t.Errorf("without nameservers: status %d after %v", rep.Status, time.Since(start))
	}
	// A name that cannot be asked for is "no such name" without a query.
	rep = rs.Resolve(ctx, &msgproto.Resolve{Name: []byte("a..b")}).(*msgproto.ResolveReply)
	if rep.Status != msgproto.ResolveNoName {
		t.Errorf("a..b: status %d", rep.Status)
	}
}
