package engine_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

var (
	addrA  = netip.MustParseAddr("10.0.0.1")
	addrB  = netip.MustParseAddr("10.0.0.2")
	addrA6 = netip.MustParseAddr("fd00::1")
	addrB6 = netip.MustParseAddr("fd00::2")
)

func newStack(t testing.TB, link stack.LinkEndpoint, v4, v6 netip.Addr) *stack.Stack {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := s.CreateNIC(1, link); err != nil {
		t.Fatalf("CreateNIC: %v", err)
	}
	for _, a := range []netip.Addr{v4, v6} {
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
			t.Fatalf("AddProtocolAddress: %v", err)
		}
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}, {Destination: header.IPv6EmptySubnet, NIC: 1}})
	t.Cleanup(func() { s.Close() })
	return s
}

// testNet is an engine on stack A wired by a pipe link to a plain stack B.
type testNet struct {
	a, b *stack.Stack
	e    *engine.Engine
}

func newTestNet(t testing.TB) *testNet {
	la, lb := pipe.New("\x02\x00\x00\x00\x00\x01", "\x02\x00\x00\x00\x00\x02", 1500)
	n := &testNet{a: newStack(t, la, addrA, addrA6), b: newStack(t, lb, addrB, addrB6)}
	n.e = engine.New(n.a, nil, engine.Options{})
	t.Cleanup(n.e.Stop)
	return n
}

func full(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}
}

// echoServer accepts on B and echoes each connection until EOF, then closes
// the write side.
func echoServer(t testing.TB, s *stack.Stack, ap netip.AddrPort) {
	l, err := gonet.ListenTCP(s, full(ap), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.(*gonet.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
}

func TestStreamEchoHalfClose(t *testing.T) {
	n := newTestNet(t)
	srv := netip.AddrPortFrom(addrB, 7)
	echoServer(t, n.b, srv)
	id, app := instest.Dial(t, n.e, srv)

	if got, errno := n.e.Getpeername(id); errno != 0 || got != srv {
		t.Fatalf("Getpeername = %v, %v; want %v", got, errno, srv)
	}
	if got, errno := n.e.Getsockname(id); errno != 0 || got.Addr() != addrA || got.Port() == 0 {
		t.Fatalf("Getsockname = %v, %v", got, errno)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		err := instest.WriteAll(app, data)
		// Half-close app -> net: the echo server sees EOF, finishes,
		// and half-closes net -> app, which we must read as EOF.
		if err == nil {
			if errno := shutdownVia(n.e, id, app, unix.SHUT_WR); errno != 0 {
				err = errno
			}
		}
		werr <- err
	}()
	got, err := instest.ReadAll(app)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo differs: got %d bytes, want %d", len(got), len(data))
	}
	st := n.e.Stats()
	if st.BytesToNet != 1<<20 || st.BytesFromNet != 1<<20 {
		t.Fatalf("stats bytes = %d/%d, want %d", st.BytesToNet, st.BytesFromNet, 1<<20)
	}
	// Both FINs exchanged: the socket is closed like Linux's, and the INS
	// end is gone (the app's fd sees hang-up).
	engWait(t, func() bool { _, e := n.e.Getpeername(id); return e == unix.ENOTCONN })
	pfd := []unix.PollFd{{Fd: int32(app), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, 5000); err != nil || pfd[0].Revents&unix.POLLHUP == 0 {
		t.Fatalf("poll after close: revents %#x, %v", pfd[0].Revents, err)
	}
	n.e.Close(id)
	if _, errno := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_TYPE, 4); errno != unix.EBADF {
		t.Fatalf("after Close: errno %v, want EBADF", errno)
	}
}

func engWait(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPeerHalfCloseThenAppWrites checks net -> app EOF while app -> net stays
// open, then that the app's last close sends FIN.
func TestPeerHalfCloseThenAppWrites(t *testing.T) {
	n := newTestNet(t)
	srv := netip.AddrPortFrom(addrB, 8)
	l, err := gonet.ListenTCP(n.b, full(srv), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer := make(chan *gonet.TCPConn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			peer <- c.(*gonet.TCPConn)
		}
	}()
	_, app := instest.Dial(t, n.e, srv)
	pc := <-peer
	pc.Write([]byte("hello"))
	pc.CloseWrite()
	got, err := instest.ReadAll(app)
	if err != nil || string(got) != "hello" {
		t.Fatalf("app read %q, %v; want hello then EOF", got, err)
	}
	if err := instest.WriteAll(app, []byte("still here")); err != nil {
		t.Fatalf("write after peer FIN: %v", err)
	}
	unix.Close(app) // last fd: graceful end, the peer reads data then EOF
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(pc)
	if err != nil || string(b) != "still here" {
		t.Fatalf("peer read %q, %v; want data then EOF", b, err)
	}
	pc.Close()
}

func TestPeerReset(t *testing.T) {
	n := newTestNet(t)
	srv := netip.AddrPortFrom(addrB, 9)
	l, err := gonet.ListenTCP(n.b, full(srv), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer := make(chan *gonet.TCPConn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			peer <- c.(*gonet.TCPConn)
		}
	}()
	id, app := instest.Dial(t, n.e, srv)
	pc := <-peer
	instest.WriteAll(app, []byte("unread data makes close send RST"))
	engWait(t, func() bool {
		var ti tcpip.TCPInfoOption
		_ = ti
		return n.e.Stats().BytesToNet > 0
	})
	time.Sleep(50 * time.Millisecond)
	pc.Close() // unread data: RST
	if _, err := instest.ReadAll(app); err != nil && err != unix.ECONNRESET {
		t.Fatalf("app read after reset: %v", err)
	}
	engWait(t, func() bool { return n.e.StreamDone(id) })
	b, errno := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4)
	if errno != 0 || len(b) != 4 || unix.Errno(int32(instest.LeU32(b))) != unix.ECONNRESET {
		t.Fatalf("SO_ERROR = %v, %v; want ECONNRESET", b, errno)
	}
	b, _ = n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4)
	if instest.LeU32(b) != 0 {
		t.Fatalf("second SO_ERROR = %d, want 0 (reported once)", instest.LeU32(b))
	}
	if err := instest.WriteAll(app, []byte("x")); err != unix.EPIPE {
		t.Fatalf("write after reset: %v, want EPIPE", err)
	}
}

