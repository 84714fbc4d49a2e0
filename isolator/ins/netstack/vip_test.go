package netstack_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

// vipStack is an INS stack with one uplink on an in-memory link that holds
// the VIPs 10.9.0.100 and fd09::100 besides its own 10.9.0.2 and fd09::2.
func vipStack(t *testing.T) (*netstack.Stack, *channel.Endpoint) {
	t.Helper()
	ch := channel.New(64, 1500, tcpip.LinkAddress("\x02\x00\x00\x00\x00\x02"))
	s, err := netstack.New(netstack.Config{ID: 1, Policy: "wrr", ProbeInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	err = s.AddUplink(netstack.UplinkConfig{Name: "u", Endpoint: ethernet.New(ch),
		Addr4: netip.MustParsePrefix("10.9.0.2/24"), Addr6: netip.MustParsePrefix("fd09::2/64"),
		VIPs: []netip.Addr{netip.MustParseAddr("10.9.0.100"), netip.MustParseAddr("fd09::100")}})
	if err != nil {
		t.Fatal(err)
	}
	return s, ch
}

// nextOf reads frames from ch until one of protocol proto arrives.
func nextOf(t *testing.T, ch *channel.Endpoint, proto tcpip.NetworkProtocolNumber, d time.Duration) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		pkt := ch.ReadContext(ctx)
		if pkt == nil {
			return nil
		}
		ok := pkt.NetworkProtocolNumber == proto
		b := stack.PayloadSince(pkt.NetworkHeader())
		v := append([]byte(nil), b.AsSlice()...)
		b.Release()
		pkt.DecRef()
		if ok {
			return v
		}
	}
}

// TestVIPNeighbourRequestsLeaveFromOwnAddress sends from a VIP to peers not
// yet resolved: the ARP request and the neighbour solicitation name the
// uplink's own address, never the VIP (else the peer would learn the INS's
// MAC for the VIP and pass the balancer by).
func TestVIPNeighbourRequestsLeaveFromOwnAddress(t *testing.T) {
	s, ch := vipStack(t)
	for _, tc := range []struct {
		vip, peer, own string
		proto          tcpip.NetworkProtocolNumber
	}{
		{"10.9.0.100", "10.9.0.5", "10.9.0.2", ipv4.ProtocolNumber},
		{"fd09::100", "fd09::5", "fd09::2", ipv6.ProtocolNumber},
	} {
		vip, peer, own := netip.MustParseAddr(tc.vip), netip.MustParseAddr(tc.peer), netip.MustParseAddr(tc.own)
		c, err := gonet.DialUDP(s.Stack(), &tcpip.FullAddress{Addr: instest.TCPAddr(vip)},
			&tcpip.FullAddress{Addr: instest.TCPAddr(peer), Port: 9}, tc.proto)
		if err != nil {
			t.Fatalf("%s: %v", tc.vip, err)
		}
		c.Write([]byte("x"))
		c.Close()
		if tc.proto == ipv4.ProtocolNumber {
			b := nextOf(t, ch, arp.ProtocolNumber, 5*time.Second)
			if b == nil {
				t.Fatalf("no ARP request for %v", peer)
			}
			h := header.ARP(b)
			if got := tcpip.AddrFromSlice(h.ProtocolAddressSender()); got != instest.TCPAddr(own) {
				t.Errorf("ARP request for %v from %v, want %v", peer, got, own)
			}
			continue
		}
		for {
			b := nextOf(t, ch, ipv6.ProtocolNumber, 5*time.Second)
			if b == nil {
				t.Fatalf("no neighbour solicitation for %v", peer)
			}
			ip := header.IPv6(b)
			icmp := header.ICMPv6(ip.Payload())
			if ip.TransportProtocol() != header.ICMPv6ProtocolNumber || icmp.Type() != header.ICMPv6NeighborSolicit {
				continue // router solicitations, MLD
			}
			if ip.SourceAddress() != instest.TCPAddr(own) {
				t.Errorf("neighbour solicitation for %v from %v, want %v", peer, ip.SourceAddress(), own)
			}
			if sum := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()}); sum != icmp.Checksum() {
				t.Errorf("neighbour solicitation checksum %#x, want %#x", icmp.Checksum(), sum)
			}
			break
		}
	}
}

// TestVIPARPNotAnswered asks the INS for its own address and for the VIP:
// only its own is answered.
func TestVIPARPNotAnswered(t *testing.T) {
	_, ch := vipStack(t)
	ask := func(target string) []byte {
		b := make([]byte, header.EthernetMinimumSize+header.ARPSize)
		eth := header.Ethernet(b)
		eth.Encode(&header.EthernetFields{SrcAddr: "\x02\x00\x00\x00\x00\x05", DstAddr: header.EthernetBroadcastAddress, Type: arp.ProtocolNumber})
		h := header.ARP(b[header.EthernetMinimumSize:])
		h.SetIPv4OverEthernet()
		h.SetOp(header.ARPRequest)
		copy(h.HardwareAddressSender(), "\x02\x00\x00\x00\x00\x05")
		copy(h.ProtocolAddressSender(), netip.MustParseAddr("10.9.0.5").AsSlice())
		copy(h.ProtocolAddressTarget(), netip.MustParseAddr(target).AsSlice())
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		ch.InjectInbound(0, pkt)
		pkt.DecRef()
		return nextOf(t, ch, arp.ProtocolNumber, time.Second)
	}
	if b := ask("10.9.0.100"); b != nil {
		t.Errorf("the INS answered ARP for the VIP: %x", b)
	}
	b := ask("10.9.0.2")
	if b == nil || header.ARP(b).Op() != header.ARPReply {
		t.Errorf("no ARP reply for the INS's own address: %x", b)
	}
}
