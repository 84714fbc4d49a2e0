package ins

import (
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// DgramHeaderSize is the size of the header in front of every datagram on a
// datagram socket's socketpair.
//
// A UDP socket's app fd is one end of an AF_UNIX SOCK_SEQPACKET socketpair
// (see AttachDatagram). Every message on it, in either direction, is one
// datagram: a 32-byte header followed by the payload. Header, host byte
// order:
//
//	0  u16 family: AF_INET, AF_INET6, or 0 for "no address"
//	2  u16 port
//	4  u32 flags (reserved, zero)
//	8  [16]byte address (IPv4 in the first 4 bytes, rest zero)
//	24 u32 IPv6 scope id
//	28 u32 reserved, zero
//
// INS to app: the address is the sender, in the socket's family (an AF_INET6
// socket sees IPv4 senders as IPv4-mapped AF_INET6 addresses). The shim's
// recvfrom/recvmsg is a recvmsg on its fd with an iovec {header, user
// buffer...} and the user's flags: MSG_PEEK, MSG_DONTWAIT, MSG_TRUNC and
// blocking work natively; the shim subtracts 32 from the length (with
// MSG_TRUNC the kernel returns the full message length) and converts the
// header to a sockaddr. The fd is readable exactly when a datagram waits.
//
// App to INS (the fast send path): a message is header + payload; family 0
// sends to the connected peer. Errors on this path are asynchronous, like
// ICMP errors: they are reported once by SO_ERROR and the datagram is
// dropped. Sends that need a synchronous errno (an unconnected socket whose
// destination the shim has not validated, or the first send after an error)
// go through Engine.SendTo on the ring instead.
const DgramHeaderSize = 32

// maxDgram is the largest UDP payload.
const maxDgram = 65535

type dgramPump struct {
	sched
	s     *sock
	fd    int
	entry waiter.Entry
	hup   atomic.Bool
	done  bool
	out   []byte // header + payload staging, allocated on first use
}

// AttachDatagram gives a UDP socket its socketpair: f is the INS end of an
// AF_UNIX SOCK_SEQPACKET socketpair whose other end is the app's fd; the
// engine takes ownership. From then on received datagrams are delivered on
// it (framing: DgramHeaderSize) and RecvFrom returns EINVAL. A hang-up of the
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
		d.out = make([]byte, DgramHeaderSize+maxDgram)
	}
	e := d.s.e
	// Network to app.
	for {
		bw := bufWriter{b: d.out[DgramHeaderSize:]}
		res, terr := d.s.ep.Read(&bw, tcpip.ReadOptions{Peek: true, NeedRemoteAddr: true})
		if terr != nil {
			break
		}
		putHeader(d.out[:DgramHeaderSize], fromFull(d.s.family, res.RemoteAddr))
		err := unix.Sendmsg(d.fd, d.out[:DgramHeaderSize+bw.n], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
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
		n, _, rflags, _, err := unix.Recvmsg(d.fd, w.buf, nil, unix.MSG_DONTWAIT)
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
		if n < DgramHeaderSize || rflags&unix.MSG_TRUNC != 0 {
			e.dgramsDrop.Add(1)
			d.s.setSoErr(unix.EMSGSIZE)
			continue
		}
		to, ok := parseHeader(w.buf[:DgramHeaderSize])
		if !ok {
			e.dgramsDrop.Add(1)
			d.s.setSoErr(unix.EINVAL)
			continue
		}
		if _, errno := e.sendTo(d.s, w, w.buf[DgramHeaderSize:n], to, 0); errno != 0 {
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

func putHeader(h []byte, ap netip.AddrPort) {
	clear(h)
	a := ap.Addr()
	switch {
	case a.Is4():
		binary.NativeEndian.PutUint16(h[0:], unix.AF_INET)
		a4 := a.As4()
		copy(h[8:], a4[:])
	case a.Is6():
		binary.NativeEndian.PutUint16(h[0:], unix.AF_INET6)
		a16 := a.As16()
		copy(h[8:], a16[:])
	default:
		return
	}
	binary.NativeEndian.PutUint16(h[2:], ap.Port())
}

// parseHeader decodes a datagram header from the app; family 0 yields the
// zero AddrPort (send to the connected peer).
func parseHeader(h []byte) (netip.AddrPort, bool) {
	port := binary.NativeEndian.Uint16(h[2:])
	switch binary.NativeEndian.Uint16(h[0:]) {
	case 0:
		return netip.AddrPort{}, true
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(h[8:12])), port), true
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(h[8:24])), port), true
	}
	return netip.AddrPort{}, false
}

// EncodeDgramHeader writes the 32-byte datagram header for addr into h
// (len(h) >= DgramHeaderSize); the zero AddrPort encodes "no address".
func EncodeDgramHeader(h []byte, addr netip.AddrPort) { putHeader(h[:DgramHeaderSize], addr) }

// DecodeDgramHeader parses a datagram header; ok is false for a short header
// or an unknown family.
func DecodeDgramHeader(h []byte) (addr netip.AddrPort, ok bool) {
	if len(h) < DgramHeaderSize {
		return netip.AddrPort{}, false
	}
	return parseHeader(h)
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
