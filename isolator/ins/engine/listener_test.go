package engine_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

func TestListenerDelivery(t *testing.T) {
	n := newTestNet(t)
	lap := netip.AddrPortFrom(addrA, 80)
	lid, lfd := instest.Listen(t, n.e, lap, 16)

	if b, errno := n.e.Getsockopt(lid, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 4); errno != 0 || instest.LeU32(b) != 1 {
		t.Fatalf("SO_ACCEPTCONN = %v %v", b, errno)
	}
	if errno := n.e.Connect(lid, netip.AddrPortFrom(addrB, 1), nil, false); errno != unix.EISCONN {
		t.Fatalf("Connect on listener = %v, want EISCONN", errno)
	}
	// Nothing pending: the listener fd is not readable.
	if _, err := instest.RecvAccept(t, lfd, unix.MSG_DONTWAIT); err != unix.EAGAIN {
		t.Fatalf("empty accept: %v, want EAGAIN", err)
	}
	pc, err := gonet.DialTCP(n.b, full(lap), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer pc.Close()
	m, err := instest.RecvAccept(t, lfd, 0)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	defer unix.Close(m.FD)
	peerAddr := pc.LocalAddr().(*net.TCPAddr)
	wantPeer := netip.AddrPortFrom(addrB, uint16(peerAddr.Port))
	if m.Listener != lid || m.Local != lap || m.Peer != wantPeer {
		t.Fatalf("accept record = %+v; want listener %d local %v peer %v", m, lid, lap, wantPeer)
	}
	if got, errno := n.e.Getpeername(m.Sock); errno != 0 || got != wantPeer {
		t.Fatalf("Getpeername(child) = %v %v", got, errno)
	}
	if b, errno := n.e.Getsockopt(m.Sock, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 4); errno != 0 || instest.LeU32(b) != 0 {
		t.Fatalf("child SO_ACCEPTCONN = %v %v", b, errno)
	}
	b, errno := n.e.Getsockopt(m.Sock, unix.IPPROTO_TCP, unix.TCP_INFO, 512)
	if errno != 0 || len(b) != unix.SizeofTCPInfo || b[0] != 1 /* TCP_ESTABLISHED */ {
		t.Fatalf("TCP_INFO: len %d state %v errno %v", len(b), b[:1], errno)
	}
	// Bytes both ways, then the peer's FIN and the app's last close.
	pc.Write([]byte("GET /"))
	buf := make([]byte, 16)
	k, _ := unix.Read(m.FD, buf)
	if string(buf[:k]) != "GET /" {
		t.Fatalf("app read %q", buf[:k])
	}
	instest.WriteAll(m.FD, []byte("200 OK"))
	pc.CloseWrite()
	if rest, err := instest.ReadAll(m.FD); err != nil || len(rest) != 0 {
		t.Fatalf("app after peer FIN: %q %v", rest, err)
	}
	unix.Close(m.FD)
	m.FD = -1
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(pc)
	if err != nil || string(got) != "200 OK" {
		t.Fatalf("peer read %q %v", got, err)
	}
	if st := n.e.Stats(); st.Accepted != 1 || st.Listening != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The app's last listener fd closes: the listener stops.
	n.e.Close(lid)
	unix.Close(lfd)
	engWait(t, func() bool { _, e := n.e.Getsockname(lid); return e == unix.EBADF })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if c, err := gonet.DialContextTCP(ctx, n.b, full(lap), ipv4.ProtocolNumber); err == nil {
		c.Close()
		t.Fatal("dial succeeded after the listener closed")
	}
}

// TestListenerBackpressure checks that connections are taken from the
// netstack only as fast as the app accepts them.
func TestListenerBackpressure(t *testing.T) {
	n := newTestNet(t)
	lap := netip.AddrPortFrom(addrA, 81)
	_, lfd := instest.Listen(t, n.e, lap, 4)
	const conns = 24
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := gonet.DialContextTCP(ctx, n.b, full(lap), ipv4.ProtocolNumber)
			if err != nil {
				errs <- err
				return
			}
			c.Write([]byte{1}) // completes a handshake the listener dropped
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				errs <- err
			}
			c.Close()
		}()
	}
	time.Sleep(500 * time.Millisecond)
	// The seqpacket end's minimal send buffer holds a few messages, plus
	// one accepted connection waiting for room.
	t.Logf("accepted before any app accept: %d", n.e.Stats().Accepted)
	if got := n.e.Stats().Accepted; got > 8 || got == 0 {
		t.Fatalf("accepted %d connections with no app accept; want 1..8", got)
	}
	for i := 0; i < conns; i++ {
		m, err := instest.RecvAccept(t, lfd, 0)
		if err != nil {
			t.Fatalf("accept %d: %v", i, err)
		}
		var b [1]byte
		unix.Read(m.FD, b[:])
		unix.Write(m.FD, b[:])
		unix.Close(m.FD)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("client: %v", err)
	}
}

