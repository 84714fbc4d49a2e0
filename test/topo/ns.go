package topo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 keeps the bind mounts of named namespaces.
const netnsDir = "/run/netns"

// stopGrace is how long Proc.Stop waits after SIGTERM before SIGKILL.
const stopGrace = 3 * time.Second

// maxOutput bounds the output a Proc keeps; older output is dropped first.
const maxOutput = 4 << 20

// NS is a named network namespace, /run/netns/Name. An NS obtained from a
// Topology tracks the processes started in it so that Topology.Close can
// kill them; an NS built by hand (&NS{Name: "x"}) works too but tracks
// nothing.
type NS struct {
	// Name is the iproute2 name of the namespace (ip netns list).
	Name string

	topo *Topology
}

// Path is the bind-mount path of the namespace, usable with setns(2) or
// nsenter --net=.
func (ns *NS) Path() string { return filepath.Join(netnsDir, ns.Name) }

// String returns the namespace name.
func (ns *NS) String() string { return ns.Name }

// Command returns a command that runs name with args inside ns through
// `ip netns exec` (which also gives it a private /sys of ns). The caller
// configures and starts it like any exec.Cmd; unlike Start, the process is
// not tracked by PID, though Topology.Close still kills whatever runs in the
// topology's namespaces.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append([]string{"netns", "exec", ns.Name, name}, args...)
	return exec.CommandContext(ctx, "ip", full...)
}

// Run runs name with args inside ns and returns its combined output. On
// failure the error names the command and includes the output.
func (ns *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := ns.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netns %s: %s %s: %w: %s",
			ns.Name, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Start starts name with args in the background inside ns, in its own
// process group, capturing stdout and stderr (see Proc.Output). When ns
// belongs to a Topology the process is killed (whole group, by PID) on
// Topology.Close. Cancelling ctx kills the process group as well.
func (ns *NS) Start(ctx context.Context, name string, args ...string) (*Proc, error) {
	return ns.StartEnv(ctx, nil, name, args...)
}

// StartEnv is Start with the environment env (nil: this process's).
func (ns *NS) StartEnv(ctx context.Context, env []string, name string, args ...string) (*Proc, error) {
	cmd := ns.Command(ctx, name, args...)
	cmd.Env = env
	p := &Proc{Cmd: cmd, done: make(chan struct{}), name: name}
	cmd.Stdout = &p.out
	cmd.Stderr = &p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return p.signalGroup(syscall.SIGKILL) }
	cmd.WaitDelay = stopGrace
	if ns.topo != nil {
		// Registering before the start keeps Close from racing a start.
		if err := ns.topo.addProc(p); err != nil {
			return nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		if ns.topo != nil {
			ns.topo.removeProc(p)
		}
		return nil, fmt.Errorf("netns %s: start %s: %w", ns.Name, name, err)
	}
	p.pid = cmd.Process.Pid
	slog.Debug("topo: started process", "netns", ns.Name, "cmd", name, "pid", p.pid)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Do runs fn on the calling goroutine with its OS thread switched into ns.
// Sockets fn creates belong to ns and stay there after Do returns. The
// thread is switched back afterwards; if that fails the thread stays locked
// so that the runtime discards it when the goroutine ends.
func (ns *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: open current namespace: %w", ns.Name, err)
	}
	defer orig.Close()
	target, err := os.Open(ns.Path())
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: %w", ns.Name, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: setns: %w", ns.Name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return errors.Join(ferr, fmt.Errorf("netns %s: restore namespace: %w", ns.Name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// SetSysctl writes value to the sysctl key (dotted form, e.g.
// "net.ipv4.ip_forward") inside ns.
func (ns *NS) SetSysctl(key, value string) error {
	return ns.Do(func() error { return writeSysctl(key, value) })
}

// Sysctl reads the sysctl key (dotted form) inside ns.
func (ns *NS) Sysctl(key string) (string, error) {
	var v string
	err := ns.Do(func() error {
		b, err := os.ReadFile(sysctlPath(key))
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("netns %s: read sysctl %s: %w", ns.Name, key, err)
	}
	return v, nil
}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// writeSysctl writes in the namespace of the calling thread.
func writeSysctl(key, value string) error {
	if err := os.WriteFile(sysctlPath(key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// Proc is a background process started by NS.Start.
type Proc struct {
	// Cmd is the underlying command; it has already been started.
	Cmd *exec.Cmd

	name string
	pid  int
	out  syncBuffer
	done chan struct{}
	err  error
}

// PID is the process id of the program (ip netns exec execs it in place).
func (p *Proc) PID() int { return p.pid }

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its exit error, as
// exec.Cmd.Wait does. It may be called any number of times.
func (p *Proc) Wait() error {
	<-p.done
	if p.err != nil {
		return fmt.Errorf("%s (pid %d): %w", p.name, p.pid, p.err)
	}
	return nil
}

// Stop sends SIGTERM to the process group, then SIGKILL after a grace
// period, and waits for the process. It returns nil when the process ended
// (by the signal or on its own) and an error only if it could not be killed.
func (p *Proc) Stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.signalGroup(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopGrace):
	}
	_ = p.signalGroup(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopGrace + time.Second):
		return fmt.Errorf("%s (pid %d): did not exit after SIGKILL", p.name, p.pid)
	}
}

// kill kills the whole process group at once and waits briefly.
func (p *Proc) kill() {
	_ = p.signalGroup(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
	}
}

func (p *Proc) signalGroup(sig syscall.Signal) error {
	if p.pid <= 0 {
		return nil
	}
	// The process leads its own group (Setpgid), so -pid is that group.
	if err := syscall.Kill(-p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to group %d: %w", sig, p.pid, err)
	}
	return nil
}

// Output returns stdout and stderr captured so far (interleaved; at most the
// last 4 MiB).
func (p *Proc) Output() string { return p.out.String() }

// syncBuffer is a bounded, concurrency-safe output buffer.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.buf.Len() > maxOutput {
		b.buf.Next(b.buf.Len() - maxOutput/2)
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
