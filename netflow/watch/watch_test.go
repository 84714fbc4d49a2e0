package watch

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/query"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func mk(ins int, uplink string, sport uint16, rate float64, bytes uint64, end netflow.EndReason, at time.Duration) netflow.Flow {
	f := netflow.Flow{Time: t0.Add(at), INS: ins, Uplink: uplink, Proto: netflow.ProtoTCP, Dir: netflow.In,
		Src: netip.MustParseAddr("10.77.0.1"), SrcPort: sport, Dst: netip.MustParseAddr("10.77.0.10"), DstPort: 80,
		Fwd: netflow.Counters{Bytes: bytes / 10, Packets: 3, TCPFlags: netflow.TCPSyn | netflow.TCPAck}, Rev: netflow.Counters{Bytes: bytes - bytes/10, Packets: 7},
		First: t0, Last: t0.Add(at), BytesPerSec: rate, End: end}
	f.ID = netflow.FlowID(ins, f.Key())
	return f
}

func TestViewApply(t *testing.T) {
	v := NewView()
	v.Apply([]netflow.Flow{mk(1, "up0", 1, 100, 1000, 0, 0), mk(1, "up0", 2, 50, 500, 0, 0)})
	if v.Len() != 2 {
		t.Fatalf("%d flows", v.Len())
	}
	// Flow 1 grows, flow 2 has no news and loses its rate, flow 3 ends.
	v.Apply([]netflow.Flow{mk(1, "up0", 1, 300, 4000, 0, time.Second), mk(2, "up1", 3, 10, 10, netflow.EndOfFlow, time.Second)})
	got := map[uint16]netflow.Flow{}
	for _, f := range v.Flows() {
		got[f.SrcPort] = f
	}
	if len(got) != 3 || got[1].Fwd.Bytes+got[1].Rev.Bytes != 4000 || got[1].BytesPerSec != 300 || got[2].BytesPerSec != 0 || got[3].End != netflow.EndOfFlow {
		t.Fatalf("view %+v", got)
	}
	// The ended flow is shown once.
	v.Apply(nil)
	if v.Len() != 2 {
		t.Fatalf("ended flow kept: %d flows", v.Len())
	}
	// The same conversation started again is another flow.
	again := mk(1, "up0", 2, 1, 1, 0, 5*time.Second)
	again.First = t0.Add(4 * time.Second)
	v.Apply([]netflow.Flow{again})
	if v.Len() != 3 {
		t.Fatalf("restarted flow merged: %d flows", v.Len())
	}
}

func TestRender(t *testing.T) {
	flows := []netflow.Flow{mk(1, "up0", 1, 1<<20, 5<<20, 0, 3*time.Second), mk(2, "up1", 2, 2048, 100, netflow.EndIdle, 0), mk(2, "up0", 3, 0, 1<<30, 0, 0)}
	flows[0].PID = 4242
	var b bytes.Buffer
	if err := Render(&b, flows, Options{Sort: query.ByRate, Top: 2, Totals: true}, t0); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"3 flows", "UPLINK", "INS", "up0  ", flows[0].ID, "4242", "10.77.0.1:1", "10.77.0.10:80", "...A..S.", "1.0M/s", "idle"} {
		if !strings.Contains(out, want) {
			t.Errorf("frame lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, flows[2].ID) {
		t.Errorf("--top 2 by rate shows the idle third flow:\n%s", out)
	}
	b.Reset()
	if err := Render(&b, flows, Options{Sort: query.ByBytes, AggregateBy: query.AggINS}, t0); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	var rows []string
	for i, l := range lines {
		if strings.HasPrefix(l, "INS") {
			rows = lines[i+1 : i+3]
		}
	}
	if len(rows) != 2 || !strings.HasPrefix(rows[0], "2 ") || !strings.HasPrefix(rows[1], "1 ") {
		t.Fatalf("aggregation by INS, by bytes:\n%s", b.String())
	}
}

func TestReplayBatches(t *testing.T) {
	var rec bytes.Buffer
	// Three refreshes a second apart, two flows in the first.
	WriteJSON(&rec, []netflow.Flow{mk(1, "up0", 1, 1, 1, 0, 0), mk(1, "up0", 2, 1, 1, 0, 0)})
	WriteJSON(&rec, []netflow.Flow{mk(1, "up0", 1, 1, 2, 0, time.Second)})
	WriteJSON(&rec, []netflow.Flow{mk(1, "up0", 1, 1, 3, netflow.EndOfFlow, 2*time.Second)})
	var sizes []int
	var ats []time.Time
	err := Replay(&rec, time.Second, func(at time.Time, u []netflow.Flow) error {
		sizes = append(sizes, len(u))
		ats = append(ats, at)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != 3 || sizes[0] != 2 || sizes[1] != 1 || !ats[2].Equal(t0.Add(2*time.Second)) {
		t.Fatalf("batches %v at %v", sizes, ats)
	}
	if err := Replay(strings.NewReader("{}\n"), time.Second, func(time.Time, []netflow.Flow) error { return nil }); err == nil {
		t.Fatal("invalid stream replayed")
	}
}
