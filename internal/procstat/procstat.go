// Package procstat reads the fields of /proc/PID/stat that identify a
// process across pid reuse: its parent and its start time.
package procstat

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat holds the fields of /proc/PID/stat the isolator uses.
type Stat struct {
	// PPID is the parent's pid (field 4).
	PPID int32
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
	st, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("proc stat: start time: %w", err)
	}
	return Stat{PPID: int32(ppid), StartTime: st}, nil
}

// Alive reports whether the process pid exists and started at start (so a
// recycled pid does not count).
func Alive(pid int, start uint64) bool {
	st, err := Read(pid)
	return err == nil && st.StartTime == start
}
