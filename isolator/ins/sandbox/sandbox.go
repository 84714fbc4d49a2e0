// Package sandbox confines an INS process, the part of mpshim that faces
// hostile traffic, so that a compromised INS holds nothing worth having:
// it runs as an unprivileged uid/gid of its own, in its own mount, pid, ipc
// and uts namespaces (started so by the daemon, see Cloneflags) with an
// empty, read-only root (no host file, no /proc), without capabilities,
// with no_new_privs, and under a seccomp allow-list (Policy) that has no
// open, no execve, no connect and no new socket. Everything it needs after
// it is sealed (link sockets, memfds, the control channel) is handed in by
// the daemon as descriptors.
package sandbox

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultNoFile is the RLIMIT_NOFILE an INS gets: every application
// connection costs the INS one descriptor (its end of the socketpair), so
// this bounds the connections per INS; 256Ki stays under the kernel's
// default fs.nr_open of 1Mi.
const DefaultNoFile = 256 << 10

// Cloneflags are the namespaces the daemon starts every INS in, besides
// its network namespace: a mount namespace of its own (which Enter turns
// into an empty root), and pid, ipc and uts namespaces of its own. In its
// pid namespace the INS is pid 1 and sees no other process.
const Cloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS

// Options configures Enter.
type Options struct {
	// NoFile is the RLIMIT_NOFILE (soft and hard); 0 means DefaultNoFile.
	NoFile uint64 `json:"nofile,omitempty"`
	// UID and GID, if non-zero, are switched to (all threads, with
	// supplementary groups cleared). Leaving root is what makes the
	// kernel clear the capabilities of every thread when the binary links
	// cgo, where capset cannot be broadcast.
	UID int `json:"uid,omitempty"`
	GID int `json:"gid,omitempty"`
	// EmptyRoot replaces the root with an empty read-only tmpfs. The
	// process must have been started in a mount namespace of its own
	// (Cloneflags) and be pid 1 of its pid namespace: pivot_root in a
	// shared mount namespace would move every process's root, so Enter
	// refuses EmptyRoot otherwise.
	EmptyRoot bool `json:"empty_root,omitempty"`
	// AcceptFD, if non-zero, is the one descriptor accept4 is allowed on:
	// the unix socket the INS bound before sealing, on which a successor
	// daemon reaches it (docs/design.md, "Survival"). The filter compares
	// the descriptor number, so no other socket can be accepted on.
	AcceptFD int `json:"accept_fd,omitempty"`
	// Policy selects the seccomp allow-list: PolicyINS (the zero value)
	// or PolicyGateway for the split tunnel gateway.
	Policy PolicyKind `json:"policy,omitempty"`
}

// PolicyKind names one of the seccomp allow-lists Enter can install.
type PolicyKind int

const (
	// PolicyINS is the allow-list of an INS (Policy).
	PolicyINS PolicyKind = iota
	// PolicyGateway is the allow-list of the split tunnel gateway
	// (GatewayPolicy).
	PolicyGateway
)

