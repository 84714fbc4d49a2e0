package uplink

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func newSet(t *testing.T, p Policy, weights map[string]int, order ...string) *Set {
	t.Helper()
	s := NewSet(p)
	for _, n := range order {
		if err := s.Add(n, weights[n]); err != nil {
			t.Fatalf("Add(%s): %v", n, err)
		}
	}
	return s
}

func TestWRRDistribution(t *testing.T) {
	cases := []struct {
		name    string
		weights map[string]int
		order   []string
		picks   int
	}{
		{"1:1", map[string]int{"a": 1, "b": 1}, []string{"a", "b"}, 100},
		{"3:1", map[string]int{"a": 3, "b": 1}, []string{"a", "b"}, 100},
		{"5:3:2", map[string]int{"a": 5, "b": 3, "c": 2}, []string{"a", "b", "c"}, 100},
		{"capacity 1000:100", map[string]int{"a": 1000, "b": 100}, []string{"a", "b"}, 110},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSet(t, PolicyWRR, tc.weights, tc.order...)
			got := map[string]int{}
			for i := 0; i < tc.picks; i++ {
				n, err := s.Pick(uint64(i))
				if err != nil {
					t.Fatalf("Pick: %v", err)
				}
				got[n]++
			}
			total := 0
			for _, w := range tc.weights {
				total += w
			}
			for n, w := range tc.weights {
				want := float64(tc.picks) * float64(w) / float64(total)
				if math.Abs(float64(got[n])-want) > 0.10*float64(tc.picks) {
					t.Errorf("uplink %s: %d picks, want %.1f ±10%% of %d (all: %v)", n, got[n], want, tc.picks, got)
				}
			}
		})
	}
}

func TestWRRIsSmooth(t *testing.T) {
	// 3:1 must interleave (a a b a), never four a's in a row.
	s := newSet(t, PolicyWRR, map[string]int{"a": 3, "b": 1}, "a", "b")
	run := 0
	for i := 0; i < 40; i++ {
		n, _ := s.Pick(0)
		if n == "a" {
			run++
		} else {
			run = 0
		}
		if run > 3 {
			t.Fatalf("pick %d: %d consecutive picks of a with weights 3:1", i, run)
		}
	}
}

func TestStickyHashStability(t *testing.T) {
	w := map[string]int{"a": 1, "b": 1, "c": 1}
	s := newSet(t, PolicyStickyHash, w, "a", "b", "c")
	first := map[uint64]string{}
	counts := map[string]int{}
	for k := 0; k < 300; k++ {
		key := HashBytes([]byte(fmt.Sprintf("192.0.2.%d:443", k)))
		n, err := s.Pick(key)
		if err != nil {
			t.Fatal(err)
		}
		first[key] = n
		counts[n]++
	}
	// Every uplink gets a share.
	for _, n := range []string{"a", "b", "c"} {
		if counts[n] < 50 {
			t.Errorf("uplink %s got only %d of 300 keys: %v", n, counts[n], counts)
		}
	}
	// Same key, same answer, repeatedly (and independent of pick history).
	for key, want := range first {
		for i := 0; i < 3; i++ {
			if got, _ := s.Pick(key); got != want {
				t.Fatalf("key %x moved from %s to %s with an unchanged set", key, want, got)
			}
		}
	}
	// Taking b down moves only b's keys; bringing it back restores all.
	if err := s.ObserveCarrier("b", false); err != nil {
		t.Fatal(err)
	}
	for key, was := range first {
		got, _ := s.Pick(key)
		if got == "b" {
			t.Fatalf("key %x still on down uplink b", key)
		}
		if was != "b" && got != was {
			t.Fatalf("key %x moved %s -> %s though only b went down", key, was, got)
		}
	}
	if err := s.ObserveCarrier("b", true); err != nil {
		t.Fatal(err)
	}
	for key, want := range first {
		if got, _ := s.Pick(key); got != want {
			t.Fatalf("key %x: %s after b came back, want %s", key, got, want)
		}
	}
}