func TestManyConnections(t *testing.T) {
	n := newTestNet(t)
	srv := netip.AddrPortFrom(addrB, 7)
	echoServer(t, n.b, srv)
	const conns = 1000
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	sem := make(chan struct{}, 200)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				errs <- err
				return
			}
			app := fds[0]
			defer unix.Close(app)
			if errno := n.e.Connect(id, srv, osFile(fds[1]), false); errno != 0 {
				errs <- errno
				return
			}
			msg := make([]byte, 4096)
			for j := range msg {
				msg[j] = byte(i + j)
			}
			if err := instest.WriteAll(app, msg); err != nil {
				errs <- err
				return
			}
			shutdownVia(n.e, id, app, unix.SHUT_WR)
			got, err := instest.ReadAll(app)
			if err != nil || string(got) != string(msg) {
				errs <- err
				return
			}
			n.e.Close(id)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("connection: %v", err)
	}
	engWait(t, func() bool { return n.e.Stats().Sockets == 0 })
}

// listen(fd, 0) takes a connection, as on Linux (whose accept queue holds
// one more than the backlog); a netstack queue of capacity 0 took none.
func TestListenBacklogZero(t *testing.T) {
	n := newTestNet(t)
	lap := netip.AddrPortFrom(addrA, 82)
	_, lfd := instest.Listen(t, n.e, lap, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, n.b, full(lap), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial a listener with backlog 0: %v", err)
	}
	defer c.Close()
	m, err := instest.RecvAccept(t, lfd, 0)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	unix.Close(m.FD)
}

// An accepted socket starts with the options set on its listener, as
// Linux's clone of the listener does, except TCP_DEFER_ACCEPT.
func TestAcceptedInheritsOptions(t *testing.T) {
	n := newTestNet(t)
	lap := netip.AddrPortFrom(addrA, 83)
	lid, lfd := instest.Listen(t, n.e, lap, 4)
	for _, o := range []struct{ level, name, val int }{
		{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 120001},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 77},
		{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 5},
	} {
		if errno := n.e.Setsockopt(lid, o.level, o.name, binary.NativeEndian.AppendUint32(nil, uint32(o.val))); errno != 0 {
			t.Fatalf("setsockopt %d on the listener: %v", o.name, errno)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, n.b, full(lap), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	m, err := instest.RecvAccept(t, lfd, 0)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	defer unix.Close(m.FD)
	for _, want := range []struct{ name, val int }{
		{unix.TCP_USER_TIMEOUT, 120001}, {unix.TCP_KEEPIDLE, 77}, {unix.TCP_DEFER_ACCEPT, 0},
	} {
		b, errno := n.e.Getsockopt(m.Sock, unix.IPPROTO_TCP, want.name, 4)
		if errno != 0 || int(instest.LeU32(b)) != want.val {
			t.Errorf("accepted socket: option %d = %v %v, want %d", want.name, b, errno, want.val)
		}
	}
}
