package isolator

import (
	"context"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/msgproto"
)

// movedSock is where a socket went when its bind named an address of
// another INS than the one it was made on.
type movedSock struct {
	group uint64
	sock  uint64 // the socket on the INS that owns the bound address
}

// movedTo returns the socket that sock (named by the app of group) became
// when it was moved, if it was.
func (s *AppServer) movedTo(group, sock uint64, _ msgproto.Message) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.moved[sock]
	if !ok || m.group != group {
		return 0, false
	}
	return m.sock, true
}

// forgetMoved drops the alias of a moved socket that the app closes.
func (s *AppServer) forgetMoved(group, sock uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, m := range s.moved {
		if m.sock == sock && m.group == group {
			delete(s.moved, id)
		}
	}
	if r := s.socks[sock]; r != nil && r.group == group {
		r.dropFile()
		if r.typ&0xf != unix.SOCK_STREAM {
			delete(s.socks, sock)
		}
	}
}

// placed records that sock's INS is final (it connects, sends or
// listens): the daemon's duplicate of the app's end is closed, and the
// record of a datagram socket, which never listens, is dropped.
func (s *AppServer) placed(group, sock uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.socks[sock]
	if r == nil || r.group != group {
		return
	}
	r.dropFile()
	if r.typ&0xf != unix.SOCK_STREAM {
		delete(s.socks, sock)
	}
}

// bindElsewhere serves a bind to an address that another INS than the
// socket's own has: a socket of the same kind is made on that INS on the
// app's same end, given the options set so far and bound there, and the
// first socket is closed; from then on the app's socket id names the new
// one. done is false when the bind is for the socket's own INS (or the
// wildcard, or the socket can no longer move), which then serves it.
func (s *AppServer) bindElsewhere(ctx context.Context, c *client, m *msgproto.Bind) (msgproto.Message, unix.Errno, bool) {
	ap, err := m.Addr.AddrPort()
	if err != nil || ap.Addr().Unmap().IsUnspecified() || ap.Addr().IsLoopback() {
		s.placed(c.group, m.Sock)
		return nil, 0, false
	}
	owner, ok := s.backends.Owner(ap.Addr())
	if !ok || owner.ID() == SockINS(m.Sock) {
		s.placed(c.group, m.Sock)
		return nil, 0, false
	}
	s.mu.Lock()
	r := s.socks[m.Sock]
	if r == nil || r.group != c.group || r.file == nil {
		s.mu.Unlock()
		return nil, 0, false
	}
	f := r.file
	r.file = nil
	rec := *r
	rec.opts = append([]*msgproto.Setsockopt(nil), r.opts...)
	s.mu.Unlock()

	reply, err := owner.Call(ctx, c.group, &msgproto.Socket{Domain: rec.domain, SockType: rec.typ, Protocol: rec.proto}, f)
	if err != nil {
		return nil, errnoOf(err), true
	}
	sr, ok := reply.(*msgproto.SocketReply)
	if !ok || SockINS(sr.Sock) != owner.ID() {
		if ok {
			owner.Call(ctx, c.group, &msgproto.Close{Sock: sr.Sock})
			return nil, unix.EIO, true
		}
		return reply, 0, true
	}
	undo := func() { owner.Call(ctx, c.group, &msgproto.Close{Sock: sr.Sock}) }
	for _, o := range rec.opts {
		if _, err := owner.Call(ctx, c.group, &msgproto.Setsockopt{Sock: sr.Sock, Level: o.Level, Name: o.Name, Value: o.Value}); err != nil {
			undo()
			return nil, errnoOf(err), true
		}
	}
	reply, err = owner.Call(ctx, c.group, &msgproto.Bind{Sock: sr.Sock, Addr: m.Addr})
	if err != nil {
		undo()
		return nil, errnoOf(err), true
	}
	if !succeeded(reply) {
		undo()
		return reply, 0, true
	}
	// The first socket goes: its INS closes its copy of the app's end.
	if old, ok := s.backends.Get(SockINS(m.Sock)); ok {
		if _, err := old.Call(ctx, c.group, &msgproto.Close{Sock: m.Sock}); err != nil {
			c.log.Debug("app: closing a moved socket", "sock", m.Sock, "err", err)
		}
	}
	s.mu.Lock()
	delete(s.socks, m.Sock)
	if rec.typ&0xf == unix.SOCK_STREAM {
		nr := rec
		nr.file, nr.bound = nil, m.Addr
		s.socks[sr.Sock] = &nr
	}
	s.moved[m.Sock] = movedSock{group: c.group, sock: sr.Sock}
	s.mu.Unlock()
	c.log.Debug("app: socket moved to the INS of its bound address", "sock", m.Sock, "to", sr.Sock, "addr", addrString(m.Addr))
	return reply, 0, true
}
