package instest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/topo"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

// MiniTopo is a private stand-in for the shared test topology: namespaces
// wan and gw joined by veth pairs created inside wan (never in the root
// namespace), wan holding 10.(80+i).0.1/24 on uplink i, forwarding off.
type MiniTopo struct {
	WAN, GW string
	Ups     []MiniUplink
}

type MiniUplink struct {
	WANIf, GWIf string
	WANAddr     netip.Prefix
}

func (u MiniUplink) HostAddr(n byte) netip.Prefix {
	a := u.WANAddr.Addr().As4()
	a[3] = n
	return netip.PrefixFrom(netip.AddrFrom4(a), u.WANAddr.Bits())
}

func NewMiniTopo(t *testing.T, n int) *MiniTopo {
	t.Helper()
	topo.RequireRoot(t)
	sfx, err := randHex(3)
	if err != nil {
		t.Fatal(err)
	}
	m := &MiniTopo{WAN: "mpt-wan-" + sfx, GW: "mpt-gw-" + sfx}
	ctx := context.Background()
	for _, ns := range []string{m.WAN, m.GW} {
		if _, err := netns.RunIP(ctx, "", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = netns.RunIP(context.Background(), "", "netns", "del", ns) })
		if err := netns.Do(netns.Dir+"/"+ns, func() error {
			return netns.WriteSysctls(map[string]string{"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0",
				// Let root in the test namespace use ICMP ping sockets.
				"net/ipv4/ping_group_range": "0 0"})
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		u := MiniUplink{WANIf: fmt.Sprintf("w%d", i), GWIf: fmt.Sprintf("g%d", i),
			WANAddr: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.1/24", 80+i))}
		cmds := [][]string{
			{"-n", m.WAN, "link", "add", u.WANIf, "type", "veth", "peer", "name", u.GWIf, "netns", m.GW},
			{"-n", m.WAN, "addr", "add", u.WANAddr.String(), "dev", u.WANIf},
			{"-n", m.WAN, "link", "set", u.WANIf, "up"},
			{"-n", m.GW, "link", "set", u.GWIf, "up"},
		}
		for _, c := range cmds {
			if _, err := netns.RunIP(ctx, "", c...); err != nil {
				t.Fatal(err)
			}
		}
		m.Ups = append(m.Ups, u)
	}
	return m
}

func (m *MiniTopo) SetUplinkDown(t *testing.T, i int) {
	t.Helper()
	if _, err := netns.RunIP(context.Background(), m.WAN, "link", "set", m.Ups[i].WANIf, "down"); err != nil {
		t.Fatal(err)
	}
}

// InWAN runs f in the wan namespace (sockets it creates stay there).
func (m *MiniTopo) InWAN(f func() error) error { return netns.Do(netns.Dir+"/"+m.WAN, f) }

// StartINS prepares an INS namespace on the given uplinks and builds its
// stack inside it.
func StartINS(t *testing.T, m *MiniTopo, id int, hostByte byte, probe time.Duration, uplinks ...int) (*netns.NS, *netstack.Stack) {
	t.Helper()
	var hus []netns.HostUplink
	for _, i := range uplinks {
		hus = append(hus, netns.HostUplink{Parent: m.Ups[i].GWIf})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nns, err := netns.Prepare(ctx, id, m.GW, hus)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nns.Close(); err != nil {
			t.Error(err)
		}
	})
	cfg := netstack.Config{ID: id, ProbeInterval: probe, GOMAXPROCS: netstack.GOMAXPROCSFor(1)}
	for k, i := range uplinks {
		l := nns.Links[k]
		cfg.Uplinks = append(cfg.Uplinks, netstack.UplinkConfig{
			Name: fmt.Sprintf("u%d", i), Interface: l.Name,
			Addr4: m.Ups[i].HostAddr(hostByte), Gateway4: m.Ups[i].WANAddr.Addr(),
			RXChecksumOffload: l.VirtualParent, Weight: 1,
		})
	}
	var s *netstack.Stack
	if err := nns.Do(func() (err error) { s, err = netstack.New(cfg); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return nns, s
}

// EchoFromWAN dials addr:7 from the wan namespace, sends msg and requires
// it echoed byte-identical.
func EchoFromWAN(t *testing.T, m *MiniTopo, addr netip.Addr, msg []byte) {
	t.Helper()
	var c net.Conn
	if err := m.InWAN(func() (err error) {
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

// EchoServe echoes every connection ln accepts until ln closes.
func EchoServe(ln *gonet.TCPListener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
	}
}

func randHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random suffix: %w", err)
	}
	return hex.EncodeToString(b), nil
}
