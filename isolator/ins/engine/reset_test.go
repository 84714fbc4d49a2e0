package engine_test

import (
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// An app that closes its stream with bytes unread, or with SO_LINGER
// {1, 0}, resets the connection as on Linux; a plain close ends it with a
// FIN.
func TestAppCloseResets(t *testing.T) {
	for _, tc := range []struct {
		name      string
		unread    bool // the peer sends first and the app does not read
		lingerOff bool // SO_LINGER {1, 0}
		wantReset bool
	}{
		{"close with unread bytes", true, false, true},
		{"close with SO_LINGER zero", false, true, true},
		{"plain close", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newTestNet(t)
			srv := netip.AddrPortFrom(addrB, 7)
			l, err := gonet.ListenTCP(n.b, full(srv), ipv4.ProtocolNumber)
			if err != nil {
				t.Fatalf("ListenTCP: %v", err)
			}
			t.Cleanup(func() { l.Close() })
			peerErr := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					peerErr <- err
					return
				}
				defer c.Close()
				if tc.unread {
					c.Write([]byte("unread"))
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err = io.ReadAll(c)
				peerErr <- err
			}()
			id, app := instest.Dial(t, n.e, srv)
			if tc.lingerOff {
				if errno := n.e.Setsockopt(id, unix.SOL_SOCKET, unix.SO_LINGER, append(i32(1), i32(0)...)); errno != 0 {
					t.Fatalf("SO_LINGER: %v", errno)
				}
			}
			if tc.unread {
				pfd := []unix.PollFd{{Fd: int32(app), Events: unix.POLLIN}}
				if _, err := unix.Poll(pfd, 5000); err != nil || pfd[0].Revents&unix.POLLIN == 0 {
					t.Fatalf("poll: revents %#x, %v; want the peer's bytes", pfd[0].Revents, err)
				}
			}
			unix.Close(app)
			err = <-peerErr
			var ne interface{ Timeout() bool }
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatalf("the peer saw neither FIN nor RST: %v", err)
			case tc.wantReset && err == nil:
				t.Fatal("the peer read EOF (FIN), want a reset")
			case !tc.wantReset && err != nil:
				t.Fatalf("the peer's read: %v, want EOF", err)
			}
		})
	}
}
