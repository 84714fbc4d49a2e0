package xdp

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/mpshim/mpshim/test/topo"
)

// TestPinTakeOver: a balancer released without Close (what a killed daemon
// leaves) stays attached with its maps pinned; a New on the same directory
// takes it over (the same program, the established flows and the live
// table half kept, the old backends kept until named or dropped); Close
// removes the pins and detaches.
func TestPinTakeOver(t *testing.T) {
	topo.RequireRoot(t)
	if err := MountBPFFS(); err != nil {
		t.Fatal(err)
	}
	tp := topo.New(t, topo.Config{Uplinks: 1, Direct: true})
	dir := filepath.Join(BPFFS, "mpshim-test", tp.ID)
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(dir)) })
	var ifindex int
	if err := tp.GW.Do(func() error {
		ifc, err := net.InterfaceByName(tp.Uplinks[0].GWIf)
		ifindex = ifc.Index
		return err
	}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{PinDir: dir, EstEntries: 1024, NewEntries: 1024, FragEntries: 64}
	b := newBalancer(t, cfg, 4)
	if b.TookOver() {
		t.Fatal("a fresh directory was taken over")
	}
	if err := tp.GW.Do(func() error { return b.Attach(ifindex, true) }); err != nil {
		t.Fatal(err)
	}
	var flows []int
	for i := range 200 {
		src := ap(client4, uint16(1000+i))
		steer(t, b, tcp4(src, ap(vip4, 80), tcpSYN))
		flows = append(flows, steer(t, b, tcp4(src, ap(vip4, 80), tcpACK)))
	}
	est, _, _, err := b.Flows()
	if err != nil || est != 200 {
		t.Fatalf("established flows %d, %v; want 200", est, err)
	}
	progInfo, err := b.Program().Info()
	if err != nil {
		t.Fatal(err)
	}
	progID, _ := progInfo.ID()
	if err := b.Release(); err != nil {
		t.Fatal(err)
	}
	// Nothing of the process holds the program now: the pinned link does.
	l, err := link.LoadPinnedLink(filepath.Join(dir, pinLink), nil)
	if err != nil {
		t.Fatalf("link not pinned after Release: %v", err)
	}
	info, err := l.Info()
	l.Close()
	if err != nil || info.Program != progID || int(info.XDP().Ifindex) != ifindex {
		t.Fatalf("pinned link %+v, %v: want program %d on interface %d", info, err, progID, ifindex)
	}
	if out, err := tp.GW.Run(t.Context(), "ip", "link", "show", tp.Uplinks[0].GWIf); err != nil || !strings.Contains(out, "xdpgeneric") {
		t.Fatalf("program not attached after Release (%v): %s", err, out)
	}

	b2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b2.Close() })
	if !b2.TookOver() {
		t.Fatal("pinned balancer not taken over")
	}
	p2, _ := b2.Program().Info()
	if id, _ := p2.ID(); id != progID {
		t.Fatalf("program %d after take-over, want %d (reloaded)", id, progID)
	}
	if err := tp.GW.Do(func() error { return b2.Attach(ifindex, true) }); err != nil {
		t.Fatal(err)
	}
	if est, _, _, err := b2.Flows(); err != nil || est != 200 {
		t.Fatalf("established flows after take-over %d, %v; want 200", est, err)
	}
	// The new owner names backends 0 and 1 only (say, the INS it
	// re-adopted so far): the flows of 2 and 3 stay theirs until DropStale.
	if err := b2.SetBackends(backends(2)); err != nil {
		t.Fatal(err)
	}
	for i, want := range flows {
		if got := steer(t, b2, tcp4(ap(client4, uint16(1000+i)), ap(vip4, 80), tcpACK)); got != want {
			t.Fatalf("flow %d moved from %d to %d on take-over", i, want, got)
		}
	}
	if err := b2.DropStale(); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i, want := range flows {
		got := steer(t, b2, tcp4(ap(client4, uint16(1000+i)), ap(vip4, 80), tcpACK))
		switch {
		case want >= 2 && got >= 2:
			t.Fatalf("flow %d still on dropped backend %d", i, got)
		case want >= 2:
			moved++
		case got != want:
			t.Fatalf("flow %d moved from %d to %d", i, want, got)
		}
	}
	if moved == 0 {
		t.Fatal("no flow was on backends 2 or 3: the test did not test DropStale")
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("pins left after Close: %v", err)
	}
	if out, err := tp.GW.Run(t.Context(), "ip", "link", "show", tp.Uplinks[0].GWIf); err != nil || strings.Contains(out, "xdp") {
		t.Fatalf("program still attached after Close (%v): %s", err, out)
	}
}

