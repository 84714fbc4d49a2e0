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

// moveFor moves socket sock of c's group to the INS that owns address a
// (the address it binds, or the destination of its first connect or
// send), if that is another INS than the one it was made on and the socket
// has not been placed for good yet: a socket of the same kind is made there
// on the app's same end and given the options set so far, the first socket
// is closed, and from then on the app's socket id names the new one, which
// moveFor returns. Packets between two INS's addresses never cross the
// uplink (the INS macvlans are in private mode): a connection to an address
// of another INS is made inside that INS instead, delivered locally.
func (s *AppServer) moveFor(ctx context.Context, c *client, sock uint64, addr msgproto.Addr) (uint64, bool) {
	ap, err := addr.AddrPort()
	if err != nil || ap.Addr().Unmap().IsUnspecified() || ap.Addr().Unmap().IsLoopback() {
		return 0, false
	}
	owner, ok := s.backends.Owner(ap.Addr())
	if !ok || owner.ID() == SockINS(sock) {
		return 0, false
	}
	s.mu.Lock()
	r := s.socks[sock]
	if r == nil || r.group != c.group || r.file == nil {
		s.mu.Unlock()
		return 0, false
	}
	f := r.file
	r.file = nil
	rec := *r
	rec.opts = append([]*msgproto.Setsockopt(nil), r.opts...)
	s.mu.Unlock()

	reply, err := owner.Call(ctx, c.group, &msgproto.Socket{Domain: rec.domain, SockType: rec.typ, Protocol: rec.proto}, f)
	sr, ok := reply.(*msgproto.SocketReply)
	if err != nil || !ok || SockINS(sr.Sock) != owner.ID() {
		if ok {
			owner.Call(ctx, c.group, &msgproto.Close{Sock: sr.Sock})
		}
		c.log.Debug("app: socket not moved to the INS of its address", "sock", sock, "addr", addrString(addr), "err", err)
		return 0, false // it stays, and the call fails or succeeds there
	}
	for _, o := range rec.opts {
		if _, err := owner.Call(ctx, c.group, &msgproto.Setsockopt{Sock: sr.Sock, Level: o.Level, Name: o.Name, Value: o.Value}); err != nil {
			c.log.Debug("app: replaying an option on a moved socket", "sock", sr.Sock, "err", err)
		}
	}
	// The first socket goes: its INS closes its copy of the app's end.
	if old, ok := s.backends.Get(SockINS(sock)); ok {
		if _, err := old.Call(ctx, c.group, &msgproto.Close{Sock: sock}); err != nil {
			c.log.Debug("app: closing a moved socket", "sock", sock, "err", err)
		}
	}
	s.mu.Lock()
	delete(s.socks, sock)
	if rec.typ&0xf == unix.SOCK_STREAM {
		nr := rec
		nr.file = nil
		s.socks[sr.Sock] = &nr
	}
	s.moved[sock] = movedSock{group: c.group, sock: sr.Sock}
	s.mu.Unlock()
	c.log.Debug("app: socket moved to the INS of its address", "sock", sock, "to", sr.Sock, "addr", addrString(addr))
	return sr.Sock, true
}
