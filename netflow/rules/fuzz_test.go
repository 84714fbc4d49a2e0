package rules

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/mpshim/mpshim/netflow"
)

// FuzzParsePrefix: any string is either refused or yields a masked prefix
// whose text form parses back to itself.
func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.77.0.1", "2001:db8::/32", "::ffff:1.2.3.4/128", "fe80::1%eth0/64", "1.2.3.4/24", "/", "::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePrefix(s)
		if err != nil {
			return
		}
		if p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("ParsePrefix(%q) = %v: not canonical", s, p)
		}
		back, err := ParsePrefix(p.String())
		if err != nil || back != p {
			t.Fatalf("ParsePrefix(%q) = %v, which reparses as %v, %v", s, p, back, err)
		}
	})
}

// FuzzParseQuantity: rates and sizes never panic and stay in range.
func FuzzParseQuantity(f *testing.F) {
	for _, s := range []string{"10k", "2.5M", "1G", "64KiB", "0.001k", "1.", ".5", "99999999999999999T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := ParseRate(s); err == nil && v > maxQuantity {
			t.Fatalf("ParseRate(%q) = %d beyond %d", s, v, uint64(maxQuantity))
		}
		if v, err := ParseSize(s); err == nil && v > maxQuantity {
			t.Fatalf("ParseSize(%q) = %d beyond %d", s, v, uint64(maxQuantity))
		}
	})
}

// FuzzSet: a rule set in JSON (as a state file or a management frame
// brings it) is either refused by Validate or loads into a filter that
// then decides packets without panicking.
func FuzzSet(f *testing.F) {
	f.Add([]byte(`{"version":1,"next_id":3,"rules":[{"id":1,"action":"block","prefix":"10.77.0.0/24"},{"id":2,"action":"limit","prefix":"::/0","pps":5}]}`), []byte{10, 77, 0, 1})
	f.Add([]byte(`{"version":2,"next_id":2,"rules":[{"id":1,"action":"limit","prefix":"10.0.0.0/8","bps":8000,"burst":1500}]}`), []byte{10, 0, 0, 9})
	f.Add([]byte(`{"rules":[{"id":0,"action":"block","prefix":"0.0.0.0/0"}]}`), []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, js []byte, addr []byte) {
		var s Set
		if json.Unmarshal(js, &s) != nil {
			return
		}
		flt := NewFilter(func() int64 { return 1 })
		if _, err := flt.Load(s); err != nil {
			return
		}
		a, ok := netip.AddrFromSlice(addr)
		if !ok {
			return
		}
		p := &netflow.Packet{Key: netflow.Key{Src: a, Dst: a, Proto: netflow.ProtoTCP}, Len: len(addr) * 100}
		for _, dir := range []netflow.Direction{netflow.In, netflow.Out} {
			pass := flt.Packet("up0", dir, p)
			// A block rule covering the address must drop it.
			if r, ok := blockCovering(s, a.Unmap()); ok && pass {
				t.Fatalf("%s passed %v although %v blocks it", dir, a, r)
			}
		}
		if len(flt.Stats()) != len(s.Rules) {
			t.Fatalf("%d stats for %d rules", len(flt.Stats()), len(s.Rules))
		}
	})
}

func blockCovering(s Set, a netip.Addr) (Rule, bool) {
	for _, r := range s.Rules {
		if r.Action == Block && r.Prefix.Contains(a) {
			return r, true
		}
	}
	return Rule{}, false
}
