package gateway

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/split/seal"
)

// freeUDP returns a loopback UDP address nobody uses at the moment.
func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// startPair runs gateways A and B over one loopback path: A carries the
// connections handed over on its hand-off socket to split (its shim
// prefix) through B, which lets A reach expose.
func startPair(t *testing.T, split, expose string) (a, b *Gateway, handoff string) {
	t.Helper()
	ka, _ := seal.GenerateKeyPair()
	kb, _ := seal.GenerateKeyPair()
	ua, ub := freeUDP(t), freeUDP(t)
	ca := splitConfig(t, ka, kb.Public)
	ca.Peers[0].Paths = []config.PeerPath{{Local: ua, Endpoint: ub}}
	ca.Expose = nil
	ca.Routes = []config.SplitRoute{{Dst: split, Peer: "b"}}
	ca.Handoff = filepath.Join(t.TempDir(), "h.sock")
	cb := splitConfig(t, kb, ka.Public)
	cb.Peers[0].Name = "a"
	cb.Peers[0].Paths = []config.PeerPath{{Local: ub, Endpoint: ua}}
	cb.Expose = []config.Expose{{Peer: "a", Dst: expose}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for _, c := range []config.Split{ca, cb} {
		g, err := New(c, nil)
		if err != nil {
			t.Fatal(err)
		}
		if a == nil {
			a = g
		} else {
			b = g
		}
		go func() { g.Run(ctx); done <- struct{}{} }()
	}
	t.Cleanup(func() { cancel(); <-done; <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st := a.Status(); len(st) == 1 && st[0].Up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session: %+v", a.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return a, b, ca.Handoff
}

// appSocket is an app's socket as the shim makes it: a stream socketpair,
// end A the app's, end B what an INS (here the gateway) serves, with
// filler bytes written into A as before a nonblocking connect.
func appSocket(t *testing.T, filler int) (app *os.File, end *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	app, end = os.NewFile(uintptr(fds[0]), "app"), os.NewFile(uintptr(fds[1]), "end")
	if _, err := app.Write(bytes.Repeat([]byte{0xff}, filler)); err != nil {
		t.Fatal(err)
	}
	return app, end
}

// TestHandoff hands app sockets to gateway A: one to an echo server that
// B exposes (the filler is discarded, bytes flow both ways and are counted
// in both gateways' stream lists, which forget the stream when it ends),
// one to a destination B does not expose (ECONNREFUSED), one outside A's
// prefix (ENETUNREACH); a malformed hand-off is dropped and the gateway
// goes on serving.
func TestHandoff(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	dst := netip.MustParseAddrPort(echo.Addr().String())
	a, b, handoff := startPair(t, "127.0.0.0/8", dst.Addr().String()+"/32")
	ctx := context.Background()

	// Garbage first: no descriptor.
	if c, err := net.Dial("unixpacket", handoff); err == nil {
		c.Write([]byte(`{"dst":"127.0.0.1:1"}`))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 64)); err == nil {
			t.Fatalf("a hand-off without a descriptor was answered (%d bytes)", n)
		}
		c.Close()
	}

	app, end := appSocket(t, 7)
	defer app.Close()
	connected := false
	errno, over := Handoff(ctx, handoff, dst, 7, end, func() { connected = true })
	if errno != 0 || !connected || over == nil {
		t.Fatalf("handoff: errno %v, connected %v", errno, connected)
	}
	msg := []byte("through the split tunnel")
	if _, err := app.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(app, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, %v; want %q (the filler must not reach the destination)", got, err, msg)
	}
	// The counts follow the bytes (a count is added once its write
	// returned, which may be after the reader has the bytes).
	check := func(g *Gateway, dir string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			st := g.Status()
			if len(st) != 1 || len(st[0].Carried) != 1 {
				t.Fatalf("%s: carried streams %+v", dir, st)
			}
			s := st[0].Carried[0]
			if s.Dir != dir || s.Dst != dst {
				t.Fatalf("%s: stream %+v, want one to %v", dir, s, dst)
			}
			if s.Sent == uint64(len(msg)) && s.Received == uint64(len(msg)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: stream %+v, want %d bytes each way", dir, s, len(msg))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	check(a, DirOut)
	check(b, DirIn)
	// The app closes; the echo server closes back; the stream is over.
	unix.Shutdown(int(app.Fd()), unix.SHUT_WR)
	if _, err := io.ReadAll(app); err != nil {
		t.Fatal(err)
	}
	select {
	case <-over:
	case <-time.After(10 * time.Second):
		t.Fatal("the hand-off connection stayed open after the stream ended")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(a.Status()[0].Carried)+len(b.Status()[0].Carried) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("streams still listed: %+v %+v", a.Status()[0].Carried, b.Status()[0].Carried)
		}
		time.Sleep(20 * time.Millisecond)
	}

	for _, c := range []struct {
		dst  string
		want unix.Errno
	}{
		{"127.0.0.2:80", unix.ECONNREFUSED}, // in A's prefix, not exposed by B
		{"10.1.2.3:80", unix.ENETUNREACH},   // outside A's prefix
	} {
		app, end := appSocket(t, 0)
		errno, over := Handoff(ctx, handoff, netip.MustParseAddrPort(c.dst), 0, end, func() { t.Errorf("%s: connected", c.dst) })
		if errno != c.want || over != nil {
			t.Errorf("%s: errno %v, want %v", c.dst, errno, c.want)
		}
		// The gateway let go of the stream end: the app sees the hang-up.
		app.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := app.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("%s: app end read %d, %v; want EOF", c.dst, n, err)
		}
		app.Close()
	}
}
