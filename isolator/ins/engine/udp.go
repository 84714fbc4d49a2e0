package engine

import (
	"context"
	"io"
	"net/netip"
	"os"
	"sync/atomic"

	"github.com/mpshim/mpshim/msgproto"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Datagram framing: a UDP socket's app fd is one end of an AF_UNIX
// SOCK_SEQPACKET socketpair (see AttachDatagram). Every message on it, in
// either direction, is one datagram: the fixed body of msgproto.Datagram
// (msgproto.DatagramSize bytes, no message header) followed by exactly
// Datagram.Len bytes of payload (docs/protocol.md, "Datagram framing").
//
// INS to app: Addr is the sender, in the socket's family (an AF_INET6
// socket sees IPv4 senders as IPv4-mapped AF_INET6 addresses), Flags is
// zero. The shim's recvfrom/recvmsg is a recvmsg on its fd with an iovec
// {framing, user buffer...} and the user's flags: MSG_PEEK, MSG_DONTWAIT,
// MSG_TRUNC and blocking work natively. The fd is readable exactly when a
// datagram waits.
//
// App to INS (the fast send path): Addr is the destination, FamilyUnspec
// for the connected peer. Errors on this path are asynchronous, like ICMP
// errors: the datagram is dropped and the error is reported once by
// SO_ERROR. Sends that need a synchronous errno (the first datagram to a
// destination) go through Engine.SendTo on the ring instead.

// maxDgram is the largest UDP payload.
const maxDgram = 65535

type dgramPump struct {
	sched
	s     *sock
	fd    int
	entry waiter.Entry
	hup   atomic.Bool
	done  bool
	// rdShut: the socket's read side was shut down and its queue
	// drained, so the INS end's write half is shut: the app's reads
	// see end-of-file.
	rdShut bool
	out    []byte // framing + payload staging in both directions, allocated on first use
}

// AttachDatagram gives a UDP socket its socketpair: f is the INS end of an
// AF_UNIX SOCK_SEQPACKET socketpair whose other end is the app's fd; the
// engine takes ownership. From then on received datagrams are delivered on
// it (framing: msgproto.Datagram) and RecvFrom returns EINVAL. A hang-up of the
// app's end ends the socket. Errors: EBADF for an unknown id, EOPNOTSUPP for
// a stream socket, EINVAL for a bad file or a second attach.
func (e *Engine) AttachDatagram(id SockID, f *os.File) unix.Errno {
	s, errno := e.lookup(id)
	if errno != 0 {
		if f != nil {
			f.Close()
		}
		return errno
	}
	if s.typ != unix.SOCK_DGRAM {
		if f != nil {
			f.Close()
		}
		return unix.EOPNOTSUPP
	}
	if e.loop == nil {
		if f != nil {
			f.Close()
		}
		return unix.ENOMEM
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dg != nil {
		if f != nil {
			f.Close()
		}
		return unix.EINVAL
	}
	fd, errno := takeFile(f, unix.SOCK_SEQPACKET)
	if errno != 0 {
		return errno
	}
	d := &dgramPump{s: s, fd: fd}
	d.entry = waiter.NewFunctionEntry(waiter.ReadableEvents|waiter.EventErr, func(waiter.EventMask) {
		e.loop.schedule(d)
	})
	s.wq.EventRegister(&d.entry)
	s.dg = d
	if err := e.loop.register(fd, d); err != nil {
		e.log.Error("attach datagram: register", "sock", id, "err", err)
		s.wq.EventUnregister(&d.entry)
		s.dg = nil
		unix.Close(fd)
		return unix.ENOMEM
	}
	return 0
}

func (d *dgramPump) fdEvent(ev uint32) {
	if ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		d.hup.Store(true)
	}
}

// bufWriter collects a datagram into a fixed buffer, counting and dropping
// what does not fit (a netstack writer must not write short without error).
type bufWriter struct {
	b []byte
	n int
}

func (w *bufWriter) Write(p []byte) (int, error) {
	w.n += copy(w.b[w.n:], p)
	return len(p), nil
}

func (d *dgramPump) run(w *worker) {
	if d.done {
		return
	}
	if checkHup(&d.hup, d.fd) {
		d.teardown()
		d.s.e.forget(d.s.id) // the last app fd is closed
		return
	}
	if d.out == nil {
		d.out = make([]byte, dgramBufSize)
	}
	e := d.s.e
	// Network to app.
	for {
		off := msgproto.DatagramSize
		ctl := d.s.wantsCtl()
		if ctl {
			off += ctlSize
		}
		bw := bufWriter{b: d.out[off : off+maxDgram]}
		res, terr := d.s.ep.Read(&bw, tcpip.ReadOptions{Peek: true, NeedRemoteAddr: true})
		if terr != nil {
			if _, ok := terr.(*tcpip.ErrClosedForReceive); ok && !d.rdShut {
				// shutdown(SHUT_RD): what was queued before it
				// is on the app's end; the rest reads as EOF.
				d.rdShut = true
				unix.Shutdown(d.fd, unix.SHUT_WR)
			}
			break
		}
		var flags uint32
		if ctl {
			flags = flagCtl
			e.putCtl(d.s, d.out[msgproto.DatagramSize:], &res.ControlMessages)
		}
		putFraming(d.out, fromFull(d.s.family, res.RemoteAddr), flags, bw.n)
		err := unix.Sendmsg(d.fd, d.out[:off+bw.n], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break // EPOLLOUT reschedules; the datagram stays queued
		}
		d.s.ep.Read(io.Discard, tcpip.ReadOptions{})
		if err != nil {
			if err == unix.EPIPE || err == unix.ECONNRESET {
				d.hup.Store(true)
				e.loop.schedule(d)
				return
			}
			continue
		}
		e.dgramsToApp.Add(1)
	}
	// App to network.
	for {
		// d.out is free again: the loop above has sent what it staged.
		n, _, rflags, _, err := unix.Recvmsg(d.fd, d.out, nil, unix.MSG_DONTWAIT)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			if n == 0 && err == nil {
				d.hup.Store(true)
				e.loop.schedule(d)
			}
			return
		}
		if rflags&unix.MSG_TRUNC != 0 {
			e.dgramsDrop.Add(1)
			d.s.setSoErr(unix.EMSGSIZE)
			continue
		}
		to, payload, errno := parseFraming(d.out[:n])
		if errno != 0 {
			e.dgramsDrop.Add(1)
			d.s.setSoErr(errno)
			continue
		}
		if _, errno := e.sendTo(d.s, w, payload, to, 0); errno != 0 {
			e.dgramsDrop.Add(1)
			d.s.setSoErr(errno)
		}
	}
}

