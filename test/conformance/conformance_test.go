// Package conformance checks that programs see the same socket semantics
// under libmpshim.so as on the kernel. Each program in progs/ exercises one
// semantic and prints what it observes in a stable, normalised form. The
// harness runs every program natively against a kernel peer (and compares
// with the committed golden output), then under the shim with its sockets
// served by the isolator's INS against the same peer, and requires the two
// outputs to be identical.
package conformance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpshim/mpshim/test/harness"
	"github.com/mpshim/mpshim/test/topo"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the native run")

// The peer's addresses inside the test namespace, and an address to which
// the namespace has no route. All belong to private test ranges that exist
// only inside namespaces the tests create.
const (
	peerV4     = "10.210.0.1"
	peerV6     = "fd00:210::1"
	unroutable = "10.211.0.1"
)

// result is one program's run.
type result struct {
	Prog   string `json:"prog"`
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	Err    string `json:"err,omitempty"`
}

func TestMain(m *testing.M) {
	switch os.Getenv("MPSHIM_CONFORMANCE_ROLE") {
	case "native-runner":
		os.Exit(nativeRunner())
	case "peer":
		os.Exit(peerRunner())
	}
	os.Exit(m.Run())
}

var (
	progOnce  sync.Once
	progDir   string
	progNames []string
	progErr   error
)

// buildProgs compiles every progs/*.c once.
func buildProgs(t *testing.T) (string, []string) {
	t.Helper()
	progOnce.Do(func() {
		srcs, _ := filepath.Glob("progs/*.c")
		if len(srcs) == 0 {
			progErr = fmt.Errorf("no programs in progs/")
			return
		}
		progDir, progErr = os.MkdirTemp("", "mpshim-conformance-")
		if progErr != nil {
			return
		}
		for _, src := range srcs {
			name := strings.TrimSuffix(filepath.Base(src), ".c")
			out, err := exec.Command("cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
				filepath.Join(progDir, name), src).CombinedOutput()
			if err != nil {
				progErr = fmt.Errorf("cc %s: %v\n%s", src, err, out)
				return
			}
			progNames = append(progNames, name)
		}
		sort.Strings(progNames)
	})
	if progErr != nil {
		t.Fatal(progErr)
	}
	return progDir, progNames
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (network namespaces)")
	}
	t.Skip("needs root: the programs and their peer run in a private network namespace")
}

// runNative runs the programs in a fresh network namespace holding the
// kernel peer (see nativeRunner).
func runNative(t *testing.T, dir string, progs []string, env ...string) map[string]result {
	t.Helper()
	needRoot(t)
	envJSON, _ := json.Marshal(env)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "-n", self, "-test.run=^$")
	cmd.Env = append(os.Environ(), "MPSHIM_CONFORMANCE_ROLE=native-runner",
		"MPSHIM_CONFORMANCE_DIR="+dir, "MPSHIM_CONFORMANCE_PROGS="+strings.Join(progs, ","),
		"MPSHIM_CONFORMANCE_ENV="+string(envJSON))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("native runner: %v\n%s", err, stderr.String())
	}
	var rs []result
	if err := json.Unmarshal(out, &rs); err != nil {
		t.Fatalf("native runner output: %v\n%s\n%s", err, out, stderr.String())
	}
	m := map[string]result{}
	for _, r := range rs {
		m[r.Prog] = r
	}
	return m
}

