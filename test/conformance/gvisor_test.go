package conformance

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

// gVisor's socket syscall tests (test/syscalls/linux of gVisor, prebuilt
// in ../shared/conformance/gvisor-socket beside the repository) are the
// conformance target: every case that passes on the kernel must pass under
// the shim, or be listed with its reason in testdata/gvisor-expected.txt.

var (
	gvisorAll   = flag.Bool("gvisor.all", false, "run all of gVisor's socket test binaries, not only the make-test subset")
	gvisorModes = flag.String("gvisor.modes", "kernel,ins", "loopback modes to run the gVisor socket tests in (kernel, ins)")
	gvisorTests = flag.String("gvisor.tests", "", "space-separated binaries to run instead of the subset (overrides -gvisor.all)")
	gvisorLogs  = flag.String("gvisor.logs", "", "keep the binaries' logs in this directory (one subdirectory per loopback mode)")
)

// gvisorSubset is what make test runs in each loopback mode: about two
// minutes with loopback on the kernel, two and a half with
// MPSHIM_LOOPBACK=ins. socket_ip_udp_loopback_test does not run in ins mode
// in make test yet; make conformance runs it.
var gvisorSubset = map[string][]string{
	"kernel": {"tcp_socket_test", "udp_socket_test", "socket_ip_tcp_generic_loopback_test", "socket_ip_udp_loopback_test"},
	"ins":    {"tcp_socket_test", "udp_socket_test", "socket_ip_tcp_generic_loopback_test"},
}

// gvisorExpectFile lists the cases that fail under the shim, with reasons.
const gvisorExpectFile = "testdata/gvisor-expected.txt"

// gvisorSuiteDir finds the prebuilt suite: $MPSHIM_GVISOR_SOCKET, or
// shared/conformance/gvisor-socket beside the repository's top level or
// beside the main checkout of a worktree.
func gvisorSuiteDir() (string, []string) {
	if d := os.Getenv("MPSHIM_GVISOR_SOCKET"); d != "" {
		return d, []string{d}
	}
	const rel = "shared/conformance/gvisor-socket"
	var tried []string
	if out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output(); err == nil {
		tried = append(tried, filepath.Join(strings.TrimSpace(string(out)), "..", rel))
	}
	if out, err := exec.Command("git", "rev-parse", "--path-format=absolute", "--git-common-dir").Output(); err == nil {
		tried = append(tried, filepath.Join(strings.TrimSpace(string(out)), "..", "..", rel))
	}
	tried = append(tried, filepath.Join("..", "..", "..", rel))
	for _, d := range tried {
		if _, err := os.Stat(filepath.Join(d, "run.sh")); err == nil {
			return d, tried
		}
	}
	return "", tried
}

// expectation is one line of the expectations file.
type expectation struct {
	mode, binary string
	pattern      *regexp.Regexp
	rawPattern   string
	reason       string
	line         int
}

// parseExpectations reads "MODE BINARY PATTERN # reason" lines; MODE is
// kernel, ins or *, PATTERN a gtest name where * matches any run of
// characters. Every line must carry a reason; a case whose reason starts
// with "hangs" is not run at all in its mode.
func parseExpectations(text string) ([]expectation, error) {
	var out []expectation
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		body, reason, ok := strings.Cut(line, "#")
		reason = strings.TrimSpace(reason)
		if !ok || reason == "" {
			return nil, fmt.Errorf("line %d: no reason (want MODE BINARY PATTERN # reason)", n)
		}
		f := strings.Fields(body)
		if len(f) != 3 {
			return nil, fmt.Errorf("line %d: want MODE BINARY PATTERN, got %q", n, body)
		}
		if f[0] != "kernel" && f[0] != "ins" && f[0] != "*" {
			return nil, fmt.Errorf("line %d: mode %q is not kernel, ins or *", n, f[0])
		}
		re, err := regexp.Compile("^" + strings.ReplaceAll(regexp.QuoteMeta(f[2]), `\*`, ".*") + "$")
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, expectation{mode: f[0], binary: f[1], pattern: re, rawPattern: f[2], reason: reason, line: n})
	}
	return out, sc.Err()
}

// expected returns the expectation covering a failing case, or nil.
func expected(exps []expectation, mode, binary, name string) *expectation {
	for i := range exps {
		e := &exps[i]
		if (e.mode == "*" || e.mode == mode) && (e.binary == "*" || e.binary == binary) && e.pattern.MatchString(name) {
			return e
		}
	}
	return nil
}

