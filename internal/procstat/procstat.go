// Package procstat reads the fields of /proc/PID/stat that identify a
// process across pid reuse (its parent and its start time) and the CPU
// time it has used.
package procstat

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the time fields of /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture we build for.
const userHZ = 100

// Stat holds the fields of /proc/PID/stat the project uses.
type Stat struct {
	// State is the process state (field 3): 'R', 'S', 'D', 'Z' (a zombie:
	// exited, not yet reaped), …
	State byte
	// PPID is the parent's pid (field 4).
	PPID int32
	// UTime and STime are the user and system time of all the process's
	// threads, in clock ticks (fields 14 and 15).
	UTime, STime uint64
	// StartTime is the time the process started after boot, in clock
	// ticks (field 22). A pid and its start time name one process for the
	// life of the system.
	StartTime uint64
}

// Read reads /proc/PID/stat.
func Read(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return Parse(string(b))
}

// Self reads the calling process's own stat.
func Self() (Stat, error) { return Read(os.Getpid()) }

// Parse parses the contents of /proc/PID/stat. The command name (field 2)
// is in parentheses and may itself contain spaces and parentheses, so the
// fields after it are found from the last ')'.
func Parse(s string) (Stat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 || !strings.Contains(s[:i], "(") {
		return Stat{}, errors.New("proc stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 22-3+1 {
		return Stat{}, fmt.Errorf("proc stat: %d fields after the name", len(f))
	}
	ppid, err := strconv.ParseInt(f[4-3], 10, 32)
	if err != nil {
		return Stat{}, fmt.Errorf("proc stat: ppid: %w", err)
	}
	var ticks [3]uint64
	for i, n := range []int{14, 15, 22} {
		if ticks[i], err = strconv.ParseUint(f[n-3], 10, 64); err != nil {
			return Stat{}, fmt.Errorf("proc stat: field %d: %w", n, err)
		}
	}
	return Stat{State: f[0][0], PPID: int32(ppid), UTime: ticks[0], STime: ticks[1], StartTime: ticks[2]}, nil
}

// CPU is the user and system CPU time the process has used.
func (s Stat) CPU() time.Duration {
	return time.Duration(s.UTime+s.STime) * (time.Second / userHZ)
}

// CPUTime returns the CPU time process pid has used, all threads.
func CPUTime(pid int) (time.Duration, error) {
	st, err := Read(pid)
	if err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	return st.CPU(), nil
}

// Alive reports whether the process pid exists and started at start (so a
// recycled pid does not count).
func Alive(pid int, start uint64) bool {
	st, err := Read(pid)
	return err == nil && st.StartTime == start
}

// Threads describes where each thread of process pid is: its id, state and
// the kernel function it waits in (/proc/PID/task/TID/wchan), as
// "tid:state:wchan" separated by spaces. It is for logs about a process
// that stopped answering; threads that vanish while it reads are left out.
func Threads(pid int) (string, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("threads of %d: %w", pid, err)
	}
	var b strings.Builder
	for _, e := range ents {
		st, err := os.ReadFile(dir + "/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s, err := Parse(string(st))
		if err != nil {
			continue
		}
		wchan, _ := os.ReadFile(dir + "/" + e.Name() + "/wchan")
		w := strings.TrimSpace(string(wchan))
		if w == "" || w == "0" {
			w = "-"
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%c:%s", e.Name(), s.State, w)
	}
	return b.String(), nil
}
