package engine_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// A client that connects to a TCP_DEFER_ACCEPT listener and closes
// without sending anything: Linux completes the connection on the FIN
// (only a bare ACK is deferred), so the app accepts it at once and reads
// end-of-file. Apache sets TCP_DEFER_ACCEPT on every listener.
func TestDeferAcceptFIN(t *testing.T) {
	n := newTestNet(t)
	lap := netip.AddrPortFrom(addrA, 80)
	lid, lfd := instest.Listen(t, n.e, lap, 16)
	if errno := n.e.Setsockopt(lid, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, i32(30)); errno != 0 {
		t.Fatalf("TCP_DEFER_ACCEPT: %v", errno)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, n.b, full(lap), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.Close()
	pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	if k, err := unix.Poll(pfd, 5000); k != 1 || err != nil {
		t.Fatalf("no connection to accept within 5 s of the client's FIN (poll %d, %v)", k, err)
	}
	m, err := instest.RecvAccept(t, lfd, 0)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	defer unix.Close(m.FD)
	if got, err := instest.ReadAll(m.FD); err != nil || len(got) != 0 {
		t.Fatalf("read %q, %v; want end-of-file", got, err)
	}
	if b, errno := n.e.Getsockopt(lid, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 4); errno != 0 || instest.LeU32(b) != 31 {
		t.Fatalf("TCP_DEFER_ACCEPT reads %v %v, want Linux's rounding (31)", b, errno)
	}
}
