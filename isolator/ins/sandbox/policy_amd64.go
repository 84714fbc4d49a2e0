package sandbox

import "golang.org/x/sys/unix"

const auditArch = unix.AUDIT_ARCH_X86_64

// policy is the x86-64 allow-list, the one table of what a sealed INS may
// call. The Go runtime's needs come first, then descriptor I/O, then the
// socket calls on descriptors the daemon handed in.
var policy = []Rule{
	// Memory.
	{Name: "mmap", NR: unix.SYS_MMAP, Why: "Go heap and stacks; mapping the rings and xdp UMEM handed in as descriptors"},
	{Name: "munmap", NR: unix.SYS_MUNMAP, Why: "Go heap scavenger; unmapping rings"},
	{Name: "mprotect", NR: unix.SYS_MPROTECT, Why: "Go runtime (stack guard pages)"},
	{Name: "madvise", NR: unix.SYS_MADVISE, Why: "Go heap scavenger returns memory"},
	{Name: "mremap", NR: unix.SYS_MREMAP, Why: "Go runtime"},
	{Name: "brk", NR: unix.SYS_BRK, Why: "Go runtime at start; harmless"},

	// Threads, signals, scheduling, time.
	{Name: "futex", NR: unix.SYS_FUTEX, Why: "Go runtime: sleeping and waking threads"},
	{Name: "clone", NR: unix.SYS_CLONE, Check: true, Arg: 0, Mask: unix.CLONE_THREAD, Want: unix.CLONE_THREAD,
		Why: "new threads of the Go runtime; only with CLONE_THREAD, so no new process"},
	{Name: "clone3", NR: unix.SYS_CLONE3, Check: true, Arg: 0, Mask: 0, Want: 1, Else: unix.ENOSYS,
		Why: "never allowed: its flags are in memory seccomp cannot read, and ENOSYS makes a C library fall back to the checked clone"},
	{Name: "gettid", NR: unix.SYS_GETTID, Why: "Go runtime"},
	{Name: "getpid", NR: unix.SYS_GETPID, Why: "Go runtime (signals to itself)"},
	{Name: "getppid", NR: unix.SYS_GETPPID, Why: "Go runtime; harmless (0 in the INS's pid namespace)"},
	{Name: "tgkill", NR: unix.SYS_TGKILL, Why: "Go runtime preempts its own threads; the pid namespace holds no other process"},
	{Name: "tkill", NR: unix.SYS_TKILL, Why: "Go runtime (older path of the same)"},
	{Name: "rt_sigaction", NR: unix.SYS_RT_SIGACTION, Why: "Go runtime signal handlers"},
	{Name: "rt_sigprocmask", NR: unix.SYS_RT_SIGPROCMASK, Why: "Go runtime"},
	{Name: "rt_sigreturn", NR: unix.SYS_RT_SIGRETURN, Why: "returning from signal handlers"},
	{Name: "sigaltstack", NR: unix.SYS_SIGALTSTACK, Why: "Go runtime signal stacks of new threads"},
	{Name: "sched_yield", NR: unix.SYS_SCHED_YIELD, Why: "Go runtime spinning"},
	{Name: "sched_getaffinity", NR: unix.SYS_SCHED_GETAFFINITY, Why: "Go runtime (CPU count)"},
	{Name: "nanosleep", NR: unix.SYS_NANOSLEEP, Why: "Go runtime (usleep)"},
	{Name: "clock_nanosleep", NR: unix.SYS_CLOCK_NANOSLEEP, Why: "Go runtime"},
	{Name: "clock_gettime", NR: unix.SYS_CLOCK_GETTIME, Why: "time (vDSO fallback)"},
	{Name: "clock_getres", NR: unix.SYS_CLOCK_GETRES, Why: "time"},
	{Name: "gettimeofday", NR: unix.SYS_GETTIMEOFDAY, Why: "time (vDSO fallback)"},
	{Name: "time", NR: unix.SYS_TIME, Why: "time (vDSO fallback)"},
	{Name: "setitimer", NR: unix.SYS_SETITIMER, Why: "Go CPU profiler (the daemon's pprof of an INS)"},
	{Name: "timer_create", NR: unix.SYS_TIMER_CREATE, Why: "Go CPU profiler, per-thread timers"},
	{Name: "timer_settime", NR: unix.SYS_TIMER_SETTIME, Why: "Go CPU profiler"},
	{Name: "timer_delete", NR: unix.SYS_TIMER_DELETE, Why: "Go CPU profiler"},
	{Name: "restart_syscall", NR: unix.SYS_RESTART_SYSCALL, Why: "kernel restarts an interrupted sleep"},
	{Name: "exit", NR: unix.SYS_EXIT, Why: "a thread ends"},
	{Name: "exit_group", NR: unix.SYS_EXIT_GROUP, Why: "the INS ends"},
	{Name: "set_robust_list", NR: unix.SYS_SET_ROBUST_LIST, Why: "C library of new threads (cgo builds)"},
	{Name: "rseq", NR: unix.SYS_RSEQ, Why: "C library of new threads (cgo builds)"},
	{Name: "getrandom", NR: unix.SYS_GETRANDOM, Why: "netstack: ISNs, ports, ids; crypto/rand"},
	{Name: "uname", NR: unix.SYS_UNAME, Why: "Go runtime (kernel version checks); the uts namespace is the INS's own"},
	{Name: "getrlimit", NR: unix.SYS_GETRLIMIT, Why: "Go runtime"},
	{Name: "prlimit64", NR: unix.SYS_PRLIMIT64, Why: "Go runtime reads RLIMIT_NOFILE; raising needs a capability the INS has not"},
	{Name: "getrusage", NR: unix.SYS_GETRUSAGE, Why: "statistics the INS reports"},
	{Name: "getuid", NR: unix.SYS_GETUID, Why: "Go runtime and os/user-free identity checks; harmless"},
	{Name: "geteuid", NR: unix.SYS_GETEUID, Why: "the same"},
	{Name: "getgid", NR: unix.SYS_GETGID, Why: "the same"},
	{Name: "getegid", NR: unix.SYS_GETEGID, Why: "the same"},

	// Descriptors and polling, on descriptors already open.
	{Name: "read", NR: unix.SYS_READ, Why: "control channel, app socketpairs, eventfds"},
	{Name: "write", NR: unix.SYS_WRITE, Why: "app socketpairs, the log pipe to the daemon"},
	{Name: "readv", NR: unix.SYS_READV, Why: "app socketpairs"},
	{Name: "writev", NR: unix.SYS_WRITEV, Why: "app socketpairs"},
	{Name: "pread64", NR: unix.SYS_PREAD64, Why: "Go runtime"},
	{Name: "pwrite64", NR: unix.SYS_PWRITE64, Why: "Go runtime"},
	{Name: "close", NR: unix.SYS_CLOSE, Why: "closing sockets and passed descriptors"},
	{Name: "close_range", NR: unix.SYS_CLOSE_RANGE, Why: "closing passed descriptors"},
	{Name: "fcntl", NR: unix.SYS_FCNTL, Why: "nonblocking and close-on-exec flags of passed descriptors"},
	{Name: "dup", NR: unix.SYS_DUP, Why: "os.File duplication of passed descriptors"},
	{Name: "dup3", NR: unix.SYS_DUP3, Why: "the same"},
	{Name: "pipe2", NR: unix.SYS_PIPE2, Why: "Go runtime (netpoll wakeup) and the event loop"},
	{Name: "fstat", NR: unix.SYS_FSTAT, Why: "size of a passed memfd; os.File of passed descriptors"},
	{Name: "lseek", NR: unix.SYS_LSEEK, Why: "os.File of passed descriptors"},
	{Name: "ioctl", NR: unix.SYS_IOCTL, Why: "FIONREAD/SIOCOUTQ on app sockets, carrier (SIOCGIFFLAGS) on the link sockets"},
	{Name: "epoll_create1", NR: unix.SYS_EPOLL_CREATE1, Why: "Go netpoller and the data pump"},
	{Name: "epoll_ctl", NR: unix.SYS_EPOLL_CTL, Why: "the same"},
	{Name: "epoll_wait", NR: unix.SYS_EPOLL_WAIT, Why: "the same"},
	{Name: "epoll_pwait", NR: unix.SYS_EPOLL_PWAIT, Why: "the same"},
	{Name: "epoll_pwait2", NR: unix.SYS_EPOLL_PWAIT2, Why: "the same"},
	{Name: "eventfd2", NR: unix.SYS_EVENTFD2, Why: "Go netpoller wakeups, the data pump"},
	{Name: "poll", NR: unix.SYS_POLL, Why: "link sockets"},
	{Name: "ppoll", NR: unix.SYS_PPOLL, Why: "link and xdp sockets"},
	{Name: "pselect6", NR: unix.SYS_PSELECT6, Why: "Go runtime (usleep fallback)"},

	// Socket I/O on descriptors the daemon handed in or the INS made
	// before it was sealed: AF_PACKET/AF_XDP links, app socketpairs,
	// SCM_RIGHTS on the control channel.
	{Name: "recvmsg", NR: unix.SYS_RECVMSG, Why: "control channel with passed descriptors; link frames"},
	{Name: "sendmsg", NR: unix.SYS_SENDMSG, Why: "control channel with passed descriptors; AcceptNotify"},
	{Name: "recvmmsg", NR: unix.SYS_RECVMMSG, Why: "link frames in batches"},
	{Name: "sendmmsg", NR: unix.SYS_SENDMMSG, Why: "link frames in batches; xdp wakeups"},
	{Name: "recvfrom", NR: unix.SYS_RECVFROM, Why: "app socketpairs and links"},
	{Name: "sendto", NR: unix.SYS_SENDTO, Why: "app socketpairs and links"},
	{Name: "getsockopt", NR: unix.SYS_GETSOCKOPT, Why: "SO_ERROR, buffer sizes, xdp ring offsets and statistics"},
	{Name: "setsockopt", NR: unix.SYS_SETSOCKOPT, Why: "buffer sizes of app socketpairs"},
	{Name: "getsockname", NR: unix.SYS_GETSOCKNAME, Why: "link sockets handed in"},
	{Name: "getpeername", NR: unix.SYS_GETPEERNAME, Why: "harmless on held sockets"},
	{Name: "shutdown", NR: unix.SYS_SHUTDOWN, Why: "half-close of app streams"},
	{Name: "socketpair", NR: unix.SYS_SOCKETPAIR, Check: true, Arg: 0, Mask: 0xffffffff, Want: unix.AF_UNIX,
		Why: "AF_UNIX pairs only: the INS's end and the app's end of an accepted connection; a pair reaches nothing outside"},
}

// gatewayRules are what the split tunnel gateway may call besides policy
// (GatewayPolicy). Its listeners (status, handoff, split routes) are bound
// and listening before it is sealed, and listen is not allowed, so accept4
// only ever reaches those.
var gatewayRules = []Rule{
	// AF_INET is 2 and AF_INET6 is 10: masking bit 3 off leaves 2 for
	// those two families and for no other.
	{Name: "socket", NR: unix.SYS_SOCKET, Check: true, Arg: 0, Mask: ^uint32(8), Want: unix.AF_INET,
		Why: "AF_INET and AF_INET6 only: a UDP socket per subflow of a (re)started session, a TCP socket per connection a peer makes to an exposed destination"},
	{Name: "bind", NR: unix.SYS_BIND, Why: "a subflow's UDP socket is bound to its path's local address"},
	{Name: "connect", NR: unix.SYS_CONNECT, Why: "connections a peer makes to destinations this side exposes to it (checked against expose first)"},
	{Name: "accept4", NR: unix.SYS_ACCEPT4, Why: "the status, handoff and split route listeners opened before sealing; no listen, so no other"},
}
