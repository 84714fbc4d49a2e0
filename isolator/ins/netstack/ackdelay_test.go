package netstack_test

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

// TestRequestAckRidesOnResponse: the kernel's TCP in the wan namespace
// exchanges requests and responses with an echo server on the INS; the INS
// sends one frame per exchange (the response carries the request's ACK)
// instead of two, the bytes come back intact, and a request nobody answers
// is still acknowledged (its ACK leaves when the delay runs out).
func TestRequestAckRidesOnResponse(t *testing.T) {
	m := instest.NewMiniTopo(t, 1)
	_, s := instest.StartINS(t, m, 1, 10, netstack.DefaultProbeInterval, 0)
	addr := m.Ups[0].HostAddr(10).Addr()

	ln, err := gonet.ListenTCP(s.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go instest.EchoServe(ln)
	silent, err := gonet.ListenTCP(s.Stack(), tcpip.FullAddress{Port: 9}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// Port 9 answers once, then only reads (a discard server).
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 200)
				if _, err := io.ReadFull(c, b); err == nil {
					_, _ = c.Write(b)
				}
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()

	dial := func(port uint16) *net.TCPConn {
		var c net.Conn
		if err := m.InWAN(func() (err error) {
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, port).String(), 5*time.Second)
			return err
		}); err != nil {
			t.Fatalf("dial %v:%d from wan: %v", addr, port, err)
		}
		return c.(*net.TCPConn)
	}
	exchange := func(t *testing.T, c net.Conn, i int) {
		t.Helper()
		req := bytes.Repeat([]byte{byte(i)}, 200)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write(req); err != nil {
			t.Fatalf("exchange %d: write: %v", i, err)
		}
		got := make([]byte, len(req))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, req) {
			t.Fatalf("exchange %d: %v (identical=%v)", i, err, bytes.Equal(got, req))
		}
	}

	t.Run("one frame per exchange", func(t *testing.T) {
		c := dial(7)
		defer c.Close()
		// The first exchanges put the flow in ping-pong mode.
		for i := range 3 {
			exchange(t, c, i)
		}
		const n = 200
		before := countersByName(s)["u0"].TxPackets
		for i := range n {
			exchange(t, c, i)
		}
		sent := countersByName(s)["u0"].TxPackets - before
		// Two frames per exchange without the delayed ACK; a held ACK
		// released by its timer on a loaded machine adds a few.
		if sent > n*5/4 {
			t.Fatalf("INS sent %d frames for %d exchanges, want about one per exchange", sent, n)
		}
		t.Logf("INS sent %d frames for %d exchanges", sent, n)
	})

	t.Run("a request without response is acknowledged", func(t *testing.T) {
		c := dial(9)
		defer c.Close()
		exchange(t, c, 1)
		if _, err := c.Write(bytes.Repeat([]byte{7}, 100)); err != nil {
			t.Fatal(err)
		}
		raw, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		// The kernel keeps the bytes in its send queue until they are
		// acknowledged.
		unacked := func() int {
			var q int
			_ = raw.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
			return q
		}
		instest.WaitFor(t, 10*time.Second, func() bool { return unacked() == 0 })
	})
}
