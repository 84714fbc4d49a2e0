package isolator

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// nsPath turns a namespace name (as `ip netns` knows it) or a path into a
// path; "" is the daemon's own namespace.
func nsPath(ns string) string {
	if ns == "" || strings.ContainsRune(ns, '/') {
		return ns
	}
	return filepath.Join("/run/netns", ns)
}

// startInNetNS starts cmd with its network namespace set to ns. The child
// inherits the namespace of the thread that forks it, so the fork happens
// on a locked thread switched into ns and switched back afterwards; if the
// thread cannot be switched back it stays locked and dies with its
// goroutine rather than serve others in the wrong namespace.
func startInNetNS(ns string, cmd *exec.Cmd) error {
	if ns == "" {
		return cmd.Start()
	}
	// A goroutine of its own, so that a thread that cannot be switched back
	// exits with it instead of returning to the scheduler.
	res := make(chan error, 1)
	go func() { res <- forkInNetNS(ns, cmd) }()
	return <-res
}

func forkInNetNS(ns string, cmd *exec.Cmd) error {
	target, err := unix.Open(nsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer unix.Close(target)
	runtime.LockOSThread()
	orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	startErr := cmd.Start()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// The thread stays locked and exits with this goroutine.
		return fmt.Errorf("return from netns %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return startErr
}
