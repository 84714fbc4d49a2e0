package engine

import (
	"errors"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// loopbackHandshakeWait bounds how long a nonblocking connect to loopback
// waits for the handshake before it returns EINPROGRESS.
const loopbackHandshakeWait = 10 * time.Millisecond

// takeFile takes ownership of f, which must be an AF_UNIX socket of type
// want, and returns a non-blocking close-on-exec descriptor for it. f is
// closed in every case.
func takeFile(f *os.File, want int) (int, unix.Errno) {
	if f == nil {
		return -1, unix.EINVAL
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, unix.EBADF
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || derr != nil {
		return -1, unix.EBADF
	}
	typ, err1 := unix.GetsockoptInt(nfd, unix.SOL_SOCKET, unix.SO_TYPE)
	dom, err2 := unix.GetsockoptInt(nfd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err1 != nil || err2 != nil || typ != want || dom != unix.AF_UNIX {
		unix.Close(nfd)
		return -1, unix.EINVAL
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return -1, unix.EBADF
	}
	return nfd, 0
}

// mappedOnV6Only returns ENETUNREACH for an IPv4-mapped IPv6 destination
// on an IPV6_V6ONLY socket, as Linux's tcp_v6_connect and
// ip6_datagram_connect do before any route lookup, and 0 otherwise.
func (s *sock) mappedOnV6Only(addr netip.AddrPort) unix.Errno {
	if s.family == unix.AF_INET6 && addr.Addr().Is4In6() && s.ep.SocketOptions().GetV6Only() {
		return unix.ENETUNREACH
	}
	return 0
}

// selfIfUnspecified returns the loopback address of the same form (IPv4,
// IPv6, IPv4-mapped) for a destination that is the unspecified address:
// Linux connects and sends to itself there.
func selfIfUnspecified(ap netip.AddrPort) netip.AddrPort {
	a := ap.Addr()
	switch {
	case !ap.IsValid() || !a.Unmap().IsUnspecified():
		return ap
	case a.Is4():
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port())
	case a.Is4In6():
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 1}), ap.Port())
	}
	return netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port())
}

// chooseUplink asks the chooser for the NIC of a new flow and binds the
// endpoint to its address when the socket has no local address yet.
func (e *Engine) chooseUplink(s *sock, addr netip.AddrPort, fa *tcpip.FullAddress, tp tcpip.TransportProtocolNumber) unix.Errno {
	if e.chooser == nil || mcastRouted(s, addr) {
		return 0
	}
	nic, local, err := e.chooser.ChooseUplink(addr, tp)
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			return errno
		}
		return unix.ENETUNREACH
	}
	fa.NIC = nic
	cur, terr := s.ep.GetLocalAddress()
	if terr == nil && cur.Port == 0 && cur.Addr.Len() == 0 && local.Len() != 0 {
		if terr := s.ep.Bind(tcpip.FullAddress{NIC: nic, Addr: local}); terr != nil {
			return ErrnoOf(terr)
		}
	}
	return 0
}

