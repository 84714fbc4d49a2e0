package netflow

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleFlow() Flow {
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	f := Flow{Time: at, INS: 2, Uplink: "up1", PID: 4242, Dir: In, Proto: ProtoTCP,
		Src: netip.MustParseAddr("10.77.1.1"), SrcPort: 40000, Dst: netip.MustParseAddr("10.77.1.11"), DstPort: 80,
		Fwd:   Counters{Bytes: 1000, Packets: 10, Payload: 480, TCPFlags: TCPSyn | TCPAck | TCPFin},
		Rev:   Counters{Bytes: 100000, Packets: 70, Payload: 96360, TCPFlags: TCPSyn | TCPAck | TCPPsh | TCPFin},
		First: at.Add(-time.Second), Last: at.Add(-time.Millisecond), BytesPerSec: 101000, PacketsPerSec: 80, End: EndOfFlow}
	f.ID = FlowID(f.INS, f.Key())
	return f
}

func TestFlowJSONRoundTrip(t *testing.T) {
	f := sampleFlow()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if err := enc.Encode(f); err != nil {
		t.Fatal(err)
	}
	line := buf.String()
	for _, want := range []string{`"proto":"tcp"`, `"dir":"in"`, `"end":"end"`, `"tcp_flags":"FIN,SYN,ACK"`, `"src":"10.77.1.1"`, `"pid":4242`} {
		if !strings.Contains(line, want) {
			t.Errorf("JSON lacks %s: %s", want, line)
		}
	}
	// A live flow has no end field; ICMP types survive.
	g := sampleFlow()
	g.End, g.Proto, g.PID = EndNone, ProtoICMPv6, 0
	g.Src, g.Dst = netip.MustParseAddr("fd77:1::1"), netip.MustParseAddr("fd77:1::11")
	g.ID = FlowID(g.INS, g.Key())
	enc.Encode(g)
	if strings.Contains(strings.Split(buf.String(), "\n")[1], `"end"`) {
		t.Errorf("live flow has an end field: %s", buf.String())
	}
	buf.WriteString("\n   \n")
	var got []Flow
	if err := DecodeFlows(&buf, func(f Flow) error { got = append(got, f); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("decoded %d flows", len(got))
	}
	for i, want := range []Flow{f, g} {
		if !got[i].Time.Equal(want.Time) || !got[i].First.Equal(want.First) {
			t.Fatalf("flow %d times changed", i)
		}
		got[i].Time, got[i].First, got[i].Last = want.Time, want.First, want.Last
		if !reflect.DeepEqual(got[i], want) {
			t.Fatalf("flow %d:\n got %+v\nwant %+v", i, got[i], want)
		}
	}
}

func TestDecodeFlowsRejects(t *testing.T) {
	good, _ := json.Marshal(sampleFlow())
	edit := func(from, to string) string { return strings.Replace(string(good), from, to, 1) }
	tests := map[string]string{
		"not json":       "hello",
		"two values":     string(good) + " {}",
		"unknown field":  edit(`"ins":2`, `"ins":2,"colour":"red"`),
		"bad address":    edit(`"10.77.1.1"`, `"10.77.1"`),
		"mixed families": edit(`"10.77.1.1"`, `"fd77::1"`),
		"no addresses":   `{"ins":1}`,
		"wrong id":       edit(`"id":"2-`, `"id":"3-`),
		"bad proto":      edit(`"proto":"tcp"`, `"proto":"tcpx"`),
		"bad flags":      edit(`"tcp_flags":"FIN,SYN,ACK"`, `"tcp_flags":"FOO"`),
		"negative rate":  edit(`"bytes_per_sec":101000`, `"bytes_per_sec":-1`),
		"bad end":        edit(`"end":"end"`, `"end":"later"`),
		"bad dir":        edit(`"dir":"in"`, `"dir":"up"`),
		"huge ins":       edit(`"ins":2`, `"ins":70000`),
		"long line":      strings.Repeat(" ", MaxFlowLine+1) + string(good),
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			n := 0
			err := DecodeFlows(strings.NewReader(string(good)+"\n"+in+"\n"), func(Flow) error { n++; return nil })
			if err == nil {
				t.Fatalf("accepted %s", in)
			}
			if name != "long line" && !strings.Contains(err.Error(), "line 2") {
				t.Fatalf("error %q does not name line 2", err)
			}
		})
	}
}

func TestFlagsAndNames(t *testing.T) {
	f, err := ParseTCPFlags("syn|ACK, fin")
	if err != nil || f != TCPSyn|TCPAck|TCPFin || f.String() != "FIN,SYN,ACK" || f.Short() != "...A..SF" {
		t.Fatalf("flags %v %q %q %v", f, f.String(), f.Short(), err)
	}
	for s, want := range map[string]Proto{"tcp": 6, "UDP": 17, "icmpv6": 58, "proto-132": 132, "47": 47} {
		if p, err := ParseProto(s); err != nil || p != want {
			t.Errorf("ParseProto(%q) = %v, %v", s, p, err)
		}
	}
	for r := EndNone; r <= EndEvicted; r++ {
		var back EndReason
		b, _ := r.MarshalText()
		if err := back.UnmarshalText(b); err != nil || back != r {
			t.Errorf("end reason %d round trip: %v %v", r, back, err)
		}
	}
}

// FuzzDecodeFlows: arbitrary replay input never panics, and every flow it
// accepts is valid and encodes back to a line it accepts again.
func FuzzDecodeFlows(f *testing.F) {
	good, _ := json.Marshal(sampleFlow())
	f.Add(string(good))
	f.Add(`{"ins":1,"src":"::1","dst":"::2","proto":"udp"}`)
	f.Add(`{"src":"1.2.3.4","dst":"5.6.7.8","fwd":{"tcp_flags":"SYN"},"end":"idle"}` + "\n" + `{}`)
	f.Fuzz(func(t *testing.T, in string) {
		_ = DecodeFlows(strings.NewReader(in), func(fl Flow) error {
			if err := fl.Validate(); err != nil || fl.ID == "" {
				t.Fatalf("accepted invalid flow %+v: %v", fl, err)
			}
			b, err := json.Marshal(fl)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			n := 0
			if err := DecodeFlows(bytes.NewReader(b), func(Flow) error { n++; return nil }); err != nil || n != 1 {
				t.Fatalf("re-decode of %s: %v", b, err)
			}
			return nil
		})
	})
}
