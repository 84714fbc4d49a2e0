package rules

import (
	"net/netip"
	"testing"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

// offer sends packets of size bytes from 10.0.0.1, one every gap, for dur
// on a manual clock, and returns how many passed.
func offer(t *testing.T, r Rule, size int, gap, dur time.Duration) (passed, total int) {
	t.Helper()
	var s Set
	r.Prefix = netip.MustParsePrefix("10.0.0.0/8")
	r.Action = Limit
	if _, err := s.Add(r); err != nil {
		t.Fatal(err)
	}
	var now int64 = int64(time.Hour) // the clock does not start at zero
	f := NewFilter(func() int64 { return now })
	f.Load(s)
	p := &netflow.Packet{Key: netflow.Key{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.77.0.10"), Proto: netflow.ProtoUDP}, Len: size}
	start := now
	for now < start+int64(dur) {
		if f.Packet("up0", netflow.In, p) {
			passed++
		}
		total++
		now += int64(gap)
	}
	st := f.Stats()[0]
	if st.Packets != uint64(total) || st.Drops != uint64(total-passed) || st.DropBytes != uint64((total-passed)*size) {
		t.Errorf("counters %+v after %d offered, %d passed", st, total, passed)
	}
	return passed, total
}

func TestLimiter(t *testing.T) {
	cases := []struct {
		name     string
		r        Rule
		size     int
		gap, dur time.Duration
		want     int // packets that pass: rate × duration + burst
	}{
		// 1000 pps offered to a 100 pps limit with burst 10.
		{"pps over rate", Rule{PPS: 100, Burst: 10}, 100, time.Millisecond, time.Second, 100 + 10},
		// Offered below the rate: everything passes.
		{"pps under rate", Rule{PPS: 100}, 100, 20 * time.Millisecond, time.Second, 50},
		// Default burst: a tenth of a second, here 50 packets.
		{"pps default burst", Rule{PPS: 500}, 100, 100 * time.Microsecond, 100 * time.Millisecond, 50 + 50},
		// 1 Mbit/s = 125 000 B/s: 1000 B packets at 8 Mbit/s offered
		// for 2 s pass at 125/s plus a 10 000 B burst.
		{"bps over rate", Rule{BPS: 1_000_000, Burst: 10_000}, 1000, time.Millisecond, 2 * time.Second, 250 + 10},
		// Small packets at a high rate: 10 Gbit/s, 64 B every 10 ns
		// (51 Gbit/s offered) for 1 ms: 1.25 MB pass plus the burst.
		{"bps high rate", Rule{BPS: 10_000_000_000, Burst: 64_000}, 64, 10 * time.Nanosecond, time.Millisecond, 1_250_000/64 + 1000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			passed, total := offer(t, c.r, c.size, c.gap, c.dur)
			// One packet of slack for the edges of the interval, or
			// 0.1 % for the limiter's time resolution.
			slack := max(1, c.want/1000)
			if passed < c.want-slack || passed > c.want+slack {
				t.Fatalf("%d of %d packets passed, want %d±%d", passed, total, c.want, slack)
			}
		})
	}
}

func TestLimiterRefillsAfterIdle(t *testing.T) {
	var s Set
	s.Add(Rule{Action: Limit, Prefix: netip.MustParsePrefix("10.0.0.0/8"), PPS: 10, Burst: 5})
	var now int64
	f := NewFilter(func() int64 { return now })
	f.Load(s)
	p := &netflow.Packet{Key: netflow.Key{Src: netip.MustParseAddr("10.0.0.1"), Proto: netflow.ProtoICMP}, Len: 84}
	count := func() (n int) {
		for range 20 {
			if f.Packet("up0", netflow.In, p) {
				n++
			}
		}
		return n
	}
	if n := count(); n != 5 {
		t.Fatalf("first burst: %d passed, want 5", n)
	}
	now += int64(200 * time.Millisecond) // two tokens
	if n := count(); n != 2 {
		t.Fatalf("after 200 ms: %d passed, want 2", n)
	}
	now += int64(time.Hour) // full bucket, not more
	if n := count(); n != 5 {
		t.Fatalf("after an hour: %d passed, want 5 (the burst)", n)
	}
	// Reloading the same rule under a newer set keeps its bucket (empty).
	s.Version++
	f.Load(s)
	if n := count(); n != 0 {
		t.Fatalf("after reload: %d passed, want 0 (bucket carried over)", n)
	}
}
