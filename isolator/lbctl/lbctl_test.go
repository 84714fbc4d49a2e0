package lbctl

import (
	"context"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/lb/autoscale"
	"github.com/mpshim/mpshim/test/topo"
)

func insMAC(id int) net.HardwareAddr { return net.HardwareAddr{0x02, 0xaa, 0, 0, 0, byte(id)} }

// newManager loads a balancer on the uplink interface of a test topology's
// gw namespace, as the daemon does (the manager enters that namespace).
func newManager(t *testing.T) *Manager {
	t.Helper()
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1, Direct: true, NoIPv6: true})
	m := New(slog.Default(), tp.GW.Name)
	t.Cleanup(func() { m.Close() })
	err := m.AddUplink(context.Background(), Uplink{Name: "up0", Interface: tp.Uplinks[0].GWIf, VIPs: []netip.Addr{netip.MustParseAddr("10.77.0.5")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.AddUplink(context.Background(), Uplink{Name: "up0", Interface: tp.Uplinks[0].GWIf, VIPs: []netip.Addr{netip.MustParseAddr("10.77.0.6")}}); err == nil {
		t.Fatal("a second balancer on up0 was accepted")
	}
	return m
}

func members(t *testing.T, m *Manager) map[int]api.LBMember {
	t.Helper()
	st, err := m.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Uplinks) != 1 {
		t.Fatalf("%d balanced uplinks", len(st.Uplinks))
	}
	out := map[int]api.LBMember{}
	for _, x := range st.Uplinks[0].Members {
		out[x.ID] = x
	}
	return out
}

// TestMembers: INS join and leave the pool; one that died shows down until
// its replacement joins with the weight it had; a stopped one forgets it.
func TestMembers(t *testing.T) {
	m := newManager(t)
	for id := 1; id <= 2; id++ {
		m.INSUp(id, map[string]net.HardwareAddr{"up0": insMAC(id)})
	}
	m.INSUp(3, map[string]net.HardwareAddr{"other": insMAC(3)}) // no NIC on up0
	if err := m.SetWeight(2, 3); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		id, w int
	}{{2, 0}, {2, 1 << 17}, {9, 1}} {
		if err := m.SetWeight(bad.id, bad.w); err == nil {
			t.Errorf("SetWeight(%d, %d) accepted", bad.id, bad.w)
		}
	}
	ms := members(t, m)
	if len(ms) != 2 || math.Abs(ms[1].Share-0.25) > 0.01 || math.Abs(ms[2].Share-0.75) > 0.01 || ms[2].Weight != 3 {
		t.Fatalf("members %+v: want INS 1 and 2 with 1/4 and 3/4 of the table", ms)
	}
	m.INSGone(2, true)
	ms = members(t, m)
	if ms[2].State != "down" || ms[1].Share != 1 {
		t.Fatalf("after INS 2 died: %+v", ms)
	}
	m.INSUp(2, map[string]net.HardwareAddr{"up0": insMAC(2)})
	if ms = members(t, m); ms[2].State != "up" || ms[2].Weight != 3 {
		t.Fatalf("INS 2's replacement: %+v, want up with weight 3", ms[2])
	}
	if err := m.Drain(1); err != nil {
		t.Fatal(err)
	}
	if ms = members(t, m); ms[1].State != "draining" || ms[1].Share != 0 || ms[2].Share != 1 {
		t.Fatalf("INS 1 drained: %+v", ms)
	}
	if err := m.Undrain(1); err != nil {
		t.Fatal(err)
	}
	m.INSGone(2, false)
	if _, ok := members(t, m)[2]; ok {
		t.Fatal("INS 2 still in the pool after it was stopped")
	}
	m.INSUp(2, map[string]net.HardwareAddr{"up0": insMAC(2)})
	if w := members(t, m)[2].Weight; w != 1 {
		t.Fatalf("a new INS 2 after a stop has weight %d, want 1", w)
	}
	m.INSGone(1, true)
	m.Forget(1)
	if _, ok := members(t, m)[1]; ok {
		t.Fatal("INS 1, dead and not replaced, still listed")
	}
}

// fleet is the daemon's side of the autoscaler in a test: spawned INS
// join the pool at once; their connections are set by the test.
type fleet struct {
	m      *Manager
	mu     sync.Mutex
	next   int
	conns  map[int]int
	killed []int
}

func (f *fleet) Spawn(_ context.Context, n int) ([]int, error) {
	var ids []int
	for range n {
		f.mu.Lock()
		f.next++
		id := f.next
		f.conns[id] = 0
		f.mu.Unlock()
		f.m.INSUp(id, map[string]net.HardwareAddr{"up0": insMAC(id)})
		ids = append(ids, id)
	}
	return ids, nil
}

func (f *fleet) Kill(id int) error {
	f.m.INSGone(id, false)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, id)
	f.killed = append(f.killed, id)
	return nil
}

func (f *fleet) Load(_ context.Context, id int) (int, time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns[id], 0, nil
}

func (f *fleet) set(c int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range f.conns {
		f.conns[id] = c
	}
}

// TestAutoscaleLoop: the loop grows the pool to min, then on load, and
// shrinks it by draining and then stopping an INS, each decision kept with
// its reason.
func TestAutoscaleLoop(t *testing.T) {
	m := newManager(t)
	f := &fleet{m: m, conns: map[int]int{}}
	cfg, err := autoscale.ParseConfig("min=2,max=4,conns=10,cpu=100,sustain=0s,cooldown=0s,headroom=0.5,drain=1s")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Autoscale(ctx, cfg, f, 20*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	up := func() int {
		n := 0
		for _, x := range members(t, m) {
			if x.State == "up" {
				n++
			}
		}
		return n
	}
	wait := func(want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for up() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%d INS up, want %d: %+v", up(), want, members(t, m))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait(2)
	f.set(30) // 30 per INS over 2: three times the threshold
	wait(4)
	f.set(0)
	wait(2)
	// An INS leaves "up" when its drain starts; it is stopped, and the
	// decision recorded, a moment later.
	killed := 0
	var st *api.LBStatus
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f.mu.Lock()
		killed = len(f.killed)
		f.mu.Unlock()
		var err error
		if st, err = m.Status(); err != nil {
			t.Fatal(err)
		}
		shrinks := 0
		for _, d := range st.Decisions {
			if d.Action == "shrink" {
				shrinks++
			}
		}
		if (killed >= 2 && shrinks >= 2) || time.Now().After(deadline) {
			break
		}
	}
	if killed != 2 {
		t.Errorf("%d INS stopped when shrinking from 4 to 2", killed)
	}
	if !strings.HasPrefix(st.Autoscale, "min=2,max=4") {
		t.Errorf("policy %q", st.Autoscale)
	}
	var acts []string
	for _, d := range st.Decisions {
		if d.Reason == "" {
			t.Errorf("decision without a reason: %+v", d)
		}
		if d.Action != "hold" {
			acts = append(acts, d.Action)
		}
	}
	if strings.Join(acts, ",") != "grow,grow,shrink,shrink" {
		t.Errorf("decisions %v, want grow (to min), grow (on load), shrink, shrink", acts)
	}
}
