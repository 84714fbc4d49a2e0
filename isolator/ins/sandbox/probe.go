package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ProbeEnv, set to "1" in the daemon's environment, makes it pass the
// variable on to its INS and lets both answer the probe request (the
// hidden API op "sandbox-probe" and the INS management op of the same
// name). Tests set it; nothing in mpshim does. Without it the request is
// refused: the probe only tries acts that must fail, but a production
// daemon has no use for it.
const ProbeEnv = "MPSHIM_SANDBOX_PROBE"

// ProbeEnabled reports whether ProbeEnv is set in this process.
func ProbeEnabled() bool { return os.Getenv(ProbeEnv) == "1" }

// ProbeAcceptOther is the probe act that calls accept4 on a descriptor
// other than the successor socket: the seccomp filter must refuse it with
// EPERM.
const ProbeAcceptOther = "accept4 on a descriptor other than the successor socket"

// ProbeTarget says what Probe tries to reach besides fixed host paths.
type ProbeTarget struct {
	// API is the daemon's API socket path.
	API string `json:"api,omitempty"`
	// Remote is the remote API's TCP address (IPv4 or IPv6 and port), if
	// one is served.
	Remote string `json:"remote,omitempty"`
}

// ProbeResult is the outcome of one forbidden act: "ok" when it succeeded
// (a sandbox failure), otherwise the errno name it failed with.
type ProbeResult struct {
	Act    string `json:"act"`
	Result string `json:"result"`
}

// Probe makes the calling process attempt, from one of its own threads and
// under whatever confinement it is in, every act a sealed INS must not be
// able to do, and reports how each ended. Nothing it reads is returned:
// only whether the act succeeded.
func Probe(t ProbeTarget) []ProbeResult {
	var out []ProbeResult
	add := func(act string, err error) {
		r := "ok"
		if err != nil {
			var en syscall.Errno
			if errors.As(err, &en) {
				r = unix.ErrnoName(en)
			} else {
				r = err.Error()
			}
		}
		out = append(out, ProbeResult{Act: act, Result: r})
	}
	// Opening is the forbidden act: an open that succeeds is reported
	// "ok" whatever a read would do next, and nothing is read.
	openRead := func(path string, flags int) error {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	add("read /etc/shadow", openRead("/etc/shadow", unix.O_RDONLY))
	add("open / (list the root)", openRead("/", unix.O_RDONLY|unix.O_DIRECTORY))
	add("open /proc/self/status", openRead("/proc/self/status", unix.O_RDONLY))
	add("create /tmp/mpshim-probe", func() error {
		fd, err := unix.Open("/tmp/mpshim-probe", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		if err == nil {
			unix.Close(fd)
			unix.Unlink("/tmp/mpshim-probe")
		}
		return err
	}())
	add("stat /etc/passwd", func() error { var st unix.Stat_t; return unix.Stat("/etc/passwd", &st) }())
	add("execve /bin/sh", unix.Exec("/bin/sh", []string{"sh", "-c", "true"}, nil))
	if t.API != "" {
		add("connect to the API socket", connectUnix(t.API))
	}
	add("socket AF_UNIX", newSocket(unix.AF_UNIX, unix.SOCK_STREAM))
	add("socket AF_INET (host TCP)", newSocket(unix.AF_INET, unix.SOCK_STREAM))
	add("socket AF_INET6 (host UDP)", newSocket(unix.AF_INET6, unix.SOCK_DGRAM))
	add("socket AF_PACKET", newSocket(unix.AF_PACKET, unix.SOCK_RAW))
	add("socket AF_NETLINK", newSocket(unix.AF_NETLINK, unix.SOCK_RAW))
	if t.Remote != "" {
		add("connect to the remote API", connectTCP(t.Remote))
	}
	add("fork (clone without CLONE_THREAD)", func() error {
		pid, _, errno := unix.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if errno != 0 {
			return errno
		}
		if pid == 0 { // the child, should it exist: leave at once
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
		}
		var ws unix.WaitStatus
		unix.Wait4(int(pid), &ws, 0, nil)
		return nil
	}())
	add("ptrace attach to pid 1", unix.PtraceAttach(1))
	add("setuid 0", func() error {
		_, _, errno := unix.RawSyscall(unix.SYS_SETUID, 0, 0, 0)
		if errno != 0 {
			return errno
		}
		return nil
	}())
	add("mount tmpfs", unix.Mount("none", "/", "tmpfs", 0, ""))
	// accept4 is allowed on the successor socket's descriptor alone
	// (Options.AcceptFD); on any other the filter answers, not the kernel
	// (which would say ENOTSOCK for stdin).
	add(ProbeAcceptOther, func() error { _, _, err := unix.Accept4(0, 0); return err }())
	return out
}

func newSocket(family, typ int) error {
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

// connectUnix connects to a stream socket at path. The socket call itself
// is expected to fail; should it not, connect decides.
func connectUnix(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path})
}

func connectTCP(addr string) error {
	sa, family, err := parseSockaddr(addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Connect(fd, sa)
}

func parseSockaddr(s string) (unix.Sockaddr, int, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, 0, fmt.Errorf("probe target %q: %w", s, err)
	}
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, unix.AF_INET, nil
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, unix.AF_INET6, nil
}
