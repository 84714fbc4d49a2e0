package netstack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/link"
	"github.com/mpshim/mpshim/isolator/ins/netns"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/netstack"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/test/topo"
)

// requireXDP skips when the kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)
// and fails under CI, whose kernel must have them.
func requireXDP(t *testing.T) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
		return
	}
	if errors.Is(err, unix.EAFNOSUPPORT) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kernel lacks AF_XDP (CONFIG_XDP_SOCKETS) and CI=true requires the xdp backend to be tested")
		}
		t.Skipf("kernel lacks AF_XDP sockets (CONFIG_XDP_SOCKETS): %v", err)
	}
	t.Fatalf("AF_XDP socket: %v", err)
}

// dstTap records the destination address of every IP packet a stack
// receives.
type dstTap struct {
	mu  sync.Mutex
	dst map[netip.Addr]int
}

func newDstTap() *dstTap { return &dstTap{dst: map[netip.Addr]int{}} }

func (d *dstTap) Packet(_ string, dir netflow.Direction, p *netflow.Packet) bool {
	if dir == netflow.In {
		d.mu.Lock()
		d.dst[p.Dst.Unmap()]++
		d.mu.Unlock()
	}
	return true
}

func (d *dstTap) count(a netip.Addr) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dst[a]
}

func (d *dstTap) others(mine netip.Addr) map[netip.Addr]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[netip.Addr]int{}
	for a, n := range d.dst {
		if a != mine && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			out[a] = n
		}
	}
	return out
}

// topoINS is one INS stack on uplink 0 of a test topology.
type topoINS struct {
	s    *netstack.Stack
	ns   *netns.NS
	addr netip.Addr
	tap  *dstTap
}

// startTopoINS prepares an INS namespace with a macvlan of tp's uplink 0
// and builds a stack on it with the given link options, address
// HostAddr4(n) and an echo server on port 7.
func startTopoINS(t *testing.T, tp *topo.Topology, id, n int, backend link.Backend, gso bool) *topoINS {
	t.Helper()
	up := tp.Uplinks[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nns, err := netns.Prepare(ctx, id, tp.GW.Name, []netns.HostUplink{{Parent: up.GWIf}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nns.Close(); err != nil {
			t.Error(err)
		}
	})
	ti := &topoINS{ns: nns, addr: up.HostAddr4(n), tap: newDstTap()}
	cfg := netstack.Config{ID: id, ProbeInterval: -1, GOMAXPROCS: netstack.GOMAXPROCSFor(1), Taps: []link.Tap{ti.tap}}
	cfg.Uplinks = []netstack.UplinkConfig{{
		Name: "u0", Interface: nns.Links[0].Name,
		Addr4: netip.PrefixFrom(ti.addr, up.Subnet4.Bits()), Gateway4: up.WANAddr4,
		RXChecksumOffload: nns.Links[0].VirtualParent, Weight: 1,
		Backend: backend, GSO: gso,
	}}
	if err := nns.Do(func() (err error) { ti.s, err = netstack.New(cfg); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ti.s.Close)
	ln, err := gonet.ListenTCP(ti.s.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go decoupledEchoServe(ln)
	return ti
}

// decoupledEchoServe echoes every connection of ln like instest.EchoServe, but
// reads on while its writes wait (up to 32 MiB queued). A plain io.Copy echo
// stops reading while a write blocks, so its receive window closes, and
// gVisor's TCP can then stall for good: it rounds the advertised window down
// to its scale, shrinking it below data the peer already sent, and drops the
// peer's ACKs that arrive beyond the zero window, so its own writes are
// never acknowledged (upstream gvisor issue 10312). These tests are about
// the link backends, so their echo keeps the window open.
func decoupledEchoServe(ln *gonet.TCPListener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		q := make(chan []byte, 1024)
		go func() {
			defer close(q)
			for {
				b := make([]byte, 32<<10)
				n, err := c.Read(b)
				if n > 0 {
					q <- b[:n]
				}
				if err != nil {
					return
				}
			}
		}()
		go func() {
			defer c.Close()
			for b := range q {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		}()
	}
}

// echoWAN dials addr:7 from tp's wan namespace, sends msg and requires it
// echoed byte-identical; on failure it shows the wan's view of the
// connection.
func echoWAN(t *testing.T, tp *topo.Topology, addr netip.Addr, msg []byte) {
	t.Helper()
	var c net.Conn
	if err := tp.WAN.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, 7).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %v from wan: %v", addr, err)
	}
	defer c.Close()
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		out, _ := tp.WAN.Run(context.Background(), "ss", "-tinm", "dst", addr.String())
		t.Logf("wan sockets:\n%s", out)
		t.Fatalf("echo of %d bytes via %v: %v (identical=%v)", len(msg), addr, err, bytes.Equal(got, msg))
	}
}

