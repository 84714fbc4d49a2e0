package procstat

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

func TestParse(t *testing.T) {
	line := "4242 (a) b) (c d) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615"
	st, err := Parse(line)
	if err != nil || st.PPID != 17 || st.StartTime != 987654 {
		t.Fatalf("Parse = %+v, %v; want ppid 17 start 987654", st, err)
	}
	for _, bad := range []string{"", "1 (x S 2", "1 (x) S 2 3", "1 (x) S notanumber " + string(bytes.Repeat([]byte("1 "), 30))} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
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
