package rules

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

func TestParsePrefix(t *testing.T) {
	cases := []struct {
		in      string
		want    string
		wantErr string
	}{
		{"10.0.0.0/8", "10.0.0.0/8", ""},
		{" 10.77.0.0/24 ", "10.77.0.0/24", ""},
		{"10.77.0.1", "10.77.0.1/32", ""},
		{"2001:db8::/32", "2001:db8::/32", ""},
		{"fd77:0::1", "fd77::1/128", ""},
		{"0.0.0.0/0", "0.0.0.0/0", ""},
		{"10.77.0.1/24", "", "did you mean 10.77.0.0/24"},
		{"::ffff:10.0.0.0/104", "", "use the IPv4 form 10.0.0.0/8"},
		{"fe80::1%eth0", "", "zones"},
		{"10.0.0.0/33", "", "bad prefix"},
		{"", "", "bad prefix"},
		{"example.com", "", "bad prefix"},
		{"10.0.0.0/8/8", "", "bad prefix"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			p, err := ParsePrefix(c.in)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("ParsePrefix(%q) = %v, %v; want error containing %q", c.in, p, err, c.wantErr)
				}
				return
			}
			if err != nil || p.String() != c.want {
				t.Fatalf("ParsePrefix(%q) = %v, %v; want %s", c.in, p, err, c.want)
			}
		})
	}
}

func TestParseQuantities(t *testing.T) {
	rates := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"1000", 1000, true}, {"10k", 10_000, true}, {"10K", 10_000, true}, {"2.5M", 2_500_000, true},
		{"1G", 1_000_000_000, true}, {"1T", 1_000_000_000_000, true}, {"0.001k", 1, true},
		{"1.5", 0, false}, {"0.0001k", 0, false}, {"", 0, false}, {"-1", 0, false}, {"1e9", 0, false},
		{"k", 0, false}, {"1.", 0, false}, {"1x", 0, false}, {"99999999999999999", 0, false},
		{"2000T", 0, false}, {"0.999999999T", 999_999_999_000, true},
	}
	for _, c := range rates {
		got, err := ParseRate(c.in)
		if c.ok != (err == nil) || got != c.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
	sizes := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"65536", 65536, true}, {"64K", 65536, true}, {"64KiB", 65536, true}, {"1.5M", 3 << 19, true},
		{"1G", 1 << 30, true}, {"1GiB", 1 << 30, true}, {"0.3K", 0, false}, {"1T", 0, false}, {"1Mb", 0, false},
	}
	for _, c := range sizes {
		got, err := ParseSize(c.in)
		if c.ok != (err == nil) || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
	for bps, want := range map[uint64]string{8000: "8 kbit/s", 10_000_000: "10 Mbit/s", 2_500_000_000: "2.5 Gbit/s", 999: "999 bit/s"} {
		if got := FormatRate(bps); got != want {
			t.Errorf("FormatRate(%d) = %q, want %q", bps, got, want)
		}
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestRuleValidate(t *testing.T) {
	cases := []struct {
		name    string
		r       Rule
		wantErr string
	}{
		{"block", Rule{Action: Block, Prefix: pfx("10.0.0.0/8")}, ""},
		{"block v6", Rule{Action: Block, Prefix: pfx("2001:db8::/32")}, ""},
		{"block with rate", Rule{Action: Block, Prefix: pfx("10.0.0.0/8"), PPS: 5}, "no rate"},
		{"no prefix", Rule{Action: Block}, "no valid prefix"},
		{"host bits", Rule{Action: Block, Prefix: pfx("10.0.0.1/8")}, "host bits"},
		{"unknown action", Rule{Action: "drop", Prefix: pfx("10.0.0.0/8")}, "unknown action"},
		{"limit pps", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), PPS: 100}, ""},
		{"limit bps", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), BPS: 10_000_000}, ""},
		{"limit neither", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8")}, "exactly one"},
		{"limit both", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), PPS: 1, BPS: MinBPS}, "exactly one"},
		{"pps too high", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), PPS: MaxPPS + 1}, "out of range"},
		{"bps too low", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), BPS: MinBPS - 1}, "out of range"},
		{"bps too high", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), BPS: MaxBPS + 1}, "out of range"},
		{"burst pps", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), PPS: 10, Burst: 100}, ""},
		{"burst pps too big", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), PPS: 10, Burst: 101}, "exceeds 10 s"},
		{"burst bytes too small", Rule{Action: Limit, Prefix: pfx("10.0.0.0/8"), BPS: 1e6, Burst: 1000}, "out of range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.r.Validate()
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, c.wantErr)
			}
		})
	}
}

