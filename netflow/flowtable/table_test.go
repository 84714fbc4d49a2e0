package flowtable

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

var (
	client = netip.MustParseAddr("192.0.2.1")
	server = netip.MustParseAddr("198.51.100.10")
)

func tcp(src, dst netip.Addr, sp, dp uint16, flags uint8, payload int) *netflow.Packet {
	return &netflow.Packet{Key: netflow.Key{Src: src, Dst: dst, SrcPort: sp, DstPort: dp, Proto: netflow.ProtoTCP},
		Len: 52 + payload, Payload: payload, TCPFlags: flags}
}

// collectAll runs collection rounds at now until one ends and returns the
// decoded records.
func collectAll(t *testing.T, tb *Table, now time.Duration, owners OwnerFunc) ([]Record, Stats) {
	t.Helper()
	var out []Record
	var st Stats
	for range 1000 {
		bt, err := DecodeBatch(tb.Collect(tb.base.Add(now), 65000, owners))
		if err != nil {
			t.Fatalf("DecodeBatch: %v", err)
		}
		out = append(out, bt.Records...)
		st = bt.Stats
		if !bt.More {
			return out, st
		}
	}
	t.Fatal("collection never ended")
	return nil, st
}

const ms = int64(time.Millisecond)

func TestBiflowCounts(t *testing.T) {
	tests := []struct {
		name        string
		first       *netflow.Packet
		dir         netflow.Direction
		wantInbound bool
		wantSrc     netip.Addr
	}{
		{"inbound SYN", tcp(client, server, 40000, 80, netflow.TCPSyn, 0), netflow.In, true, client},
		{"outbound SYN", tcp(server, client, 40000, 80, netflow.TCPSyn, 0), netflow.Out, false, server},
		// The SYN was missed: the SYN-ACK's receiver started it.
		{"SYN-ACK first", tcp(server, client, 80, 40000, netflow.TCPSyn|netflow.TCPAck, 0), netflow.Out, true, client},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := New(Config{})
			tb.Account(1*ms, "up0", tt.dir, tt.first)
			fwdKey := tt.first.Key
			if fwdKey.Src != tt.wantSrc {
				fwdKey = fwdKey.Reverse()
			}
			// Three requests of 100 bytes, three answers of 1000.
			for i := range 3 {
				q := tcp(fwdKey.Src, fwdKey.Dst, fwdKey.SrcPort, fwdKey.DstPort, netflow.TCPAck|netflow.TCPPsh, 100)
				a := tcp(fwdKey.Dst, fwdKey.Src, fwdKey.DstPort, fwdKey.SrcPort, netflow.TCPAck, 1000)
				tb.Account(int64(i+2)*ms, "up0", netflow.In, q)
				tb.Account(int64(i+2)*ms+1, "up0", netflow.Out, a)
			}
			recs, st := collectAll(t, tb, 10*time.Millisecond, nil)
			if len(recs) != 1 || st.Flows != 1 || st.Created != 1 {
				t.Fatalf("records %+v, stats %+v; want one flow", recs, st)
			}
			r := recs[0]
			if r.Key != fwdKey || r.Inbound != tt.wantInbound || r.Uplink != "up0" || r.End != netflow.EndNone {
				t.Fatalf("record %+v; want key %v, inbound %v", r, fwdKey, tt.wantInbound)
			}
			fwd, rev := r.Fwd, r.Rev
			first := uint64(0)
			if tt.first.Key == fwdKey {
				first = 1
			}
			if fwd.Payload != 300 || fwd.Packets != 3+first || rev.Payload != 3000 || rev.Packets != 4-first {
				t.Fatalf("fwd %+v rev %+v", fwd, rev)
			}
			if fwd.Bytes != fwd.Packets*52+300 || rev.Bytes != rev.Packets*52+3000 {
				t.Fatalf("bytes fwd %d rev %d for packets %d/%d", fwd.Bytes, rev.Bytes, fwd.Packets, rev.Packets)
			}
			if got := r.Last.Sub(r.First); got != 3*time.Millisecond+1 {
				t.Fatalf("duration %v", got)
			}
			// Nothing changed: the next round is empty.
			if recs, _ := collectAll(t, tb, 11*time.Millisecond, nil); len(recs) != 0 {
				t.Fatalf("unchanged flow reported again: %+v", recs)
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	cfg := Config{IdleTimeout: 15 * time.Second, EndGrace: time.Second}
	sec := int64(time.Second)
	tests := []struct {
		name    string
		flags   []uint8 // fwd, rev alternately from t=0
		collect int64   // when to collect
		want    netflow.EndReason
	}{
		{"live", []uint8{netflow.TCPSyn, netflow.TCPSyn | netflow.TCPAck}, 14 * sec, netflow.EndNone},
		{"idle", []uint8{netflow.TCPSyn, netflow.TCPSyn | netflow.TCPAck}, 15*sec + 1, netflow.EndIdle},
		{"one FIN stays", []uint8{netflow.TCPAck, netflow.TCPFin}, 5 * sec, netflow.EndNone},
		{"both FIN within grace", []uint8{netflow.TCPFin, netflow.TCPFin}, sec / 2, netflow.EndNone},
		{"both FIN after grace", []uint8{netflow.TCPFin, netflow.TCPFin}, sec + 1, netflow.EndOfFlow},
		{"RST after grace", []uint8{netflow.TCPAck, netflow.TCPRst}, 2 * sec, netflow.EndOfFlow},
		{"RST and idle", []uint8{netflow.TCPRst}, 20 * sec, netflow.EndOfFlow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := New(cfg)
			for i, f := range tt.flags {
				p := tcp(client, server, 1000, 80, f, 0)
				if i%2 == 1 {
					p = tcp(server, client, 80, 1000, f, 0)
				}
				tb.Account(1, "up0", netflow.In, p)
			}
			recs, st := collectAll(t, tb, time.Duration(tt.collect), nil)
			if len(recs) != 1 || recs[0].End != tt.want {
				t.Fatalf("records %+v; want one with end %v", recs, tt.want)
			}
			if wantFlows := uint64(1); tt.want != netflow.EndNone {
				if st.Flows != 0 {
					t.Fatalf("ended flow still in table: %+v", st)
				}
			} else if st.Flows != wantFlows {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestEvictionAndRestart(t *testing.T) {
	tb := New(Config{MaxFlows: 4, Shards: 1})
	for i := range 6 {
		tb.Account(int64(i+1)*ms, "up0", netflow.In, tcp(client, server, uint16(1000+i), 80, netflow.TCPSyn, 0))
	}
	// Refresh the flow of port 1002: it is now the most recent.
	tb.Account(7*ms, "up0", netflow.In, tcp(client, server, 1002, 80, netflow.TCPAck, 0))
	tb.Account(8*ms, "up0", netflow.In, tcp(client, server, 1006, 80, netflow.TCPSyn, 0))
	recs, st := collectAll(t, tb, 9*time.Millisecond, nil)
	if st.Evicted != 3 || st.Flows != 4 || st.Created != 7 {
		t.Fatalf("stats %+v; want 3 evicted, 4 in the table, 7 created", st)
	}
	var evicted []uint16
	live := map[uint16]bool{}
	for _, r := range recs {
		if r.End == netflow.EndEvicted {
			evicted = append(evicted, r.Key.SrcPort)
		} else {
			live[r.Key.SrcPort] = true
		}
	}
	if !reflect.DeepEqual(evicted, []uint16{1000, 1001, 1003}) {
		t.Fatalf("evicted %v; want the least recently used 1000, 1001, 1003", evicted)
	}
	if !live[1002] || !live[1006] || len(live) != 4 {
		t.Fatalf("live flows %v", live)
	}
	// A flow that ended and comes back is a new flow.
	tb.Account(10*ms, "up0", netflow.In, tcp(client, server, 1000, 80, netflow.TCPSyn, 0))
	recs, _ = collectAll(t, tb, 11*time.Millisecond, nil)
	var seqs []uint64
	for _, r := range recs {
		if r.Key.SrcPort == 1000 && r.End == netflow.EndNone {
			seqs = append(seqs, r.Seq)
		}
	}
	if len(seqs) != 1 || seqs[0] <= 7 {
		t.Fatalf("restarted flow: seqs %v; want one new sequence number", seqs)
	}
}

func TestSeparateUplinksAndFamilies(t *testing.T) {
	tb := New(Config{})
	c6, s6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::a")
	tb.Account(1, "up0", netflow.In, tcp(client, server, 1, 80, netflow.TCPSyn, 0))
	tb.Account(1, "up1", netflow.In, tcp(client, server, 1, 80, netflow.TCPSyn, 0))
	tb.Account(1, "up1", netflow.In, tcp(c6, s6, 1, 80, netflow.TCPSyn, 0))
	tb.Account(1, "up1", netflow.In, &netflow.Packet{Key: netflow.Key{Src: c6, Dst: s6, DstPort: 128 << 8, Proto: netflow.ProtoICMPv6}, Len: 64, Payload: 24})
	recs, _ := collectAll(t, tb, time.Millisecond, nil)
	got := map[string]bool{}
	for _, r := range recs {
		got[r.Uplink+" "+r.Key.String()] = true
	}
	want := map[string]bool{
		"up0 tcp 192.0.2.1:1 -> 198.51.100.10:80":           true,
		"up1 tcp 192.0.2.1:1 -> 198.51.100.10:80":           true,
		"up1 tcp [2001:db8::1]:1 -> [2001:db8::a]:80":       true,
		"up1 icmpv6 [2001:db8::1]:0 -> [2001:db8::a]:32768": true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("flows %v\nwant %v", got, want)
	}
}

func TestCollectPagesEveryRecordOnce(t *testing.T) {
	tb := New(Config{MaxFlows: 5000})
	for i := range 3000 {
		tb.Account(1, "up0", netflow.In, tcp(client, server, uint16(i+1), 80, netflow.TCPSyn, i))
	}
	seen := map[uint16]int{}
	pages := 0
	for {
		b := tb.Collect(tb.base.Add(time.Millisecond), 4000, nil)
		if len(b) > 4000 {
			t.Fatalf("batch of %d bytes, asked for 4000", len(b))
		}
		bt, err := DecodeBatch(b)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, r := range bt.Records {
			seen[r.Key.SrcPort]++
			if r.Fwd.Payload != uint64(r.Key.SrcPort-1) {
				t.Fatalf("flow %d: payload %d", r.Key.SrcPort, r.Fwd.Payload)
			}
		}
		if !bt.More {
			break
		}
	}
	if len(seen) != 3000 || pages < 3000/40 {
		t.Fatalf("%d flows in %d pages", len(seen), pages)
	}
	for p, n := range seen {
		if n != 1 {
			t.Fatalf("flow %d reported %d times", p, n)
		}
	}
}

func TestOwners(t *testing.T) {
	tb := New(Config{})
	tb.Account(1, "up0", netflow.In, tcp(client, server, 1, 80, netflow.TCPSyn, 0))
	tb.Account(1, "up0", netflow.In, tcp(client, server, 2, 81, netflow.TCPSyn, 0))
	calls := 0
	owners := func(recs []*Record) {
		calls++
		for _, r := range recs {
			if !r.Inbound {
				t.Errorf("owner lookup for %+v: inbound lost", r)
			}
			if r.Key.DstPort == 80 {
				r.Group = 7
			}
		}
	}
	for round := range 5 {
		// Both flows change every round.
		tb.Account(int64(round+2)*ms, "up0", netflow.In, tcp(client, server, 1, 80, netflow.TCPAck, 0))
		tb.Account(int64(round+2)*ms, "up0", netflow.In, tcp(client, server, 2, 81, netflow.TCPAck, 0))
		recs, _ := collectAll(t, tb, time.Duration(round+3)*time.Millisecond, owners)
		for _, r := range recs {
			if want := map[uint16]uint64{80: 7, 81: 0}[r.Key.DstPort]; r.Group != want {
				t.Fatalf("round %d: flow to %d has group %d, want %d", round, r.Key.DstPort, r.Group, want)
			}
		}
	}
	// Port 80 is resolved once; port 81 is tried ownerTries times.
	if calls != ownerTries {
		t.Fatalf("owner function called %d times, want %d", calls, ownerTries)
	}
	// The owner is kept in the ended record.
	recs, _ := collectAll(t, tb, time.Minute, nil)
	for _, r := range recs {
		if r.Key.DstPort == 80 && (r.End != netflow.EndIdle || r.Group != 7) {
			t.Fatalf("ended record %+v", r)
		}
	}
}

func TestLostEndedRecords(t *testing.T) {
	tb := New(Config{MaxFlows: 4, Shards: 1})
	tb.ended.max = 10
	for i := range 30 {
		tb.Account(int64(i+1), "up0", netflow.In, tcp(client, server, uint16(i+1), 80, netflow.TCPSyn, 0))
	}
	recs, st := collectAll(t, tb, time.Millisecond, nil)
	if st.Evicted != 26 || st.Lost != 16 {
		t.Fatalf("stats %+v; want 26 evicted, 16 lost", st)
	}
	ended := 0
	for _, r := range recs {
		if r.End == netflow.EndEvicted {
			ended++
			if r.Key.SrcPort <= 16 {
				t.Fatalf("kept an old record %v; the oldest are dropped", r.Key)
			}
		}
	}
	if ended != 10 {
		t.Fatalf("%d ended records, want the 10 the queue holds", ended)
	}
}

func TestConcurrentCounting(t *testing.T) {
	tb := New(Config{})
	const workers, per = 8, 5000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				tb.Packet("up0", netflow.In, tcp(client, server, uint16(i%50+1), 80, netflow.TCPAck, w))
			}
		}()
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		// Collect while counting: totals must still add up.
		for {
			select {
			case <-done:
				return
			default:
				tb.Collect(time.Now(), 65000, nil)
			}
		}
	}()
	wg.Wait()
	close(done)
	<-stopped
	tb.pending = tb.pending[:0]
	for i := range tb.shards {
		for e := tb.shards[i].head; e != nil; e = e.next {
			e.dirty = true
		}
	}
	recs, _ := collectAll(t, tb, time.Since(tb.base), nil)
	var pkts, payload uint64
	for _, r := range recs {
		pkts += r.Fwd.Packets
		payload += r.Fwd.Payload
	}
	if pkts != workers*per || payload != per*(0+1+2+3+4+5+6+7) {
		t.Fatalf("%d packets, %d payload bytes in %d flows", pkts, payload, len(recs))
	}
}

func TestNoAllocationForKnownFlows(t *testing.T) {
	tb := New(Config{})
	p := tcp(client, server, 1, 80, netflow.TCPAck, 100)
	r := tcp(server, client, 80, 1, netflow.TCPAck, 100)
	tb.Packet("up0", netflow.In, p)
	if n := testing.AllocsPerRun(1000, func() {
		tb.Packet("up0", netflow.In, p)
		tb.Packet("up0", netflow.Out, r)
	}); n != 0 {
		t.Fatalf("%v allocations per packet of a known flow", n)
	}
}

func TestBatchRoundTrip(t *testing.T) {
	at := time.Unix(1700000000, 123456789)
	in := Batch{Stats: Stats{Flows: 2, Created: 9, Evicted: 3, Lost: 1}, More: true, Records: []Record{
		{Seq: 1, Key: netflow.Key{Src: client, Dst: server, SrcPort: 5, DstPort: 80, Proto: 6}, Uplink: "up0", Inbound: true,
			Fwd: netflow.Counters{Bytes: 1, Packets: 2, Payload: 3, TCPFlags: 0x12}, Rev: netflow.Counters{Bytes: 4, Packets: 5, Payload: 6, TCPFlags: 1},
			First: at, Last: at.Add(time.Second), End: netflow.EndOfFlow, Group: 1<<63 | 5},
		{Seq: 2, Key: netflow.Key{Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8::2"), DstPort: 53, Proto: 17}, Uplink: "wan-b",
			First: at, Last: at},
	}}
	b, err := AppendBatch(nil, &in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range out.Records {
		// time.Time from Unix has no monotonic reading; compare instants.
		if !out.Records[i].First.Equal(in.Records[i].First) || !out.Records[i].Last.Equal(in.Records[i].Last) {
			t.Fatalf("record %d times %v..%v", i, out.Records[i].First, out.Records[i].Last)
		}
		out.Records[i].First, out.Records[i].Last = in.Records[i].First, in.Records[i].Last
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip\n got %+v\nwant %+v", out, in)
	}
	// Every truncation fails cleanly.
	for n := range len(b) {
		if _, err := DecodeBatch(b[:n]); !errors.Is(err, ErrBatch) {
			t.Fatalf("truncated to %d bytes: err %v", n, err)
		}
	}
}

func FuzzDecodeBatch(f *testing.F) {
	at := time.Unix(1700000000, 0)
	for _, bt := range []Batch{
		{},
		{Records: []Record{{Seq: 1, Key: netflow.Key{Src: client, Dst: server, SrcPort: 1, DstPort: 2, Proto: 6}, Uplink: "up0", First: at, Last: at}}},
		{More: true, Records: []Record{{Key: netflow.Key{Src: netip.IPv6Loopback(), Dst: netip.IPv6Loopback(), Proto: 58}, Uplink: "", First: at, Last: at.Add(1), End: netflow.EndIdle}}},
	} {
		b, err := AppendBatch(nil, &bt)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		bt, err := DecodeBatch(b)
		if err != nil {
			if !errors.Is(err, ErrBatch) {
				t.Fatalf("error %v does not wrap ErrBatch", err)
			}
			return
		}
		// What decodes re-encodes to a batch that decodes the same.
		again, err := AppendBatch(nil, &bt)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		bt2, err := DecodeBatch(again)
		if err != nil || len(bt2.Records) != len(bt.Records) || bt2.Stats != bt.Stats || bt2.More != bt.More {
			t.Fatalf("re-decode: %v (%d vs %d records)", err, len(bt2.Records), len(bt.Records))
		}
		for i := range bt.Records {
			a, c := bt.Records[i], bt2.Records[i]
			if a.Key != c.Key || a.Fwd != c.Fwd || a.Rev != c.Rev || !a.First.Equal(c.First) || a.Uplink != c.Uplink {
				t.Fatalf("record %d changed: %+v -> %+v", i, a, c)
			}
		}
	})
}

func BenchmarkPacketKnownFlow(b *testing.B) {
	tb := New(Config{})
	pkts := make([]*netflow.Packet, 256)
	for i := range pkts {
		pkts[i] = tcp(client, server, uint16(i+1), 80, netflow.TCPAck, 1400)
		tb.Packet("up0", netflow.In, pkts[i])
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			tb.Packet("up0", netflow.In, pkts[i&255])
			i++
		}
	})
}

func BenchmarkPacketNewFlow(b *testing.B) {
	tb := New(Config{MaxFlows: 1 << 16})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tb.Packet("up0", netflow.In, tcp(client, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(i), 80, netflow.TCPSyn, 0))
	}
}

func ExampleTable() {
	tb := New(Config{})
	tb.Packet("up0", netflow.In, tcp(client, server, 40000, 80, netflow.TCPSyn, 0))
	tb.Packet("up0", netflow.Out, tcp(server, client, 80, 40000, netflow.TCPSyn|netflow.TCPAck, 0))
	bt, _ := DecodeBatch(tb.Collect(time.Now(), 65000, nil))
	r := bt.Records[0]
	fmt.Println(r.Key, r.Inbound, r.Fwd.Packets, r.Rev.Packets, r.Fwd.TCPFlags|r.Rev.TCPFlags)
	// Output: tcp 192.0.2.1:40000 -> 198.51.100.10:80 true 1 1 SYN,ACK
}

// TestBurstBuffersNotKept: a collection round after a burst of 5,000 ended
// flows hands every record out once and leaves the table's record buffers
// at their resting size, not at the burst's.
func TestBurstBuffersNotKept(t *testing.T) {
	tb := New(Config{MaxFlows: 20000})
	const burst = 5000
	for i := range burst {
		p := uint16(i + 1)
		tb.Account(1, "up0", netflow.In, tcp(client, server, p, 80, netflow.TCPSyn, 0))
		tb.Account(2, "up0", netflow.In, tcp(client, server, p, 80, netflow.TCPRst, 0))
	}
	// Past the idle timeout every flow has ended: the sweep moves them to
	// the ended ring, the round hands them out.
	recs, _ := collectAll(t, tb, time.Hour, nil)
	ended := map[uint16]bool{}
	for _, r := range recs {
		if r.End != netflow.EndNone {
			ended[r.Key.SrcPort] = true
		}
	}
	if len(ended) != burst {
		t.Fatalf("%d flows reported ended, want %d", len(ended), burst)
	}
	if c := cap(tb.ended.buf); c > keepRecords {
		t.Errorf("ended ring keeps room for %d records after the round, want at most %d", c, keepRecords)
	}
	if c := cap(tb.pending); c > keepRecords {
		t.Errorf("pending records keep room for %d after the round, want at most %d", c, keepRecords)
	}
	// The table works on: a new flow is reported.
	tb.Account(int64(2*time.Hour), "up0", netflow.In, tcp(client, server, 1, 80, netflow.TCPSyn, 0))
	if recs, _ := collectAll(t, tb, 2*time.Hour+time.Millisecond, nil); len(recs) != 1 {
		t.Errorf("after the burst: %d records, want the new flow's", len(recs))
	}
}