// TestNative runs every program on the kernel and compares its output with
// testdata/PROG.golden, the observations a Linux kernel gives. A golden
// mismatch means the program (or the harness) is unstable or the kernel
// differs; either must be understood before the shim is compared with it.
func TestNative(t *testing.T) {
	dir, progs := buildProgs(t)
	res := runNative(t, dir, progs)
	for _, p := range progs {
		t.Run(p, func(t *testing.T) {
			r, ok := res[p]
			if !ok {
				t.Fatalf("no result")
			}
			if r.Err != "" {
				t.Fatalf("%s\nstdout:\n%s\nstderr:\n%s", r.Err, r.Stdout, r.Stderr)
			}
			golden := filepath.Join("testdata", p+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(r.Stdout), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if r.Stdout != string(want) {
				t.Errorf("native output differs from %s\n%s", golden, diff(string(want), r.Stdout))
			}
		})
	}
}

// keyObservations are facts the kernel must show; they keep the goldens
// honest (a golden rewritten from a broken run fails here).
var keyObservations = map[string][]string{
	"connect_refused": {"blocking connect: -1 ECONNREFUSED", "SO_ERROR: ECONNREFUSED", "SO_ERROR again: 0"},
	"connect_unreach": {"blocking connect: -1 ENETUNREACH", "non-blocking connect: -1 ENETUNREACH"},
	"connect_states":  {"first connect: EINPROGRESS", "poll: 1 revents-out: 1", "connect after completion: -1 EISCONN", "echo: 2 ok"},
	"halfclose":       {"shutdown unconnected: -1 ENOTCONN", "read back: 3 abc", "read at EOF: ok", "send after SHUT_WR: -1 EPIPE"},
	"rdhup":           {"epoll: in=1 rdhup=1", "read: 6 hello"},
	"peek":            {"recv MSG_DONTWAIT empty: -1 EAGAIN", "FIONREAD: 3", "peek: 3 xyz", "recv MSG_WAITALL: 4 1234"},
	"sigpipe":         {"write error: EPIPE, SIGPIPE seen: yes", "SIGPIPE with MSG_NOSIGNAL: no"},
	"sockopts":        {"get SO_RCVBUF: 131072 (len 4)", "SO_LINGER: onoff=1 linger=5 len=8", "get SO_TYPE: 1 (len 4)"},
	"names":           {"connected getpeername: inet $V4:7001 len=16", "connected getpeername: inet6 $V6:7001 len=28", "short: len=16 family=2"},
	"accept4":         {"accepted: nonblock=1 cloexec=1", "listen again (backlog update): ok", "read: 2 hi", "accept with nothing pending: -1 EAGAIN", "accept on a non-listening socket: -1 EINVAL"},
	"fork_accept":     {"child read: 2 hi", "child exit: 0"},
	"dup":             {"read via copy: 3 dup", "read via last copy: 3 abc", "getpeername of fresh copy: -1 ENOTCONN"},
	"mcast":           {"received: 3 one", "received after drop: -1 EAGAIN", "receiver 1: 4 both", "receiver 2: 4 both"},
	"udp":             {"FIONREAD: 10", "recvmsg 4: 4 trunc=1", "recv MSG_TRUNC 2: 8", "from: inet $V4:7005 len=16", "recv empty datagram: 0", "recvmmsg: 2 [3 one] [4 two!]"},
	"kloop_listen":    {"accepted: poll 1 hup=1 err=1 SO_ERROR=ECONNRESET", "accept after shutdown: -1 EINVAL", "accept after listen again: ok", "second connected within 300 ms: 0", "second: poll 1 hup=1 err=1 SO_ERROR=ECONNREFUSED"},
	"readiness":       {"select: 1 writable=1", "poll: 1 out=1", "epoll: 1 out=1 data=42", "bulk: sent=262144 got=262144 equal=1"},
}

func TestGoldensHoldKeyObservations(t *testing.T) {
	_, progs := buildProgs(t)
	for _, p := range progs {
		obs, ok := keyObservations[p]
		if !ok {
			t.Errorf("%s has no key observations", p)
			continue
		}
		g, err := os.ReadFile(filepath.Join("testdata", p+".golden"))
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		for _, o := range obs {
			if !strings.Contains(string(g), o) {
				t.Errorf("%s.golden lacks %q", p, o)
			}
		}
	}
}

// TestShimFailOpenTransparent runs every program under libmpshim.so with
// no isolator and MPSHIM_FAIL=open: every socket must stay on the kernel
// and every observation must equal the native one, which exercises all
// interposers on their kernel paths (pending sockets, the fd table, the
// fortified aliases, fork) against the same peer.
func TestShimFailOpenTransparent(t *testing.T) {
	dir, progs := buildProgs(t)
	lib := harness.Binary(t, "libmpshim.so")
	res := runNative(t, dir, progs, "LD_PRELOAD="+lib, "MPSHIM_FAIL=open",
		"MPSHIM_SOCKET=/nonexistent/mpshim-conformance.sock")
	for _, p := range progs {
		t.Run(p, func(t *testing.T) {
			r := res[p]
			if r.Err != "" {
				t.Fatalf("%s\nstdout:\n%s\nstderr:\n%s", r.Err, r.Stdout, r.Stderr)
			}
			want, err := os.ReadFile(filepath.Join("testdata", p+".golden"))
			if err != nil {
				t.Fatal(err)
			}
			if r.Stdout != string(want) {
				t.Errorf("output under the shim (fail open) differs from native\n%s", diff(string(want), r.Stdout))
			}
			for _, line := range strings.Split(strings.TrimSpace(r.Stderr), "\n") {
				if line != "" && !strings.Contains(line, "sockets stay on the kernel (MPSHIM_FAIL=open)") {
					t.Errorf("unexpected stderr line: %s", line)
				}
			}
		})
	}
}

// TestShim runs every program under libmpshim.so in an app namespace whose
// only path to the peer is the isolator's INS, and requires the output to
// equal the native run's.
func TestShim(t *testing.T) {
	harness.Binary(t, "isolator")
	dir, progs := buildProgs(t)
	native := runNative(t, dir, progs)
	shim := runShim(t, dir, progs)
	for _, p := range progs {
		t.Run(p, func(t *testing.T) {
			n, s := native[p], shim[p]
			if s.Err != "" {
				t.Fatalf("under the shim: %s\nstdout:\n%s\nstderr:\n%s", s.Err, s.Stdout, s.Stderr)
			}
			if n.Stdout != s.Stdout {
				t.Errorf("shim output differs from native\n%s", diff(n.Stdout, s.Stdout))
			}
		})
	}
}

// runShim is the isolator half: a topology whose wan namespace holds the
// kernel peer at the same addresses as the native run, an isolator in gw
// whose INS sit on the peer's subnet (on-link, no gateway, so UNROUTABLE has
// no route there either), and each program run with libmpshim.so in the app
// namespace, which has only loopback: the INS is its only way out.
func runShim(t *testing.T, dir string, progs []string) map[string]result {
	t.Helper()
	needRoot(t)
	lib := harness.Binary(t, "libmpshim.so")
	tp := topo.New(t, topo.Config{Uplinks: 1})
	up := tp.Uplinks[0]
	ctx := context.Background()
	for _, args := range [][]string{
		{"addr", "add", peerV4 + "/24", "dev", up.WANIf},
		{"-6", "addr", "add", peerV6 + "/64", "dev", up.WANIf, "nodad"},
	} {
		if out, err := tp.WAN.Run(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	peer := tp.WAN.Command(ctx, self, "-test.run=^$")
	peer.Env = append(os.Environ(), "MPSHIM_CONFORMANCE_ROLE=peer", "MPSHIM_CONFORMANCE_PEERS="+peerV4+","+peerV6)
	ready, err := peer.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	peer.Stderr = os.Stderr
	if err := peer.Start(); err != nil {
		t.Fatalf("peer: %v", err)
	}
	t.Cleanup(func() { peer.Process.Kill(); peer.Wait() })
	if _, err := bufio.NewReader(ready).ReadString('\n'); err != nil {
		t.Fatalf("peer did not start: %v", err)
	}
	iso := harness.StartIsolator(t, tp, harness.Options{INS: 1, Uplinks: []harness.UplinkSpec{{
		Interface: up.GWIf, Pool4: "10.210.0.10/24", Pool6: "fd00:210::10/64",
	}}})
	m := map[string]result{}
	for _, p := range progs {
		cmd := tp.App.Command(ctx, filepath.Join(dir, p), peerV4, peerV6, unroutable)
		cmd.Env = append(os.Environ(), "LD_PRELOAD="+lib, "MPSHIM_SOCKET="+iso.Socket)
		m[p] = runCmd(cmd, p)
	}
	return m
}

// peerRunner serves the peer ports on the addresses in
// MPSHIM_CONFORMANCE_PEERS until it is killed; it prints one line once
// listening.
func peerRunner() int {
	stop, err := startPeer(strings.Split(os.Getenv("MPSHIM_CONFORMANCE_PEERS"), ","))
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 1
	}
	defer stop()
	fmt.Println("ready")
	select {}
}

func nativeRunner() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "native runner:", err)
		return 1
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "mpc0", "type", "veth", "peer", "name", "mpc1"},
		{"addr", "add", peerV4 + "/24", "dev", "mpc0"},
		{"-6", "addr", "add", peerV6 + "/64", "dev", "mpc0", "nodad"},
		{"link", "set", "mpc0", "up"},
		{"link", "set", "mpc1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fail(fmt.Errorf("ip %v: %v: %s", args, err, out))
		}
	}
	// The kernel adds an address's local route once the link is up, a
	// moment after `ip link set up` returns; a program that dials the
	// peer before that gets EHOSTUNREACH.
	for _, a := range []string{peerV4, peerV6} {
		if err := waitLocalRoute(a, 5*time.Second); err != nil {
			return fail(err)
		}
	}
	stop, err := startPeer([]string{peerV4, peerV6})
	if err != nil {
		return fail(err)
	}
	defer stop()
	dir := os.Getenv("MPSHIM_CONFORMANCE_DIR")
	var env []string
	if err := json.Unmarshal([]byte(os.Getenv("MPSHIM_CONFORMANCE_ENV")), &env); err != nil {
		return fail(err)
	}
	var rs []result
	for _, p := range strings.Split(os.Getenv("MPSHIM_CONFORMANCE_PROGS"), ",") {
		rs = append(rs, runProg(filepath.Join(dir, p), p, env))
	}
	out, _ := json.Marshal(rs)
	os.Stdout.Write(out)
	return 0
}