// TestSweep: the established entries of removed backends go, the others
// stay and keep their backend.
func TestSweep(t *testing.T) {
	b := newBalancer(t, Config{EstEntries: 1024, NewEntries: 1024, FragEntries: 64}, 4)
	kept := 0
	for i := range 200 {
		src := ap(client4, uint16(1000+i))
		steer(t, b, tcp4(src, ap(vip4, 80), tcpSYN))
		if steer(t, b, tcp4(src, ap(vip4, 80), tcpACK)) < 2 {
			kept++
		}
	}
	if n, err := b.Sweep(); err != nil || n != 0 {
		t.Fatalf("sweep with every backend up: %d deleted, %v", n, err)
	}
	if err := b.SetBackends(backends(2)); err != nil {
		t.Fatal(err)
	}
	n, err := b.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	est, _, per, err := b.Flows()
	if err != nil {
		t.Fatal(err)
	}
	if n != 200-kept || est != kept || per[2] != 0 || per[3] != 0 {
		t.Fatalf("sweep deleted %d, left %d (%v); want %d deleted, %d left on backends 0 and 1", n, est, per, 200-kept, kept)
	}
	if kept == 0 || kept == 200 {
		t.Fatalf("%d of 200 flows on backends 0 and 1: the test did not test the sweep", kept)
	}
}

// TestPinReplacesOlderProgram: a balancer pinned by a program of another
// version (progVariant) is taken over with its maps, and this version's
// program takes the old one's place in the pinned link and the pin; the
// established flows stay where they were. A second take-over finds its
// own version and keeps it.
func TestPinReplacesOlderProgram(t *testing.T) {
	topo.RequireRoot(t)
	if err := MountBPFFS(); err != nil {
		t.Fatal(err)
	}
	tp := topo.New(t, topo.Config{Uplinks: 1, Direct: true})
	dir := filepath.Join(BPFFS, "mpshim-test", tp.ID)
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(dir)) })
	var ifindex int
	if err := tp.GW.Do(func() error {
		ifc, err := net.InterfaceByName(tp.Uplinks[0].GWIf)
		ifindex = ifc.Index
		return err
	}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{PinDir: dir, EstEntries: 1024, NewEntries: 1024, FragEntries: 64, FlowCache: 1024}
	progVariant = 7
	t.Cleanup(func() { progVariant = 0 })
	old := newBalancer(t, cfg, 4)
	if err := tp.GW.Do(func() error { return old.Attach(ifindex, true) }); err != nil {
		t.Fatal(err)
	}
	var flows []int
	for i := range 100 {
		src := ap(client4, uint16(1000+i))
		steer(t, old, tcp4(src, ap(vip4, 80), tcpSYN))
		flows = append(flows, steer(t, old, tcp4(src, ap(vip4, 80), tcpACK)))
	}
	oi, err := old.Program().Info()
	if err != nil {
		t.Fatal(err)
	}
	oldID, _ := oi.ID()
	if err := old.Release(); err != nil {
		t.Fatal(err)
	}

	progVariant = 0
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if !b.TookOver() || !b.Replaced() {
		t.Fatalf("took over %v, replaced %v: want both", b.TookOver(), b.Replaced())
	}
	ni, err := b.Program().Info()
	if err != nil {
		t.Fatal(err)
	}
	newID, _ := ni.ID()
	if newID == oldID || ni.Tag == oi.Tag {
		t.Fatalf("program %d (tag %s) after the take-over, the old one was %d (tag %s)", newID, ni.Tag, oldID, oi.Tag)
	}
	l, err := link.LoadPinnedLink(filepath.Join(dir, pinLink), nil)
	if err != nil {
		t.Fatal(err)
	}
	li, err := l.Info()
	l.Close()
	if err != nil || li.Program != newID || int(li.XDP().Ifindex) != ifindex {
		t.Fatalf("pinned link %+v, %v: want program %d on interface %d", li, err, newID, ifindex)
	}
	if est, _, _, err := b.Flows(); err != nil || est != 100 {
		t.Fatalf("established flows after the swap %d, %v; want 100", est, err)
	}
	if err := b.SetBackends(backends(4)); err != nil {
		t.Fatal(err)
	}
	for i, want := range flows {
		if got := steer(t, b, tcp4(ap(client4, uint16(1000+i)), ap(vip4, 80), tcpACK)); got != want {
			t.Fatalf("flow %d moved from %d to %d with the new program", i, want, got)
		}
	}
	if err := b.Release(); err != nil {
		t.Fatal(err)
	}
	again, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Close() })
	ai, _ := again.Program().Info()
	if id, _ := ai.ID(); !again.TookOver() || again.Replaced() || id != newID {
		t.Fatalf("second take-over: took over %v, replaced %v, program %d; want true, false, %d", again.TookOver(), again.Replaced(), id, newID)
	}
}
