package netns

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/topo"

	"github.com/mpshim/mpshim/internal/procstat"
)

func TestParseNetNSName(t *testing.T) {
	o := netnsOwner{pid: 4242, start: 987654}
	if got, id, ok := parseNetNSName(netnsName(o, 17)); !ok || got != o || id != 17 {
		t.Fatalf("round trip: %+v %d %v", got, id, ok)
	}
	for _, name := range []string{
		"mpins-1-9cedd7",                 // older daemons: no owner recorded
		"mpins-3-123456",                 // same, all digits
		"mpins-12-34-56-78",              // too many parts
		"mpins-0-1-2",                    // pid 0
		"mpins-012-1-2",                  // not canonical
		"mpins-1--2",                     // empty part
		"mpins-1-2-x",                    // not a number
		"mpins-99999999-1-2",             // beyond any pid
		"mpt1234-gw",                     // another prefix
		"mpins-1-2-3 ",                   // trailing space
		"mpins-1-18446744073709551616-3", // start overflows
	} {
		if o, id, ok := parseNetNSName(name); ok {
			t.Errorf("parseNetNSName(%q) = %+v, %d; want refused", name, o, id)
		}
	}
}

func FuzzParseNetNSName(f *testing.F) {
	f.Add("mpins-4242-987654-17")
	f.Add("mpins-1-9cedd7")
	f.Add("mpins--")
	f.Fuzz(func(t *testing.T, name string) {
		o, id, ok := parseNetNSName(name)
		if !ok {
			return
		}
		// Accepted names are exactly the canonical ones.
		if back := netnsName(o, id); back != name {
			t.Fatalf("%q parsed to %+v/%d, which names %q", name, o, id, back)
		}
	})
}

// TestReapNetNS: of namespaces named for a daemon that exited, one still
// running (another process) and this process, and one in the older format,
// only the first is removed.
func TestReapNetNS(t *testing.T) {
	topo.RequireRoot(t)
	ctx := context.Background()
	gone := exec.Command("sleep", "60")
	if err := gone.Start(); err != nil {
		t.Fatal(err)
	}
	goneSt, err := procstat.Read(gone.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	_ = gone.Process.Kill()
	_ = gone.Wait()
	live := exec.Command("sleep", "60")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Process.Kill(); _ = live.Wait() })
	liveSt, err := procstat.Read(live.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	self, err := selfOwner()
	if err != nil {
		t.Fatal(err)
	}
	sfx, err := randHex(3)
	if err != nil {
		t.Fatal(err)
	}
	// INS ids far above any a test daemon uses, so names never collide.
	id := 900000 + int(time.Now().UnixNano()%1000)
	deadName := netnsName(netnsOwner{pid: gone.Process.Pid, start: goneSt.StartTime}, id)
	recycled := netnsName(netnsOwner{pid: live.Process.Pid, start: liveSt.StartTime + 1}, id) // pid reused by another process
	keep := []string{
		netnsName(netnsOwner{pid: live.Process.Pid, start: liveSt.StartTime}, id),
		netnsName(self, id),
		"mpins-" + "1-" + sfx, // older format
	}
	for _, n := range append([]string{deadName, recycled}, keep...) {
		if _, err := RunIP(ctx, "", "netns", "add", n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = RunIP(context.Background(), "", "netns", "del", n) })
	}
	reaped, err := Reap(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{deadName, recycled} {
		if !slices.Contains(reaped, n) {
			t.Errorf("%s (owner gone) not reaped; reaped %v", n, reaped)
		}
		if _, err := os.Stat(filepath.Join(Dir, n)); err == nil {
			t.Errorf("%s still exists", n)
		}
	}
	for _, n := range keep {
		if slices.Contains(reaped, n) {
			t.Errorf("%s reaped although its owner lives or is unknown", n)
		}
		if _, err := os.Stat(filepath.Join(Dir, n)); err != nil {
			t.Errorf("%s removed: %v", n, err)
		}
	}
}

// TestReapKeepsUsedAndAdopt: a namespace named for a daemon that exited
// but in which a process still runs (an INS waiting for a successor) is
// not reaped; Adopt binds it under this process's name from the process's
// /proc entry and drops the old name.
func TestReapKeepsUsedAndAdopt(t *testing.T) {
	topo.RequireRoot(t)
	ctx := context.Background()
	gone := exec.Command("sleep", "60")
	if err := gone.Start(); err != nil {
		t.Fatal(err)
	}
	goneSt, err := procstat.Read(gone.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	_ = gone.Process.Kill()
	_ = gone.Wait()
	id := 910000 + int(time.Now().UnixNano()%1000)
	old := netnsName(netnsOwner{pid: gone.Process.Pid, start: goneSt.StartTime}, id)
	if _, err := RunIP(ctx, "", "netns", "add", old); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = RunIP(context.Background(), "", "netns", "del", old) })
	ins := exec.Command("ip", "netns", "exec", old, "sleep", "60")
	if err := ins.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ins.Process.Kill(); _ = ins.Wait() })
	want, ok := uint64(0), false
	for deadline := time.Now().Add(5 * time.Second); !ok || want == 0; time.Sleep(10 * time.Millisecond) {
		nsIno, _ := nsInode(Dir + "/" + old)
		want, ok = nsInode("/proc/" + strconv.Itoa(ins.Process.Pid) + "/ns/net")
		ok = ok && want == nsIno
		if time.Now().After(deadline) {
			t.Fatal("the process did not enter the namespace")
		}
	}
	reaped, err := Reap(ctx, nil)
	if err != nil {
		t.Logf("reap: %v", err) // other namespaces of the machine
	}
	if slices.Contains(reaped, old) {
		t.Fatalf("namespace %s reaped while a process runs in it", old)
	}
	n, err := Adopt(ctx, id, ins.Process.Pid, old, []Link{{Name: "up0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	self, _ := selfOwner()
	if n.Name != netnsName(self, id) || len(n.Links) != 1 {
		t.Errorf("adopted as %+v, want %s", n, netnsName(self, id))
	}
	if got, _ := nsInode(n.Path); got != want {
		t.Errorf("%s is namespace %d, want the process's %d", n.Path, got, want)
	}
	if _, err := os.Stat(Dir + "/" + old); err == nil {
		t.Errorf("old name %s still there", old)
	}
}