func TestSetAddRemove(t *testing.T) {
	var s Set
	r1, err := s.Add(Rule{Action: Block, Prefix: pfx("10.77.0.0/24")})
	if err != nil || r1.ID != 1 || s.Version != 1 {
		t.Fatalf("Add = %+v, %v (version %d)", r1, err, s.Version)
	}
	if _, err := s.Add(Rule{Action: Block, Prefix: pfx("10.77.0.0/24")}); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate Add: %v, want ErrDuplicate", err)
	}
	if _, err := s.Add(Rule{Action: Limit, Prefix: pfx("10.77.0.0/24"), PPS: 10}); err != nil {
		t.Fatalf("limit on a blocked prefix: %v", err)
	}
	if s.Version != 2 {
		t.Fatalf("version %d after two changes, want 2", s.Version)
	}
	if _, err := s.Remove(1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Remove(1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Remove: %v, want ErrNotFound", err)
	}
	r3, _ := s.Add(Rule{Action: Block, Prefix: pfx("10.77.0.0/24")})
	if r3.ID != 3 {
		t.Fatalf("re-added rule got id %d, want 3 (ids are never reused)", r3.ID)
	}
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	for i := len(s.Rules); i < MaxRules; i++ {
		if _, err := s.Add(Rule{Action: Block, Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)}), 32)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Add(Rule{Action: Block, Prefix: pfx("203.0.113.0/24")}); !errors.Is(err, ErrFull) {
		t.Fatalf("Add beyond MaxRules: %v, want ErrFull", err)
	}
}

func TestSetJSONAndValidate(t *testing.T) {
	var s Set
	s.Add(Rule{Action: Block, Prefix: pfx("10.77.0.0/24")})
	s.Add(Rule{Action: Limit, Prefix: pfx("fd77::/64"), BPS: 10_000_000})
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Set
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if err := back.Validate(); err != nil || len(back.Rules) != 2 || back.Rules[1].Prefix != pfx("fd77::/64") {
		t.Fatalf("round trip %s: %+v, %v", b, back, err)
	}
	bad := []struct{ name, json, want string }{
		{"duplicate id", `{"version":1,"next_id":3,"rules":[{"id":1,"action":"block","prefix":"10.0.0.0/8"},{"id":1,"action":"block","prefix":"11.0.0.0/8"}]}`, "used twice"},
		{"id beyond next", `{"version":1,"next_id":2,"rules":[{"id":2,"action":"block","prefix":"10.0.0.0/8"}]}`, "outside"},
		{"duplicate rule", `{"version":1,"next_id":3,"rules":[{"id":1,"action":"block","prefix":"10.0.0.0/8"},{"id":2,"action":"block","prefix":"10.0.0.0/8"}]}`, "duplicate"},
		{"unmasked", `{"version":1,"next_id":3,"rules":[{"id":1,"action":"block","prefix":"10.0.0.1/8"}]}`, "host bits"},
		{"bad limit", `{"version":1,"next_id":3,"rules":[{"id":1,"action":"limit","prefix":"10.0.0.0/8","pps":0}]}`, "exactly one"},
	}
	for _, c := range bad {
		var s Set
		if err := json.Unmarshal([]byte(c.json), &s); err != nil {
			t.Fatalf("%s: unmarshal: %v", c.name, err)
		}
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate = %v, want %q", c.name, err, c.want)
		}
	}
}

