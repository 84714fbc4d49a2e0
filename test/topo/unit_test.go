package topo

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

func TestImpairDeparture(t *testing.T) {
	base := time.Unix(1000, 0)
	tests := []struct {
		name     string
		im       impair
		wantMin  time.Duration // every departure ≥ now + wantMin
		wantMax  time.Duration // every departure ≤ now + wantMax (before ordering)
		wantLoss [2]float64    // observed loss fraction bounds
	}{
		{"none", impair{}, 0, 0, [2]float64{0, 0}},
		{"delay", impair{delay: 30 * time.Millisecond}, 30 * time.Millisecond, 30 * time.Millisecond, [2]float64{0, 0}},
		{"jitter", impair{delay: 20 * time.Millisecond, jitter: 5 * time.Millisecond}, 15 * time.Millisecond, 25 * time.Millisecond, [2]float64{0, 0}},
		{"jitter larger than delay", impair{delay: time.Millisecond, jitter: 5 * time.Millisecond}, 0, 6 * time.Millisecond, [2]float64{0, 0}},
		{"all lost", impair{loss: 1}, 0, 0, [2]float64{1, 1}},
		{"half lost", impair{loss: 0.5}, 0, 0, [2]float64{0.45, 0.55}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			const n = 10000
			var last time.Time
			lost := 0
			sawSpread := false
			for i := range n {
				now := base.Add(time.Duration(i) * 100 * time.Microsecond)
				at, ok := tc.im.departure(now, last, r)
				if !ok {
					lost++
					continue
				}
				if at.Before(last) {
					t.Fatalf("frame %d departs at %v before previous %v: reordered", i, at, last)
				}
				if d := at.Sub(now); d < tc.wantMin {
					t.Fatalf("frame %d delayed %v, want ≥ %v", i, d, tc.wantMin)
				}
				// A frame may wait for its predecessor, so the upper
				// bound holds only for frames not held back by one.
				if d := at.Sub(now); at != last && d > tc.wantMax {
					t.Fatalf("frame %d delayed %v, want ≤ %v", i, d, tc.wantMax)
				}
				if d := at.Sub(now); d != tc.im.delay {
					sawSpread = true
				}
				last = at
			}
			frac := float64(lost) / n
			if frac < tc.wantLoss[0] || frac > tc.wantLoss[1] {
				t.Errorf("lost %.3f of frames, want %.2f..%.2f", frac, tc.wantLoss[0], tc.wantLoss[1])
			}
			if tc.im.jitter > 0 && !sawSpread {
				t.Errorf("jitter %v never changed a delay", tc.im.jitter)
			}
		})
	}
}

func TestShapeValidate(t *testing.T) {
	tests := []struct {
		s  Shape
		ok bool
	}{
		{Shape{}, true},
		{Shape{Delay: time.Millisecond, Jitter: time.Millisecond, LossPercent: 100, RateMbit: 1}, true},
		{Shape{Delay: -1}, false},
		{Shape{Jitter: -1}, false},
		{Shape{LossPercent: -0.1}, false},
		{Shape{LossPercent: 100.1}, false},
		{Shape{RateMbit: -1}, false},
		{Shape{RateMbit: 0.001}, false},
	}
	for _, tc := range tests {
		if err := tc.s.validate(); (err == nil) != tc.ok {
			t.Errorf("validate(%+v) = %v, want ok=%v", tc.s, err, tc.ok)
		}
	}
}

func TestHostAddr(t *testing.T) {
	u := Uplink{
		Index:   3,
		Subnet4: netip.MustParsePrefix("10.77.3.0/24"),
		Subnet6: netip.MustParsePrefix("fd77:3::/64"),
	}
	tests := []struct {
		n      int
		v4, v6 string
	}{
		{0, "10.77.3.10", "fd77:3::a"},
		{1, "10.77.3.11", "fd77:3::b"},
		{244, "10.77.3.254", "fd77:3::fe"},
	}
	for _, tc := range tests {
		if got := u.HostAddr4(tc.n); got.String() != tc.v4 {
			t.Errorf("HostAddr4(%d) = %v, want %s", tc.n, got, tc.v4)
		}
		if got := u.HostAddr6(tc.n); got.String() != tc.v6 {
			t.Errorf("HostAddr6(%d) = %v, want %s", tc.n, got, tc.v6)
		}
	}
	for _, n := range []int{-1, 245} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("HostAddr4(%d) did not panic", n)
				}
			}()
			u.HostAddr4(n)
		}()
	}
}

func TestProcStart(t *testing.T) {
	a, err := procStart(1)
	if err != nil {
		t.Fatalf("procStart(1): %v", err)
	}
	if !ownerAlive(&state{PID: 1, Start: a}) {
		t.Error("pid 1 with its start time not alive")
	}
	if ownerAlive(&state{PID: 1, Start: a + 1}) {
		t.Error("pid 1 with another start time counted as alive (PID reuse)")
	}
}
