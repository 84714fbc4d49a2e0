// Package harness runs the project's own binaries for end-to-end tests: an
// isolator daemon inside a test topology's gw namespace, with its log kept
// for assertions and shown when the test fails, stopped at cleanup.
package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpshim/mpshim/internal/procstat"
	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/test/topo"
)

// BinDir is the directory of the built binaries: $MPSHIM_BIN or the
// repository's bin/.
func BinDir() string {
	if d := os.Getenv("MPSHIM_BIN"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "bin")
}

// Binary returns the path of a built binary (isolator, libmpshim.so, …).
// It fails the test under CI when the binary is missing and skips it
// otherwise, saying how to build it.
func Binary(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(BinDir(), name)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not built (%v): run make build", name, err)
		}
		t.Skipf("%s not built (%v): run make build", name, err)
	}
	return p
}

// NeedFiles requires programs or files the suite drives (nginx, ab, …):
// missing ones fail the test under CI, where make test installs them, and
// skip it otherwise, saying so.
func NeedFiles(t testing.TB, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s missing (make test installs it): %v", p, err)
			}
			t.Skipf("%s missing (make test installs it)", p)
		}
	}
}

// UplinkSpec describes one uplink given to the daemon.
type UplinkSpec struct {
	// Interface is the host interface in the gw namespace.
	Interface string
	// Pool4 and Pool6 are the first INS addresses with prefix length.
	Pool4, Pool6 string
	// Gateway4 and Gateway6 are the next hops (empty: on-link only).
	Gateway4, Gateway6 string
	// Weight is the uplink's share of outbound flows (0 means 1).
	Weight int
	// Link holds further --uplink keys, e.g. "backend=xdp,gso=off".
	Link string
}

// Arg is the uplink in the syntax of `isolator run --uplink` and
// `isolator uplink add`, named name.
func (u UplinkSpec) Arg(name string) string {
	s := fmt.Sprintf("%s=%s,pool4=%s", name, u.Interface, u.Pool4)
	if u.Gateway4 != "" {
		s += ",gw4=" + u.Gateway4
	}
	if u.Pool6 != "" {
		s += ",pool6=" + u.Pool6
	}
	if u.Gateway6 != "" {
		s += ",gw6=" + u.Gateway6
	}
	s += fmt.Sprintf(",weight=%d", max(u.Weight, 1))
	if u.Link != "" {
		s += "," + u.Link
	}
	return s
}

// Options configures a daemon.
type Options struct {
	// INS is the number of INS started with the daemon.
	INS int
	// Uplinks default to every topology uplink with its HostAddr4(0) pool
	// and the wan end as gateway.
	Uplinks []UplinkSpec
	// Policy is the outbound uplink policy (default wrr).
	Policy string
	// Args are extra arguments to `isolator run`.
	Args []string
}

// Isolator is a daemon run by a test.
type Isolator struct {
	// Bin is the isolator binary; API and Socket its sockets.
	Bin, API, Socket string
	cmd              *exec.Cmd
	exited           chan struct{}
	ns               *topo.NS // where it runs
	args             []string // of `isolator run`, for Restart
	stateDir         string   // its --state-dir (see killOrphans)

	mu     sync.Mutex
	lines  []string
	lineAt []time.Time
}

// DefaultUplinks gives every topology uplink to the daemon, with an IPv6
// pool where the topology has IPv6.
func DefaultUplinks(tp *topo.Topology) []UplinkSpec {
	var out []UplinkSpec
	for _, u := range tp.Uplinks {
		spec := UplinkSpec{Interface: u.GWIf, Pool4: u.HostAddr4(0).String() + "/24", Gateway4: u.WANAddr4.String(), Weight: 1}
		if u.Subnet6.IsValid() { // no IPv6 on a topology built with NoIPv6
			spec.Pool6 = u.HostAddr6(0).String() + "/64"
		}
		out = append(out, spec)
	}
	return out
}

// StartIsolator runs `isolator run` in the topology's gw namespace and
// waits until its API answers. The daemon is stopped (SIGTERM, then
// SIGKILL) at cleanup; its log is printed if the test failed.
func StartIsolator(t testing.TB, tp *topo.Topology, o Options) *Isolator {
	t.Helper()
	EnsureINSUser(t)
	dir, err := os.MkdirTemp("", "mpshim-iso-")
	if err != nil {
		t.Fatal(err)
	}
	// The registration socket must be reachable by apps that drop
	// privileges: the directory is world-searchable.
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Isolator{Bin: Binary(t, "isolator"), API: filepath.Join(dir, "api.sock"), Socket: filepath.Join(dir, "isolator.sock")}
	if o.Uplinks == nil {
		o.Uplinks = DefaultUplinks(tp)
	}
	// The state directory is the test's own, never the host's
	// /var/lib/mpshim; a --state-dir in o.Args comes later and wins.
	args := []string{"run", "--api", d.API, "--socket", d.Socket, "--ins", fmt.Sprint(o.INS), "--max-ins", "32",
		"--state-dir", filepath.Join(dir, "state")}
	if o.Policy != "" {
		args = append(args, "--policy", o.Policy)
	}
	for i, u := range o.Uplinks {
		args = append(args, "--uplink", u.Arg(fmt.Sprintf("up%d", i)))
	}
	args = append(args, o.Args...)
	d.ns, d.args, d.stateDir = tp.GW, args, filepath.Join(dir, "state")
	for i, a := range o.Args {
		if a == "--state-dir" && i+1 < len(o.Args) {
			d.stateDir = o.Args[i+1]
		}
	}
	d.launch(t)
	t.Cleanup(func() {
		d.Stop(t)
		if t.Failed() {
			t.Logf("isolator log:\n%s", d.Log())
		}
	})
	d.waitUp(t, 90*time.Second)
	return d
}