// pingWAN pings addr once from tp's wan namespace.
func pingWAN(t *testing.T, tp *topo.Topology, addr netip.Addr) {
	t.Helper()
	if out, err := tp.WAN.Run(context.Background(), "ping", "-n", "-c", "1", "-W", "3", addr.String()); err != nil {
		t.Errorf("ping %v from wan: %v\n%s", addr, err, out)
	}
}

// TestLinkBackends runs one INS per link variant on the test topology and
// checks, for each, a 4 MiB TCP echo with a wan client, ping from wan, and
// 4 MiB sent by the INS to a wan server; with GSO the netstack must hand
// the kernel fewer (larger) segments than there are frames on the wire, and
// with xdp the frames must have come through the AF_XDP socket.
func TestLinkBackends(t *testing.T) {
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	msg := make([]byte, 4<<20)
	if _, err := rand.Read(msg); err != nil {
		t.Fatal(err)
	}
	var srv net.Listener
	if err := tp.WAN.Do(func() (err error) { srv, err = net.Listen("tcp4", "0.0.0.0:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	received := make(chan int64, 1)
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, c)
			c.Close()
			received <- n
		}
	}()
	// On the wire every frame carries at most 1448 bytes of TCP payload.
	wireFrames := uint64(len(msg) / 1448)
	for i, tc := range []struct {
		name    string
		backend link.Backend
		gso     bool
	}{
		{"packet", link.BackendPacket, false},
		{"packet+gso", link.BackendPacket, true},
		{"xdp", link.BackendXDP, false},
		{"xdp+gso", link.BackendXDP, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.backend == link.BackendXDP {
				requireXDP(t)
			}
			ti := startTopoINS(t, tp, 10+i, i, tc.backend, tc.gso)
			pingWAN(t, tp, ti.addr)
			if up, err := ti.s.Link("u0").Carrier(); err != nil || !up {
				t.Errorf("carrier: %v %v, want up", up, err)
			}
			before := countersByName(ti.s)["u0"]
			echoWAN(t, tp, ti.addr, msg)
			echoed := countersByName(ti.s)["u0"]

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			remote := netip.AddrPortFrom(tp.Uplinks[0].WANAddr4, 9000)
			nic, local, err := ti.s.ChooseUplink(remote, 6)
			if err != nil {
				t.Fatal(err)
			}
			c, err := gonet.DialTCPWithBind(ctx, ti.s.Stack(), tcpip.FullAddress{NIC: nic, Addr: local},
				tcpip.FullAddress{Addr: instest.TCPAddr(remote.Addr()), Port: remote.Port()}, ipv4.ProtocolNumber)
			if err != nil {
				t.Fatalf("dial wan server: %v", err)
			}
			c.SetWriteDeadline(time.Now().Add(60 * time.Second))
			if _, err := c.Write(msg); err != nil {
				out, _ := tp.WAN.Run(context.Background(), "ss", "-tinm", "sport", "9000")
				t.Logf("wan sockets:\n%s", out)
				t.Fatalf("send 4 MiB to wan: %v", err)
			}
			c.Close()
			select {
			case n := <-received:
				if n != int64(len(msg)) {
					t.Fatalf("wan server received %d bytes, want %d", n, len(msg))
				}
			case <-ctx.Done():
				t.Fatal("wan server did not receive the 4 MiB within 60 s")
			}

			segs := echoed.TxPackets - before.TxPackets
			t.Logf("echo: %d segments sent for %d bytes (%d frames on the wire)", segs, len(msg), wireFrames)
			// Without GSO every frame is a segment; with it, how many
			// frames a segment holds depends on the window the ACKs
			// open, so only require clearly fewer segments than frames.
			if tc.gso {
				if segs > wireFrames*9/10 {
					t.Errorf("GSO on: %d segments handed to the kernel for 4 MiB, want < %d", segs, wireFrames*9/10)
				}
			} else if segs < wireFrames {
				t.Errorf("GSO off: %d segments for 4 MiB, want ≥ %d (one per frame)", segs, wireFrames)
			}
			if d := countersByName(ti.s)["u0"].RxDrops; d != 0 {
				t.Logf("receive drops: %d", d)
			}
			if st, ok := link.XDPStats(ti.s.Link("u0")); ok {
				// The 4 MiB sent to the INS arrived through AF_XDP.
				if st.Frames < wireFrames {
					t.Errorf("AF_XDP socket delivered %d frames, want ≥ %d", st.Frames, wireFrames)
				}
			} else if tc.backend == link.BackendXDP {
				t.Errorf("uplink of backend %s has link %T", tc.backend, ti.s.Link("u0"))
			}
		})
	}
}

