package msgproto

import (
	"errors"
	"net/netip"
	"testing"
)

func TestAddrList(t *testing.T) {
	in := []netip.Addr{
		netip.MustParseAddr("192.0.2.1"),
		netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("::ffff:192.0.2.2"),
		{},
		netip.MustParseAddr("fe80::1%7"),
	}
	b := AppendAddrList(nil, in)
	if len(b) != 4*AddrSize {
		t.Fatalf("%d bytes for 4 valid addresses", len(b))
	}
	got, err := ParseAddrList(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{in[0], in[1], in[2], in[4]}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: %v, want %v", i, got[i], want[i])
		}
	}
	many := make([]netip.Addr, MaxResolveAddrs+5)
	for i := range many {
		many[i] = netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
	}
	if n := len(AppendAddrList(nil, many)); n != MaxAddrList {
		t.Errorf("%d addresses encode to %d bytes, want the cap %d", len(many), n, MaxAddrList)
	}

	port := AppendAddrList(nil, in[:1])
	port[2] = 80
	unspec := make([]byte, AddrSize)
	stray := AppendAddrList(nil, in[:1])
	stray[20] = 1
	for name, bad := range map[string][]byte{
		"partial block":   b[:AddrSize+3],
		"nonzero port":    port,
		"unspec family":   unspec,
		"stray v4 bytes":  stray,
		"too many blocks": make([]byte, MaxAddrList+AddrSize),
	} {
		if _, err := ParseAddrList(bad); !errors.Is(err, ErrBadField) {
			t.Errorf("%s: err %v, want ErrBadField", name, err)
		}
	}
}

// FuzzParseAddrList: ParseAddrList never panics, and what it accepts
// encodes back to the same bytes.
func FuzzParseAddrList(f *testing.F) {
	f.Add(AppendAddrList(nil, []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}))
	f.Add([]byte{})
	f.Add(make([]byte, AddrSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		addrs, err := ParseAddrList(b)
		if err != nil {
			if !errors.Is(err, ErrBadField) {
				t.Fatalf("error %v does not wrap ErrBadField", err)
			}
			return
		}
		if enc := AppendAddrList(nil, addrs); string(enc) != string(b) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", enc, b)
		}
	})
}
