package xdp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	osexec "os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/test/topo"
)

// The data path test runs the program on a real interface: the gw end of a
// topo uplink, with backends as macvlan children of it, each in its own
// namespace holding the VIP (as INS do), and clients in the wan namespace
// reaching the VIP through the program. Replies go from the backends
// straight back to the clients (DSR).

// lab is one such set-up.
type lab struct {
	// root is the test the lab belongs to: connections and backends are
	// cleaned up when it ends, not when a subtest does.
	root *testing.T
	tp   *topo.Topology
	b    *Balancer
	vip4 netip.Addr
	vip6 netip.Addr
	// client is the clients' namespace; clientMAC and clientIndex are
	// its end of the wire, gwMAC the gw end's address (the VIP's MAC).
	client      *topo.NS
	clientMAC   net.HardwareAddr
	clientIndex int
	gwMAC       net.HardwareAddr
	subnet4     netip.Prefix
	subnet6     netip.Prefix
	clients4    []netip.Addr
	clients6    []netip.Addr

	mu       sync.Mutex
	backends map[uint32]*labBackend
}

// labBackend is one backend namespace with its servers. Every server
// answers with the backend's name, so a client sees where it landed.
type labBackend struct {
	Backend
	ns        *topo.NS
	listeners []net.Listener
	pcs       []net.PacketConn
	mu        sync.Mutex
	conns     []net.Conn
	// marked counts datagrams carrying the malformed frames' payload.
	marked atomic.Int64
}