// gtestResult is one binary's outcome, from its log.
type gtestResult struct {
	passed, skipped []string
	failed          []string
	// aborted names the case running when the binary crashed or timed
	// out ("" if it finished).
	aborted string
}

// abortedEarly names the failure of a binary that ran no case.
const abortedEarly = "(before the first case)"

var gtestLine = regexp.MustCompile(`^\[ *(OK|FAILED|SKIPPED|RUN) *\] (\S+?)(,| \(| *$)`)

// parseGtestLog reads a gtest log.
func parseGtestLog(text string) gtestResult {
	var r gtestResult
	var running string
	finished := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "[==========] ") && strings.Contains(line, " ran.") {
			finished = true
		}
		m := gtestLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		switch m[1] {
		case "RUN":
			running = m[2]
		case "OK":
			r.passed = append(r.passed, m[2])
			running = ""
		case "SKIPPED":
			if m[3] == " (" {
				r.skipped = append(r.skipped, m[2])
			}
			running = ""
		case "FAILED":
			// The summary repeats every failure without a duration.
			if !finished && (m[3] == " (" || m[3] == ",") {
				r.failed = append(r.failed, m[2])
				running = ""
			}
		}
	}
	if !finished {
		r.aborted = running
		if running == "" {
			r.aborted = abortedEarly
		}
	}
	return r
}

func TestParseGtestLog(t *testing.T) {
	log := `[==========] Running 4 tests from 2 test suites.
[ RUN      ] A/T.One/0
[       OK ] A/T.One/0 (1 ms)
[ RUN      ] A/T.Two/1
x.cc:12: Failure
[  FAILED  ] A/T.Two/1, where GetParam() = 1 (3 ms)
[ RUN      ] B.Skip
[  SKIPPED ] B.Skip (0 ms)
[ RUN      ] B.Hang
`
	r := parseGtestLog(log)
	if strings.Join(r.passed, ",") != "A/T.One/0" || strings.Join(r.failed, ",") != "A/T.Two/1" ||
		strings.Join(r.skipped, ",") != "B.Skip" || r.aborted != "B.Hang" {
		t.Errorf("parse: %+v", r)
	}
	done := log + "[       OK ] B.Hang (2 ms)\n[==========] 4 tests from 2 test suites ran. (9 ms total)\n" +
		"[  FAILED  ] 1 test, listed below:\n[  FAILED  ] A/T.Two/1, where GetParam() = 1\n"
	r = parseGtestLog(done)
	if len(r.failed) != 1 || r.aborted != "" || len(r.passed) != 2 {
		t.Errorf("parse finished log: %+v", r)
	}
}

func TestParseExpectations(t *testing.T) {
	for _, tc := range []struct {
		text string
		ok   bool
	}{
		{"ins tcp_socket_test A/T.X/* # why", true},
		{"# comment\n\n* proc_net_tcp_test * # reads the kernel's table", true},
		{"ins tcp_socket_test A/T.X/*", false},
		{"ins tcp_socket_test A/T.X/* #", false},
		{"both tcp_socket_test A # why", false},
		{"ins tcp_socket_test # why", false},
	} {
		_, err := parseExpectations(tc.text)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err=%v, want ok=%v", tc.text, err, tc.ok)
		}
	}
	exps, _ := parseExpectations("kernel b A/T.X/* # r\n* c * # r2")
	if expected(exps, "kernel", "b", "A/T.X/3") == nil || expected(exps, "ins", "b", "A/T.X/3") != nil ||
		expected(exps, "ins", "c", "Any.Thing/1") == nil || expected(exps, "kernel", "b", "A/T.Y/3") != nil {
		t.Error("matching is wrong")
	}
	// The committed file parses.
	text, err := os.ReadFile(gvisorExpectFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseExpectations(string(text)); err != nil {
		t.Fatalf("%s: %v", gvisorExpectFile, err)
	}
}

