package isolator

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/ins"
)

// TestAdoptListeners: the listeners two adopted INS report on one
// SOCK_SEQPACKET pair become one listener (the lowest INS's socket, the
// other's as its replica); a shim re-making it on that pair is told
// EADDRINUSE; an INS started later gets a replica; the groups that do not
// rejoin are released, with their listeners; the app's close of the
// listener is still seen.
func TestAdoptListeners(t *testing.T) {
	old := adoptedGroupGrace
	adoptedGroupGrace = 200 * time.Millisecond
	t.Cleanup(func() { adoptedGroupGrace = old })
	set := &kernelSet{}
	k1, k2 := newKernelINS(1), newKernelINS(2)
	set.add(k1)
	set.add(k2)
	s := NewAppServer(AppConfig{}, set, slog.Default())
	const g, gone = 1<<63 | 5, 1<<63 | 9
	s.keys[g] = 77 // g rejoined; gone did not

	pair := func() (*os.File, *os.File) {
		sv, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(sv[0]), "app"), os.NewFile(uintptr(sv[1]), "ins")
	}
	dup := func(f *os.File) *os.File {
		d, err := dupFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	app, insEnd := pair()
	defer insEnd.Close()
	app2, insEnd2 := pair()
	defer app2.Close()
	defer insEnd2.Close()
	l := func(sock uint64, group uint64) ins.AdoptListener {
		return ins.AdoptListener{Sock: sock, Group: group, Domain: unix.AF_INET, Type: unix.SOCK_STREAM, Backlog: 511, Addr: "0.0.0.0:80"}
	}
	s.Adopt(context.Background(), []adoptedListeners{
		{ins: 2, list: []ins.AdoptListener{l(SockID(2, 9), g), l(SockID(2, 10), gone)}, files: []*os.File{dup(insEnd), dup(insEnd2)}},
		{ins: 1, list: []ins.AdoptListener{l(SockID(1, 5), g)}, files: []*os.File{dup(insEnd)}},
	}, []uint64{g, gone})

	s.mu.Lock()
	rec := s.lsns[SockID(1, 5)]
	n := len(s.lsns)
	s.mu.Unlock()
	if n != 2 || rec == nil || rec.replicas[2] != SockID(2, 9) || !rec.adopted || rec.backlog != 511 {
		t.Fatalf("adopted listeners: %d, %+v", n, rec)
	}
	if !s.adoptedPair(g, dup(insEnd)) {
		t.Error("the adopted listener's own pair is not recognised")
	}
	if s.adoptedPair(1<<63|11, dup(insEnd)) {
		t.Error("the pair is recognised for another group")
	}
	other, otherIns := pair()
	defer other.Close()
	defer otherIns.Close()
	if s.adoptedPair(g, otherIns) {
		t.Error("another pair is recognised")
	}

	k3 := newKernelINS(3)
	set.add(k3)
	s.OnSpawn(k3)
	waitFor(t, "a replica in the INS started later", func() bool { return k3.count("Listen") >= 1 })

	waitFor(t, "the group that did not rejoin released", func() bool {
		k1.mu.Lock()
		defer k1.mu.Unlock()
		return slices.Contains(k1.forgot, gone) && !slices.Contains(k1.forgot, g)
	})
	s.mu.Lock()
	_, kept := s.lsns[SockID(1, 5)]
	_, dropped := s.lsns[SockID(2, 10)]
	s.mu.Unlock()
	if !kept || dropped {
		t.Errorf("after the release: rejoined group's listener kept %v, gone group's dropped %v", kept, !dropped)
	}

	app.Close()
	insEnd.Close()
	waitFor(t, "the app's close of the listener seen", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.lsns[SockID(1, 5)] == nil
	})
}
