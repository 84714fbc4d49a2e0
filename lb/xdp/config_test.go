package xdp

import (
	"net"
	"net/netip"
	"testing"
)

// TestConfigRejects: bad sizes are errors before anything is created.
func TestConfigRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"table size not prime", Config{TableSize: 65536}},
		{"table size negative", Config{TableSize: -3}},
		{"too many backends", Config{MaxBackends: 1<<16 + 1}},
		{"established table too large", Config{EstEntries: 1<<24 + 1}},
		{"negative new-flow table", Config{NewEntries: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if b, err := New(tc.cfg); err == nil {
				b.Close()
				t.Fatalf("New(%+v) accepted", tc.cfg)
			}
		})
	}
}

// TestSetBackendsRejects: a bad backend set is refused as a whole and the
// live one stays.
func TestSetBackendsRejects(t *testing.T) {
	b := newBalancer(t, Config{MaxBackends: 8}, 3)
	good := backendMAC(1)
	for _, tc := range []struct {
		name string
		bs   []Backend
	}{
		{"id out of range", []Backend{{ID: 8, Name: "a", MAC: good, Weight: 1, State: Up}}},
		{"id twice", []Backend{{ID: 1, Name: "a", MAC: good, Weight: 1, State: Up}, {ID: 1, Name: "b", MAC: good, Weight: 1, State: Up}}},
		{"short MAC", []Backend{{ID: 1, Name: "a", MAC: net.HardwareAddr{1, 2, 3}, Weight: 1, State: Up}}},
		{"no state", []Backend{{ID: 1, Name: "a", MAC: good, Weight: 1}}},
		{"name twice", []Backend{{ID: 1, Name: "a", MAC: good, Weight: 1, State: Up}, {ID: 2, Name: "a", MAC: good, Weight: 1, State: Up}}},
		{"no name", []Backend{{ID: 1, MAC: good, Weight: 1, State: Up}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := b.SetBackends(tc.bs); err == nil {
				t.Fatal("accepted")
			}
			if _, cur := b.Table(); len(cur) != 3 {
				t.Fatalf("the live set changed to %d backends", len(cur))
			}
			// Flows still go to the three backends.
			if id := steer(t, b, tcp4(ap(client4, 1), ap(vip4, 80), tcpSYN)); id < 0 || id > 2 {
				t.Fatalf("flow went to %d", id)
			}
		})
	}
}

// TestVIPs: VIPs are added and removed; bad ones are refused.
func TestVIPs(t *testing.T) {
	b := newBalancer(t, Config{}, 2)
	for _, bad := range []netip.Addr{{}, netip.IPv4Unspecified(), netip.MustParseAddr("224.0.0.1"), netip.MustParseAddr("ff02::1")} {
		if err := b.AddVIP(bad, lbMAC); err == nil {
			t.Errorf("AddVIP(%v) accepted", bad)
		}
	}
	if err := b.AddVIP(netip.MustParseAddr("10.99.0.9"), net.HardwareAddr{1}); err == nil {
		t.Error("AddVIP with a 1-byte MAC accepted")
	}
	if err := b.RemoveVIP(vip4); err != nil {
		t.Fatal(err)
	}
	if v, out := run(t, b, tcp4(ap(client4, 1), ap(vip4, 80), tcpSYN)); v != ActionPass || macOwner(t, tcp4(ap(client4, 1), ap(vip4, 80), tcpSYN), out) != -1 {
		t.Fatal("a removed VIP is still steered")
	}
	if err := b.RemoveVIP(vip4); err != nil {
		t.Fatalf("removing it twice: %v", err)
	}
	if id := steer(t, b, tcp6(ap(client6, 1), ap(vip6, 80), tcpSYN)); id < 0 {
		t.Fatal("the other VIP stopped being steered")
	}
}
