package isolator

import (
	"os"
	"testing"
	"time"
)

// TestProcCPU reads this process's CPU time from /proc as the autoscaler
// reads an INS's: it grows by about the time spent spinning.
func TestProcCPU(t *testing.T) {
	before := procCPU(os.Getpid())
	start := time.Now()
	for time.Since(start) < 300*time.Millisecond {
	}
	used := procCPU(os.Getpid()) - before
	// USER_HZ ticks, and a loaded machine may deschedule the loop.
	if used < 50*time.Millisecond || used > 2*time.Second {
		t.Fatalf("spinning 300 ms used %v of CPU by /proc", used)
	}
	if got := procCPU(1 << 30); got != 0 {
		t.Fatalf("CPU of a process that does not exist: %v", got)
	}
}
