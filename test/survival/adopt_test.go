package survival

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/internal/procstat"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// insPIDs maps each INS id to its pid.
func insPIDs(infos []api.INSInfo) map[int]int {
	m := map[int]int{}
	for _, in := range infos {
		m[in.ID] = in.PID
	}
	return m
}

// TestDaemonRestartAdopts kills the daemon with SIGKILL under wrk -c 64 and
// starts it again a second later, twice; the second time from a copy of
// the binary at another path, as an upgrade installs a new binary (README,
// "Upgrading").
//
// What the clients see: nothing. The INS outlive the daemon and serve on
// without it: wrk has no socket error and no non-2xx response, connections
// held open across the kill get their answers while no daemon runs and
// after, and new connections are accepted while no daemon runs and after
// the restart. What the app sees: nothing either; nginx is never restarted
// and logs no client that closed early. What the operator sees: the
// restarted daemon adopts the same INS processes (same pids, the same
// restart counts); an INS killed while no daemon ran is replaced by the
// next daemon (same id and address, LAST EXIT "not adopted") and serves
// nginx's listeners again; an INS spawned after the restart gets the
// adopted listeners.
func TestDaemonRestartAdopts(t *testing.T) {
	needTools(t)
	f := startNginxOnTwo(t)
	tp, iso, s, infos, urls, want := f.tp, f.iso, f.s, f.infos, f.urls, f.want
	master, workers := s.MasterPID(), s.Workers()
	pids := insPIDs(infos)

	for round, upgrade := range []bool{false, true} {
		held := hold(t, tp.WAN, addr4(infos[0]), 4)
		w := startWrk(t, tp.WAN, urls[0], 64, 6*time.Second)
		time.Sleep(1500 * time.Millisecond)
		if upgrade {
			// The upgrade: a new binary at the path the daemon is
			// started from; the running INS keep the old image.
			nb := filepath.Join(t.TempDir(), "isolator")
			copyFile(t, iso.Bin, nb)
			iso.Bin = nb
		}
		killed := time.Now()
		iso.Kill(t)
		// While no daemon runs: the held connections are answered and
		// new connections are accepted, on both INS.
		for i, h := range held[:2] {
			if err := h.finish(want); err != nil {
				t.Errorf("round %d: held connection %d, no daemon running: %v", round, i, err)
			}
		}
		// New keep-alive connections while no daemon runs: nginx sets
		// TCP_NODELAY on a connection that turns keep-alive and closes
		// it if that fails (the shim defers the option until a daemon
		// runs again).
		ka := startWrk(t, tp.WAN, urls[1], 8, time.Second)
		for _, u := range urls {
			if !curlOK(tp.WAN, u, want, 5*time.Second) {
				t.Errorf("round %d: %s not served while no daemon runs", round, u)
			}
		}
		if r := wrkDone(t, ka); r.Connect+r.Read+r.Write != 0 || r.Non2xx != 0 || r.Requests == 0 {
			t.Errorf("round %d: wrk -c8 on new keep-alive connections while no daemon runs: %+v", round, r)
		}
		time.Sleep(time.Until(killed.Add(time.Second)))
		since := time.Now()
		iso.Restart(t)
		back := serveAgain(t, tp.WAN, urls, want, 10*time.Second)
		t.Logf("round %d (upgrade %v): daemon restarted 1 s after the kill; both addresses answered a new connection %v after the restart",
			round, upgrade, back.Round(time.Millisecond))
		for _, in := range infos {
			if _, _, ok := iso.WaitLog(since, 5*time.Second, "INS adopted", "ins="+strconv.Itoa(in.ID)+" "); !ok {
				t.Errorf("round %d: no \"INS adopted\" line for INS %d", round, in.ID)
			}
			// What the INS logged while no daemon ran reaches the
			// successor's log.
			if _, _, ok := iso.WaitLog(since, 5*time.Second, "ins["+strconv.Itoa(in.ID)+"]", "daemon gone: serving on"); !ok {
				t.Errorf("round %d: INS %d's log of the daemon's death did not reach the successor", round, in.ID)
			}
		}
		r := wrkDone(t, w)
		t.Logf("round %d: wrk -c 64 through the kill and restart: %d responses, %d socket errors, %d non-2xx", round, r.Requests, r.SocketErrors(), r.Non2xx)
		if r.SocketErrors() != 0 || r.Non2xx != 0 || r.Requests == 0 {
			t.Errorf("round %d: wrk through the daemon's kill: %d socket errors, %d non-2xx, %d responses\n%s", round, r.SocketErrors(), r.Non2xx, r.Requests, r.Output)
		}
		for i, h := range held[2:] {
			if err := h.finish(want); err != nil {
				t.Errorf("round %d: held connection %d after the restart: %v", round, i+2, err)
			}
		}
		after, err := iso.List()
		if err != nil {
			t.Fatal(err)
		}
		for id, pid := range insPIDs(after) {
			if pids[id] != pid {
				t.Errorf("round %d: INS %d is pid %d after the restart, was %d (not adopted)", round, id, pid, pids[id])
			}
		}
		for _, in := range after {
			if in.Restarts != 0 {
				t.Errorf("round %d: INS %d shows %d restarts after the daemon's restart", round, in.ID, in.Restarts)
			}
		}
		if len(after) != len(infos) {
			t.Errorf("round %d: %d INS after the restart, want %d", round, len(after), len(infos))
		}
	}
	// Loopback connections of the app's namespace reach nginx again (the
	// kernel loopback listeners lived in the daemon that was killed).
	for _, u := range []string{"http://127.0.0.1/1k.bin", "http://[::1]/1k.bin"} {
		if d := serveAgain(t, tp.App, []string{u}, want, 10*time.Second); d > time.Second {
			t.Logf("%s from the app's namespace served after %v", u, d.Round(time.Millisecond))
		}
	}
	if n := prematureCloses(s); n != 0 {
		t.Errorf("nginx saw %d connections closed early by their client (an INS lost them)", n)
	}
	if s.MasterPID() != master || !samePIDs(s.Workers(), workers) {
		t.Errorf("nginx processes changed: master %d workers %v, were %d %v", s.MasterPID(), s.Workers(), master, workers)
	}
	// An INS that dies while no daemon runs is replaced by the next one,
	// with its id and address, and gets the adopted listeners; the other
	// is adopted.
	iso.Kill(t)
	gone := infos[1]
	if err := syscall.Kill(gone.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Its parent is gone: whoever reaps orphans may leave it a zombie
	// for a while, which is as dead.
	exited := func(pid int) bool { st, err := procstat.Read(pid); return err != nil || st.State == 'Z' }
	for deadline := time.Now().Add(5 * time.Second); !exited(gone.PID); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("INS pid %d still there after SIGKILL", gone.PID)
		}
	}
	iso.Restart(t)
	back := serveAgain(t, tp.WAN, []string{urls[1]}, want, 10*time.Second)
	now, err := iso.List()
	if err != nil {
		t.Fatal(err)
	}
	if in, ok := insByID(now, gone.ID); !ok || in.PID == gone.PID || addr4(in) != addr4(gone) || !strings.Contains(in.LastExit, "not adopted") {
		t.Errorf("INS %d killed while no daemon ran: now %+v; want a replacement on %s whose last exit says it was not adopted", gone.ID, in, addr4(gone))
	}
	if in, ok := insByID(now, infos[0].ID); !ok || in.PID != infos[0].PID {
		t.Errorf("INS %d not adopted after the second restart: %+v", infos[0].ID, in)
	}
	t.Logf("INS %d, killed while no daemon ran, replaced on %s and serving %v after the restart", gone.ID, addr4(gone), back.Round(time.Millisecond))
	pids = insPIDs(now)

	// An INS started by the restarted daemon gets the adopted listeners.
	if out, err := iso.CLI("spawn", "-n", "1"); err != nil {
		t.Fatalf("isolator spawn: %v\n%s", err, out)
	}
	all, err := iso.List()
	if err != nil || len(all) != 3 {
		t.Fatalf("isolator ls after spawn: %v %v", all, err)
	}
	for _, in := range all {
		if _, old := pids[in.ID]; !old {
			u := "http://" + addr4(in) + "/1k.bin"
			back := serveAgain(t, tp.WAN, []string{u}, want, 10*time.Second)
			t.Logf("INS %d spawned after the adoption serves nginx's listener after %v", in.ID, back.Round(time.Millisecond))
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOrphanTimeout: an INS whose daemon was killed and never restarted
// serves on for the daemon's --orphan-timeout (3 s here, 15 minutes by
// default) and then exits by itself.
func TestOrphanTimeout(t *testing.T) {
	topo.RequireRoot(t)
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1, Args: []string{"--orphan-timeout", "3s"}})
	infos, err := iso.List()
	if err != nil || len(infos) != 1 {
		t.Fatalf("isolator ls: %v %v", infos, err)
	}
	pid := infos[0].PID
	st, err := procstat.Read(pid)
	if err != nil {
		t.Fatal(err)
	}
	gone := func() bool {
		now, err := procstat.Read(pid)
		return err != nil || now.StartTime != st.StartTime || now.State == 'Z'
	}
	iso.Kill(t)
	killed := time.Now()
	if gone() {
		t.Fatalf("INS pid %d ended with its daemon", pid)
	}
	for !gone() {
		if time.Since(killed) > 60*time.Second {
			t.Fatalf("INS pid %d still runs 60 s after its daemon died (orphan timeout 3 s)", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(killed)
	t.Logf("INS pid %d exited %v after its daemon was killed", pid, took.Round(time.Millisecond))
	if took < 2*time.Second {
		t.Errorf("INS pid %d exited %v after its daemon was killed, before its 3 s orphan timeout", pid, took)
	}
}
