package ins

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// miniTopo is a private stand-in for the shared test topology: namespaces
// wan and gw joined by veth pairs created inside wan (never in the root
// namespace), wan holding 10.(80+i).0.1/24 on uplink i, forwarding off.
type miniTopo struct {
	wan, gw string
	ups     []miniUplink
}

type miniUplink struct {
	wanIf, gwIf string
	wanAddr     netip.Prefix
}

func (u miniUplink) hostAddr(n byte) netip.Prefix {
	a := u.wanAddr.Addr().As4()
	a[3] = n
	return netip.PrefixFrom(netip.AddrFrom4(a), u.wanAddr.Bits())
}

func newMiniTopo(t *testing.T, n int) *miniTopo {
	t.Helper()
	requireRoot(t)
	sfx, err := randHex(3)
	if err != nil {
		t.Fatal(err)
	}
	m := &miniTopo{wan: "mpt-wan-" + sfx, gw: "mpt-gw-" + sfx}
	ctx := context.Background()
	for _, ns := range []string{m.wan, m.gw} {
		if _, err := runIP(ctx, "", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = runIP(context.Background(), "", "netns", "del", ns) })
		if err := DoInNetNS(netnsDir+"/"+ns, func() error {
			return writeSysctls(map[string]string{"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0",
				// Let root in the test namespace use ICMP ping sockets.
				"net/ipv4/ping_group_range": "0 0"})
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		u := miniUplink{wanIf: fmt.Sprintf("w%d", i), gwIf: fmt.Sprintf("g%d", i),
			wanAddr: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.1/24", 80+i))}
		cmds := [][]string{
			{"-n", m.wan, "link", "add", u.wanIf, "type", "veth", "peer", "name", u.gwIf, "netns", m.gw},
			{"-n", m.wan, "addr", "add", u.wanAddr.String(), "dev", u.wanIf},
			{"-n", m.wan, "link", "set", u.wanIf, "up"},
			{"-n", m.gw, "link", "set", u.gwIf, "up"},
		}
		for _, c := range cmds {
			if _, err := runIP(ctx, "", c...); err != nil {
				t.Fatal(err)
			}
		}
		m.ups = append(m.ups, u)
	}
	return m
}

func (m *miniTopo) setUplinkDown(t *testing.T, i int) {
	t.Helper()
	if _, err := runIP(context.Background(), m.wan, "link", "set", m.ups[i].wanIf, "down"); err != nil {
		t.Fatal(err)
	}
}

// inWAN runs f in the wan namespace (sockets it creates stay there).
func (m *miniTopo) inWAN(f func() error) error { return DoInNetNS(netnsDir+"/"+m.wan, f) }

// startINS prepares an INS namespace on the given uplinks and builds its
// stack inside it.
func startINS(t *testing.T, m *miniTopo, id int, hostByte byte, probe time.Duration, uplinks ...int) (*NetNS, *Stack) {
	t.Helper()
	var hus []HostUplink
	for _, i := range uplinks {
		hus = append(hus, HostUplink{Parent: m.ups[i].gwIf})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nns, err := PrepareNetNS(ctx, id, m.gw, hus)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nns.Close(); err != nil {
			t.Error(err)
		}
	})
	cfg := Config{ID: id, ProbeInterval: probe, GOMAXPROCS: GOMAXPROCSFor(1)}
	for k, i := range uplinks {
		l := nns.Links[k]
		cfg.Uplinks = append(cfg.Uplinks, UplinkConfig{
			Name: fmt.Sprintf("u%d", i), Interface: l.Name,
			Addr4: m.ups[i].hostAddr(hostByte), Gateway4: m.ups[i].wanAddr.Addr(),
			RXChecksumOffload: l.VirtualParent, Weight: 1,
		})
	}
	var s *Stack
	if err := nns.Do(func() (err error) { s, err = NewStack(cfg); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return nns, s
}

func TestPrepareNetNS(t *testing.T) {
	m := newMiniTopo(t, 1)
	nns, _ := startINS(t, m, 3, 10, -1, 0)
	if o, id, ok := parseNetNSName(nns.Name); !ok || o.pid != os.Getpid() || id != 3 {
		t.Errorf("netns name %q: owner %+v, INS %d, %v; want this process and INS 3", nns.Name, o, id, ok)
	}
	if len(nns.Links) != 1 || len(nns.Links[0].MAC) != 6 || !nns.Links[0].VirtualParent {
		t.Fatalf("links = %+v", nns.Links)
	}
	out, err := runIP(context.Background(), nns.Name, "-d", "addr", "show", "dev", "up0")
	if err != nil {
		t.Fatal(err)
	}
	o := string(out)
	for _, want := range []string{"macvlan mode private", "qdisc pfifo", "state UP", nns.Links[0].MAC.String()} {
		if !strings.Contains(o, want) {
			t.Errorf("ip addr show lacks %q:\n%s", want, o)
		}
	}
	for _, bad := range []string{"inet ", "inet6 "} {
		if strings.Contains(o, bad) {
			t.Errorf("kernel has an address on the INS link (%q):\n%s", bad, o)
		}
	}
	_ = nns.Do(func() error {
		for k, want := range map[string]string{"net/ipv6/conf/up0/disable_ipv6": "1", "net/ipv4/ip_forward": "0"} {
			b, err := os.ReadFile("/proc/sys/" + k)
			if err != nil || strings.TrimSpace(string(b)) != want {
				t.Errorf("%s = %q, %v; want %s", k, b, err, want)
			}
		}
		return nil
	})
	// Bad input is rejected before anything is created.
	for _, tc := range []struct {
		id  int
		ns  string
		ups []HostUplink
	}{{-1, m.gw, []HostUplink{{Parent: "g0"}}}, {1, m.gw, nil}, {1, "../x", []HostUplink{{Parent: "g0"}}},
		{1, m.gw, []HostUplink{{Parent: "g0;rm"}}}, {1, m.gw, []HostUplink{{Parent: "nonexistent0"}}}} {
		if n, err := PrepareNetNS(context.Background(), tc.id, tc.ns, tc.ups); err == nil {
			n.Close()
			t.Errorf("PrepareNetNS(%d, %q, %v) succeeded", tc.id, tc.ns, tc.ups)
		}
	}
}

// TestINSDoNotSeeEachOther puts two INS on one uplink and sends a stream to
// A: B's NIC must receive at most a few broadcast frames (ARP).
func TestINSDoNotSeeEachOther(t *testing.T) {
	m := newMiniTopo(t, 1)
	_, a := startINS(t, m, 1, 10, -1, 0)
	_, b := startINS(t, m, 2, 11, -1, 0)
	ln, err := gonet.ListenTCP(a.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go echoServe(ln)
	before := b.Counters()[0]
	msg := bytes.Repeat([]byte("only-for-A "), 30000)
	echoFromWAN(t, m, m.ups[0].hostAddr(10).Addr(), msg)
	after := b.Counters()[0]
	aRx := a.Counters()[0].RxBytes
	if aRx < uint64(len(msg)) {
		t.Fatalf("INS A received only %d bytes", aRx)
	}
	if d := after.RxPackets - before.RxPackets; d > 4 {
		t.Fatalf("INS B received %d frames (%d bytes) of traffic meant for A", d, after.RxBytes-before.RxBytes)
	}
}

// echoFromWAN dials addr:7 from the wan namespace, sends msg and requires
// it echoed byte-identical.
func echoFromWAN(t *testing.T, m *miniTopo, addr netip.Addr, msg []byte) {
	t.Helper()
	var c net.Conn
	if err := m.inWAN(func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, 7).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %v from wan: %v", addr, err)
	}
	defer c.Close()
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes via %v: %v (identical=%v)", len(msg), addr, err, bytes.Equal(got, msg))
	}
}