func pkt(src, dst string, flags uint8) *netflow.Packet {
	return &netflow.Packet{Key: netflow.Key{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		SrcPort: 1000, DstPort: 80, Proto: netflow.ProtoTCP}, Len: 100, TCPFlags: flags}
}

func TestFilterMatching(t *testing.T) {
	var s Set
	for _, r := range []Rule{
		{Action: Block, Prefix: pfx("10.77.0.0/24")},
		{Action: Block, Prefix: pfx("10.77.0.128/25")},
		{Action: Limit, Prefix: pfx("10.0.0.0/8"), PPS: 1, Burst: 1},
		{Action: Limit, Prefix: pfx("10.1.0.0/16"), PPS: 1, Burst: 2},
		{Action: Block, Prefix: pfx("fd77:1::/64")},
		{Action: Block, Prefix: pfx("192.0.2.7/32")},
		{Action: Limit, Prefix: pfx("::/0"), PPS: 1, Burst: 1},
	} {
		if _, err := s.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	f := NewFilter(func() int64 { return 0 }) // frozen clock: buckets never refill
	if ok, err := f.Load(s); !ok || err != nil {
		t.Fatalf("Load: %v, %v", ok, err)
	}
	const ins = "10.77.0.10"
	cases := []struct {
		name string
		dir  netflow.Direction
		p    *netflow.Packet
		pass bool
		rule uint64 // the rule that counts it (0: none)
	}{
		{"blocked source", netflow.In, pkt("10.77.0.1", ins, netflow.TCPSyn), false, 1},
		{"more specific block counts", netflow.In, pkt("10.77.0.200", ins, 0), false, 2},
		{"blocked destination out", netflow.Out, pkt(ins, "10.77.0.1", netflow.TCPAck), false, 1},
		{"outbound RST to blocked peer passes", netflow.Out, pkt(ins, "10.77.0.1", netflow.TCPRst|netflow.TCPAck), true, 0},
		{"neighbour prefix passes", netflow.In, pkt("10.78.0.1", ins, 0), true, 3},
		{"limit /8 takes burst 1", netflow.In, pkt("10.9.9.9", ins, 0), false, 3},
		{"limit /16 is more specific", netflow.In, pkt("10.1.2.3", ins, 0), true, 4},
		{"limit /16 second packet", netflow.In, pkt("10.1.2.4", ins, 0), true, 4},
		{"limit /16 third packet", netflow.In, pkt("10.1.2.5", ins, 0), false, 4},
		{"limits do not meter sent packets", netflow.Out, pkt(ins, "10.1.2.3", 0), true, 0},
		{"host rule", netflow.In, pkt("192.0.2.7", ins, 0), false, 6},
		{"host rule neighbour", netflow.In, pkt("192.0.2.6", ins, 0), true, 0},
		{"v6 block", netflow.In, pkt("fd77:1::1", "fd77:1::10", 0), false, 5},
		{"v6 default limit", netflow.In, pkt("fd77:2::1", "fd77:2::10", 0), true, 7},
		{"v6 default limit exhausted", netflow.In, pkt("2001:db8::1", "fd77:2::10", 0), false, 7},
		{"v4-mapped source is v4", netflow.In, pkt("::ffff:10.77.0.1", ins, 0), false, 1},
	}
	for _, c := range cases {
		before := map[uint64]Stats{}
		for _, st := range f.Stats() {
			before[st.ID] = st
		}
		if got := f.Packet("up0", c.dir, c.p); got != c.pass {
			t.Errorf("%s: pass=%v, want %v", c.name, got, c.pass)
		}
		for _, st := range f.Stats() {
			d := st.Packets - before[st.ID].Packets
			dd := st.Drops - before[st.ID].Drops
			switch {
			case st.ID == c.rule && d != 1:
				t.Errorf("%s: rule %d counted %d packets, want 1", c.name, st.ID, d)
			case st.ID == c.rule && (dd == 1) == c.pass:
				t.Errorf("%s: rule %d counted %d drops for pass=%v", c.name, st.ID, dd, c.pass)
			case st.ID != c.rule && d != 0:
				t.Errorf("%s: rule %d counted %d packets, want none", c.name, st.ID, d)
			}
		}
	}
	// A rule removed loses its counters; the others keep theirs.
	s.Remove(2)
	f.Load(s)
	for _, st := range f.Stats() {
		if st.ID == 1 && (st.Drops != 3 || st.DropBytes != 300) {
			t.Errorf("rule 1 after reload: %d drops, %d bytes; want 3, 300", st.Drops, st.DropBytes)
		}
		if st.ID == 2 {
			t.Error("removed rule 2 still has stats")
		}
	}
	// Older versions are ignored.
	old := s.Clone()
	old.Version--
	if ok, err := f.Load(old); ok || err != nil {
		t.Errorf("Load of an older version: %v, %v; want ignored", ok, err)
	}
	if f.Version() != s.Version {
		t.Errorf("version %d, want %d", f.Version(), s.Version)
	}
	// Invalid sets are refused.
	bad := s.Clone()
	bad.Version++
	bad.Rules[0].Prefix = netip.Prefix{}
	if _, err := f.Load(bad); err == nil {
		t.Error("Load of an invalid set succeeded")
	}
}

func TestFilterNoRulesPassesWithoutAllocating(t *testing.T) {
	f := NewFilter(nil)
	p := pkt("10.77.0.1", "10.77.0.10", 0)
	if !f.Packet("up0", netflow.In, p) {
		t.Fatal("empty filter dropped a packet")
	}
	var s Set
	s.Add(Rule{Action: Block, Prefix: pfx("10.99.0.0/16")})
	s.Add(Rule{Action: Limit, Prefix: pfx("10.77.0.0/24"), PPS: MaxPPS})
	f.Load(s)
	if n := testing.AllocsPerRun(1000, func() { f.Packet("up0", netflow.In, p) }); n != 0 {
		t.Errorf("Packet allocates %.1f times per call", n)
	}
}

// BenchmarkFilterPacket is the per-packet cost with 256 rules loaded.
func BenchmarkFilterPacket(b *testing.B) {
	var s Set
	for i := range MaxRules - 1 {
		s.Add(Rule{Action: Block, Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)})
	}
	s.Add(Rule{Action: Limit, Prefix: pfx("192.0.2.0/24"), PPS: MaxPPS})
	f := NewFilter(nil)
	f.Load(s)
	pass := pkt("192.0.2.1", "10.77.0.10", 0)
	drop := pkt("10.200.1.1", "10.77.0.10", 0)
	other := pkt("2001:db8::1", "fd77::10", 0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			f.Packet("up0", netflow.In, pass)
			f.Packet("up0", netflow.In, drop)
			f.Packet("up0", netflow.In, other)
		}
	})
}

func TestFilterExempt(t *testing.T) {
	var s Set
	s.Add(Rule{Action: Block, Prefix: pfx("10.77.0.0/24")})
	var now int64
	f := NewFilter(func() int64 { return now })
	f.Load(s)
	reset := pkt("10.77.0.1", "10.77.0.10", netflow.TCPAck)
	other := pkt("10.77.0.1", "10.77.0.10", netflow.TCPAck)
	other.SrcPort++
	f.Exempt([]netflow.Key{reset.Key}, time.Second)
	if !f.Packet("up0", netflow.In, reset) {
		t.Fatal("exempt flow dropped")
	}
	if f.Packet("up0", netflow.In, other) {
		t.Fatal("another flow of the blocked peer passed")
	}
	if f.Packet("up0", netflow.Out, pkt("10.77.0.10", "10.77.0.1", netflow.TCPAck)) {
		t.Fatal("exemption let a sent packet through")
	}
	now += int64(time.Second)
	if f.Packet("up0", netflow.In, reset) {
		t.Fatal("exemption outlived its time")
	}
	f.Exempt(nil, time.Second) // prunes the expired entry
	if f.exempt.Load() != nil {
		t.Fatal("expired exemptions kept")
	}
}