func (s *sock) setSoErr(errno unix.Errno) {
	s.mu.Lock()
	s.soErr = errno
	s.mu.Unlock()
}

// teardown closes the socketpair end and the endpoint.
func (d *dgramPump) teardown() {
	if d.done {
		return
	}
	d.done = true
	d.s.wq.EventUnregister(&d.entry)
	d.s.e.loop.unregisterClose(d.fd)
	d.fd = -1
	d.s.ep.Close()
	d.s.mu.Lock()
	d.s.state = stDone
	d.s.attDone = true
	d.s.mu.Unlock()
}

// putFraming writes the framing of an n-byte datagram from the sender ap
// into h[:msgproto.DatagramSize] (flags: flagCtl when a control block
// follows).
func putFraming(h []byte, ap netip.AddrPort, flags uint32, n int) {
	d := msgproto.Datagram{Addr: msgproto.AddrFromNetip(ap), Flags: flags, Len: uint32(n)}
	if err := msgproto.PutDatagram(h, &d); err != nil {
		// A sender from the stack is always canonical and n <= maxDgram.
		panic(err)
	}
}

// parseFraming decodes the framing of a whole message msg from the app and
// returns the destination (the zero AddrPort for the connected peer) and
// the payload. EINVAL for a malformed framing or a payload whose length is
// not the framing's Len.
func parseFraming(msg []byte) (to netip.AddrPort, payload []byte, errno unix.Errno) {
	var d msgproto.Datagram
	if err := msgproto.GetDatagram(msg, &d); err != nil {
		return netip.AddrPort{}, nil, unix.EINVAL
	}
	payload = msg[msgproto.DatagramSize:]
	if uint64(len(payload)) != uint64(d.Len) {
		return netip.AddrPort{}, nil, unix.EINVAL
	}
	if d.Addr.Family == msgproto.FamilyUnspec {
		return netip.AddrPort{}, payload, 0
	}
	to, err := d.Addr.AddrPort()
	if err != nil {
		return netip.AddrPort{}, nil, unix.EINVAL
	}
	return to, payload, 0
}

// SendTo sends one datagram like sendto(2) on a UDP socket and returns the
// number of bytes sent. An invalid (zero) to sends to the connected peer.
// Errors as Linux: EDESTADDRREQ without a destination on an unconnected
// socket, EMSGSIZE for a payload too large, EAFNOSUPPORT for an IPv6
// destination on an AF_INET socket, EOPNOTSUPP for MSG_OOB or a stream
// socket (stream bytes go over the socketpair), ENETUNREACH/EHOSTUNREACH,
// EACCES for broadcast without SO_BROADCAST. MSG_DONTWAIT, MSG_CONFIRM,
// MSG_NOSIGNAL and MSG_DONTROUTE are accepted; MSG_MORE is not honoured
// (each call is one datagram).
func (e *Engine) SendTo(id SockID, payload []byte, to netip.AddrPort, flags int) (int, unix.Errno) {
	s, errno := e.lookup(id)
	if errno != 0 {
		return 0, errno
	}
	if s.typ != unix.SOCK_DGRAM {
		return 0, unix.EOPNOTSUPP
	}
	if flags&unix.MSG_OOB != 0 {
		return 0, unix.EOPNOTSUPP
	}
	return e.sendTo(s, nil, payload, to, flags)
}

