package engine

import (
	"net/netip"
	"testing"
)

func TestSelfIfUnspecified(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0.0.0.0:80", "127.0.0.1:80"},
		{"[::]:80", "[::1]:80"},
		{"[::ffff:0.0.0.0]:80", "[::ffff:127.0.0.1]:80"},
		{"10.0.0.1:80", "10.0.0.1:80"},
		{"[fd00::1]:80", "[fd00::1]:80"},
	} {
		if got := selfIfUnspecified(netip.MustParseAddrPort(tc.in)); got.String() != tc.want {
			t.Errorf("selfIfUnspecified(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
	if got := selfIfUnspecified(netip.AddrPort{}); got.IsValid() {
		t.Errorf("invalid address became %s", got)
	}
}
