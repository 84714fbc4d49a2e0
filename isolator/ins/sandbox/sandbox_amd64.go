package sandbox

import "golang.org/x/sys/unix"

// seccompPolicy is the x86-64 allow-list: what the Go runtime (and a C
// library, when cgo is linked), the netstack, AF_PACKET I/O, AF_UNIX
// descriptor passing and epoll/futex need, and nothing that creates network
// sockets, executes programs, or changes the system.
func seccompPolicy() (allowed []uintptr, rules []argRule, arch uint32, err error) {
	allowed = []uintptr{
		// memory
		unix.SYS_MMAP, unix.SYS_MUNMAP, unix.SYS_MPROTECT, unix.SYS_MADVISE, unix.SYS_MREMAP, unix.SYS_BRK,
		// threads, signals, scheduling, time
		unix.SYS_FUTEX, unix.SYS_GETTID, unix.SYS_GETPID, unix.SYS_GETPPID, unix.SYS_TGKILL, unix.SYS_TKILL,
		unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK, unix.SYS_RT_SIGRETURN, unix.SYS_SIGALTSTACK,
		unix.SYS_SCHED_YIELD, unix.SYS_SCHED_GETAFFINITY, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP,
		unix.SYS_CLOCK_GETTIME, unix.SYS_CLOCK_GETRES, unix.SYS_GETTIMEOFDAY, unix.SYS_TIME,
		unix.SYS_SETITIMER, unix.SYS_TIMER_CREATE, unix.SYS_TIMER_SETTIME, unix.SYS_TIMER_DELETE,
		unix.SYS_RESTART_SYSCALL, unix.SYS_EXIT, unix.SYS_EXIT_GROUP, unix.SYS_SET_ROBUST_LIST, unix.SYS_RSEQ,
		unix.SYS_GETRANDOM, unix.SYS_UNAME, unix.SYS_GETRLIMIT, unix.SYS_PRLIMIT64, unix.SYS_GETRUSAGE,
		unix.SYS_GETUID, unix.SYS_GETEUID, unix.SYS_GETGID, unix.SYS_GETEGID,
		// descriptors and polling
		unix.SYS_READ, unix.SYS_WRITE, unix.SYS_READV, unix.SYS_WRITEV, unix.SYS_PREAD64, unix.SYS_PWRITE64,
		unix.SYS_CLOSE, unix.SYS_CLOSE_RANGE, unix.SYS_FCNTL, unix.SYS_DUP, unix.SYS_DUP3, unix.SYS_PIPE2,
		unix.SYS_FSTAT, unix.SYS_NEWFSTATAT, unix.SYS_GETDENTS64, unix.SYS_STATX, unix.SYS_LSEEK, unix.SYS_IOCTL,
		unix.SYS_EPOLL_CREATE1, unix.SYS_EPOLL_CTL, unix.SYS_EPOLL_WAIT, unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_PWAIT2,
		unix.SYS_EVENTFD2, unix.SYS_POLL, unix.SYS_PPOLL, unix.SYS_PSELECT6,
		// socket I/O on descriptors already open (AF_PACKET links,
		// AF_UNIX sockets to apps, SCM_RIGHTS passing)
		unix.SYS_RECVMSG, unix.SYS_SENDMSG, unix.SYS_RECVMMSG, unix.SYS_SENDMMSG,
		unix.SYS_RECVFROM, unix.SYS_SENDTO, unix.SYS_GETSOCKOPT, unix.SYS_SETSOCKOPT,
		unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME, unix.SYS_SHUTDOWN, unix.SYS_ACCEPT4,
		unix.SYS_CONNECT, unix.SYS_BIND, unix.SYS_LISTEN,
	}
	rules = []argRule{
		// Only AF_UNIX sockets may be created (socketpairs to apps).
		{nr: unix.SYS_SOCKET, arg: 0, mask: 0xffffffff, want: unix.AF_UNIX, otherwise: retEPERM},
		{nr: unix.SYS_SOCKETPAIR, arg: 0, mask: 0xffffffff, want: unix.AF_UNIX, otherwise: retEPERM},
		// Threads only: clone must carry CLONE_THREAD (no fork).
		{nr: unix.SYS_CLONE, arg: 0, mask: unix.CLONE_THREAD, want: unix.CLONE_THREAD, otherwise: retEPERM},
		// clone3 passes its flags in memory seccomp cannot read: answer
		// ENOSYS so the C library falls back to the checked clone.
		{nr: unix.SYS_CLONE3, arg: 0, mask: 0, want: 1, otherwise: retENOSYS},
		// Read-only opens (time zone data, /proc/self): no write, no
		// create, no truncate.
		{nr: unix.SYS_OPENAT, arg: 2, mask: unix.O_ACCMODE | unix.O_CREAT | unix.O_TRUNC | oTmpfileBit,
			want: unix.O_RDONLY, otherwise: retEPERM},
	}
	return allowed, rules, unix.AUDIT_ARCH_X86_64, nil
}

// oTmpfileBit is __O_TMPFILE alone: O_TMPFILE also contains O_DIRECTORY,
// which read-only directory opens legitimately carry.
const oTmpfileBit = 0x400000
