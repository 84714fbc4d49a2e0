package engine_test

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// shutdownVia does what the shim does for shutdown(2) on a stream: the
// engine first, then, on success, only the write half on the app's end.
func shutdownVia(e *engine.Engine, id engine.SockID, app, how int) unix.Errno {
	errno := e.Shutdown(id, how)
	if errno == 0 && how != unix.SHUT_RD {
		unix.Shutdown(app, unix.SHUT_WR)
	}
	return errno
}

// After our FIN and the peer's FIN the connection is over (Linux: TCP_CLOSE,
// the TIME_WAIT is a mini-socket): shutdown fails with ENOTCONN, as the
// kernel's does on the same sequence.
func TestShutdownAfterBothFINs(t *testing.T) {
	n := newTestNet(t)
	srv := netip.AddrPortFrom(addrB, 7)
	echoServer(t, n.b, srv)
	id, app := instest.Dial(t, n.e, srv)
	if err := instest.WriteAll(app, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if errno := shutdownVia(n.e, id, app, unix.SHUT_WR); errno != 0 {
		t.Fatalf("Shutdown(SHUT_WR) while connected = %v, want 0", errno)
	}
	got, err := instest.ReadAll(app)
	if err != nil || string(got) != "abc" {
		t.Fatalf("read back %q, %v; want abc then EOF", got, err)
	}
	engWait(t, func() bool { return n.e.Shutdown(id, unix.SHUT_RD) == unix.ENOTCONN })

	want := kernelShutdownAfterBothFINs(t)
	if got := n.e.Shutdown(id, unix.SHUT_RD); got != want {
		t.Fatalf("Shutdown(SHUT_RD) after both FINs = %v, kernel %v", got, want)
	}
}

// kernelShutdownAfterBothFINs runs the same sequence on kernel loopback
// sockets and returns shutdown(SHUT_RD)'s errno.
func kernelShutdownAfterBothFINs(t *testing.T) unix.Errno {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no kernel loopback: %v", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	}()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	port := l.Addr().(*net.TCPAddr).Port
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	instest.WriteAll(fd, []byte("abc"))
	unix.Shutdown(fd, unix.SHUT_WR)
	if got, err := instest.ReadAll(fd); err != nil || string(got) != "abc" {
		t.Fatalf("kernel read back %q, %v", got, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Shutdown(fd, unix.SHUT_RD)
		if err != nil || time.Now().After(deadline) {
			errno, _ := err.(unix.Errno)
			return errno
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The peer closing first leaves our side in CLOSE_WAIT: shutdown still
// succeeds; once our FIN is acknowledged (LAST_ACK -> CLOSE) it fails with
// ENOTCONN.
func TestShutdownPeerClosedFirst(t *testing.T) {
	n := newTestNet(t)
	srv := netip.AddrPortFrom(addrB, 9)
	l, err := gonet.ListenTCP(n.b, full(srv), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("bye"))
		c.Close()
	}()
	id, app := instest.Dial(t, n.e, srv)
	if got, err := instest.ReadAll(app); err != nil || string(got) != "bye" {
		t.Fatalf("read %q, %v; want bye then EOF", got, err)
	}
	if errno := shutdownVia(n.e, id, app, unix.SHUT_RD); errno != 0 {
		t.Fatalf("Shutdown(SHUT_RD) in CLOSE_WAIT = %v, want 0", errno)
	}
	if errno := shutdownVia(n.e, id, app, unix.SHUT_WR); errno != 0 {
		t.Fatalf("Shutdown(SHUT_WR) in CLOSE_WAIT = %v, want 0", errno)
	}
	engWait(t, func() bool { return n.e.Shutdown(id, unix.SHUT_RDWR) == unix.ENOTCONN })
}

// An IPv4-mapped destination on an IPV6_V6ONLY stream or datagram socket is
// ENETUNREACH before any route lookup, as on the kernel.
func TestConnectMappedOnV6Only(t *testing.T) {
	n := newTestNet(t)
	dst := netip.AddrPortFrom(netip.AddrFrom16(addrB.As16()), 7)
	for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_DGRAM} {
		want := kernelConnectMappedOnV6Only(t, typ)
		id := instest.MustSocket(t, n.e, unix.AF_INET6, typ)
		if errno := n.e.Setsockopt(id, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, i32(1)); errno != 0 {
			t.Fatalf("set IPV6_V6ONLY: %v", errno)
		}
		var got unix.Errno
		if typ == unix.SOCK_STREAM {
			_, ins := instest.Socketpair(t, unix.SOCK_STREAM)
			got = n.e.Connect(id, dst, ins, false)
		} else {
			got = n.e.Connect(id, dst, nil, false)
		}
		if got != want {
			t.Errorf("type %d: Connect(v4-mapped) on V6ONLY = %v, kernel %v", typ, got, want)
		}
	}
}

// kernelConnectMappedOnV6Only connects a kernel IPV6_V6ONLY socket of type
// typ to a v4-mapped loopback address and returns the errno.
func kernelConnectMappedOnV6Only(t *testing.T, typ int) unix.Errno {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no kernel IPv6: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
		t.Fatal(err)
	}
	sa := &unix.SockaddrInet6{Port: 7}
	copy(sa.Addr[:], netip.MustParseAddr("::ffff:127.0.0.1").AsSlice())
	errno, _ := unix.Connect(fd, sa).(unix.Errno)
	return errno
}
