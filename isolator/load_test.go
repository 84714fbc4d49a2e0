package isolator

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
	"github.com/mpshim/mpshim/isolator/ins/resolve"
	"github.com/mpshim/mpshim/msgproto"
)

// inProcINS runs an INS server (netstack, engine, control channel) in this
// process and returns the daemon's handle on it.
func inProcINS(t *testing.T, id int) *insProc {
	t.Helper()
	st, err := netstack.New(netstack.Config{ID: id, ProbeInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	mine, theirs, err := ctrl.Pair()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := ins.NewServer(id, st, resolve.Config{}, ctrl.New(theirs), slog.Default())
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ctx) }()
	p := &insProc{id: id, ch: ctrl.New(mine), done: make(chan struct{}), log: slog.Default().With("ins", id)}
	go p.readCtrl()
	t.Cleanup(func() {
		// A blocked recvmsg does not see its descriptor closed; a
		// shutdown ends both read loops.
		cancel()
		_ = unix.Shutdown(int(mine.Fd()), unix.SHUT_RDWR)
		<-served
		p.ch.Close()
	})
	return p
}

// TestPickByLiveSockets: Pick places new sockets on the INS with the
// fewest live sockets. Ten datagram sockets spread 5/5 over two INS; the
// app closes four of INS 1's (only INS 1 sees that, by the hang-up of its
// socketpair ends, and reports it); the next four sockets all go to INS 1,
// where placement by sockets ever placed would alternate.
func TestPickByLiveSockets(t *testing.T) {
	d := &Daemon{ins: map[int]*insProc{1: inProcINS(t, 1), 2: inProcINS(t, 2)}, log: slog.Default()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	apps := map[int][]*os.File{}
	place := func(n int) []int {
		t.Helper()
		var got []int
		for range n {
			b, err := d.Pick()
			if err != nil {
				t.Fatal(err)
			}
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			app, end := os.NewFile(uintptr(fds[0]), "app"), os.NewFile(uintptr(fds[1]), "ins")
			t.Cleanup(func() { app.Close() })
			reply, err := b.Call(ctx, 7, &msgproto.Socket{Domain: unix.AF_INET, SockType: unix.SOCK_DGRAM}, end)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := reply.(*msgproto.SocketReply); !ok {
				t.Fatalf("INS %d: socket reply %#v", b.ID(), reply)
			}
			apps[b.ID()] = append(apps[b.ID()], app)
			got = append(got, b.ID())
		}
		return got
	}
	count := func(ids []int, id int) int {
		n := 0
		for _, x := range ids {
			if x == id {
				n++
			}
		}
		return n
	}
	first := place(10)
	if count(first, 1) != 5 || count(first, 2) != 5 {
		t.Fatalf("10 sockets on two idle INS went %v, want 5 each", first)
	}
	for _, f := range apps[1][:4] {
		f.Close()
	}
	p1 := d.ins[1]
	deadline := time.Now().Add(3 * time.Second)
	for p1.liveSockets() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("INS 1 live sockets %d after 4 of its 5 were closed, want 1", p1.liveSockets())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := place(4); count(got, 1) != 4 {
		t.Fatalf("after INS 1 lost 4 sockets the next 4 went to %v, want all on INS 1", got)
	}
	if a, b := d.ins[1].liveSockets(), d.ins[2].liveSockets(); a != 5 || b != 5 {
		t.Fatalf("live sockets %d and %d, want 5 and 5", a, b)
	}
}
