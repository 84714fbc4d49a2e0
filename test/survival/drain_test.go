package survival

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestINSDrain stops INS the orderly way (`isolator kill`, which sends
// SIGTERM) while nginx serves through them.
//
// What the clients see: from the stop on, the stopped INS's address takes
// no new connection, while the other INS serves on (nginx's listeners are
// replicated there); the connections open on the stopped INS finish their
// requests, and the INS exits as soon as the last of them is closed, well
// within the grace period. A connection still open when the grace period
// is over is ended. What the app sees: nothing but those connections
// ending; nginx is not touched.
func TestINSDrain(t *testing.T) {
	needTools(t)
	f := startNginxOnTwo(t)
	tp, iso, s, want := f.tp, f.iso, f.s, f.want
	victim, other := f.infos[0], f.infos[1]
	victimURL, otherURL := f.urls[0], f.urls[1]
	master, workers := s.MasterPID(), s.Workers()

	kill := func(id int) <-chan string {
		done := make(chan string, 1)
		go func() {
			out, err := iso.CLI("kill", strconv.Itoa(id))
			if err != nil {
				out = fmt.Sprintf("%v: %s", err, out)
			}
			done <- out
		}()
		return done
	}

	// Three connections with a request under way on the victim.
	held := hold(t, tp.WAN, addr4(victim), 3)
	// isolator ls counts each INS's TCP endpoints by state: the three
	// connections and nginx's listeners.
	if infos, err := iso.List(); err != nil {
		t.Fatalf("isolator ls: %v", err)
	} else {
		for _, in := range infos {
			if in.ID == victim.ID && (in.TCP["ESTAB"] != 3 || in.TCP["LISTEN"] < 1) {
				t.Errorf("INS %d: TCP endpoints %v, want 3 ESTAB and a LISTEN", in.ID, in.TCP)
			}
		}
	}
	since := time.Now()
	done := kill(victim.ID)
	if _, _, ok := iso.WaitLog(since, 5*time.Second, "ins["+strconv.Itoa(victim.ID)+"]", "INS draining", "connections=3"); !ok {
		t.Fatalf("no drain of INS %d with its 3 connections:\n%s", victim.ID, iso.Log())
	}
	if curlOK(tp.WAN, victimURL, want, 2*time.Second) {
		t.Errorf("INS %d took a new connection while draining", victim.ID)
	}
	if !curlOK(tp.WAN, otherURL, want, 5*time.Second) {
		t.Errorf("INS %d did not serve while INS %d drained", other.ID, victim.ID)
	}
	for i, h := range held[:2] {
		if err := h.finish(want); err != nil {
			t.Errorf("connection %d open at the stop: %v", i, err)
		}
		h.c.Close()
	}
	time.Sleep(300 * time.Millisecond)
	if syscall.Kill(victim.PID, 0) != nil {
		t.Errorf("INS %d exited with a connection still open, before the grace period", victim.ID)
	}
	if err := held[2].finish(want); err != nil {
		t.Errorf("connection 2 open at the stop: %v", err)
	}
	held[2].c.Close()
	line, at, ok := iso.WaitLog(since, 15*time.Second, "INS stopped", fmt.Sprintf("ins=%d ", victim.ID))
	if !ok || !strings.Contains(line, "status=exited") {
		t.Errorf("INS %d after its drain: %q, want a clean exit", victim.ID, line)
	}
	drained, _, ok := iso.WaitLog(since, time.Second, "ins["+strconv.Itoa(victim.ID)+"]", "INS drained")
	if !ok {
		t.Errorf("INS %d did not log its drain", victim.ID)
	}
	t.Logf("INS %d stopped %v after isolator kill, its connections done: %s", victim.ID, at.Sub(since).Round(time.Millisecond), drained)
	if out := <-done; out != "" {
		t.Logf("isolator kill: %s", out)
	}

	// A connection that stays open is ended at the grace period.
	stay := hold(t, tp.WAN, addr4(other), 1)[0]
	since = time.Now()
	done = kill(other.ID)
	if _, _, ok := iso.WaitLog(since, 15*time.Second, "ins["+strconv.Itoa(other.ID)+"]", "grace over", "connections=1"); !ok {
		t.Errorf("INS %d: no end of its drain grace with the open connection:\n%s", other.ID, iso.Log())
	}
	if _, _, ok := iso.WaitLog(since, 15*time.Second, "INS stopped", fmt.Sprintf("ins=%d ", other.ID)); !ok {
		t.Errorf("INS %d did not stop after its grace period", other.ID)
	}
	<-done
	stay.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(stay.c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection open past the grace period: %v, want end of file or a reset", err)
	}
	t.Logf("INS %d stopped %v after isolator kill with a connection left open", other.ID, time.Since(since).Round(time.Millisecond))
	if s.MasterPID() != master || !samePIDs(s.Workers(), workers) {
		t.Errorf("nginx processes changed: master %d workers %v, were %d %v", s.MasterPID(), s.Workers(), master, workers)
	}
}