func TestLowestRTT(t *testing.T) {
	s := newSet(t, PolicyLowestRTT, map[string]int{"a": 1, "b": 1, "c": 1}, "a", "b", "c")
	probes := []struct {
		name string
		rtt  time.Duration
	}{{"a", 30 * time.Millisecond}, {"b", 5 * time.Millisecond}, {"c", 12 * time.Millisecond}}
	for _, p := range probes {
		for i := 0; i < 5; i++ {
			if err := s.ObserveProbe(p.name, p.rtt, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	steps := []struct {
		desc string
		act  func() error
		want string
	}{
		{"lowest is b", func() error { return nil }, "b"},
		{"b loses carrier -> c", func() error { return s.ObserveCarrier("b", false) }, "c"},
		{"c loses 3 probes -> a", func() error {
			for i := 0; i < LossThreshold; i++ {
				if err := s.ObserveProbe("c", 0, false); err != nil {
					return err
				}
			}
			return nil
		}, "a"},
		{"c answers again -> c", func() error { return s.ObserveProbe("c", 12*time.Millisecond, true) }, "c"},
		{"b back -> b", func() error { return s.ObserveCarrier("b", true) }, "b"},
		{"b draining -> c", func() error { return s.Drain("b", true) }, "c"},
	}
	for _, st := range steps {
		if err := st.act(); err != nil {
			t.Fatalf("%s: %v", st.desc, err)
		}
		for i := 0; i < 5; i++ {
			got, err := s.Pick(uint64(i))
			if err != nil || got != st.want {
				t.Fatalf("%s: Pick = %q, %v; want %q", st.desc, got, err, st.want)
			}
		}
	}
}

func TestLowestRTTWithoutSamplesFallsBackToWRR(t *testing.T) {
	s := newSet(t, PolicyLowestRTT, map[string]int{"a": 1, "b": 1}, "a", "b")
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		n, err := s.Pick(0)
		if err != nil {
			t.Fatal(err)
		}
		seen[n] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Fatalf("no RTT samples: want both uplinks used, got %v", seen)
	}
}

func TestNoUsableUplink(t *testing.T) {
	cases := []struct {
		name  string
		setup func(*Set) error
	}{
		{"empty", func(*Set) error { return nil }},
		{"all carrier down", func(s *Set) error {
			if err := s.Add("a", 1); err != nil {
				return err
			}
			if err := s.Add("b", 2); err != nil {
				return err
			}
			if err := s.ObserveCarrier("a", false); err != nil {
				return err
			}
			return s.ObserveCarrier("b", false)
		}},
		{"one draining one admin down", func(s *Set) error {
			if err := s.Add("a", 1); err != nil {
				return err
			}
			if err := s.Add("b", 1); err != nil {
				return err
			}
			if err := s.Drain("a", true); err != nil {
				return err
			}
			return s.SetAdminDown("b", true)
		}},
	}
	for _, p := range []Policy{PolicyWRR, PolicyLowestRTT, PolicyStickyHash} {
		for _, tc := range cases {
			t.Run(p.String()+"/"+tc.name, func(t *testing.T) {
				s := NewSet(p)
				if err := tc.setup(s); err != nil {
					t.Fatal(err)
				}
				n, err := s.Pick(42)
				if !errors.Is(err, ErrNoUplink) {
					t.Fatalf("Pick = %q, %v; want ErrNoUplink", n, err)
				}
			})
		}
	}
}

func TestStatesAndErrors(t *testing.T) {
	s := NewSet(PolicyWRR)
	if err := s.Add("a", 0); err == nil {
		t.Error("Add with weight 0 succeeded")
	}
	if err := s.Add("", 1); err == nil {
		t.Error("Add with empty name succeeded")
	}
	if err := s.Add("a", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Add("a", 1); err == nil {
		t.Error("duplicate Add succeeded")
	}
	if err := s.ObserveCarrier("zz", true); err == nil {
		t.Error("ObserveCarrier on unknown uplink succeeded")
	}
	if err := s.Remove("zz"); err == nil {
		t.Error("Remove of unknown uplink succeeded")
	}
	checks := []struct {
		act  func() error
		want State
	}{
		{func() error { return nil }, StateUp},
		{func() error { return s.ObserveProbe("a", 0, false) }, StateUp},
		{func() error { return s.ObserveProbe("a", 0, false) }, StateUp},
		{func() error { return s.ObserveProbe("a", 0, false) }, StateDown},
		{func() error { return s.ObserveProbe("a", time.Millisecond, true) }, StateUp},
		{func() error { return s.Drain("a", true) }, StateDraining},
		{func() error { return s.Drain("a", false) }, StateUp},
		{func() error { return s.SetAdminDown("a", true) }, StateDown},
	}
	for i, c := range checks {
		if err := c.act(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if st, _ := s.State("a"); st != c.want {
			t.Fatalf("step %d: state %v, want %v", i, st, c.want)
		}
	}
	if err := s.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if len(s.Snapshot()) != 0 {
		t.Fatal("snapshot not empty after Remove")
	}
}

func TestParsePolicy(t *testing.T) {
	for in, want := range map[string]Policy{"": PolicyWRR, "wrr": PolicyWRR, "Lowest-RTT": PolicyLowestRTT, "sticky-hash": PolicyStickyHash} {
		got, err := ParsePolicy(in)
		if err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParsePolicy("random"); err == nil {
		t.Error("ParsePolicy(random) succeeded")
	}
}

func TestPickWhere(t *testing.T) {
	s := newSet(t, PolicyWRR, map[string]int{"v4only": 5, "dual": 1}, "v4only", "dual")
	for i := 0; i < 10; i++ {
		n, err := s.PickWhere(0, func(n string) bool { return n == "dual" })
		if err != nil || n != "dual" {
			t.Fatalf("PickWhere = %q, %v; want dual", n, err)
		}
	}
	if _, err := s.PickWhere(0, func(string) bool { return false }); !errors.Is(err, ErrNoUplink) {
		t.Fatalf("PickWhere with nothing eligible: %v, want ErrNoUplink", err)
	}
}

// TestProbeLossIsLastResort: an uplink down only by failed probes still
// takes flows when nothing better is left, never when something is.
func TestProbeLossIsLastResort(t *testing.T) {
	s := newSet(t, PolicyWRR, map[string]int{"a": 1, "b": 1}, "a", "b")
	lose := func(name string) {
		for i := 0; i < LossThreshold; i++ {
			if err := s.ObserveProbe(name, 0, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	steps := []struct {
		desc string
		act  func() error
		want string // "" means ErrNoUplink
	}{
		{"a loses probes -> b", func() error { lose("a"); return nil }, "b"},
		{"b loses probes too -> a or b as last resort", func() error { lose("b"); return nil }, "a|b"},
		{"b loses carrier -> a, probes failing", func() error { return s.ObserveCarrier("b", false) }, "a"},
		{"a drained -> none", func() error { return s.Drain("a", true) }, ""},
		{"a undrained, admin down -> none", func() error {
			if err := s.Drain("a", false); err != nil {
				return err
			}
			return s.SetAdminDown("a", true)
		}, ""},
	}
	for _, st := range steps {
		if err := st.act(); err != nil {
			t.Fatalf("%s: %v", st.desc, err)
		}
		for i := 0; i < 4; i++ {
			got, err := s.Pick(uint64(i))
			switch {
			case st.want == "":
				if !errors.Is(err, ErrNoUplink) {
					t.Fatalf("%s: Pick = %q, %v; want ErrNoUplink", st.desc, got, err)
				}
			case err != nil || !strings.Contains(st.want, got):
				t.Fatalf("%s: Pick = %q, %v; want %s", st.desc, got, err, st.want)
			}
		}
	}
}