// TestXDPNoForeignFrames runs two INS with the xdp backend and one with the
// packet backend on macvlans of the same uplink parent: traffic to each
// flows, and no INS's netstack receives a packet addressed to another.
func TestXDPNoForeignFrames(t *testing.T) {
	requireXDP(t)
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	all := []*topoINS{
		startTopoINS(t, tp, 21, 0, link.BackendXDP, false),
		startTopoINS(t, tp, 22, 1, link.BackendXDP, false),
		startTopoINS(t, tp, 23, 2, link.BackendPacket, false),
	}
	msg := make([]byte, 1<<20)
	if _, err := rand.Read(msg); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		for _, ti := range all {
			echoWAN(t, tp, ti.addr, msg)
			pingWAN(t, tp, ti.addr)
		}
	}
	for i, ti := range all {
		if st, ok := link.XDPStats(ti.s.Link("u0")); ok {
			if st.Foreign != 0 {
				t.Errorf("INS %d (%v) received %d unicast frames for other MAC addresses", i, ti.addr, st.Foreign)
			}
		}
		if n := ti.tap.count(ti.addr); n < len(msg)/1448 {
			t.Errorf("INS %d (%v) received only %d packets for itself", i, ti.addr, n)
		}
		if o := ti.tap.others(ti.addr); len(o) != 0 {
			t.Errorf("INS %d (%v) received packets addressed to others: %v", i, ti.addr, o)
		}
	}
	// The wan sees each INS at its own MAC address.
	out, err := tp.WAN.Run(context.Background(), "ip", "-4", "neigh", "show", "dev", tp.Uplinks[0].WANIf)
	if err != nil {
		t.Fatal(err)
	}
	macs := map[string]bool{}
	for _, ti := range all {
		mac := neighMAC(out, ti.addr)
		if mac == "" {
			t.Fatalf("wan has no neighbour entry for %v:\n%s", ti.addr, out)
		}
		macs[mac] = true
	}
	if len(macs) != len(all) {
		t.Errorf("INS share MAC addresses: %s", out)
	}
}

// neighMAC finds addr's lladdr in `ip neigh show` output.
func neighMAC(out string, addr netip.Addr) string {
	for _, line := range bytes.Split([]byte(out), []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) >= 3 && string(f[0]) == addr.String() {
			for i := 0; i+1 < len(f); i++ {
				if string(f[i]) == "lladdr" {
					return string(f[i+1])
				}
			}
		}
	}
	return ""
}

// TestXDPRemoveUplink removes an xdp uplink while the INS runs: the reader
// stops, the program leaves the interface and the INS stays usable.
func TestXDPRemoveUplink(t *testing.T) {
	requireXDP(t)
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	ti := startTopoINS(t, tp, 31, 0, link.BackendXDP, true)
	echoWAN(t, tp, ti.addr, []byte("before removal"))
	link := func() string {
		out, err := netns.RunIP(context.Background(), ti.ns.Name, "-d", "link", "show", "dev", ti.ns.Links[0].Name)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	if l := link(); !strings.Contains(l, "xdpgeneric") {
		t.Fatalf("no generic XDP program on the INS's macvlan:\n%s", l)
	}
	done := make(chan error, 1)
	go func() { done <- ti.s.RemoveUplink("u0") }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("RemoveUplink did not return within 10 s")
	}
	if l := link(); strings.Contains(l, "xdp") {
		t.Errorf("XDP program still attached after RemoveUplink:\n%s", l)
	}
	if len(ti.s.Counters()) != 0 {
		t.Errorf("counters still list the removed uplink: %+v", ti.s.Counters())
	}
}