// launch starts the daemon process; its log lines are collected.
func (d *Isolator) launch(t testing.TB) {
	t.Helper()
	cmd := d.ns.Command(context.Background(), d.Bin, d.args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start isolator: %v", err)
	}
	exited := make(chan struct{})
	d.mu.Lock()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			d.mu.Lock()
			d.lines = append(d.lines, sc.Text())
			d.lineAt = append(d.lineAt, time.Now())
			d.mu.Unlock()
		}
		cmd.Wait()
	}()
}

// waitUp waits until the daemon's API answers.
func (d *Isolator) waitUp(t testing.TB, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if _, err := d.List(); err == nil {
			return
		}
		select {
		case <-d.Exited():
			t.Fatalf("isolator exited at start:\n%s", d.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("isolator did not answer within %v:\n%s", limit, d.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill sends SIGKILL to the daemon process alone (its INS are in process
// groups of their own) and waits until it is gone.
func (d *Isolator) Kill(t testing.TB) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.Exited():
	case <-time.After(10 * time.Second):
		t.Fatalf("isolator pid %d still there 10 s after SIGKILL", d.PID())
	}
}

// Restart starts the daemon again with the arguments it had (the same
// sockets) after it was killed or stopped, and waits until its API
// answers.
func (d *Isolator) Restart(t testing.TB) {
	t.Helper()
	select {
	case <-d.Exited():
	default:
		t.Fatal("Restart: the isolator is still running")
	}
	d.launch(t)
	d.waitUp(t, 90*time.Second)
}

// PID is the daemon's process id.
func (d *Isolator) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cmd.Process.Pid
}

// Exited is closed once the daemon has exited.
func (d *Isolator) Exited() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exited
}

// Stop sends SIGTERM and waits up to 10 s, then kills the process group.
// It reports a daemon that needed SIGKILL. A daemon that was killed
// before leaves its INS running, waiting for a successor: they are killed.
func (d *Isolator) Stop(t testing.TB) {
	exited, pid := d.Exited(), d.PID()
	select {
	case <-exited:
		d.killOrphans()
		return
	default:
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Errorf("isolator did not stop within 10 s of SIGTERM")
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-exited
	}
}

// CLI runs the isolator CLI against this daemon.
func (d *Isolator) CLI(args ...string) (string, error) {
	out, err := exec.Command(d.Bin, append([]string{"--api", d.API}, args...)...).CombinedOutput()
	return string(out), err
}

// List is `isolator ls -o json`.
func (d *Isolator) List() ([]api.INSInfo, error) { return d.list() }

// ListGC is `isolator ls --gc -o json`: every process collects garbage and
// returns freed memory first, so RSS shows what is live.
func (d *Isolator) ListGC() ([]api.INSInfo, error) { return d.list("--gc") }

func (d *Isolator) list(flags ...string) ([]api.INSInfo, error) {
	out, err := exec.Command(d.Bin, append([]string{"--api", d.API, "ls", "-o", "json"}, flags...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("isolator ls: %w", err)
	}
	var infos []api.INSInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("isolator ls -o json: %w: %s", err, out)
	}
	return infos, nil
}

// Log returns everything the daemon has logged so far.
func (d *Isolator) Log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.lines, "\n")
}

// WaitLog waits up to timeout for a log line written at or after since that
// contains every word, and returns it with the time it was read.
func (d *Isolator) WaitLog(since time.Time, timeout time.Duration, words ...string) (string, time.Time, bool) {
	deadline := time.Now().Add(timeout)
	for {
		d.mu.Lock()
	next:
		for i, l := range d.lines {
			if d.lineAt[i].Before(since) {
				continue
			}
			for _, w := range words {
				if !strings.Contains(l, w) {
					continue next
				}
			}
			at := d.lineAt[i]
			d.mu.Unlock()
			return l, at, true
		}
		d.mu.Unlock()
		if time.Now().After(deadline) {
			return "", time.Time{}, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killOrphans kills the INS the daemon's state file names that still run
// (pid and start time as recorded): a daemon killed without a successor
// leaves them waiting for one.
func (d *Isolator) killOrphans() {
	b, err := os.ReadFile(filepath.Join(d.stateDir, "ins.json"))
	if err != nil {
		return
	}
	var st struct {
		INS []struct {
			PID   int    `json:"pid"`
			Start uint64 `json:"start"`
		} `json:"ins"`
	}
	if json.Unmarshal(b, &st) != nil {
		return
	}
	for _, in := range st.INS {
		if in.PID > 1 && procstat.Alive(in.PID, in.Start) {
			_ = syscall.Kill(in.PID, syscall.SIGKILL)
		}
	}
}
