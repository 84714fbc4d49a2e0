package procstat

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	line := "4242 (a) b) (c d) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615"
	st, err := Parse(line)
	if err != nil || st.State != 'S' || st.PPID != 17 || st.StartTime != 987654 || st.UTime != 1 || st.STime != 2 {
		t.Fatalf("Parse = %+v, %v; want state S, ppid 17, utime 1, stime 2, start 987654", st, err)
	}
	if st.CPU() != 30*time.Millisecond {
		t.Errorf("CPU() = %v, want 30ms (3 ticks)", st.CPU())
	}
	for _, bad := range []string{"", "1 (x S 2", "1 (x) S 2 3", "1 (x) S notanumber " + string(bytes.Repeat([]byte("1 "), 30))} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

// TestCPUTime: the process's CPU time grows while it spins (by at least
// two ticks within 10 s, however loaded the machine is).
func TestCPUTime(t *testing.T) {
	before, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		now, err := CPUTime(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if now-before >= 20*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU time grew by %v in 10 s of spinning", now-before)
		}
		for x := 0; x < 1e6; x++ {
		}
	}
	if _, err := CPUTime(-1); err == nil {
		t.Error("CPUTime(-1) succeeded")
	}
}

// TestAlive: a running process is alive with its own start time and not
// with another; an exited one is not alive.
func TestAlive(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(os.Getpid(), self.StartTime) {
		t.Error("this process is not alive by its own start time")
	}
	if Alive(os.Getpid(), self.StartTime+1) {
		t.Error("this process is alive by a wrong start time")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if Alive(cmd.Process.Pid, 0) {
		t.Errorf("exited pid %d counts as alive", cmd.Process.Pid)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("4242 (a) b) (c d) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 1")
	f.Add("1 (x) S")
	f.Add(")")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := Parse(s)
		if err != nil && st != (Stat{}) {
			t.Fatalf("error %v with a non-zero result %+v", err, st)
		}
	})
}

func TestThreads(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	got, err := Threads(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// The calling thread is among them, and running.
	self := fmt.Sprintf("%d:R:", unix.Gettid())
	if !strings.Contains(" "+got, " "+self) {
		t.Errorf("Threads(self) = %q, want an entry %q…", got, self)
	}
	if _, err := Threads(-1); err == nil {
		t.Error("Threads(-1): no error")
	}
}