// TestGVisorSocketSuite runs gVisor's socket tests under the shim against
// an isolator, in each loopback mode, and fails on every case that fails
// under the shim, passes on the kernel and is not in the expectations
// file. By default it runs the make-test subset; make conformance runs all
// binaries (-gvisor.all).
func TestGVisorSocketSuite(t *testing.T) {
	topo.RequireRoot(t)
	dir, tried := gvisorSuiteDir()
	if dir == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("gVisor socket tests not found (tried %s); CI copies shared/ beside the clone", strings.Join(tried, ", "))
		}
		t.Skipf("gVisor socket tests not found (tried %s; set MPSHIM_GVISOR_SOCKET)", strings.Join(tried, ", "))
	}
	lib := harness.Binary(t, "libmpshim.so")
	harness.Binary(t, "isolator")
	text, err := os.ReadFile(gvisorExpectFile)
	if err != nil {
		t.Fatal(err)
	}
	exps, err := parseExpectations(string(text))
	if err != nil {
		t.Fatalf("%s: %v", gvisorExpectFile, err)
	}
	var bins []string // nil: the subset of each mode
	switch {
	case *gvisorTests != "":
		bins = strings.Fields(*gvisorTests)
	case *gvisorAll:
		bins = nil
		targets, err := os.ReadFile(filepath.Join(dir, "targets.txt"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(targets), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				bins = append(bins, l)
			}
		}
	}
	tp := topo.New(t, topo.Config{Uplinks: 1})
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1})
	for _, mode := range strings.Split(*gvisorModes, ",") {
		if _, ok := gvisorSubset[mode]; !ok {
			t.Fatalf("loopback mode %q: want kernel or ins", mode)
		}
		t.Run("loopback="+mode, func(t *testing.T) {
			bins := bins
			if bins == nil {
				bins = gvisorSubset[mode]
			}
			env := []string{"env", "LD_PRELOAD=" + lib, "MPSHIM_SOCKET=" + iso.Socket}
			if mode == "ins" {
				env = append(env, "MPSHIM_LOOPBACK=ins")
			}
			runGVisorMode(t, dir, mode, bins, env, exps)
		})
	}
}

