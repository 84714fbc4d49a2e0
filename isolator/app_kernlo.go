package isolator

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/ins/netns"
	"github.com/mpshim/mpshim/msgproto"
)

// kernelLoopback makes wildcard listener l reachable on the kernel's
// loopback of the app's network namespace, as a wildcard listener is on
// Linux, for clients that are not under the shim (health checks, a local
// agent, a reverse proxy on the host): the daemon listens on 127.0.0.1 (an
// AF_INET listener) or on ::1 and ::ffff:127.0.0.1 (AF_INET6, the latter
// unless IPV6_V6ONLY was set) at l's port in the namespace of process pid,
// and hands every connection it accepts to the app through l's SEQPACKET
// end, as an INS does, with socket id 0: the app's descriptor is then the
// kernel's own socket. A port already taken on the kernel's loopback is
// skipped (logged).
func (s *AppServer) kernelLoopback(c *client, l *listenRec) {
	ap, err := l.addr.AddrPort()
	if err != nil || !ap.Addr().Unmap().IsUnspecified() || ap.Port() == 0 {
		return
	}
	l.mu.Lock()
	opts := slices.Clone(l.opts)
	l.mu.Unlock()
	var addrs []netip.Addr
	if l.domain == unix.AF_INET {
		addrs = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}
	} else {
		addrs = []netip.Addr{netip.IPv6Loopback()}
		if !optSet(opts, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY) {
			addrs = append(addrs, netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 1}))
		}
	}
	reuseport := optSet(opts, unix.SOL_SOCKET, unix.SO_REUSEPORT)
	var lns []net.Listener
	err = netns.Do(fmt.Sprintf("/proc/%d/ns/net", c.pid), func() error {
		for _, a := range addrs {
			ln, err := loopbackListener(int(l.domain), netip.AddrPortFrom(a, ap.Port()), reuseport, int(l.backlog), opts)
			if err != nil {
				c.log.Info("app: no kernel loopback listener", "addr", netip.AddrPortFrom(a, ap.Port()), "err", err)
				continue
			}
			lns = append(lns, ln)
		}
		return nil
	})
	if err != nil {
		c.log.Info("app: no kernel loopback listener", "err", err)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		for _, ln := range lns {
			ln.Close()
		}
		return
	}
	l.kern = append(l.kern, lns...)
	l.mu.Unlock()
	for _, ln := range lns {
		go s.handKernel(c, l, ln)
	}
}

// optSet reports whether an integer option was set to a nonzero value.
func optSet(opts []*msgproto.Setsockopt, level, name int32) bool {
	for _, o := range opts {
		if o.Level == level && o.Name == name {
			for _, b := range o.Value {
				if b != 0 {
					return true
				}
			}
			return false
		}
	}
	return false
}

// loopbackListener opens a kernel TCP listener of family domain on a in
// the calling thread's network namespace, with the socket and TCP options
// the app set on its listener (TCP_DEFER_ACCEPT, TCP_USER_TIMEOUT and the
// others its accepted connections inherit on Linux).
func loopbackListener(domain int, a netip.AddrPort, reuseport bool, backlog int, opts []*msgproto.Setsockopt) (net.Listener, error) {
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "kernel-loopback")
	defer f.Close()
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if reuseport {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}
	for _, o := range opts {
		if kernelOpt(o) {
			// Best effort, as the INS replays them: one the kernel
			// refuses here was refused to the app already.
			_ = unix.SetsockoptString(fd, int(o.Level), int(o.Name), string(o.Value))
		}
	}
	var sa unix.Sockaddr
	if domain == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().Unmap().As4()}
	} else {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		sa = &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("bind: %w", err)
	}
	if backlog < 0 {
		backlog = 4096 // Linux takes a negative backlog for somaxconn
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return net.FileListener(f)
}

// handKernel accepts on kernel listener ln until it is closed and passes
// each connection to the app on l's SEQPACKET end. When the app's queue is
// full the connection is closed, as a full backlog would refuse it. It
// accepts only once the app has taken everything handed to it before:
// until then connections wait in ln's own accept queue, where a listener
// that is shut down or closed resets them, as Linux does with its accept
// queue. That queue takes one connection less while one handed over waits
// for the app's accept (queueRoom), so that the two together hold what
// Linux's accept queue would: the next client stays in SYN-SENT, and is
// refused if the listener goes.
func (s *AppServer) handKernel(c *client, l *listenRec, ln net.Listener) {
	for {
		if !l.waitTaken(ln) {
			ln.Close()
			return
		}
		l.queueRoom(ln, true)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		l.queueRoom(ln, false)
		if err := l.hand(ln, conn); err != nil {
			c.log.Debug("app: kernel loopback connection not handed over", "sock", l.sock, "err", err)
		}
		conn.Close()
	}
}

// dropSYN is a socket filter that drops the segments that open a
// connection (SYN without ACK) and lets every other through, so that the
// handshakes already under way complete and their FINs arrive. The filter
// of a TCP socket sees the segment from its TCP header on: byte 13 holds
// the flags.
var dropSYN = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 13},
	{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, K: 0x10, Jt: 2, Jf: 0}, // ACK: accept
	{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, K: 0x02, Jt: 0, Jf: 1}, // SYN: drop
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
}