func (e *Engine) sendTo(s *sock, w *worker, payload []byte, to netip.AddrPort, _ int) (int, unix.Errno) {
	var opts tcpip.WriteOptions
	if to.IsValid() {
		to = selfIfUnspecified(to)
		fa, errno := toFull(s.family, to, true)
		if errno != 0 {
			return 0, errno
		}
		if e.chooser != nil {
			s.mu.Lock()
			st := s.state
			s.mu.Unlock()
			if st != stConnected {
				if errno := e.chooseUplink(s, to, &fa, 17); errno != 0 {
					return 0, errno
				}
			}
		}
		opts.To = &fa
	}
	if len(payload) > maxDgram {
		return 0, unix.EMSGSIZE
	}
	var r *sliceReader
	if w != nil {
		r = &w.rd
	} else {
		r = new(sliceReader)
	}
	r.b = payload
	n, terr := s.ep.Write(r, opts)
	if terr != nil {
		return 0, ErrnoOf(terr)
	}
	e.dgramsToNet.Add(1)
	return int(n), 0
}

// RecvFrom receives one datagram like recvfrom(2) on a UDP socket without an
// attached socketpair. It returns at most maxLen bytes of payload, the
// sender, the result flags (MSG_TRUNC when the datagram was longer than
// maxLen) and the datagram's full length (what recvfrom returns with
// MSG_TRUNC). MSG_PEEK leaves the datagram queued; MSG_DONTWAIT returns
// EAGAIN when none waits; otherwise it blocks until one arrives or ctx ends
// (then EINTR, or EAGAIN if ctx's deadline passed, as SO_RCVTIMEO would).
// Errors: a pending asynchronous error is returned once first; EINVAL for a
// negative maxLen or an attached socket; EOPNOTSUPP for a stream socket
// (its bytes go over the socketpair) or MSG_OOB.
func (e *Engine) RecvFrom(ctx context.Context, id SockID, maxLen int, flags int) (payload []byte, from netip.AddrPort, rflags int, fullLen int, errno unix.Errno) {
	s, errno := e.lookup(id)
	if errno != 0 {
		return nil, netip.AddrPort{}, 0, 0, errno
	}
	if s.typ != unix.SOCK_DGRAM || flags&unix.MSG_OOB != 0 {
		return nil, netip.AddrPort{}, 0, 0, unix.EOPNOTSUPP
	}
	s.mu.Lock()
	attached := s.dg != nil
	pend := s.soErr
	s.soErr = 0
	s.mu.Unlock()
	if pend != 0 {
		return nil, netip.AddrPort{}, 0, 0, pend
	}
	if maxLen < 0 || attached {
		return nil, netip.AddrPort{}, 0, 0, unix.EINVAL
	}
	buf := make([]byte, min(maxLen, maxDgram))
	var entry waiter.Entry
	var notify chan struct{}
	for {
		bw := bufWriter{b: buf}
		res, terr := s.ep.Read(&bw, tcpip.ReadOptions{Peek: flags&unix.MSG_PEEK != 0, NeedRemoteAddr: true})
		if terr == nil {
			if notify != nil {
				s.wq.EventUnregister(&entry)
			}
			if res.Total > bw.n {
				rflags |= unix.MSG_TRUNC
			}
			return buf[:bw.n], fromFull(s.family, res.RemoteAddr), rflags, res.Total, 0
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok || flags&unix.MSG_DONTWAIT != 0 {
			if notify != nil {
				s.wq.EventUnregister(&entry)
			}
			return nil, netip.AddrPort{}, 0, 0, ErrnoOf(terr)
		}
		if notify == nil {
			entry, notify = waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventErr)
			s.wq.EventRegister(&entry)
			continue // recheck: a datagram may have arrived before registering
		}
		select {
		case <-notify:
		case <-ctx.Done():
			s.wq.EventUnregister(&entry)
			if ctx.Err() == context.DeadlineExceeded {
				return nil, netip.AddrPort{}, 0, 0, unix.EAGAIN
			}
			return nil, netip.AddrPort{}, 0, 0, unix.EINTR
		}
	}
}
