package netns_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/netns"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

func TestPrepareNetNS(t *testing.T) {
	m := instest.NewMiniTopo(t, 1)
	nns, _ := instest.StartINS(t, m, 3, 10, -1, 0)
	if o, id, ok := netns.ParseName(nns.Name); !ok || o.PID != os.Getpid() || id != 3 {
		t.Errorf("netns name %q: owner %+v, INS %d, %v; want this process and INS 3", nns.Name, o, id, ok)
	}
	if len(nns.Links) != 1 || len(nns.Links[0].MAC) != 6 || !nns.Links[0].VirtualParent {
		t.Fatalf("links = %+v", nns.Links)
	}
	out, err := netns.RunIP(context.Background(), nns.Name, "-d", "addr", "show", "dev", "up0")
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
		ups []netns.HostUplink
	}{{-1, m.GW, []netns.HostUplink{{Parent: "g0"}}}, {1, m.GW, nil}, {1, "../x", []netns.HostUplink{{Parent: "g0"}}},
		{1, m.GW, []netns.HostUplink{{Parent: "g0;rm"}}}, {1, m.GW, []netns.HostUplink{{Parent: "nonexistent0"}}}} {
		if n, err := netns.Prepare(context.Background(), tc.id, tc.ns, tc.ups); err == nil {
			n.Close()
			t.Errorf("netns.Prepare(%d, %q, %v) succeeded", tc.id, tc.ns, tc.ups)
		}
	}
}

// TestINSDoNotSeeEachOther puts two INS on one uplink and sends a stream to
// A: B's NIC must receive at most a few broadcast frames (ARP).
func TestINSDoNotSeeEachOther(t *testing.T) {
	m := instest.NewMiniTopo(t, 1)
	_, a := instest.StartINS(t, m, 1, 10, -1, 0)
	_, b := instest.StartINS(t, m, 2, 11, -1, 0)
	ln, err := gonet.ListenTCP(a.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go instest.EchoServe(ln)
	before := b.Counters()[0]
	msg := bytes.Repeat([]byte("only-for-A "), 30000)
	instest.EchoFromWAN(t, m, m.Ups[0].HostAddr(10).Addr(), msg)
	after := b.Counters()[0]
	aRx := a.Counters()[0].RxBytes
	if aRx < uint64(len(msg)) {
		t.Fatalf("INS A received only %d bytes", aRx)
	}
	if d := after.RxPackets - before.RxPackets; d > 4 {
		t.Fatalf("INS B received %d frames (%d bytes) of traffic meant for A", d, after.RxBytes-before.RxBytes)
	}
}
