package query

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/netflow"
)

func flow(ins int, uplink, src string, sp uint16, dst string, dp uint16, proto netflow.Proto, flags netflow.TCPFlags, bytes uint64, rate float64) netflow.Flow {
	f := netflow.Flow{INS: ins, Uplink: uplink, Src: netip.MustParseAddr(src), SrcPort: sp, Dst: netip.MustParseAddr(dst), DstPort: dp, Proto: proto,
		Fwd: netflow.Counters{Bytes: bytes / 4, Packets: bytes / 400, TCPFlags: flags}, Rev: netflow.Counters{Bytes: bytes - bytes/4, Packets: bytes / 1000},
		BytesPerSec: rate, PacketsPerSec: rate / 1000}
	f.ID = netflow.FlowID(ins, f.Key())
	return f
}

var flows = []netflow.Flow{
	flow(1, "up0", "10.77.0.1", 40000, "10.77.0.10", 80, netflow.ProtoTCP, netflow.TCPSyn|netflow.TCPAck, 100000, 5000),         // a
	flow(1, "up1", "10.77.1.1", 40001, "10.77.1.10", 443, netflow.ProtoTCP, netflow.TCPSyn|netflow.TCPRst, 2000, 90000),         // b
	flow(2, "up0", "10.77.0.1", 53000, "10.77.0.11", 53, netflow.ProtoUDP, 0, 400, 10),                                          // c
	flow(2, "up1", "fd77:1::1", 40002, "fd77:1::11", 80, netflow.ProtoTCP, netflow.TCPSyn|netflow.TCPAck|netflow.TCPFin, 50, 0), // d
	flow(1, "up0", "192.0.2.7", 0, "10.77.0.10", 8<<8, netflow.ProtoICMP, 0, 84, 1),                                             // e
}

func names(fs []netflow.Flow) string {
	var s []string
	for _, f := range fs {
		for i, g := range flows {
			if g.ID == f.ID {
				s = append(s, string(rune('a'+i)))
			}
		}
	}
	return strings.Join(s, "")
}

func TestFilterMatch(t *testing.T) {
	tests := []struct {
		terms []string
		want  string
	}{
		{nil, "abcde"},
		{[]string{"src=10.77.0.1"}, "ac"},
		{[]string{"src=10.77.0.0/16"}, "abc"},
		{[]string{"dst=fd77::/16"}, "d"},
		{[]string{"ip=10.77.0.10"}, "ae"},
		{[]string{"port=80"}, "ad"},
		{[]string{"port=80", "port=443"}, "abd"},         // same kind: either
		{[]string{"port=80", "proto=tcp", "ins=2"}, "d"}, // kinds: all
		{[]string{"port=40000-40001"}, "ab"},
		{[]string{"proto=udp"}, "c"},
		{[]string{"proto=1"}, "e"},
		{[]string{"tcp-flags=SYN"}, "abd"},
		{[]string{"tcp-flags=syn,fin"}, "d"},
		{[]string{"tcp-flags=RST"}, "b"},
		{[]string{"uplink=up1"}, "bd"},
		{[]string{"ins=1", "uplink=up0"}, "ae"},
		{[]string{"!proto=tcp"}, "ce"},
		{[]string{"!port=80", "!port=53"}, "be"},
		{[]string{"ins=1", "!src=192.0.2.0/24"}, "ab"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.terms, " "), func(t *testing.T) {
			f, err := ParseFilter(tt.terms)
			if err != nil {
				t.Fatal(err)
			}
			var got []netflow.Flow
			for i := range flows {
				if f.Match(&flows[i]) {
					got = append(got, flows[i])
				}
			}
			if names(got) != tt.want {
				t.Fatalf("matched %q, want %q", names(got), tt.want)
			}
			if !reflect.DeepEqual(f.Terms(), tt.terms) && len(tt.terms) > 0 {
				t.Fatalf("Terms() = %v", f.Terms())
			}
		})
	}
}