// Connect connects like connect(2).
//
// For a stream socket, stream is the INS end of the app's AF_UNIX SOCK_STREAM
// socketpair; the engine takes ownership of it (it is closed on every path).
// A blocking connect returns after the handshake with 0, ECONNREFUSED,
// ETIMEDOUT, ENETUNREACH, EHOSTUNREACH... and the pump starts. A nonblocking
// connect returns EINPROGRESS at once; later calls return EALREADY while it
// is in progress and EISCONN after success; after a failure the error is
// reported once, by Getsockopt(SO_ERROR) or by the next Connect.
//
// Nonblocking readiness, exactly like Linux: before asking for a nonblocking
// connect the shim fills the send buffer of its own socketpair end (writes
// filler bytes with MSG_DONTWAIT until EAGAIN). The app's fd is then neither
// readable nor writable. On success the engine discards exactly the filler
// (SIOCINQ on its end before the first read; nothing else can be queued) and
// the app's fd turns writable (EPOLLOUT). On failure the engine closes its
// end: the app's fd reports EPOLLIN|EPOLLOUT|EPOLLHUP and SO_ERROR returns the
// error once. A blocking connect needs no filler. A hang-up of the app's end
// while connecting aborts the connection.
//
// For a datagram socket stream must be nil (it is closed if not); an invalid
// addr (AF_UNSPEC) dissolves the association.
func (e *Engine) Connect(id SockID, addr netip.AddrPort, stream *os.File, nonblock bool) unix.Errno {
	addr = selfIfUnspecified(addr)
	s, errno := e.lookup(id)
	if errno != 0 {
		if stream != nil {
			stream.Close()
		}
		return errno
	}
	if s.typ == unix.SOCK_DGRAM {
		if stream != nil {
			stream.Close()
		}
		return e.connectDgram(s, addr)
	}
	if e.loop == nil {
		if stream != nil {
			stream.Close()
		}
		return unix.ENOMEM
	}
	s.mu.Lock()
	switch s.state {
	case stConnecting:
		s.mu.Unlock()
		if stream != nil {
			stream.Close()
		}
		return unix.EALREADY
	case stConnected, stDone, stListening:
		// The first connect after a nonblocking one completed reports
		// its outcome, as Linux's does (the socket is still
		// SS_CONNECTING there): success, or the error of a connection
		// that has ended since.
		var errno unix.Errno = unix.EISCONN
		if s.connUnreported {
			s.connUnreported = false
			errno = 0
			if s.state == stDone {
				errno, s.soErr = s.soErr, 0
				if errno == 0 {
					errno = unix.ECONNABORTED
				}
			}
		}
		s.mu.Unlock()
		if stream != nil {
			stream.Close()
		}
		return errno
	case stFailed:
		err := s.soErr
		s.soErr = 0
		s.mu.Unlock()
		if stream != nil {
			stream.Close()
		}
		if err == 0 {
			err = unix.ECONNABORTED
		}
		return err
	}
	if !addr.IsValid() {
		// connect(AF_UNSPEC) on an unconnected stream socket is a no-op.
		s.mu.Unlock()
		if stream != nil {
			stream.Close()
		}
		return 0
	}
	fa, errno := toFull(s.family, addr, false)
	if shortForV6(s.family, addr) {
		errno = unix.EINVAL
	}
	if errno == 0 {
		errno = s.mappedOnV6Only(addr)
	}
	if errno != 0 {
		s.mu.Unlock()
		if stream != nil {
			stream.Close()
		}
		return errno
	}
	fd, errno := takeFile(stream, unix.SOCK_STREAM)
	if errno != 0 {
		s.mu.Unlock()
		return errno
	}
	if errno := e.chooseUplink(s, addr, &fa, tcp.ProtocolNumber); errno != 0 {
		s.mu.Unlock()
		unix.Close(fd)
		return errno
	}
	c := newStreamConn(s, fd)
	c.connecting = true
	c.nonblock = nonblock
	c.connDone = make(chan struct{})
	s.wq.EventRegister(&c.entry)
	if terr := s.ep.Connect(fa); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			// Immediate failure: the socket stays unconnected.
			s.wq.EventUnregister(&c.entry)
			s.mu.Unlock()
			unix.Close(fd)
			return ErrnoOf(terr)
		}
	}
	s.conn = c
	s.state = stConnecting
	if err := e.loop.register(fd, c); err != nil {
		e.log.Error("connect: register", "sock", id, "err", err)
		s.wq.EventUnregister(&c.entry)
		s.conn = nil
		s.state = stFailed
		s.mu.Unlock()
		unix.Close(fd)
		s.ep.Abort()
		return unix.ENOMEM
	}
	s.mu.Unlock()
	if nonblock {
		if addr.Addr().Unmap().IsLoopback() {
			// Linux's loopback has completed the handshake when
			// connect(2) returns: give the netstack's a moment, so
			// that an app that closes or polls right away finds the
			// connection established as on Linux (a close then
			// ends it with a FIN, not a reset in SYN-SENT).
			select {
			case <-c.connDone:
			case <-time.After(loopbackHandshakeWait):
			}
		}
		return unix.EINPROGRESS
	}
	<-c.connDone
	return c.connErr
}

func (e *Engine) connectDgram(s *sock, addr netip.AddrPort) unix.Errno {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !addr.IsValid() {
		if s.state == stConnected {
			if terr := s.ep.Disconnect(); terr != nil {
				return ErrnoOf(terr)
			}
			s.state = stInit
		}
		return 0
	}
	fa, errno := toFull(s.family, addr, true)
	if errno == 0 {
		errno = s.mappedOnV6Only(addr)
	}
	if errno != 0 {
		return errno
	}
	if errno := e.chooseUplink(s, addr, &fa, udp.ProtocolNumber); errno != 0 {
		return errno
	}
	if terr := s.ep.Connect(fa); terr != nil {
		return ErrnoOf(terr)
	}
	s.state = stConnected
	s.peer = addr
	return 0
}
