package sandbox

import (
	"fmt"
	"runtime"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Rule is one entry of the seccomp allow-list: system call NR is allowed,
// with Arg checked when Check is set, and Why says what needs it.
type Rule struct {
	// Name is the system call's name, NR its number on this architecture.
	Name string
	NR   uintptr
	// Check, if set, allows the call only when (args[Arg] & Mask) == Want
	// (low 32 bits); otherwise it fails with Else (EPERM when zero).
	Check bool
	Arg   uint32
	Mask  uint32
	Want  uint32
	Else  unix.Errno
	// Why says what needs the call after the sandbox is sealed.
	Why string
}

// Policy returns the seccomp allow-list of this architecture: every system
// call an INS may make once sealed, each with the reason it is there.
// Everything else fails with EPERM; notably absent are open/openat (no
// path is ever opened), execve, connect/bind/listen/accept (no socket of
// the host is reached) and socket (no new socket is made: the daemon hands
// in the link sockets).
func Policy() ([]Rule, uint32, error) {
	if policy == nil {
		return nil, 0, fmt.Errorf("seccomp policy not written for %s", runtime.GOARCH)
	}
	return policy, auditArch, nil
}

// GatewayPolicy returns the seccomp allow-list of the split tunnel gateway
// on this architecture: the INS's (Policy) plus the socket calls the
// gateway makes once sealed, each with its reason. Unlike an INS it makes
// sockets of the host (AF_INET and AF_INET6 only), binds its UDP subflows,
// connects to exposed destinations and accepts on the listeners it opened
// before sealing; it still has no open/openat, execve, listen, ptrace or
// mount.
func GatewayPolicy() ([]Rule, uint32, error) {
	rules, arch, err := Policy()
	if err != nil {
		return nil, 0, err
	}
	return slices.Concat(rules, gatewayRules), arch, nil
}

func rulesFor(kind PolicyKind) ([]Rule, uint32, error) {
	switch kind {
	case PolicyINS:
		return Policy()
	case PolicyGateway:
		return GatewayPolicy()
	}
	return nil, 0, fmt.Errorf("unknown seccomp policy %d", kind)
}

func installSeccomp(kind PolicyKind, acceptFD int) error {
	prog, err := program(kind, acceptFD)
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
)

// acceptRule allows accept4 on descriptor fd only: the successor socket
// of an INS (Options.AcceptFD). It is not in the policy table, which has no
// accept at all.
func acceptRule(fd int) Rule {
	return Rule{Name: "accept4", NR: unix.SYS_ACCEPT4, Check: true, Arg: 0, Mask: 0xffffffff, Want: uint32(fd),
		Why: "a successor daemon connects on the unix socket bound before sealing; no other descriptor"}
}

// program builds the filter: wrong architecture -> kill; x32 ABI -> EPERM;
// each rule -> allow (if its argument matches); everything else -> EPERM.
// acceptFD, if non-zero, adds acceptRule(acceptFD).
func program(kind PolicyKind, acceptFD int) ([]unix.SockFilter, error) {
	rules, arch, err := rulesFor(kind)
	if err != nil {
		return nil, err
	}
	if acceptFD > 0 {
		rules = append(slices.Clip(rules), acceptRule(acceptFD))
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
	for _, r := range rules {
		if !r.Check {
			p = append(p,
				jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, uint32(r.NR), 0, 1),
				stmt(unix.BPF_RET|unix.BPF_K, retAllow))
			continue
		}
		otherwise := retEPERM
		if r.Else != 0 {
			otherwise = unix.SECCOMP_RET_ERRNO | uint32(r.Else)
		}
		p = append(p,
			jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, uint32(r.NR), 0, 6),
			stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, seccompDataArg0+8*r.Arg),
			stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, r.Mask),
			jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, r.Want, 0, 1),
			stmt(unix.BPF_RET|unix.BPF_K, retAllow),
			stmt(unix.BPF_RET|unix.BPF_K, otherwise),
			// Reload the number for the next rule.
			stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, seccompDataNR),
		)
	}
	p = append(p, stmt(unix.BPF_RET|unix.BPF_K, retEPERM))
	if len(p) > 4096 {
		return nil, fmt.Errorf("seccomp program too long (%d)", len(p))
	}
	return p, nil
}
