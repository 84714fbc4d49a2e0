package engine

import (
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// MaxBacklog is Linux's default net.core.somaxconn; larger backlogs are
// clamped to it like listen(2) does.
const MaxBacklog = 4096

// listener delivers the connections a listening endpoint accepts to the app's
// SOCK_SEQPACKET end, one message per connection, no faster than the app
// takes them: when the seqpacket end is full the listener stops accepting
// from the netstack, so the netstack backlog applies.
type listener struct {
	sched
	s     *sock
	fd    int
	entry waiter.Entry
	hup   atomic.Bool

	pending *pendingAccept // accepted but not yet delivered
	done    bool
}

type pendingAccept struct {
	child *sock
	appFd int
	insFd int
	msg   []byte
}

// Listen makes a stream socket listen like listen(2) and delivers its
// connections over seqpacket, the INS end of an AF_UNIX SOCK_SEQPACKET
// socketpair whose other end is the app's listening fd. The engine takes
// ownership of seqpacket.
//
// Each accepted connection arrives as one message whose bytes are
// Options.EncodeAccept(listener, sock, local, peer) and which carries,
// via SCM_RIGHTS, exactly one descriptor: the app end of a new AF_UNIX
// SOCK_STREAM socketpair (blocking, no close-on-exec; the shim applies the
// accept4 flags). sock is the accepted connection's own SockID. The engine
// pumps the other end. The listener fd is readable exactly when a connection
// waits; accept is a recvmsg. Up to net.unix.max_dgram_qlen+1 connections
// can wait in the seqpacket queue, then the netstack backlog fills.
//
// Errors: EOPNOTSUPP for a datagram socket, EINVAL for a connected socket or
// a seqpacket that is not an AF_UNIX SOCK_SEQPACKET socket. Listen on a
// listening socket updates the backlog and closes the new seqpacket. The
// caller replicates a listener into several INS by calling Listen on each
// engine with its own seqpacket.
// Relisten is listen(2) again on listener id: it sets the backlog. On a
// socket that does not listen it fails with EINVAL, as a first listen
// without the SEQPACKET end would.
func (e *Engine) Relisten(id SockID, backlog int) unix.Errno {
	s, errno := e.lookup(id)
	if errno != 0 {
		return errno
	}
	s.mu.Lock()
	listening := s.state == stListening
	s.mu.Unlock()
	if !listening {
		return unix.EINVAL
	}
	return e.Listen(id, backlog, nil)
}

func (e *Engine) Listen(id SockID, backlog int, seqpacket *os.File) unix.Errno {
	s, errno := e.lookup(id)
	if errno != 0 {
		if seqpacket != nil {
			seqpacket.Close()
		}
		return errno
	}
	if s.typ != unix.SOCK_STREAM {
		if seqpacket != nil {
			seqpacket.Close()
		}
		return unix.EOPNOTSUPP
	}
	asked := backlog
	backlog = e.netBacklog(backlog)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backlog = asked
	switch s.state {
	case stListening:
		if seqpacket != nil {
			seqpacket.Close()
		}
		return ErrnoOf(s.ep.Listen(backlog))
	case stInit:
	default:
		if seqpacket != nil {
			seqpacket.Close()
		}
		return unix.EINVAL
	}
	if e.loop == nil {
		if seqpacket != nil {
			seqpacket.Close()
		}
		return unix.ENOMEM
	}
	fd, errno := takeFile(seqpacket, unix.SOCK_SEQPACKET)
	if errno != 0 {
		return errno
	}
	// The smallest send buffer keeps the queue of delivered but not yet
	// accepted connections short (a few messages), so that the netstack's
	// backlog is what limits pending connections.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1)
	if terr := s.ep.Listen(backlog); terr != nil {
		unix.Close(fd)
		return ErrnoOf(terr)
	}
	l := &listener{s: s, fd: fd}
	l.entry = waiter.NewFunctionEntry(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr, func(waiter.EventMask) {
		e.loop.schedule(l)
	})
	s.wq.EventRegister(&l.entry)
	s.lis = l
	s.state = stListening
	if err := e.loop.register(fd, l); err != nil {
		e.log.Error("listen: register", "sock", id, "err", err)
		s.wq.EventUnregister(&l.entry)
		s.lis = nil
		s.state = stInit
		unix.Close(fd)
		return unix.ENOMEM
	}
	return 0
}

func (l *listener) fdEvent(ev uint32) {
	if ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.hup.Store(true)
	}
}

