package link

import (
	"testing"

	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/flowtable"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

type passTap struct{}

func (passTap) Packet(string, netflow.Direction, *netflow.Packet) bool { return true }

// BenchmarkTapPath measures one data packet's way through an uplink's tap
// (gathering its headers, Parse, the taps): with a tap that does nothing,
// which is the floor any tap pays, and with the flow table.
func BenchmarkTapPath(b *testing.B) {
	pkts := make([]*stack.PacketBuffer, 64)
	for i := range pkts {
		raw := make([]byte, 20+32+1448)
		ip := header.IPv4(raw)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(raw)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: tcpip.AddrFrom4([4]byte{10, 77, 0, 1}), DstAddr: tcpip.AddrFrom4([4]byte{10, 77, 0, 10})})
		header.TCP(raw[20:]).Encode(&header.TCPFields{SrcPort: uint16(40000 + i), DstPort: 80, DataOffset: 32, Flags: header.TCPFlagAck})
		pkts[i] = stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(raw)})
		pkts[i].NetworkProtocolNumber = header.IPv4ProtocolNumber
		b.Cleanup(pkts[i].DecRef)
	}
	for _, tc := range []struct {
		name string
		tap  Tap
	}{{"parse only", passTap{}}, {"flow table", flowtable.New(flowtable.Config{})}} {
		b.Run(tc.name, func(b *testing.B) {
			var c Taps
			c.Add(tc.tap)
			t := &TapEndpoint{uplink: "up0", taps: &c}
			var buf [netflow.HeaderBytes]byte
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if !t.pass(pkts[i&63], buf[:]) {
					b.Fatal("dropped")
				}
			}
		})
	}
}