func TestFilterErrors(t *testing.T) {
	for _, term := range []string{"src", "src=", "src=10.0.0.0/33", "dst=host", "port=x", "port=9-1", "port=70000",
		"proto=sctpx", "proto=256", "tcp-flags=", "tcp-flags=SYNN", "ins=-1", "ins=a", "uplink=", "colour=red", "=1", strings.Repeat("x", 300)} {
		if _, err := ParseFilter([]string{term}); err == nil {
			t.Errorf("term %q accepted", term)
		}
	}
	if _, err := ParseFilter(make([]string, MaxTerms+1)); err == nil {
		t.Error("too many terms accepted")
	}
}

func TestSortAndAggregate(t *testing.T) {
	fs := append([]netflow.Flow(nil), flows...)
	SortFlows(fs, ByRate)
	if names(fs) != "baced" {
		t.Fatalf("by rate: %s", names(fs))
	}
	SortFlows(fs, ByBytes)
	if names(fs) != "abced" {
		t.Fatalf("by bytes: %s", names(fs))
	}
	tests := []struct {
		by   string
		want []Group
	}{
		{AggSrc, []Group{
			{Key: "10.77.0.1", Flows: 2, Bytes: 100400, Packets: 250 + 100 + 1, BytesPerSec: 5010, PacketsPerSec: 5.01},
			{Key: "10.77.1.1", Flows: 1, Bytes: 2000, Packets: 5 + 2, BytesPerSec: 90000, PacketsPerSec: 90},
			{Key: "192.0.2.7", Flows: 1, Bytes: 84, Packets: 0, BytesPerSec: 1, PacketsPerSec: 0.001},
			{Key: "fd77:1::1", Flows: 1, Bytes: 50, Packets: 0},
		}},
		{AggPort, []Group{{Key: "tcp/80", Flows: 2}, {Key: "tcp/443", Flows: 1}, {Key: "udp/53", Flows: 1}, {Key: "icmp/2048", Flows: 1}}},
		{AggINS, []Group{{Key: "1", Flows: 3}, {Key: "2", Flows: 2}}},
		{AggUplink, []Group{{Key: "up0", Flows: 3}, {Key: "up1", Flows: 2}}},
		{AggDst, []Group{{Key: "10.77.0.10", Flows: 2}, {Key: "10.77.1.10", Flows: 1}, {Key: "10.77.0.11", Flows: 1}, {Key: "fd77:1::11", Flows: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.by, func(t *testing.T) {
			got, err := Aggregate(flows, tt.by, ByBytes)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("groups %+v", got)
			}
			for i := range got {
				if got[i].Key != tt.want[i].Key || got[i].Flows != tt.want[i].Flows {
					t.Fatalf("group %d = %+v, want %+v", i, got[i], tt.want[i])
				}
				if tt.by == AggSrc && (got[i].Bytes != tt.want[i].Bytes || got[i].Packets != tt.want[i].Packets || got[i].BytesPerSec != tt.want[i].BytesPerSec) {
					t.Fatalf("group %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
	if _, err := Aggregate(flows, "colour", ByRate); err == nil {
		t.Fatal("unknown aggregation accepted")
	}
}

// FuzzParseFilter: arbitrary terms never panic, and an accepted filter
// gives the same answer when parsed again from its own terms.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{"src=10.0.0.0/8", "!port=22", "port=1-1024", "tcp-flags=SYN,ACK", "proto=icmpv6", "ins=3", "uplink=up0", "dst=::1", "ip=::ffff:1.2.3.4/120"} {
		f.Add(s, "!"+s)
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		flt, err := ParseFilter([]string{a, b})
		if err != nil {
			return
		}
		again, err := ParseFilter(flt.Terms())
		if err != nil {
			t.Fatalf("own terms rejected: %v", err)
		}
		for i := range flows {
			if flt.Match(&flows[i]) != again.Match(&flows[i]) {
				t.Fatalf("filter %v answers differently after a round trip", flt.Terms())
			}
		}
	})
}
