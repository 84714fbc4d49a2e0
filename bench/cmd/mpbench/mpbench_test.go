package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
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

// TestQuickSmoke runs the harness for real in smoke mode, keep-alive nginx
// only, against the built isolator and shim: both sides must serve, the
// table must hold their figures and the run must say how it pinned them.
func TestQuickSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	bin := os.Getenv("MPSHIM_BIN")
	if bin == "" {
		t.Skip("MPSHIM_BIN is not set (make test sets it to the built bin/)")
	}
	for _, p := range []string{bin + "/isolator", bin + "/libmpshim.so", "/usr/sbin/nginx", "/usr/bin/wrk"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s missing: %v", p, err)
		}
	}
	out := t.TempDir()
	o := options{quick: true, rounds: 1, duration: time.Second, abN: 100, scaleN: 100, only: "http",
		out: out, bin: bin, serverCPU: "1", clientCPU: "0"}
	if runtime.NumCPU() < 2 {
		o.serverCPU, o.clientCPU = "", ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, o); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(out, "*-quick.md"))
	if len(files) != 1 {
		t.Fatalf("results files: %v", files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	row := regexp.MustCompile(`(?m)^\| nginx 1 KiB keep-alive, wrk -t1 -c64 \| req/s \| ([0-9.]+)[^|]* \| ([0-9.]+)[^|]* \| ([0-9.]+) \|`)
	m := row.FindStringSubmatch(md)
	if m == nil {
		t.Fatalf("no -c64 row with native and mpshim figures:\n%s", md)
	}
	for _, v := range m[1:3] {
		if f, _ := strconv.ParseFloat(v, 64); f <= 0 {
			t.Errorf("req/s %q in %q", v, m[0])
		}
	}
	if o.serverCPU != "" && !strings.Contains(md, "servers pinned with `taskset -c 1`") {
		t.Errorf("the results do not say how the sides were pinned:\n%s", md)
	}
}