// Enter confines the calling INS process. Call it after the link sockets are
// open and the stack is built; the sockets keep working. It sets no
// parent-death signal: an INS outlives the daemon that started it and
// waits for a successor (docs/design.md, "Survival"). In order it:
//
//   - sets RLIMIT_NOFILE to opts.NoFile and RLIMIT_CORE to 0 (no core file
//     can leak connection data);
//   - with opts.EmptyRoot, makes every mount private and pivots into an
//     empty read-only tmpfs, detaching the host's tree (and /proc with it);
//   - drops every capability from the bounding set and clears the ambient
//     set, switches to opts.UID/GID if given, then sets the effective,
//     permitted and inheritable sets to zero on every thread;
//   - sets PR_SET_NO_NEW_PRIVS and installs the seccomp allow-list (Policy)
//     on all threads (SECCOMP_FILTER_FLAG_TSYNC); other system calls fail
//     with EPERM.
//
// Capabilities: Go's runtime is multi-threaded before main runs. Without
// cgo, the per-thread calls go to every thread via
// syscall.AllThreadsSyscall. With cgo that is unavailable; then the
// bounding and ambient sets are cleared on the calling thread only and the
// other threads lose their capabilities through the uid switch, so
// opts.UID must be non-zero.
func Enter(opts Options) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	nofile := opts.NoFile
	if nofile == 0 {
		nofile = DefaultNoFile
	}
	for _, r := range []struct {
		res  int
		name string
		v    uint64
	}{{unix.RLIMIT_NOFILE, "RLIMIT_NOFILE", nofile}, {unix.RLIMIT_CORE, "RLIMIT_CORE", 0}} {
		if err := unix.Setrlimit(r.res, &unix.Rlimit{Cur: r.v, Max: r.v}); err != nil {
			return fmt.Errorf("sandbox: %s=%d: %w", r.name, r.v, err)
		}
	}
	allThreads := allThreadsAvailable()
	if !allThreads && opts.UID == 0 {
		return errors.New("sandbox: binary uses cgo, so capabilities cannot be dropped on every thread by capset; set a non-zero UID")
	}
	// Read while the host's /proc is still there.
	last, err := lastCap()
	if err != nil {
		return err
	}
	// Time stamps in the log use the local zone, loaded from the host's
	// /etc/localtime on first use: load it now, it cannot be later.
	_ = time.Now().Local().String()
	if opts.EmptyRoot {
		if err := emptyRoot(); err != nil {
			return err
		}
	}
	for c := 0; c <= last; c++ {
		if err := threadCall(allThreads, unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil {
			return fmt.Errorf("sandbox: drop capability %d from bounding set: %w", c, err)
		}
	}
	if err := threadCall(allThreads, unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); err != nil {
		return fmt.Errorf("sandbox: clear ambient capabilities: %w", err)
	}
	if opts.UID != 0 || opts.GID != 0 {
		// Go applies these to every thread (AllThreadsSyscall or the C
		// library's set*id broadcast).
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("sandbox: setgroups: %w", err)
		}
		if opts.GID != 0 {
			if err := syscall.Setresgid(opts.GID, opts.GID, opts.GID); err != nil {
				return fmt.Errorf("sandbox: setresgid %d: %w", opts.GID, err)
			}
		}
		if opts.UID != 0 {
			if err := syscall.Setresuid(opts.UID, opts.UID, opts.UID); err != nil {
				return fmt.Errorf("sandbox: setresuid %d: %w", opts.UID, err)
			}
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // all zero
	if err := threadCall(allThreads, unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); err != nil {
		return fmt.Errorf("sandbox: capset zero: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("sandbox: PR_SET_NO_NEW_PRIVS: %w", err)
	}
	if opts.AcceptFD < 0 {
		return fmt.Errorf("sandbox: accept descriptor %d", opts.AcceptFD)
	}
	if err := installSeccomp(opts.Policy, opts.AcceptFD); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

// emptyRoot pivots the process's mount namespace into an empty read-only
// tmpfs and detaches the old root. It refuses to run unless the process is
// pid 1 of its own pid namespace, which the daemon only arranges together
// with a mount namespace of its own (Cloneflags).
func emptyRoot() error {
	if os.Getpid() != 1 {
		return fmt.Errorf("sandbox: empty root needs a mount and pid namespace of the process's own (pid is %d, not 1)", os.Getpid())
	}
	// Nothing done below may propagate to the host's mounts.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("sandbox: make mounts private: %w", err)
	}
	// Any directory serves as the mount point: the namespace is private.
	const mnt = "/tmp"
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY)
	if err := unix.Mount("mpshim-ins", mnt, "tmpfs", flags, "size=4k,nr_inodes=1,mode=0555"); err != nil {
		return fmt.Errorf("sandbox: mount an empty tmpfs on %s: %w", mnt, err)
	}
	if err := unix.Chdir(mnt); err != nil {
		return fmt.Errorf("sandbox: chdir %s: %w", mnt, err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching
	// it leaves only the empty tmpfs.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("sandbox: pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("sandbox: detach the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("sandbox: chdir /: %w", err)
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return unix.CAP_LAST_CAP, nil
	}
	var v int
	if _, err := fmt.Sscanf(string(b), "%d", &v); err != nil || v < 0 || v > 63 {
		return 0, fmt.Errorf("sandbox: cap_last_cap %q", b)
	}
	return v, nil
}

// allThreadsAvailable reports whether syscall.AllThreadsSyscall works in
// this binary (it does not when cgo is linked).
func allThreadsAvailable() bool {
	_, _, errno := syscall.AllThreadsSyscall(syscall.SYS_GETPID, 0, 0, 0)
	return errno != syscall.ENOTSUP
}

// AllThreads reports whether Enter drops capabilities on every thread by
// itself (no cgo), as opposed to through the uid switch.
func AllThreads() bool { return allThreadsAvailable() }

func threadCall(all bool, trap, a1, a2, a3 uintptr) error {
	var errno syscall.Errno
	if all {
		_, _, errno = syscall.AllThreadsSyscall(trap, a1, a2, a3)
	} else {
		_, _, errno = syscall.RawSyscall(trap, a1, a2, a3)
	}
	if errno != 0 {
		return errno
	}
	return nil
}
