package engine_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// greeter accepts connections on ap, reads one line's worth of bytes,
// answers "bye" and closes first (an HTTP server closing after its reply).
func greeter(t testing.TB, s *stack.Stack, ap netip.AddrPort) {
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
				buf := make([]byte, 64)
				c.Read(buf)
				c.Write([]byte("bye"))
				c.Close()
			}()
		}
	}()
}

// A stream's record goes when the app's last descriptor does, whichever
// side ends the connection first; only a stream both of whose directions
// were shut while the app still held its descriptor needs the app's Close
// (which the shim sends when it closes such a stream).
func TestStreamRecordRelease(t *testing.T) {
	for _, tc := range []struct {
		name string
		// run drives the app side of a connected stream and closes its
		// descriptor; it reports whether the engine must have been told
		// with Close.
		run func(t *testing.T, e *engine.Engine, id engine.SockID, app int) (needsClose bool)
		srv func(testing.TB, *stack.Stack, netip.AddrPort)
	}{
		{"app closes first", func(t *testing.T, e *engine.Engine, id engine.SockID, app int) bool {
			instest.WriteAll(app, []byte("hello"))
			unix.Close(app)
			return false
		}, echoServer},
		{"peer closes first", func(t *testing.T, e *engine.Engine, id engine.SockID, app int) bool {
			instest.WriteAll(app, []byte("hello"))
			if got, err := instest.ReadAll(app); err != nil || string(got) != "bye" {
				t.Fatalf("read %q, %v; want bye then EOF", got, err)
			}
			// The peer's FIN is delivered as our end's write shutdown:
			// the record must survive it while the app holds the fd.
			if _, errno := e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_TYPE, 4); errno != 0 {
				t.Fatalf("SO_TYPE after the peer's FIN: %v", errno)
			}
			unix.Close(app)
			return false
		}, greeter},
		{"app half-closes, then the peer", func(t *testing.T, e *engine.Engine, id engine.SockID, app int) bool {
			instest.WriteAll(app, []byte("hello"))
			if errno := shutdownVia(e, id, app, unix.SHUT_WR); errno != 0 {
				t.Fatalf("shutdown: %v", errno)
			}
			if got, err := instest.ReadAll(app); err != nil || string(got) != "hello" {
				t.Fatalf("read %q, %v; want the echo then EOF", got, err)
			}
			// Both directions are over: the app's end hangs up while
			// the app still holds it, and the record stays for its
			// calls (SO_ERROR, getsockname) until it closes.
			pfd := []unix.PollFd{{Fd: int32(app)}}
			if _, err := unix.Poll(pfd, 5000); err != nil || pfd[0].Revents&unix.POLLHUP == 0 {
				t.Fatalf("poll: revents %#x, %v; want POLLHUP", pfd[0].Revents, err)
			}
			time.Sleep(100 * time.Millisecond)
			if _, errno := e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_TYPE, 4); errno != 0 {
				t.Fatalf("SO_TYPE after both FINs: %v", errno)
			}
			unix.Close(app)
			return true
		}, echoServer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newTestNet(t)
			released := make(chan engine.SockID, 4)
			e := engine.New(n.a, nil, engine.Options{Released: func(id engine.SockID) { released <- id }})
			t.Cleanup(e.Stop)
			srv := netip.AddrPortFrom(addrB, 7)
			tc.srv(t, n.b, srv)
			id, app := instest.Dial(t, e, srv)
			if tc.run(t, e, id, app) {
				time.Sleep(100 * time.Millisecond)
				if got := e.Stats().Sockets; got != 1 {
					t.Fatalf("%d records before Close, want 1 (the kernel cannot tell this close)", got)
				}
				e.Close(id)
			}
			engWait(t, func() bool { return e.Stats().Sockets == 0 })
			// Whoever holds state per socket (the INS server: its
			// socket group) hears of the release once.
			select {
			case got := <-released:
				if got != id {
					t.Fatalf("Released(%v), want %v", got, id)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Released was not called")
			}
			select {
			case got := <-released:
				t.Fatalf("Released(%v) called again", got)
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}