// runGVisorMode runs the binaries in one loopback mode and checks the
// failures against the expectations and the kernel.
func runGVisorMode(t *testing.T, dir, mode string, bins, prefix []string, exps []expectation) {
	logs := t.TempDir()
	if *gvisorLogs != "" {
		logs = filepath.Join(*gvisorLogs, mode)
		if err := os.MkdirAll(logs, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A case that hangs under the shim would stop its whole binary: the
	// expectations whose reason starts with "hangs" are not run.
	var hang []string
	for _, e := range exps {
		if (e.mode == "*" || e.mode == mode) && strings.HasPrefix(e.reason, "hangs") {
			hang = append(hang, e.rawPattern)
		}
	}
	var totalPass, totalFail, totalSkip int
	for _, b := range bins {
		r := runGVisorBinary(t, dir, b, prefix, hang, logs)
		failed := r.failed
		if r.aborted != "" && r.aborted != abortedEarly {
			failed = append(failed, r.aborted)
		}
		var unexpected []string
		for _, name := range failed {
			if expected(exps, mode, b, name) == nil {
				unexpected = append(unexpected, name)
			}
		}
		// A case that fails on the kernel too is the environment's; a
		// binary that did not start is never expected.
		unexpected = failOnKernel(t, dir, b, unexpected)
		if r.aborted == abortedEarly {
			unexpected = append(unexpected, abortedEarly)
		}
		totalPass += len(r.passed)
		totalFail += len(failed)
		totalSkip += len(r.skipped)
		line := fmt.Sprintf("%s: %d passed, %d failed (%d expected), %d skipped", b, len(r.passed), len(failed), len(failed)-len(unexpected), len(r.skipped))
		if r.aborted != "" {
			line += ", aborted in " + r.aborted
		}
		t.Log(line)
		fmt.Printf("gvisor loopback=%s %s\n", mode, line)
		for _, name := range unexpected {
			t.Errorf("%s %s: passes on the kernel, fails under the shim (loopback=%s), not in %s", b, name, mode, gvisorExpectFile)
		}
	}
	fmt.Printf("gvisor loopback=%s TOTAL: %d passed, %d failed, %d skipped\n", mode, totalPass, totalFail, totalSkip)
}

// stallLimit is how long a binary may print nothing before its running
// case counts as hung: it is killed and started again without the cases
// already run and the hung one. The longest wait of a case that passes is
// a 30 s poll (TCPNonBlockingConnectClose).
const stallLimit = 45 * time.Second

// runGVisorBinary runs one binary with run.sh (in a fresh namespace, with
// the suite's native exclusions and the patterns in skip left out),
// restarting it past every case that hangs, and returns the results of
// all attempts; a hung case counts as failed and as aborted if it was the
// last. The logs of the attempts are in logs/BINARY.log.
func runGVisorBinary(t *testing.T, dir, binary string, prefix, skip []string, logs string) gtestResult {
	var all gtestResult
	var done []string
	var text strings.Builder
	for attempt := 0; attempt < 30; attempt++ {
		attemptDir := t.TempDir()
		cmd := exec.Command(filepath.Join(dir, "run.sh"), append([]string{filepath.Join(dir, "bin")}, prefix...)...)
		cmd.Env = append(os.Environ(), "TESTS="+binary, "LOG_DIR="+attemptDir, "TIMEOUT=3600")
		if ex := append(slices.Clone(skip), done...); len(ex) > 0 {
			cmd.Env = append(cmd.Env, "EXTRA_EXCLUDE="+strings.Join(ex, ":"))
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("run.sh: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		logPath := filepath.Join(attemptDir, binary+".log")
		var last int64 = -1
		lastChange := time.Now()
	watch:
		for {
			select {
			case <-exited:
				break watch
			case <-time.After(2 * time.Second):
			}
			if fi, err := os.Stat(logPath); err == nil && fi.Size() != last {
				last, lastChange = fi.Size(), time.Now()
			} else if time.Since(lastChange) > stallLimit {
				// timeout(1) in run.sh has a process group of its
				// own: kill every descendant of run.sh, which then
				// removes its namespace and exits.
				for _, pid := range descendants(cmd.Process.Pid) {
					syscall.Kill(pid, syscall.SIGKILL)
				}
				select {
				case <-exited:
				case <-time.After(15 * time.Second):
					syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					<-exited
				}
				break watch
			}
		}
		data, _ := os.ReadFile(logPath)
		text.Write(data)
		r := parseGtestLog(string(data))
		all.passed = append(all.passed, r.passed...)
		all.failed = append(all.failed, r.failed...)
		all.skipped = append(all.skipped, r.skipped...)
		if r.aborted == "" {
			break
		}
		if r.aborted == abortedEarly {
			all.aborted = abortedEarly
			break
		}
		// Hung (or crashed) in r.aborted: the rest of the binary runs
		// without it and without what already ran.
		t.Logf("%s: %s hung or crashed (attempt %d); continuing past it", binary, r.aborted, attempt+1)
		done = append(append(append(done, r.passed...), r.failed...), r.skipped...)
		done = append(done, r.aborted)
		all.failed = append(all.failed, r.aborted)
	}
	if err := os.WriteFile(filepath.Join(logs, binary+".log"), []byte(text.String()), 0o644); err != nil {
		t.Log(err)
	}
	return all
}

// descendants returns the pids of every process below pid.
func descendants(pid int) []int {
	children := map[int][]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parens.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		var p, pp int
		if len(f) < 2 {
			continue
		}
		fmt.Sscan(f[1], &pp)
		fmt.Sscan(filepath.Base(filepath.Dir(st)), &p)
		children[pp] = append(children[pp], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		c := children[queue[0]]
		queue = append(queue[1:], c...)
		out = append(out, c...)
	}
	return out
}

// failOnKernel returns the cases of names that pass when binary runs them
// on the kernel in a fresh network namespace.
func failOnKernel(t *testing.T, dir, binary string, names []string) []string {
	names = slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == abortedEarly })
	if len(names) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "sh", "-c", `ip link set lo up && cd "$1" && exec "$2" "--gtest_filter=$3"`, "sh",
		t.TempDir(), filepath.Join(dir, "bin", binary), strings.Join(names, ":"))
	cmd.Env = append(os.Environ(), "TEST_TMPDIR="+os.TempDir())
	out, _ := cmd.CombinedOutput()
	r := parseGtestLog(string(out))
	pass := map[string]bool{}
	for _, p := range r.passed {
		pass[p] = true
	}
	var keep []string
	for _, n := range names {
		if pass[n] {
			keep = append(keep, n)
		} else {
			t.Logf("%s %s fails on the kernel too: not counted", binary, n)
		}
	}
	sort.Strings(keep)
	return keep
}

func TestDescendants(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 30 & sleep 30 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for len(descendants(cmd.Process.Pid)) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("descendants of the shell: %v, want its two sleeps", descendants(cmd.Process.Pid))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range descendants(cmd.Process.Pid) {
		syscall.Kill(p, syscall.SIGKILL)
	}
}
