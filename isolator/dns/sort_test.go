package dns

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func addrs(s string) []netip.Addr {
	var out []netip.Addr
	for _, f := range strings.Fields(s) {
		out = append(out, netip.MustParseAddr(f))
	}
	return out
}

func TestSortAddrs(t *testing.T) {
	// Sources: a global IPv6, a ULA, an IPv4 address; 192.0.2.0/24 and
	// 2001:db8:dead::/48 are unreachable.
	source := func(d netip.Addr) (netip.Addr, bool) {
		switch {
		case netip.MustParsePrefix("192.0.2.0/24").Contains(d), netip.MustParsePrefix("2001:db8:dead::/48").Contains(d):
			return netip.Addr{}, false
		case d.Is4():
			return netip.MustParseAddr("198.51.100.10"), true
		case netip.MustParsePrefix("fd77::/16").Contains(d):
			return netip.MustParseAddr("fd77::a"), true
		case d.IsLinkLocalUnicast():
			return netip.MustParseAddr("fe80::a"), true
		}
		return netip.MustParseAddr("2a01:4f8::a"), true
	}
	for _, tc := range []struct{ in, want, why string }{
		{"198.51.100.1 2a00:1450::1", "2a00:1450::1 198.51.100.1", "rule 6: global IPv6 (40) before IPv4 (10)"},
		{"10.77.0.1 fd77::1", "fd77::1 10.77.0.1", "rule 6: a ULA (40 in glibc's table) before IPv4"},
		{"10.77.0.1 fd00:dead::1", "10.77.0.1 fd00:dead::1", "rule 5: the label of a global source does not match a ULA's"},
		{"192.0.2.1 10.0.0.1", "10.0.0.1 192.0.2.1", "rule 1: unreachable last"},
		{"2001:db8:dead::1 203.0.113.1", "203.0.113.1 2001:db8:dead::1", "rule 1"},
		{"2a00:1450::1 fe80::1", "fe80::1 2a00:1450::1", "rule 8: smaller scope first (both matching scope and label)"},
		{"2a00:1450::1 2a01:4f8::1", "2a01:4f8::1 2a00:1450::1", "rule 9: longer common prefix with the source"},
		{"10.0.0.2 10.0.0.1", "10.0.0.2 10.0.0.1", "rule 10: IPv4 keeps its order (no rule 9)"},
	} {
		got := addrs(tc.in)
		SortAddrs(got, source)
		if want := addrs(tc.want); !slices.Equal(got, want) {
			t.Errorf("%s: %v sorted to %v, want %v", tc.why, tc.in, got, want)
		}
	}
}
