package isolator

import (
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/mpshim/mpshim/isolator/ins/netns"
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
	go func() { res <- netns.Do(nsPath(ns), cmd.Start) }()
	return <-res
}