func newLab(t *testing.T, cfg Config) *lab {
	t.Helper()
	// The topology's namespaces, plus a client namespace wired straight
	// to gw by a veth pair: its gw end carries the program and is the
	// lower device of the backends' macvlans. (The topology's own uplinks
	// pass through a user-space relay that drops floods.)
	tp := topo.New(t, topo.Config{Uplinks: 1, NoIPv6: true})
	cl, err := tp.NewNS("cl")
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{root: t, tp: tp, client: cl, backends: map[uint32]*labBackend{}}
	l.subnet4 = netip.MustParsePrefix("10.78.0.0/24")
	l.subnet6 = netip.MustParsePrefix("fd78::/64")
	l.vip4 = netip.MustParseAddr("10.78.0.100")
	l.vip6 = netip.MustParseAddr("fd78::100")
	ctx := context.Background()
	for _, args := range [][]string{
		{"-n", cl.Name, "link", "add", "name", "c0", "type", "veth", "peer", "name", lbIf, "netns", tp.GW.Name},
		{"-n", cl.Name, "addr", "add", "10.78.0.1/24", "dev", "c0"},
		{"-n", cl.Name, "addr", "add", "fd78::1/64", "dev", "c0", "nodad"},
		{"-n", cl.Name, "link", "set", "c0", "up"},
		{"-n", tp.GW.Name, "link", "set", lbIf, "up"},
	} {
		ipCmd(t, ctx, args...)
	}
	var gwIndex int
	if err := tp.GW.Do(func() error {
		ifc, err := net.InterfaceByName(lbIf)
		if err != nil {
			return err
		}
		l.gwMAC, gwIndex = ifc.HardwareAddr, ifc.Index
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := cl.Do(func() error {
		ifc, err := net.InterfaceByName("c0")
		if err != nil {
			return err
		}
		l.clientMAC, l.clientIndex = ifc.HardwareAddr, ifc.Index
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Nine client addresses of each family. The client resolves the VIPs
	// with ARP and NDP like any neighbour; the program answers.
	for i := range 9 {
		a4 := netip.AddrFrom4([4]byte{10, 78, 0, byte(200 + i)})
		a6 := netip.MustParseAddr(fmt.Sprintf("fd78::%x", 0x200+i))
		l.clients4 = append(l.clients4, a4)
		l.clients6 = append(l.clients6, a6)
		for _, args := range [][]string{
			{"-n", cl.Name, "addr", "add", a4.String() + "/24", "dev", "c0"},
			{"-n", cl.Name, "addr", "add", a6.String() + "/64", "dev", "c0", "nodad"},
		} {
			ipCmd(t, ctx, args...)
		}
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	l.b = b
	for _, v := range []netip.Addr{l.vip4, l.vip6} {
		if err := b.AddVIP(v, l.gwMAC); err != nil {
			t.Fatal(err)
		}
	}
	if err := tp.GW.Do(func() error { return b.Attach(gwIndex, true) }); err != nil {
		t.Fatal(err)
	}
	return l
}

// lbIf is the gw end of the client's wire, where the program runs.
const lbIf = "lbup"

func ipCmd(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	if out, err := exec(ctx, "ip", args...); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// addBackend makes backend id: a namespace with a macvlan child of the gw
// interface holding both VIPs, a TCP server on port 80 and a UDP server on
// port 53 for each. It does not change the balancer's backend set.
func (l *lab) addBackend(t *testing.T, id uint32, weight uint32) *labBackend {
	t.Helper()
	ctx := context.Background()
	ns, err := l.tp.NewNS(fmt.Sprintf("be%d", id))
	if err != nil {
		t.Fatal(err)
	}
	ifname := fmt.Sprintf("lb%d", id)
	be := &labBackend{Backend: Backend{ID: id, Name: fmt.Sprintf("ins-%d", id), MAC: backendMAC(id), Weight: weight, State: Up}, ns: ns}
	// The VIP sits on the loopback device, as direct server return wants
	// it: the backend neither answers ARP or NDP for it (arp_ignore, and
	// NDP answers only for the receiving device's addresses) nor solicits
	// from it (arp_announce; NDP takes the outgoing device's address), so
	// the network learns only the program's answer for the VIP.
	own4 := netip.AddrFrom4([4]byte{10, 78, 0, byte(150 + id)})
	own6 := netip.MustParseAddr(fmt.Sprintf("fd78::%x", 0x150+id))
	for _, kv := range [][2]string{{"net.ipv4.conf.all.arp_ignore", "1"}, {"net.ipv4.conf.all.arp_announce", "2"}} {
		if err := ns.SetSysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"-n", l.tp.GW.Name, "link", "add", "link", lbIf, "name", ifname, "address", be.MAC.String(), "type", "macvlan", "mode", "bridge"},
		{"-n", l.tp.GW.Name, "link", "set", ifname, "netns", ns.Name},
		{"-n", ns.Name, "addr", "add", l.vip4.String() + "/32", "dev", "lo"},
		{"-n", ns.Name, "addr", "add", l.vip6.String() + "/128", "dev", "lo", "nodad"},
		{"-n", ns.Name, "addr", "add", own4.String() + "/24", "dev", ifname},
		{"-n", ns.Name, "addr", "add", own6.String() + "/64", "dev", ifname, "nodad"},
		{"-n", ns.Name, "link", "set", ifname, "up"},
	} {
		ipCmd(t, ctx, args...)
	}
	err = ns.Do(func() error {
		for _, v := range []netip.Addr{l.vip4, l.vip6} {
			// An IPv6 address can take a moment to become usable.
			var ln net.Listener
			var err error
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				ln, err = net.Listen("tcp", netip.AddrPortFrom(v, 80).String())
				if err == nil || !errors.Is(err, unix.EADDRNOTAVAIL) || time.Now().After(deadline) {
					break
				}
			}
			if err != nil {
				return err
			}
			be.listeners = append(be.listeners, ln)
			pc, err := net.ListenPacket("udp", netip.AddrPortFrom(v, 53).String())
			if err != nil {
				return err
			}
			be.pcs = append(be.pcs, pc)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range be.listeners {
		go be.serveTCP(ln)
	}
	for _, pc := range be.pcs {
		go be.serveUDP(pc)
	}
	l.root.Cleanup(be.stop)
	l.mu.Lock()
	l.backends[id] = be
	l.mu.Unlock()
	return be
}

func (be *labBackend) serveTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		be.mu.Lock()
		be.conns = append(be.conns, c)
		be.mu.Unlock()
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := fmt.Fprintf(c, "%s %s", be.Name, line); err != nil {
					return
				}
			}
		}()
	}
}

func (be *labBackend) serveUDP(pc net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if string(buf[:n]) == markPayload {
			be.marked.Add(1)
		}
		pc.WriteTo(fmt.Appendf(nil, "%s %d", be.Name, n), from)
	}
}

// stop closes the servers and resets their connections, as a killed INS
// would.
func (be *labBackend) stop() {
	for _, ln := range be.listeners {
		ln.Close()
	}
	for _, pc := range be.pcs {
		pc.Close()
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	for _, c := range be.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

// apply makes the balancer's backend set the lab's backends (in state).
func (l *lab) apply(t *testing.T) time.Duration {
	t.Helper()
	l.mu.Lock()
	var bs []Backend
	for _, be := range l.backends {
		bs = append(bs, be.Backend)
	}
	l.mu.Unlock()
	start := time.Now()
	if err := l.b.SetBackends(bs); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// client is one TCP connection to the VIP and the backend it landed on.
type client struct {
	c       net.Conn
	r       *bufio.Reader
	src     netip.AddrPort
	backend string
	// answered is when the first answer arrived.
	answered time.Time
}

// dial opens n connections to the VIP from the client addresses (IPv4 and
// IPv6 alternating), one after the other, each with one request to learn
// its backend.
func (l *lab) dial(t *testing.T, n int) []*client {
	t.Helper()
	var cs []*client
	for i := range n {
		src, dst := l.clients4[i%9], l.vip4
		if i%2 == 1 {
			src, dst = l.clients6[i%9], l.vip6
		}
		var c net.Conn
		err := l.client.Do(func() (err error) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
			c, err = d.Dial("tcp", netip.AddrPortFrom(dst, 80).String())
			return err
		})
		if err != nil {
			t.Fatalf("connection %d from %v: %v", i, src, err)
		}
		l.root.Cleanup(func() { c.Close() })
		cl := &client{c: c, r: bufio.NewReader(c), src: netip.MustParseAddrPort(c.LocalAddr().String())}
		name, err := cl.ask("hello")
		if err != nil {
			t.Fatalf("first request from %v: %v", cl.src, err)
		}
		cl.backend, cl.answered = name, time.Now()
		cs = append(cs, cl)
	}
	return cs
}

// ask sends one request line and returns the name of the backend that
// answered.
func (c *client) ask(req string) (string, error) {
	c.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c.c, "%s\n", req); err != nil {
		return "", err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	name, rest, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	if !ok || rest != req {
		return "", fmt.Errorf("answer %q to %q", line, req)
	}
	return name, nil
}

// want is the backend the live table gives c's flow.
func (l *lab) want(t *testing.T, src netip.AddrPort, dstPort uint16, proto uint8) string {
	t.Helper()
	dst := l.vip4
	if src.Addr().Is6() && !src.Addr().Is4In6() {
		dst = l.vip6
	}
	be, ok := l.b.Pick(FlowKey(src, netip.AddrPortFrom(dst, dstPort), proto))
	if !ok {
		t.Fatal("empty table")
	}
	return be.Name
}

func exec(ctx context.Context, name string, args ...string) (string, error) {
	out, err := osexec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// rawSender sends hand-made frames from the client's end of the wire to
// the gw end (where the program runs).
type rawSender struct {
	fd      int
	ifindex int
	dst     net.HardwareAddr
	src     net.HardwareAddr
}

func (l *lab) rawSender(t *testing.T) *rawSender {
	t.Helper()
	s := &rawSender{ifindex: l.clientIndex, src: l.clientMAC, dst: l.gwMAC}
	err := l.client.Do(func() (err error) {
		s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s.fd) })
	return s
}

func (s *rawSender) send(frame []byte) error {
	f := append([]byte{}, frame...)
	copy(f[0:6], s.dst)
	copy(f[6:12], s.src)
	return unix.Sendto(s.fd, f, 0, &unix.SockaddrLinklayer{Ifindex: s.ifindex, Halen: 6})
}

// waitCounters polls the program's counters until cond holds (3 s).
func (l *lab) waitCounters(t *testing.T, cond func(c [NumCounters]uint64) bool) [NumCounters]uint64 {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		c := counters(t, l.b)
		if cond(c) || time.Now().After(deadline) {
			return c
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// markPayload is the payload of the malformed frames.
const markPayload = "malformed-frame-marker"

// udpAsk sends one datagram of size bytes from src to the VIP's port 53
// and returns the answering backend's name and the size it received.
func (l *lab) udpAsk(t *testing.T, src netip.Addr, size int) (netip.AddrPort, string, int) {
	return l.udpAskPayload(t, src, make([]byte, size))
}

// udpAskPayload is udpAsk with the datagram's payload.
func (l *lab) udpAskPayload(t *testing.T, src netip.Addr, payload []byte) (netip.AddrPort, string, int) {
	t.Helper()
	dst := l.vip4
	if src.Is6() {
		dst = l.vip6
	}
	var pc net.PacketConn
	if err := l.client.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(src, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	local := netip.MustParseAddrPort(pc.LocalAddr().String())
	buf := make([]byte, 256)
	for range 3 { // UDP: a lost datagram is retried
		if _, err := pc.WriteTo(payload, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 53))); err != nil {
			t.Fatal(err)
		}
		pc.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			continue
		}
		var name string
		var got int
		if _, err := fmt.Sscanf(string(buf[:n]), "%s %d", &name, &got); err != nil {
			t.Fatalf("answer %q: %v", buf[:n], err)
		}
		return local, name, got
	}
	t.Fatalf("no answer to a %d-byte datagram from %v", len(payload), local)
	return local, "", 0
}

// TestDataPath drives real TCP and UDP traffic through the program attached
// to an interface: flows land where the table says and stay there through
// spawn, drain and kill; fragments are reassembled by the right backend;
// malformed frames and a spoofed SYN flood reach no backend and evict no
// established flow.
func TestDataPath(t *testing.T) {
	requireTestRun(t)
	l := newLab(t, Config{NewEntries: 2048, EstEntries: 1 << 16})
	for id := uint32(1); id <= 4; id++ {
		l.addBackend(t, id, id) // weights 1..4
	}
	l.apply(t)
	var conns []*client

	t.Run("flows land where the table says", func(t *testing.T) {
		conns = l.dial(t, 180)
		shares := map[string]int{}
		for _, c := range conns {
			if want := l.want(t, c.src, 80, 6); c.backend != want {
				t.Fatalf("%v landed on %s, table says %s", c.src, c.backend, want)
			}
			shares[c.backend]++
		}
		for round := range 3 {
			for _, c := range conns {
				got, err := c.ask(fmt.Sprint("r", round))
				if err != nil {
					t.Fatalf("%v: %v", c.src, err)
				}
				if got != c.backend {
					t.Fatalf("%v: request %d answered by %s, flow is on %s", c.src, round, got, c.backend)
				}
			}
		}
		t.Logf("180 connections from 9+9 addresses over weights 1..4: %v", shares)
		// The client learnt the VIPs' MAC from the program's answers.
		for _, v := range []netip.Addr{l.vip4, l.vip6} {
			out, err := exec(context.Background(), "ip", "-n", l.client.Name, "neigh", "show", v.String())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, l.gwMAC.String()) {
				t.Errorf("client's neighbour entry for %v: %q, want %v", v, strings.TrimSpace(out), l.gwMAC)
			}
		}
		c := counters(t, l.b)
		if c[CountARPReply] == 0 || c[CountNAReply] == 0 {
			t.Errorf("the program answered %d ARP requests and %d solicitations", c[CountARPReply], c[CountNAReply])
		}
	})

	t.Run("fragmented datagrams reach one backend", func(t *testing.T) {
		before := counters(t, l.b)
		for i := range 20 {
			src := l.clients4[i%9]
			if i%2 == 1 {
				src = l.clients6[i%9]
			}
			local, name, got := l.udpAsk(t, src, 3000)
			if got != 3000 {
				t.Fatalf("backend %s got %d of 3000 bytes", name, got)
			}
			if want := l.want(t, local, 53, 17); name != want {
				t.Fatalf("datagram from %v answered by %s, table says %s", local, name, want)
			}
		}
		after := counters(t, l.b)
		if after[CountFragHit] == before[CountFragHit] {
			t.Fatal("no fragment went through the fragment map: the datagrams were not fragmented")
		}
		t.Logf("20 datagrams of 3000 bytes: %d later fragments followed their first", after[CountFragHit]-before[CountFragHit])
	})

	t.Run("spawn, drain and kill keep the other flows", func(t *testing.T) {
		if len(conns) == 0 {
			t.Skip("no connections from the first subtest")
		}
		// Every connection asks every 20 ms until told to stop.
		stop := make(chan struct{})
		errs := make([]error, len(conns))
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					got, err := c.ask(fmt.Sprint("q", n))
					if err == nil && got != c.backend {
						err = fmt.Errorf("answered by %s, flow is on %s", got, c.backend)
					}
					if err != nil {
						errs[i] = err
						return
					}
				}
			}()
		}
		time.Sleep(100 * time.Millisecond)

		// Spawn: a new backend gets new flows at once.
		l.addBackend(t, 5, 4)
		took := l.apply(t)
		applied := time.Now()
		fresh := l.dial(t, 40)
		var first time.Duration
		onNew := 0
		for _, c := range fresh {
			if want := l.want(t, c.src, 80, 6); c.backend != want {
				t.Fatalf("new flow %v landed on %s, table says %s", c.src, c.backend, want)
			}
			if c.backend == "ins-5" {
				onNew++
				if first == 0 {
					first = c.answered.Sub(applied)
				}
			}
		}
		if onNew == 0 {
			t.Fatal("none of 40 new flows reached the spawned backend")
		}
		t.Logf("spawn: table rebuilt and switched in %v; first answer from the new backend %v after that; %d of 40 new flows on it, all 40 where the table says",
			took, first, onNew)

		// Drain backend 2: no new flows, old ones continue.
		l.mu.Lock()
		l.backends[2].State = Draining
		l.mu.Unlock()
		l.apply(t)
		for _, c := range l.dial(t, 60) {
			if c.backend == "ins-2" {
				t.Fatalf("new flow %v reached draining ins-2", c.src)
			}
		}

		// Kill backend 1: its connections are reset, the others go on.
		l.mu.Lock()
		dead := l.backends[1]
		delete(l.backends, 1)
		l.mu.Unlock()
		dead.stop()
		l.apply(t)
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()
		onDead, onDrained := 0, 0
		for i, c := range conns {
			switch {
			case c.backend == "ins-1":
				onDead++
				if errs[i] == nil {
					t.Errorf("connection %v on the killed backend saw no error", c.src)
				}
			case errs[i] != nil:
				t.Errorf("connection %v on %s: %v", c.src, c.backend, errs[i])
			case c.backend == "ins-2":
				onDrained++
			}
		}
		if onDrained == 0 {
			t.Error("no connection was on the drained backend: drain not tested")
		}
		t.Logf("%d long-lived connections: %d on the drained backend kept working, %d on the killed one were reset, 0 errors on the rest",
			len(conns), onDrained, onDead)
		// Flows of the killed backend now go elsewhere, where the table says.
		for _, c := range l.dial(t, 40) {
			if c.backend == "ins-1" {
				t.Fatalf("new flow reached the killed backend")
			}
		}
	})

	t.Run("malformed frames reach no backend", func(t *testing.T) {
		s := l.rawSender(t)
		set := func(f []byte, i int, v byte) []byte { g := append([]byte{}, f...); g[i] = v; return g }
		udpTo := eth(0x0800, ipv4(l.clients4[0], l.vip4, 17, 7, 0, udp(999, 53, []byte(markPayload))))
		frames := []struct {
			frame   []byte
			counter int
		}{
			{set(udpTo, 14, 0x44), CountMalformed},                                                            // IHL 4
			{set(udpTo, 14, 0x4f), CountMalformed},                                                            // IHL beyond frame
			{set(udpTo, 16, 0x0f), CountMalformed},                                                            // total length beyond frame
			{eth(0x0800, ipv4(l.clients4[0], l.vip4, 17, 7, 0, []byte{0, 1, 0})), CountMalformed},             // UDP header cut
			{eth(0x0800, ipv4(l.clients4[0], l.vip4, 6, 7, 0, tcp(1, 80, tcpSYN, nil)[:10])), CountMalformed}, // TCP header cut
			{eth(0x86dd, ipv6(l.clients6[0], l.vip6, 0, append([]byte{17, 0, 0, 0, 0, 0, 0, 0}, udp(999, 53, nil)...))), CountUnsupported},
			{eth(0x0800, ipv4(l.clients4[0], l.vip4, 17, 4242, 100, make([]byte, 64))), CountFragMiss},
			{eth(0x0800, ipv4(l.clients4[0], l.vip4, 17, 7, 0, nil))[:30], CountShort},
		}
		want := map[int]uint64{}
		before := counters(t, l.b)
		for range 10 {
			for _, f := range frames {
				if err := s.send(f.frame); err != nil {
					t.Fatal(err)
				}
				want[f.counter]++
			}
		}
		after := l.waitCounters(t, func(c [NumCounters]uint64) bool {
			for k, n := range want {
				if c[k]-before[k] < n {
					return false
				}
			}
			return true
		})
		for k, n := range want {
			if got := after[k] - before[k]; got != n {
				t.Errorf("%s: %d frames counted, %d sent", CounterNames[k], got, n)
			}
		}
		// A well-formed datagram with the same payload does arrive, so
		// the servers would have seen any malformed one that got through.
		if _, name, _ := l.udpAskPayload(t, l.clients4[0], []byte(markPayload)); name == "" {
			t.Fatal("no answer to the well-formed datagram")
		}
		var marked int64
		for _, be := range l.backends {
			marked += be.marked.Load()
		}
		if marked != 1 {
			t.Errorf("backends received %d datagrams with the marker, want only the 1 well-formed one", marked)
		}
	})

	t.Run("spoofed SYN flood evicts no established flow", func(t *testing.T) {
		s := l.rawSender(t)
		var live []*client
		for _, c := range l.dial(t, 60) {
			live = append(live, c)
		}
		stop := make(chan struct{})
		errs := make([]error, len(live))
		var wg sync.WaitGroup
		for i, c := range live {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					got, err := c.ask(fmt.Sprint("f", n))
					if err == nil && got != c.backend {
						err = fmt.Errorf("answered by %s, flow is on %s", got, c.backend)
					}
					if err != nil {
						errs[i] = err
						return
					}
				}
			}()
		}
		const flood = 20000
		before := counters(t, l.b)
		for i := range flood {
			src := netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)})
			f := eth(0x0800, ipv4(src, l.vip4, 6, uint16(i), 0x4000, tcp(uint16(1024+i), 80, tcpSYN, nil)))
			if err := s.send(f); err != nil && !errors.Is(err, unix.ENOBUFS) {
				t.Fatal(err)
			}
		}
		// Mid-flood table change: the established flows must not follow it.
		l.addBackend(t, 6, 4)
		l.apply(t)
		time.Sleep(200 * time.Millisecond)
		close(stop)
		wg.Wait()
		after := counters(t, l.b)
		for i, c := range live {
			if errs[i] != nil {
				t.Errorf("connection %v on %s during the flood: %v", c.src, c.backend, errs[i])
			}
		}
		est, nw, _, err := l.b.Flows()
		if err != nil {
			t.Fatal(err)
		}
		if est > 1<<16 || nw > 2048 {
			t.Fatalf("tables past their bounds: established %d, new %d", est, nw)
		}
		missing, wouldMove := 0, 0
		for _, c := range live {
			if l.want(t, c.src, 80, 6) != c.backend {
				wouldMove++
			}
			var v [flowValue]byte
			dst := l.vip4
			if c.src.Addr().Is6() {
				dst = l.vip6
			}
			if err := l.b.est.Lookup(FlowKey(c.src, netip.AddrPortFrom(dst, 80), 6), &v); err != nil {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%d of %d established flows left the established table during the flood", missing, len(live))
		}
		if wouldMove == 0 {
			t.Error("the table change mid-flood moves none of the live flows: affinity not tested")
		}
		if d := after[CountSteered] - before[CountSteered]; d < flood {
			t.Errorf("only %d packets reached a backend during a flood of %d: the flood did not reach the program", d, flood)
		}
		t.Logf("%d spoofed SYNs (%d packets steered meanwhile): established table %d entries, new-flow table %d/2048; all %d live connections kept, %d of which the new table would have moved",
			flood, after[CountSteered]-before[CountSteered], est, nw, len(live), wouldMove)
	})
}