func fillUntilEAGAIN(t testing.TB, fd int) int {
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	total := 0
	for {
		n, err := unix.Write(fd, buf)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatalf("fill: %v", err)
		}
		total += n
	}
	unix.SetNonblock(fd, false)
	return total
}

func TestNonblockingConnect(t *testing.T) {
	n := newTestNet(t)
	srv := netip.AddrPortFrom(addrB, 10)
	l, err := gonet.ListenTCP(n.b, full(srv), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan *gonet.TCPConn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c.(*gonet.TCPConn)
		}
	}()

	t.Run("success", func(t *testing.T) {
		id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
		app, ins := instest.Socketpair(t, unix.SOCK_STREAM)
		if fillUntilEAGAIN(t, app) == 0 {
			t.Fatal("filler wrote nothing")
		}
		pfd := []unix.PollFd{{Fd: int32(app), Events: unix.POLLOUT | unix.POLLIN}}
		if k, _ := unix.Poll(pfd, 0); k != 0 {
			t.Fatalf("filled fd is ready: %#x", pfd[0].Revents)
		}
		if errno := n.e.Connect(id, srv, ins, true); errno != unix.EINPROGRESS {
			t.Fatalf("Connect = %v, want EINPROGRESS", errno)
		}
		// As on Linux, the first connect after the handshake reports
		// its success; the ones after it EISCONN.
		errno := n.e.Connect(id, srv, nil, true)
		if errno != unix.EALREADY && errno != 0 {
			t.Fatalf("second Connect = %v, want EALREADY or 0", errno)
		}
		reported := errno == 0
		pfd[0].Events = unix.POLLOUT
		if k, err := unix.Poll(pfd, 10000); k != 1 || err != nil || pfd[0].Revents != unix.POLLOUT {
			t.Fatalf("poll: %d %v revents %#x, want POLLOUT only", k, err, pfd[0].Revents)
		}
		if b, errno := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4); errno != 0 || instest.LeU32(b) != 0 {
			t.Fatalf("SO_ERROR = %v %v", b, errno)
		}
		if !reported {
			if errno := n.e.Connect(id, srv, nil, true); errno != 0 {
				t.Fatalf("first Connect after success = %v, want 0", errno)
			}
		}
		if errno := n.e.Connect(id, srv, nil, true); errno != unix.EISCONN {
			t.Fatalf("Connect after success reported = %v, want EISCONN", errno)
		}
		// None of the filler reaches the peer.
		instest.WriteAll(app, []byte("payload"))
		shutdownVia(n.e, id, app, unix.SHUT_WR)
		pc := <-accepted
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(pc)
		if err != nil || string(b) != "payload" {
			t.Fatalf("peer got %q, %v", b, err)
		}
		pc.Close()
	})

	t.Run("refused", func(t *testing.T) {
		id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
		app, ins := instest.Socketpair(t, unix.SOCK_STREAM)
		fillUntilEAGAIN(t, app)
		if errno := n.e.Connect(id, netip.AddrPortFrom(addrB, 11), ins, true); errno != unix.EINPROGRESS {
			t.Fatalf("Connect = %v, want EINPROGRESS", errno)
		}
		pfd := []unix.PollFd{{Fd: int32(app), Events: unix.POLLOUT | unix.POLLIN}}
		if k, err := unix.Poll(pfd, 10000); k != 1 || err != nil || pfd[0].Revents&unix.POLLHUP == 0 {
			t.Fatalf("poll: %d %v revents %#x, want POLLHUP", k, err, pfd[0].Revents)
		}
		b, errno := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4)
		if errno != 0 || unix.Errno(instest.LeU32(b)) != unix.ECONNREFUSED {
			t.Fatalf("SO_ERROR = %v %v, want ECONNREFUSED", b, errno)
		}
		if b, _ := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4); instest.LeU32(b) != 0 {
			t.Fatalf("SO_ERROR reported twice")
		}
		// The filler is taken before the INS end closes: the app
		// reads EOF, not ECONNRESET, as on Linux once SO_ERROR is read.
		var c [1]byte
		if k, err := unix.Read(app, c[:]); k != 0 || err != nil {
			t.Fatalf("read after refusal = %d, %v; want EOF", k, err)
		}
		if errno := n.e.Connect(id, netip.AddrPortFrom(addrB, 11), nil, true); errno != unix.ECONNABORTED {
			t.Fatalf("Connect after refusal = %v, want ECONNABORTED", errno)
		}
		if _, errno := n.e.Getpeername(id); errno != unix.ENOTCONN {
			t.Fatalf("Getpeername after refusal = %v", errno)
		}
	})

	t.Run("blocking refused", func(t *testing.T) {
		id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
		_, ins := instest.Socketpair(t, unix.SOCK_STREAM)
		if errno := n.e.Connect(id, netip.AddrPortFrom(addrB, 12), ins, false); errno != unix.ECONNREFUSED {
			t.Fatalf("Connect = %v, want ECONNREFUSED", errno)
		}
		if b, _ := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4); instest.LeU32(b) != 0 {
			t.Fatalf("blocking failure left a pending SO_ERROR %d", instest.LeU32(b))
		}
	})

	t.Run("in progress", func(t *testing.T) {
		// 10.0.0.3 is on the link but nobody answers: the SYN stays
		// unanswered and the connect stays in progress.
		id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
		app, ins := instest.Socketpair(t, unix.SOCK_STREAM)
		fillUntilEAGAIN(t, app)
		to := netip.MustParseAddrPort("10.0.0.3:80")
		if errno := n.e.Connect(id, to, ins, true); errno != unix.EINPROGRESS {
			t.Fatalf("Connect = %v", errno)
		}
		if errno := n.e.Connect(id, to, nil, true); errno != unix.EALREADY {
			t.Fatalf("second Connect = %v, want EALREADY", errno)
		}
		if st := n.e.Stats(); st.Connecting != 1 {
			t.Fatalf("engine.Stats.Connecting = %d", st.Connecting)
		}
		// The app closing its fd aborts the attempt and frees the record
		// once Close arrives.
		n.e.Close(id)
		unix.Close(app)
		engWait(t, func() bool { _, e := n.e.Getsockname(id); return e == unix.EBADF })
	})

	for _, how := range []int{unix.SHUT_RD, unix.SHUT_WR, unix.SHUT_RDWR} {
		t.Run(fmt.Sprintf("shutdown %d while connecting", how), func(t *testing.T) {
			// Linux disconnects a socket in SYN-SENT on shutdown: by
			// the time shutdown returns the app's fd polls
			// POLLHUP|POLLERR (events 0) and SO_ERROR is ECONNRESET.
			id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
			app, ins := instest.Socketpair(t, unix.SOCK_STREAM)
			fillUntilEAGAIN(t, app)
			to := netip.MustParseAddrPort("10.0.0.3:80")
			if errno := n.e.Connect(id, to, ins, true); errno != unix.EINPROGRESS {
				t.Fatalf("Connect = %v", errno)
			}
			if errno := n.e.Shutdown(id, how); errno != 0 {
				t.Fatalf("Shutdown = %v", errno)
			}
			pfd := []unix.PollFd{{Fd: int32(app)}}
			if k, err := unix.Poll(pfd, 0); k != 1 || err != nil || pfd[0].Revents != unix.POLLHUP|unix.POLLERR {
				t.Fatalf("poll: %d %v revents %#x, want POLLHUP|POLLERR", k, err, pfd[0].Revents)
			}
			b, errno := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4)
			if errno != 0 || unix.Errno(instest.LeU32(b)) != unix.ECONNRESET {
				t.Fatalf("SO_ERROR = %v %v, want ECONNRESET", b, errno)
			}
			if st := n.e.Stats(); st.Connecting != 0 {
				t.Fatalf("engine.Stats.Connecting = %d after shutdown", st.Connecting)
			}
			n.e.Close(id)
			unix.Close(app)
		})
	}
}

func osFile(fd int) *os.File { return os.NewFile(uintptr(fd), "ins-end") }

func uintptrOf(m *unix.Msghdr) uintptr { return uintptr(unsafe.Pointer(m)) }
