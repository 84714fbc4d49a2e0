package main

import (
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/bench/internal/report"
)

// TestRotated checks that over as many rounds as there are sides every side
// runs once in every position.
func TestRotated(t *testing.T) {
	n := len(report.Sides)
	for pos := range n {
		var seen []string
		for r := range n {
			seen = append(seen, rotated(report.Sides, r)[pos])
		}
		slices.Sort(seen)
		want := slices.Clone(report.Sides)
		slices.Sort(want)
		if !slices.Equal(seen, want) {
			t.Fatalf("position %d over %d rounds: %v", pos, n, seen)
		}
	}
}

// TestCPUTime burns CPU and reads it back from /proc, against getrusage.
func TestCPUTime(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before, r0 := cpuTime(os.Getpid()), rusage()
	for rusage()-r0 < 200*time.Millisecond {
	}
	got, want := cpuTime(os.Getpid())-before, rusage()-r0
	if got < want-50*time.Millisecond || got > want+50*time.Millisecond {
		t.Fatalf("/proc says %v of CPU, getrusage %v", got, want)
	}
	if cpuTime(-1) != 0 {
		t.Fatal("CPU time of a missing process")
	}
}

func TestCumOnly(t *testing.T) {
	in := "File: isolator\nType: cpu\nShowing nodes\n      flat  flat%   sum%        cum   cum%\n     0     0%     0%      2.81s 73.75%  f\n"
	got := cumOnly(in)
	if !strings.HasPrefix(strings.TrimSpace(got), "flat") || strings.Contains(got, "File:") || !strings.Contains(got, "73.75%  f") {
		t.Fatalf("cumOnly kept:\n%s", got)
	}
}

func TestSplitList(t *testing.T) {
	if got := splitList(" a, ,b,"); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("splitList = %q", got)
	}
}

func TestPerUnitCosts(t *testing.T) {
	in := "      flat  flat%   sum%        cum   cum%\n     0.50s 10.00% 10.00%      2.00s 40.00%  syscall.Syscall6\n     200ms  4.00% 14.00%      200ms  4.00%  runtime.futex\n         0     0% 14.00%      1.50s 30.00%  main.loop\n"
	got := perUnitCosts(in, 1000)
	for _, want := range []string{"   500.00   2000.00  syscall.Syscall6", "   200.00    200.00  runtime.futex", "     0.00   1500.00  main.loop"} {
		if !strings.Contains(got, want) {
			t.Errorf("perUnitCosts lacks %q:\n%s", want, got)
		}
	}
}
