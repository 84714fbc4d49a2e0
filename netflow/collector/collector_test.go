package collector

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/flowtable"
)

var (
	t0  = time.Unix(1_700_000_000, 0)
	key = netflow.Key{Src: netip.MustParseAddr("10.77.0.1"), Dst: netip.MustParseAddr("10.77.0.10"), SrcPort: 40000, DstPort: 80, Proto: 6}
)

func rec(seq uint64, fwd, rev uint64, first, last time.Duration, end netflow.EndReason) flowtable.Record {
	return flowtable.Record{Seq: seq, Key: key, Uplink: "up0", Inbound: true,
		Fwd: netflow.Counters{Bytes: fwd, Packets: fwd / 100}, Rev: netflow.Counters{Bytes: rev, Packets: rev / 1000},
		First: t0.Add(first), Last: t0.Add(last), End: end, Group: 42}
}

func batch(rs ...flowtable.Record) *flowtable.Batch { return &flowtable.Batch{Records: rs} }

func pid(g uint64) int {
	if g == 42 {
		return 4242
	}
	return 0
}

func TestRatesPIDAndSince(t *testing.T) {
	c := New(Config{Interface: func(string) uint32 { return 1 }})
	if ex := c.Update(1, batch(rec(1, 1000, 10000, 0, 500*time.Millisecond, 0)), t0.Add(time.Second), pid); len(ex) != 0 {
		t.Fatalf("live flow exported: %+v", ex)
	}
	r := c.Query(Query{}, t0.Add(time.Second))
	if len(r.Flows) != 1 {
		t.Fatalf("flows %+v", r.Flows)
	}
	f := r.Flows[0]
	if f.PID != 4242 || f.ID != netflow.FlowID(1, key) || f.Dir != netflow.In || f.Uplink != "up0" || f.BytesPerSec != 11000 {
		t.Fatalf("flow %+v", f)
	}
	gen := r.Gen
	// Another INS changes; flow 1 of INS 1 does not.
	c.Update(2, batch(rec(1, 100, 0, 0, 0, 0)), t0.Add(2*time.Second), pid)
	r = c.Query(Query{Since: gen}, t0.Add(2*time.Second))
	if len(r.Flows) != 1 || r.Flows[0].INS != 2 {
		t.Fatalf("since %d: %+v", gen, r.Flows)
	}
	// 2 s later the first flow grows by 4000 bytes.
	c.Update(1, batch(rec(1, 2000, 13000, 0, 2900*time.Millisecond, 0)), t0.Add(3*time.Second), pid)
	r = c.Query(Query{Since: r.Gen, Match: func(f *netflow.Flow) bool { return f.INS == 1 }}, t0.Add(3*time.Second))
	if len(r.Flows) != 1 || r.Flows[0].BytesPerSec != 2000 || r.Flows[0].Fwd.Bytes != 2000 {
		t.Fatalf("after growth: %+v", r.Flows)
	}
	// No news for more than 2 s: the rate reads zero.
	r = c.Query(Query{Match: func(f *netflow.Flow) bool { return f.INS == 1 }}, t0.Add(5500*time.Millisecond))
	if r.Flows[0].BytesPerSec != 0 || r.Flows[0].Fwd.Bytes != 2000 {
		t.Fatalf("idle flow: %+v", r.Flows[0])
	}
}

func TestExportDeltasAddUp(t *testing.T) {
	c := New(Config{ActiveTimeout: 60 * time.Second, KeepEnded: 10 * time.Second})
	sec := time.Second
	c.Update(1, batch(rec(7, 1000, 5000, 0, sec, 0)), t0.Add(sec), pid)
	if ex := c.Expire(t0.Add(59 * sec)); len(ex) != 0 {
		t.Fatalf("exported before the active timeout: %+v", ex)
	}
	c.Update(1, batch(rec(7, 3000, 9000, 0, 59*sec, 0)), t0.Add(59*sec), pid)
	ex := c.Expire(t0.Add(60 * sec))
	if len(ex) != 1 || ex[0].Reason != netflow.EndActive || ex[0].Fwd.Bytes != 3000 || ex[0].Rev.Bytes != 9000 ||
		!ex[0].Start.Equal(t0) || !ex[0].End.Equal(t0.Add(59*sec)) || ex[0].Domain != 1 || !ex[0].Inbound {
		t.Fatalf("active timeout export %+v", ex)
	}
	// Nothing new since: no second active export.
	if ex := c.Expire(t0.Add(125 * sec)); len(ex) != 0 {
		t.Fatalf("idle flow exported again: %+v", ex)
	}
	ended := c.Update(1, batch(rec(7, 3500, 12000, 0, 130*sec, netflow.EndOfFlow)), t0.Add(131*sec), pid)
	if len(ended) != 1 || ended[0].Fwd.Bytes != 500 || ended[0].Rev.Bytes != 3000 || ended[0].Reason != netflow.EndOfFlow || !ended[0].Start.Equal(t0.Add(59*sec)) {
		t.Fatalf("end export %+v", ended)
	}
	// A repeated end record exports nothing.
	if again := c.Update(1, batch(rec(7, 3500, 12000, 0, 130*sec, netflow.EndOfFlow)), t0.Add(132*sec), pid); len(again) != 0 {
		t.Fatalf("exported twice: %+v", again)
	}
	// The ended flow stays visible for KeepEnded, then goes.
	if r := c.Query(Query{}, t0.Add(140*sec)); len(r.Flows) != 1 || r.Flows[0].End != netflow.EndOfFlow {
		t.Fatalf("ended flow: %+v", r.Flows)
	}
	c.Expire(t0.Add(141 * sec))
	if r := c.Query(Query{}, t0.Add(141*sec)); len(r.Flows) != 0 {
		t.Fatalf("ended flow kept too long: %+v", r.Flows)
	}
}