// waitLocalRoute waits until the kernel routes addr as a local address of
// this namespace.
func waitLocalRoute(addr string, limit time.Duration) error {
	var out []byte
	for deadline := time.Now().Add(limit); ; time.Sleep(10 * time.Millisecond) {
		var err error
		out, err = exec.Command("ip", "route", "get", addr).CombinedOutput()
		if err == nil && strings.HasPrefix(string(out), "local ") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no local route to %s after %v: %s", addr, limit, out)
		}
	}
}

// runProg runs one program with the peer arguments and a time limit.
func runProg(path, name string, env []string) result {
	cmd := exec.Command(path, peerV4, peerV6, unroutable)
	cmd.Env = append(os.Environ(), env...)
	return runCmd(cmd, name)
}

// runCmd runs one prepared program with a time limit.
func runCmd(cmd *exec.Cmd, name string) result {
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	r := result{Prog: name}
	if err := cmd.Start(); err != nil {
		r.Err = err.Error()
		return r
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			r.Err = err.Error()
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		r.Err = "timed out after 60s"
	}
	r.Stdout, r.Stderr = o.String(), e.String()
	return r
}

// diff renders two outputs line by line, marking the lines that differ.
func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var a, c string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			c = g[i]
		}
		if a == c {
			fmt.Fprintf(&b, "  %s\n", a)
		} else {
			fmt.Fprintf(&b, "- %s\n+ %s\n", a, c)
		}
	}
	return b.String()
}
