package engine_test

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"testing"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

// TestIdleConnectionMemory opens many idle connections through the engine
// and reports the Go memory they cost. The peer side (stack B and its gonet
// connections) is estimated from plain netstack connections and subtracted (it is half of a plain netstack connection pair), leaving the INS side: netstack endpoint, engine record and
// pump. MPSHIM_IDLE_CONNS sets the count (default 9000: the test holds both
// socketpair ends, and the descriptor limit here is 20000).
func TestIdleConnectionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	conns := 9000
	if v, err := strconv.Atoi(os.Getenv("MPSHIM_IDLE_CONNS")); err == nil && v > 0 {
		conns = v
	}
	n := newTestNet(t)
	srv := netip.AddrPortFrom(addrB, 7000)
	l, err := gonet.ListenTCP(n.b, full(srv), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peers := make(chan net.Conn, 2*conns)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			peers <- c
		}
	}()

	// Peer baseline: plain netstack connections from A to B (no engine)
	// cost a symmetric pair of endpoints with gonet wrappers; half of that
	// is the peer side of an engine connection.
	base := heapInUse()
	const probe = 1000
	var probeConns []net.Conn
	for i := 0; i < probe; i++ {
		c, err := gonet.DialTCP(n.a, full(srv), ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		probeConns = append(probeConns, c, <-peers)
	}
	peerCost := float64(heapInUse()-base) / float64(2*probe)
	for _, c := range probeConns {
		c.Close()
	}
	probeConns = nil

	before := heapInUse()
	fds := make([]int, 0, conns)
	for i := 0; i < conns; i++ {
		id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("socketpair %d: %v", i, err)
		}
		if errno := n.e.Connect(id, srv, osFile(pair[1]), false); errno != 0 {
			t.Fatalf("connect %d: %v", i, errno)
		}
		fds = append(fds, pair[0])
	}
	held := make([]net.Conn, 0, conns)
	for len(held) < conns {
		held = append(held, <-peers)
	}
	after := heapInUse()
	total := float64(after-before) / float64(conns)
	ins := total - peerCost
	t.Logf("%d idle connections: %.0f B/conn total Go heap+stacks, peer side %.0f B, INS side %.0f B (%.1f KiB)",
		conns, total, peerCost, ins, ins/1024)
	if st := n.e.Stats(); st.Connected != conns {
		t.Fatalf("engine.Stats.Connected = %d, want %d", st.Connected, conns)
	}
	if ins > 25*1024 {
		t.Errorf("INS side uses %.0f B per idle connection, budget 25 KiB", ins)
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	for _, c := range held {
		c.Close()
	}
	engWait(t, func() bool { return n.e.Stats().Connected == 0 })
}
