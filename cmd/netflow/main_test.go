package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/watch"
)

// recording is a flow stream of four flows over two refreshes.
func recording() string {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	mk := func(ins int, src string, dport uint16, proto netflow.Proto, flags netflow.TCPFlags, dt time.Duration) netflow.Flow {
		f := netflow.Flow{Time: at.Add(dt), INS: ins, Uplink: "up0", Proto: proto, Src: netip.MustParseAddr(src), SrcPort: 40000,
			Dst: netip.MustParseAddr("10.77.0.10"), DstPort: dport, Fwd: netflow.Counters{Bytes: 100, Packets: 1, TCPFlags: flags}, First: at, Last: at.Add(dt)}
		f.ID = netflow.FlowID(ins, f.Key())
		return f
	}
	var b bytes.Buffer
	watch.WriteJSON(&b, []netflow.Flow{
		mk(1, "10.77.0.1", 80, netflow.ProtoTCP, netflow.TCPSyn, 0),
		mk(1, "10.77.0.2", 22, netflow.ProtoTCP, netflow.TCPSyn|netflow.TCPRst, 0),
		mk(2, "192.0.2.9", 53, netflow.ProtoUDP, 0, 0),
	})
	watch.WriteJSON(&b, []netflow.Flow{mk(2, "10.77.0.3", 443, netflow.ProtoTCP, netflow.TCPSyn|netflow.TCPAck, time.Second)})
	return b.String()
}

func run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := rootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestReplayFilters(t *testing.T) {
	rec := recording()
	tests := []struct {
		args  []string
		ports []string // destination ports left, in order
	}{
		{nil, []string{"80", "22", "53", "443"}},
		{[]string{"--proto", "tcp"}, []string{"80", "22", "443"}},
		{[]string{"--proto", "tcp", "--not", "--port", "22"}, []string{"80", "443"}},
		{[]string{"--not", "--proto", "tcp", "--port", "22"}, nil},
		{[]string{"--port", "80", "--port", "53"}, []string{"80", "53"}},
		{[]string{"--src", "10.77.0.0/30", "--not", "--tcp-flags", "RST"}, []string{"80", "443"}},
		{[]string{"--ins", "2"}, []string{"53", "443"}},
		{[]string{"--dst", "10.77.0.10", "--uplink", "up1"}, nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err := run(t, rec, append([]string{"watch", "--input-file", "-", "-o", "json"}, tt.args...)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var ports []string
			err = netflow.DecodeFlows(strings.NewReader(out), func(f netflow.Flow) error {
				ports = append(ports, f.Key().String()[strings.LastIndexByte(f.Key().String(), ':')+1:])
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(ports, ",") != strings.Join(tt.ports, ",") {
				t.Fatalf("ports %v, want %v", ports, tt.ports)
			}
		})
	}
}

func TestReplayTable(t *testing.T) {
	out, err := run(t, recording(), "watch", "--input-file", "-", "--aggregate-by", "ins", "--sort", "packets")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// Two refreshes: two frames, the second with the flow of the second.
	if n := strings.Count(out, " flows "); n != 2 || !strings.Contains(out, "4 flows") {
		t.Fatalf("frames:\n%s", out)
	}
	out, err = run(t, recording(), "watch", "--input-file", "-", "--count", "1")
	if err != nil || strings.Count(out, " flows ") != 1 || !strings.Contains(out, "10.77.0.1:40000") {
		t.Fatalf("--count 1: %v\n%s", err, out)
	}
}

func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"watch", "--input-file", "-", "--not"},
		{"watch", "--input-file", "-", "--port", "x"},
		{"watch", "--input-file", "-", "--sort", "colour"},
		{"watch", "--input-file", "-", "-o", "json", "--aggregate-by", "src"},
		{"watch", "--input-file", "-", "--aggregate-by", "colour"},
		{"watch", "--input-file", "-", "--interval", "1ms"},
		{"--api", "tls://127.0.0.1:1", "ls"},
		{"--api", "tcp://127.0.0.1:1", "ls"},
	} {
		if out, err := run(t, recording(), args...); err == nil {
			t.Errorf("%v accepted:\n%s", args, out)
		}
	}
	if _, err := run(t, "not json\n", "watch", "--input-file", "-"); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad stream: %v", err)
	}
}