// queueRoom sizes the accept queue of kernel listener ln: the app's backlog
// when full is set (nothing handed over waits in the app's queue), one
// connection less otherwise. Linux queues backlog+1 connections; for a
// backlog of 0, where one less is none, a socket filter that drops SYNs
// keeps new handshakes out instead (the clients retransmit their SYN, as
// when Linux's queue is full). A negative backlog (somaxconn) is left as
// it is.
func (l *listenRec) queueRoom(ln net.Listener, full bool) {
	l.mu.Lock()
	backlog := int(l.backlog)
	l.mu.Unlock()
	if backlog < 0 {
		return
	}
	sc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		return
	}
	_ = sc.Control(func(fd uintptr) {
		switch {
		case backlog == 0 && full:
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
		case backlog == 0:
			_ = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
				&unix.SockFprog{Len: uint16(len(dropSYN)), Filter: &dropSYN[0]})
		case full:
			_ = unix.Listen(int(fd), backlog)
		default:
			_ = unix.Listen(int(fd), backlog-1)
		}
	})
}

// kernelOpt reports whether a listener's option is applied to its kernel
// loopback listeners: socket and TCP options, except the port sharing ones
// that loopbackListener sets itself.
func kernelOpt(o *msgproto.Setsockopt) bool {
	return (o.Level == unix.SOL_SOCKET && o.Name != unix.SO_REUSEADDR && o.Name != unix.SO_REUSEPORT) ||
		o.Level == unix.IPPROTO_TCP
}

// waitTaken waits until the app has read everything queued on l's
// SEQPACKET end (the socket's unread output, SIOCOUTQ, is zero), polling
// from 50 µs up to every 2 ms. It reports false once l is closed or ln is
// no longer one of its kernel listeners.
func (l *listenRec) waitTaken(ln net.Listener) bool {
	delay := 50 * time.Microsecond
	for {
		l.mu.Lock()
		if l.closed || !slices.Contains(l.kern, ln) {
			l.mu.Unlock()
			return false
		}
		queued := -1
		if sc, err := l.seq.SyscallConn(); err == nil {
			_ = sc.Control(func(fd uintptr) {
				if n, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
					queued = n
				}
			})
		}
		l.mu.Unlock()
		if queued <= 0 {
			// Nothing unread, or no way to tell: hand on.
			return true
		}
		time.Sleep(delay)
		delay = min(2*delay, 2*time.Millisecond)
	}
}

// hand passes conn, a kernel connection accepted on ln, to the app on l's
// SEQPACKET end, unless ln is no longer one of l's kernel listeners: the
// listener was shut down (or closed) meanwhile, and the shim has already
// reset what was queued on its end, as Linux resets its accept queue; the
// caller's close then resets conn too.
func (l *listenRec) hand(ln net.Listener, conn net.Conn) error {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return fmt.Errorf("not a TCP connection")
	}
	f, err := tc.File()
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd()) // blocking mode, as accept(2) gives it
	// Until the app accepts it (the shim then clears the option), the
	// connection is closed by a reset, as Linux resets what is still in a
	// listener's accept queue when the listener is closed. A listener whose
	// app set SO_LINGER keeps its own value.
	l.mu.Lock()
	ownLinger := optSet(l.opts, unix.SOL_SOCKET, unix.SO_LINGER)
	l.mu.Unlock()
	if !ownLinger {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	// The addresses accept(2) returned: a connection reset before it was
	// accepted has no peer for getpeername(2) any more (ENOTCONN), but
	// Linux still hands it to accept, reset, and so does the app's.
	local, err1 := netipAddrPort(tc.LocalAddr())
	peer, err2 := netipAddrPort(tc.RemoteAddr())
	if err1 != nil || err2 != nil {
		return fmt.Errorf("addresses: %v %v", err1, err2)
	}
	b, err := msgproto.Append(nil, 0, msgproto.FlagFD, &msgproto.AcceptNotify{
		Listener: l.sock, Sock: 0, Local: msgproto.AddrFromNetip(local), Peer: msgproto.AddrFromNetip(peer)})
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || !slices.Contains(l.kern, ln) {
		return fmt.Errorf("listener closed or shut down")
	}
	sc, err := l.seq.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := sc.Write(func(seq uintptr) bool {
		serr = unix.Sendmsg(int(seq), b, unix.UnixRights(fd), nil, unix.MSG_DONTWAIT)
		return true
	}); err != nil {
		return err
	}
	return serr
}

// netipAddrPort converts the address of a TCP connection.
func netipAddrPort(a net.Addr) (netip.AddrPort, error) {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return netip.AddrPort{}, fmt.Errorf("address %v is not a TCP address", a)
	}
	return ta.AddrPort(), nil
}

// kernelFollow applies a listener's shutdown, second listen or socket
// and TCP options to its kernel loopback listeners: shutdown(2) stops a
// Linux listener (new connections are refused), listen(2) again restarts
// it, and the options are the ones its connections inherit.
func (s *AppServer) kernelFollow(c *client, sock uint64, m msgproto.Message) {
	s.mu.Lock()
	l := s.lsns[sock]
	s.mu.Unlock()
	if l == nil || l.group != c.group {
		return
	}
	switch m := m.(type) {
	case *msgproto.Setsockopt:
		if !kernelOpt(m) {
			return
		}
		l.mu.Lock()
		kern := slices.Clone(l.kern)
		l.mu.Unlock()
		for _, k := range kern {
			if sc, err := k.(syscall.Conn).SyscallConn(); err == nil {
				_ = sc.Control(func(fd uintptr) {
					_ = unix.SetsockoptString(int(fd), int(m.Level), int(m.Name), string(m.Value))
				})
			}
		}
	case *msgproto.Shutdown:
		if m.How == unix.SHUT_WR {
			return
		}
		l.mu.Lock()
		kern := l.kern
		l.kern = nil
		l.mu.Unlock()
		for _, k := range kern {
			k.Close()
		}
	case *msgproto.Listen:
		l.mu.Lock()
		l.backlog = m.Backlog
		none := len(l.kern) == 0
		l.mu.Unlock()
		if none {
			s.kernelLoopback(c, l)
		}
	}
}
