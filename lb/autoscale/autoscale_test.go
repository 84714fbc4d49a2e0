package autoscale

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Config
		err  string
	}{
		{in: "min=2,max=20", want: Config{Min: 2, Max: 20, Conns: 1000, CPU: 0.8, Sustain: 5 * time.Second, Cooldown: 15 * time.Second, Headroom: 0.6, Drain: 30 * time.Second}},
		{in: "min=2,max=4,conns=50,cpu=0.5,sustain=1s,cooldown=3s,headroom=0.5,drain=2s", want: Config{Min: 2, Max: 4, Conns: 50, CPU: 0.5, Sustain: time.Second, Cooldown: 3 * time.Second, Headroom: 0.5, Drain: 2 * time.Second}},
		{in: "", err: "empty"},
		{in: "min=5,max=2", err: "above max"},
		{in: "min=0", err: "out of 1..1000"},
		{in: "conns=-1", err: "positive"},
		{in: "conns=NaN", err: "positive"},
		{in: "headroom=1", err: "fraction"},
		{in: "sustain=-1s", err: "out of"},
		{in: "speed=9", err: "unknown key"},
		{in: "min", err: "key=value"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseConfig(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
			again, err := ParseConfig(got.String())
			if err != nil || again != got {
				t.Fatalf("String round trip: %q -> %+v, %v", got.String(), again, err)
			}
		})
	}
}

// pool simulates a pool whose total load spreads evenly over its INS and
// which applies every decision at once.
type pool struct {
	n       int
	s       *Scaler
	now     time.Time
	history []Decision
}

func (p *pool) step(totalConns, totalCPU float64) Decision {
	x := Sample{At: p.now}
	for range p.n {
		x.Conns = append(x.Conns, int(totalConns/float64(p.n)))
		x.CPU = append(x.CPU, totalCPU/float64(p.n))
	}
	d := p.s.Observe(x)
	switch d.Action {
	case Grow:
		p.n += d.Count
	case Shrink:
		p.n -= d.Count
	}
	if d.Action != Hold {
		p.history = append(p.history, d)
	}
	p.now = p.now.Add(time.Second)
	return d
}

// TestRamp: a load ramped to four times what one INS should carry takes a
// pool of 2 to at least 4 INS, and back to 2 once it stops; it grows only
// while the load rises and shrinks only after it falls (no flapping).
func TestRamp(t *testing.T) {
	cfg, err := ParseConfig("min=2,max=20,conns=100,cpu=0.8,sustain=3s,cooldown=5s")
	if err != nil {
		t.Fatal(err)
	}
	p := &pool{n: 2, s: New(cfg), now: time.Unix(1e9, 0)}
	for sec := range 60 { // ramp 0 -> 400 connections
		p.step(float64(sec)*400/60, 0.1)
	}
	for range 60 {
		p.step(400, 0.1)
	}
	peak := p.n
	grows := len(p.history)
	for range 120 {
		p.step(0, 0)
	}
	if peak < 4 {
		t.Fatalf("peak %d INS under 400 connections at conns=100", peak)
	}
	if p.n != 2 {
		t.Fatalf("%d INS after the load stopped, want min 2", p.n)
	}
	for i, d := range p.history {
		if (i < grows) != (d.Action == Grow) {
			t.Fatalf("decision %d %v out of order: %+v", i, d.Action, p.history)
		}
		if d.Reason == "" {
			t.Fatalf("decision without a reason: %+v", d)
		}
		if i > 0 && d.At.Sub(p.history[i-1].At) < cfg.Cooldown {
			t.Fatalf("decisions %v apart, cooldown %v", d.At.Sub(p.history[i-1].At), cfg.Cooldown)
		}
	}
	for _, d := range p.history {
		t.Logf("%s %s %d: %s", d.At.Format("15:04:05"), d.Action, d.Count, d.Reason)
	}
}

// TestNoFlap: a load hovering around the grow threshold grows the pool at
// most once and never shrinks it back and forth.
func TestNoFlap(t *testing.T) {
	cfg, _ := ParseConfig("min=1,max=20,conns=100,sustain=2s,cooldown=2s")
	p := &pool{n: 4, s: New(cfg), now: time.Unix(1e9, 0)}
	for sec := range 600 {
		p.step(400+40*math.Sin(float64(sec)/7), 0)
	}
	if len(p.history) > 1 {
		t.Fatalf("%d decisions for a steady load: %+v", len(p.history), p.history)
	}
}

// TestSustain: a spike shorter than the sustain time changes nothing.
func TestSustain(t *testing.T) {
	cfg, _ := ParseConfig("min=2,max=20,conns=100,sustain=5s,cooldown=1s")
	p := &pool{n: 2, s: New(cfg), now: time.Unix(1e9, 0)}
	for range 10 {
		p.step(100, 0)
	}
	for range 4 {
		if d := p.step(1000, 0); d.Action != Hold {
			t.Fatalf("acted on a %v-old spike: %+v", p.now.Sub(time.Unix(1e9, 0)), d)
		}
	}
	for range 10 {
		p.step(100, 0)
	}
	if len(p.history) != 0 {
		t.Fatalf("decisions: %+v", p.history)
	}
}

// TestBounds: below min grows at once, above max shrinks, CPU alone
// grows, and max caps a grow.
func TestBounds(t *testing.T) {
	cfg, _ := ParseConfig("min=2,max=5,conns=100,cpu=0.5,sustain=0s,cooldown=0s")
	s := New(cfg)
	now := time.Unix(1e9, 0)
	if d := s.Observe(Sample{At: now, Conns: []int{5}, CPU: []float64{0}}); d.Action != Grow || d.Count != 1 {
		t.Fatalf("below min: %+v", d)
	}
	if d := s.Observe(Sample{At: now, Conns: []int{1, 2, 3, 0, 5, 6}}); d.Action != Shrink || d.Victim != 3 {
		t.Fatalf("above max: %+v", d)
	}
	if d := s.Observe(Sample{At: now, Conns: []int{10, 10}, CPU: []float64{0.9, 0.9}}); d.Action != Grow {
		t.Fatalf("CPU above cpu=0.5: %+v", d)
	}
	if d := s.Observe(Sample{At: now, Conns: []int{1000, 1000}}); d.Action != Grow || d.Count != 3 {
		t.Fatalf("20x the load with max 5: %+v", d)
	}
	if d := s.Observe(Sample{At: now, Conns: []int{1000, 1000, 1000, 1000, 1000}}); d.Action != Hold || !strings.Contains(d.Reason, "at max") {
		t.Fatalf("at max: %+v", d)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add("min=2,max=20,conns=500")
	f.Add("cpu=0.5,sustain=1s,cooldown=1m,headroom=0.5")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConfig(s)
		if err != nil {
			return
		}
		if c.Min < 1 || c.Min > c.Max || c.Conns <= 0 || c.CPU <= 0 || c.Headroom <= 0 || c.Headroom >= 1 {
			t.Fatalf("accepted %q as %+v", s, c)
		}
		sc := New(c)
		sc.Observe(Sample{At: time.Unix(0, 0), Conns: []int{1}, CPU: []float64{1}})
	})
}