// requireTestRun skips without root (topo.New fails under CI=true).
func requireTestRun(t *testing.T) {
	t.Helper()
	topo.RequireRoot(t)
}

// TestShares20 sends 100,000 new flows (TCP SYNs from 9 client addresses,
// random ports) through the program on a real interface to 20 backends of
// weights 1..4, and checks every backend's share of the new flows, as the
// program counted them, within ±10% of its weight's share.
func TestShares20(t *testing.T) {
	requireTestRun(t)
	l := newLab(t, Config{})
	total := 0
	for id := uint32(1); id <= 20; id++ {
		w := 1 + (id-1)%4
		l.addBackend(t, id, w)
		total += int(w)
	}
	l.apply(t)
	s := l.rawSender(t)
	before := map[uint32]BackendStats{}
	for id := range l.backends {
		st, err := l.b.BackendStats(id)
		if err != nil {
			t.Fatal(err)
		}
		before[id] = st
	}
	c0 := counters(t, l.b)
	const flows = 100000
	// Distinct source ports per address.
	sent := 0
	for i := range flows {
		src := l.clients4[i%9]
		f := eth(0x0800, ipv4(src, l.vip4, 6, uint16(i), 0x4000, tcp(uint16(1024+i/9), 80, tcpSYN, nil)))
		for {
			err := s.send(f)
			if err == nil {
				break
			}
			if !errors.Is(err, unix.ENOBUFS) {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		sent++
	}
	l.waitCounters(t, func(c [NumCounters]uint64) bool { return c[CountMaglev]-c0[CountMaglev] >= flows })
	var got [21]uint64
	var sum uint64
	for id := range l.backends {
		st, err := l.b.BackendStats(id)
		if err != nil {
			t.Fatal(err)
		}
		got[id] = st.NewFlows - before[id].NewFlows
		sum += got[id]
	}
	if sum < flows*99/100 {
		c1 := counters(t, l.b)
		t.Fatalf("the program decided %d new flows of %d sent (steered %d, new-table hits %d)", sum, sent,
			c1[CountSteered]-c0[CountSteered], c1[CountNewHit]-c0[CountNewHit])
	}
	worst := 0.0
	for id := uint32(1); id <= 20; id++ {
		w := l.backends[id].Weight
		want := float64(w) / float64(total)
		dev := float64(got[id])/float64(sum)/want - 1
		worst = max(worst, math.Abs(dev))
		if math.Abs(dev) > 0.10 {
			t.Errorf("backend %d weight %d: %d of %d new flows, %+.1f%% off its share", id, w, got[id], sum, 100*dev)
		}
	}
	t.Logf("%d new flows from 9 addresses over 20 backends of weights 1..4: worst share deviation %.2f%%", sum, 100*worst)
}