func TestShortFlowSeenOnlyEnded(t *testing.T) {
	c := New(Config{})
	ex := c.Update(1, batch(rec(1, 400, 2000, 0, 10*time.Millisecond, netflow.EndOfFlow)), t0.Add(time.Second), pid)
	if len(ex) != 1 || ex[0].Fwd.Bytes != 400 || ex[0].Rev.Bytes != 2000 {
		t.Fatalf("export %+v", ex)
	}
}

func TestForgetAndFlush(t *testing.T) {
	c := New(Config{})
	c.Update(1, batch(rec(1, 100, 100, 0, 0, 0), rec(2, 100, 100, 0, 0, netflow.EndIdle)), t0, pid)
	c.Update(2, batch(rec(1, 100, 100, 0, 0, 0)), t0, pid)
	ex := c.Forget(1, t0.Add(time.Second))
	if len(ex) != 1 || ex[0].Reason != netflow.EndForced || ex[0].Domain != 1 {
		t.Fatalf("forget: %+v", ex)
	}
	if _, ok := c.Stats()[1]; ok {
		t.Fatal("stats of a forgotten INS kept")
	}
	ex = c.FlushAll(t0.Add(2 * time.Second))
	if len(ex) != 1 || ex[0].Domain != 2 {
		t.Fatalf("flush: %+v", ex)
	}
	if a := c.Active(); len(a) != 0 {
		t.Fatalf("active after flush: %v", a)
	}
}

func TestPaging(t *testing.T) {
	c := New(Config{})
	var rs []flowtable.Record
	for i := range 25 {
		r := rec(uint64(i+1), 100, 100, 0, 0, 0)
		r.Key.SrcPort = uint16(i)
		rs = append(rs, r)
	}
	c.Update(1, batch(rs[:10]...), t0, pid)
	c.Update(2, batch(rs[10:]...), t0, pid)
	var got []netflow.Flow
	q := Query{Limit: 7}
	for range 10 {
		r := c.Query(q, t0)
		got = append(got, r.Flows...)
		if !r.More {
			break
		}
		q.After = r.Next
	}
	if len(got) != 25 {
		t.Fatalf("%d flows over pages, want 25", len(got))
	}
	for i, f := range got {
		if int(f.SrcPort) != i {
			t.Fatalf("page order: flow %d has port %d", i, f.SrcPort)
		}
	}
}

// TestFlowMapShrinks: after a burst of flows has ended and expired, the
// collector no longer holds the map slots of the burst (a Go map keeps its
// largest tables), and the flows that go on are still there.
func TestFlowMapShrinks(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	c := New(Config{})
	live := make([]flowtable.Record, 10)
	for i := range live {
		live[i] = rec(uint64(i+1), 100, 100, 0, 0, 0)
	}
	c.Update(1, batch(live...), t0, pid)
	before := heap()
	const burst = 200_000
	rs := make([]flowtable.Record, 0, burst)
	for i := range burst {
		rs = append(rs, rec(uint64(100+i), 100, 100, 0, time.Second, netflow.EndOfFlow))
	}
	c.Update(1, batch(rs...), t0.Add(time.Second), pid)
	rs = nil
	peak := heap()
	c.Expire(t0.Add(time.Second + DefaultKeepEnded))
	after := heap()
	t.Logf("heap: %d KiB with %d live flows, %d KiB with the burst, %d KiB after it expired", before>>10, len(live), peak>>10, after>>10)
	// 200,000 slots of a map[flowKey]*state are about 6 MiB; 1 MiB
	// leaves room for what the runtime itself allocates meanwhile.
	if after > before+1<<20 {
		t.Errorf("the collector holds %d KiB more after the burst expired than before it", (after-before)>>10)
	}
	if a := c.Active(); a[1]["up0"] != len(live) {
		t.Errorf("live flows after the shrink: %v, want %d on INS 1", a, len(live))
	}
	if r := c.Query(Query{}, t0.Add(time.Second+DefaultKeepEnded)); len(r.Flows) != len(live) {
		t.Errorf("query after the shrink: %d flows, want %d", len(r.Flows), len(live))
	}
}
