package addrcheck

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/test/topo"
)

// TestProbe probes from the gw end of an uplink: the wan end's own
// addresses are taken (and the answer names the wan end's MAC), an unused
// address of the subnet is free.
func TestProbe(t *testing.T) {
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	u := tp.Uplinks[0]
	out, err := tp.WAN.Run(t.Context(), "cat", "/sys/class/net/"+u.WANIf+"/address")
	if err != nil {
		t.Fatal(err)
	}
	wanMAC := strings.TrimSpace(out)
	var gwMAC net.HardwareAddr
	if err := tp.GW.Do(func() error {
		ifi, err := net.InterfaceByName(u.GWIf)
		if err == nil {
			gwMAC = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr  netip.Addr
		taken bool
	}{
		{u.WANAddr4, true},
		{u.HostAddr4(7), false},
		{u.WANAddr6, true},
		{u.HostAddr6(7), false},
	} {
		if !tc.addr.IsValid() {
			continue
		}
		var perr error
		if err := tp.GW.Do(func() error { perr = Probe(u.GWIf, gwMAC, tc.addr); return nil }); err != nil {
			t.Fatal(err)
		}
		var c *Conflict
		switch {
		case tc.taken && !errors.As(perr, &c):
			t.Errorf("probe %s (the wan end's): %v, want a conflict", tc.addr, perr)
		case tc.taken && c.MAC.String() != wanMAC:
			t.Errorf("probe %s: conflict names %s, want the wan end's MAC %s", tc.addr, c.MAC, wanMAC)
		case !tc.taken && perr != nil:
			t.Errorf("probe %s (unused): %v, want free", tc.addr, perr)
		default:
			t.Logf("probe %s: %v", tc.addr, perr)
		}
	}
}

func TestStableMAC(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.5")
	m1, m2 := StableMAC("up0", a), StableMAC("up0", a)
	if m1.String() != m2.String() {
		t.Fatalf("same uplink and address: %s and %s", m1, m2)
	}
	if m1[0]&1 != 0 || m1[0]&2 == 0 {
		t.Fatalf("%s is not a locally administered unicast address", m1)
	}
	if StableMAC("up1", a).String() == m1.String() || StableMAC("up0", a.Next()).String() == m1.String() {
		t.Fatalf("another uplink or address gives the same MAC %s", m1)
	}
}

// FuzzConflict feeds hostile frames to the reply parsers.
func FuzzConflict(f *testing.F) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	a4, a6 := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")
	f.Add(arpProbe(net.HardwareAddr{2, 0, 0, 0, 0, 2}, a4))
	f.Add(dadSolicit(net.HardwareAddr{2, 0, 0, 0, 0, 2}, a6))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		arpConflict(b, mac, a4)
		dadConflict(b, mac, a6)
	})
}
