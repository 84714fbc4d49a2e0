package isolator_test

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// TestSpawnListKill: spawn -n 20 leaves 20 INS processes that ls shows,
// each with its own address on both uplinks; kill -9 of one is reported
// within a second and the INS replaced, the others keep answering; an INS
// stopped with isolator kill stays stopped; SIGTERM of the daemon
// leaves no INS and no socket behind.
func TestSpawnListKill(t *testing.T) {
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 2})
	d := harness.StartIsolator(t, tp, harness.Options{})

	if out, err := d.CLI("spawn", "-n", "20"); err != nil {
		t.Fatalf("isolator spawn -n 20: %v\n%s", err, out)
	}
	infos, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 20 {
		t.Fatalf("ls shows %d INS, want 20", len(infos))
	}
	seen := map[string]bool{}
	for _, i := range infos {
		if !alive(i.PID) {
			t.Errorf("INS %d: pid %d is not running", i.ID, i.PID)
		}
		if i.State != "running" || len(i.Uplinks) != 2 || i.RSS == 0 {
			t.Errorf("INS %d: state %q, %d uplinks, RSS %d; want running, 2, >0", i.ID, i.State, len(i.Uplinks), i.RSS)
		}
		for _, u := range i.Uplinks {
			if seen[u.Addr4] {
				t.Errorf("address %s given twice", u.Addr4)
			}
			seen[u.Addr4] = true
		}
	}
	t.Logf("idle RSS of INS %d: %d KiB", infos[0].ID, infos[0].RSS>>10)

	victim := infos[3]
	t0 := time.Now()
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, at, ok := d.WaitLog(t0, 3*time.Second, "INS died", fmt.Sprintf("ins=%d ", victim.ID))
	if !ok || at.Sub(t0) > time.Second {
		t.Fatalf("kill -9 of INS %d not reported within 1 s (found %v after %v)", victim.ID, ok, at.Sub(t0))
	}
	t.Logf("kill -9 reported after %v", at.Sub(t0).Round(time.Millisecond))
	// A dead INS is replaced: same id, same addresses, a new process.
	if _, at, ok := d.WaitLog(t0, 10*time.Second, "INS replaced", fmt.Sprintf("ins=%d ", victim.ID)); !ok {
		t.Fatalf("INS %d not replaced within 10 s of kill -9", victim.ID)
	} else {
		t.Logf("replaced after %v", at.Sub(t0).Round(time.Millisecond))
	}
	after, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 20 {
		t.Fatalf("after kill -9: ls shows %d INS, want 20 (the dead one replaced)", len(after))
	}
	for _, i := range after {
		if i.State != "running" {
			t.Errorf("after kill -9: INS %d state %q", i.ID, i.State)
		}
		if i.ID != victim.ID {
			continue
		}
		var addrs, was []string
		for k := range i.Uplinks {
			addrs = append(addrs, i.Uplinks[k].Addr4, i.Uplinks[k].Addr6)
		}
		for k := range victim.Uplinks {
			was = append(was, victim.Uplinks[k].Addr4, victim.Uplinks[k].Addr6)
		}
		if i.PID == victim.PID || i.Restarts != 1 || fmt.Sprint(addrs) != fmt.Sprint(was) {
			t.Errorf("replacement of INS %d: pid %d (was %d), restarts %d, addresses %v (were %v)",
				i.ID, i.PID, victim.PID, i.Restarts, addrs, was)
		}
	}

	if out, err := d.CLI("kill", fmt.Sprint(after[0].ID)); err != nil {
		t.Fatalf("isolator kill: %v\n%s", err, out)
	}
	if out, err := d.CLI("kill", "999"); err == nil || !strings.Contains(out, "no INS 999") {
		t.Errorf("kill of an unknown INS: err %v, output %q; want a clear refusal", err, out)
	}
	if out, err := d.CLI("spawn", "-n", "40"); err == nil || !strings.Contains(out, "max_ins") {
		t.Errorf("spawn beyond max_ins: err %v, output %q; want a refusal naming max_ins", err, out)
	}
	last, _ := d.List()
	if len(last) != 19 {
		t.Errorf("after kill: %d INS, want 19 (an INS stopped by isolator kill is not replaced)", len(last))
	}
	d.Stop(t)
	for _, i := range last {
		if alive(i.PID) {
			t.Errorf("INS pid %d outlived the daemon", i.PID)
		}
	}
	for _, p := range []string{d.API, d.Socket} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind after SIGTERM", p)
		}
	}
}