func (l *listener) run(*worker) {
	if l.done {
		return
	}
	if checkHup(&l.hup, l.fd) {
		// Every app copy of the listening fd is closed.
		l.teardown()
		l.s.attachmentDone()
		return
	}
	e := l.s.e
	for {
		if l.pending == nil {
			var peer tcpip.FullAddress
			nep, nwq, terr := l.s.ep.Accept(&peer)
			if terr != nil {
				return // ErrWouldBlock: the waiter entry reschedules
			}
			child := &sock{family: l.s.family, typ: unix.SOCK_STREAM, proto: unix.IPPROTO_TCP, ep: nep, wq: nwq, state: stConnected}
			child.peer = fromFull(l.s.family, peer)
			l.s.mu.Lock()
			child.o = l.s.o.inherited()
			l.s.mu.Unlock()
			if !e.admit(child) {
				// Over max-conn-per-src: the peer gets a reset.
				nep.Abort()
				continue
			}
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				e.log.Warn("accept: socketpair", "err", err)
				e.unadmit(child)
				nep.Abort()
				continue
			}
			if err := unix.SetNonblock(fds[1], true); err != nil {
				unix.Close(fds[0])
				unix.Close(fds[1])
				e.unadmit(child)
				nep.Abort()
				continue
			}
			id := e.insert(child)
			local, _ := nep.GetLocalAddress()
			msg := e.opts.EncodeAccept(l.s.id, id, fromFull(l.s.family, local), child.peer)
			l.pending = &pendingAccept{child: child, appFd: fds[0], insFd: fds[1], msg: msg}
		}
		p := l.pending
		err := unix.Sendmsg(l.fd, p.msg, unix.UnixRights(p.appFd), nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return // EPOLLOUT reschedules
		}
		l.pending = nil
		unix.Close(p.appFd)
		if err != nil {
			// EPIPE/ECONNRESET: the app end is gone; anything else
			// (EMSGSIZE from a bad encoder) loses this connection.
			e.log.Warn("accept: deliver", "listener", l.s.id, "err", err)
			unix.Close(p.insFd)
			p.child.ep.Abort()
			e.forget(p.child.id)
			if err == unix.EPIPE || err == unix.ECONNRESET {
				l.hup.Store(true)
				e.loop.schedule(l)
				return
			}
			continue
		}
		e.accepted.Add(1)
		c := newStreamConn(p.child, p.insFd)
		p.child.mu.Lock()
		p.child.conn = c
		p.child.mu.Unlock()
		if err := c.start(); err != nil {
			e.log.Error("accept: register", "err", err)
			unix.Close(p.insFd)
			p.child.ep.Abort()
			e.forget(p.child.id)
		}
	}
}

// teardown stops listening, closes the seqpacket end and drops a connection
// accepted but not delivered.
func (l *listener) teardown() {
	if l.done {
		return
	}
	l.done = true
	l.s.wq.EventUnregister(&l.entry)
	l.s.e.loop.unregisterClose(l.fd)
	l.fd = -1
	if p := l.pending; p != nil {
		l.pending = nil
		unix.Close(p.appFd)
		unix.Close(p.insFd)
		p.child.ep.Abort()
		l.s.e.forget(p.child.id)
	}
	l.s.ep.Close()
	l.s.mu.Lock()
	l.s.state = stDone
	l.s.mu.Unlock()
}
