package engine_test

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
)

// TestRxLoopHandover moves the receive side of a real packet-socket NIC
// from its own reader into an engine's loop and back when the engine stops:
// a TCP echo from the wan namespace works in each phase.
func TestRxLoopHandover(t *testing.T) {
	m := instest.NewMiniTopo(t, 1)
	_, s := instest.StartINS(t, m, 1, 10, -1, 0)
	addr := m.Ups[0].HostAddr(10).Addr()
	ln, err := gonet.ListenTCP(s.Stack(), tcpip.FullAddress{Addr: instest.TCPAddr(addr), Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go instest.EchoServe(ln)
	msg := bytes.Repeat([]byte("rx-loop "), 8<<10)

	// The NIC's own reader, before any loop.
	instest.EchoFromWAN(t, m, addr, msg)

	e := engine.New(s.Stack(), s, engine.Options{})
	s.DriveRx(e)
	if n := e.Stats().RxNICs; n != 1 {
		t.Fatalf("RxNICs = %d after DriveRx, want 1", n)
	}
	instest.EchoFromWAN(t, m, addr, msg)

	// A stopped loop hands the NIC back to a reader of its own.
	e.Stop()
	instest.EchoFromWAN(t, m, addr, msg)
}
