// Package sandbox confines an INS process once its links are open: resource
// limits, capabilities, no_new_privs and the seccomp allow-list. It is the
// last thing an INS does before serving and knows nothing of what it
// confines.
package sandbox

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultNoFile is the RLIMIT_NOFILE an INS gets: every application
// connection costs the INS one descriptor (its end of the socketpair), so
// this bounds the connections per INS; 256Ki stays under the kernel's
// default fs.nr_open of 1Mi.
const DefaultNoFile = 256 << 10

// Options configures Enter.
type Options struct {
	// NoFile is the RLIMIT_NOFILE (soft and hard); 0 means DefaultNoFile.
	NoFile uint64
	// UID and GID, if non-zero, are switched to (all threads, with
	// supplementary groups cleared). Leaving root is what makes the
	// kernel clear the capabilities of every thread when the binary links
	// cgo, where capset cannot be broadcast; see Enter.
	UID, GID int
}

// Enter confines the calling INS process. Call it after the link sockets
// are open and the stack is built; the sockets keep working. In order it:
//
//   - sets PR_SET_PDEATHSIG(SIGKILL), so the INS dies with the daemon. The
//     kernel tracks the parent *thread*, so the daemon also sets Pdeathsig in
//     SysProcAttr and spawns from a thread locked for the child's life;
//   - sets RLIMIT_NOFILE to opts.NoFile and RLIMIT_CORE to 0 (no core file
//     can leak connection data);
//   - drops every capability from the bounding set and clears the ambient
//     set, switches to opts.UID/GID if given, then sets the effective,
//     permitted and inheritable sets to zero on every thread;
//   - sets PR_SET_NO_NEW_PRIVS and installs a seccomp allow-list filter on
//     all threads (SECCOMP_FILTER_FLAG_TSYNC); other system calls fail with
//     EPERM (execve, socket other than AF_UNIX, ptrace, mount, ...).
//
// Capabilities: Go's runtime is multi-threaded before main runs. Without cgo,
// the per-thread calls go to every thread via syscall.AllThreadsSyscall.
// With cgo that is unavailable; then the bounding and ambient sets are
// cleared on the calling thread only and the other threads lose their
// capabilities through the uid switch, so opts.UID must be non-zero.
func Enter(opts Options) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("sandbox: PR_SET_PDEATHSIG: %w", err)
	}
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
	if err := dropBounding(allThreads); err != nil {
		return err
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
	if err := installSeccomp(); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

// allThreadsAvailable reports whether syscall.AllThreadsSyscall works in
// this binary (it does not when cgo is linked).
func allThreadsAvailable() bool {
	_, _, errno := syscall.AllThreadsSyscall(syscall.SYS_GETPID, 0, 0, 0)
	return errno != syscall.ENOTSUP
}

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

func dropBounding(all bool) error {
	last := unix.CAP_LAST_CAP
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			last = v
		}
	}
	for c := 0; c <= last; c++ {
		if err := threadCall(all, unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil {
			return fmt.Errorf("sandbox: drop capability %d from bounding set: %w", c, err)
		}
	}
	return nil
}

func installSeccomp() error {
	prog, err := seccompProgram()
	if err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return fmt.Errorf("seccomp filter: %w", errno)
	}
	if r != 0 {
		return fmt.Errorf("seccomp filter: thread %d could not be synchronised", r)
	}
	return nil
}

// bpf helpers for classic BPF over struct seccomp_data.
func stmt(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
func jump(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
}

const (
	seccompDataNR   = 0
	seccompDataArch = 4
	seccompDataArg0 = 16 // args[i] at 16+8*i; low 32 bits first (little endian)
	retAllow        = unix.SECCOMP_RET_ALLOW
	retEPERM        = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	retENOSYS       = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
)

// argRule allows syscall nr only when (args[arg] & mask) == want (low 32 bits).
type argRule struct {
	nr        uintptr
	arg       uint32
	mask      uint32
	want      uint32
	otherwise uint32
}

// seccompProgram builds: wrong architecture -> kill; x32 ABI -> EPERM;
// each allowed syscall -> allow; argument-checked ones -> allow if the
// argument matches; clone3 -> ENOSYS (so libc falls back to clone, which is
// checked); everything else -> EPERM.
func seccompProgram() ([]unix.SockFilter, error) {
	allowed, rules, arch, err := seccompPolicy()
	if err != nil {
		return nil, err
	}
	p := []unix.SockFilter{
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, seccompDataArch),
		jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, arch, 1, 0),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_KILL_PROCESS),
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, seccompDataNR),
		// x32 system calls carry bit 30 on x86-64; never allow them.
		jump(unix.BPF_JMP|unix.BPF_JGE|unix.BPF_K, 0x40000000, 0, 1),
		stmt(unix.BPF_RET|unix.BPF_K, retEPERM),
	}
	for _, nr := range allowed {
		p = append(p,
			jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, uint32(nr), 0, 1),
			stmt(unix.BPF_RET|unix.BPF_K, retAllow))
	}
	for _, r := range rules {
		p = append(p,
			jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, uint32(r.nr), 0, 6),
			stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, seccompDataArg0+8*r.arg),
			stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, r.mask),
			jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, r.want, 0, 1),
			stmt(unix.BPF_RET|unix.BPF_K, retAllow),
			stmt(unix.BPF_RET|unix.BPF_K, r.otherwise),
			// Not reached; keeps every rule block the same length.
			stmt(unix.BPF_RET|unix.BPF_K, retEPERM),
		)
	}
	p = append(p, stmt(unix.BPF_RET|unix.BPF_K, retEPERM))
	if len(p) > 4096 {
		return nil, fmt.Errorf("seccomp program too long (%d)", len(p))
	}
	return p, nil
}
