package isolator

import (
	"context"
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/msgproto"
)

// maxRecordedOpts bounds the socket options recorded per socket for
// listener replication.
const maxRecordedOpts = 32

// sockRec is what the daemon remembers of a socket that may still become a
// listener: enough to re-create it in another INS.
type sockRec struct {
	group  uint64
	domain int32
	typ    int32
	proto  int32
	bound  msgproto.Addr
	opts   []*msgproto.Setsockopt
	// file is the daemon's duplicate of the app's end of the socket until
	// the socket is placed for good (see place): with it, a bind to an
	// address of another INS moves the socket there.
	file *os.File
}

// dropFile closes r's duplicate of the app's end.
func (r *sockRec) dropFile() {
	if r.file != nil {
		r.file.Close()
		r.file = nil
	}
}

// recordable reports whether an option of level is replayed into replicas.
func recordable(level int32) bool {
	switch level {
	case unix.SOL_SOCKET, unix.IPPROTO_IP, unix.IPPROTO_IPV6, unix.IPPROTO_TCP, unix.IPPROTO_UDP:
		return true
	}
	return false
}

// sockOf returns the socket a request names, if it names one.
func sockOf(m msgproto.Message) (uint64, bool) {
	switch m := m.(type) {
	case *msgproto.Bind:
		return m.Sock, true
	case *msgproto.Listen:
		return m.Sock, true
	case *msgproto.Connect:
		return m.Sock, true
	case *msgproto.Shutdown:
		return m.Sock, true
	case *msgproto.Close:
		return m.Sock, true
	case *msgproto.Setsockopt:
		return m.Sock, true
	case *msgproto.Getsockopt:
		return m.Sock, true
	case *msgproto.Getsockname:
		return m.Sock, true
	case *msgproto.Getpeername:
		return m.Sock, true
	case *msgproto.Ioctl:
		return m.Sock, true
	case *msgproto.SendTo:
		return m.Sock, true
	case *msgproto.RecvFrom:
		return m.Sock, true
	case *msgproto.SendMsg:
		return m.Sock, true
	case *msgproto.RecvMsg:
		return m.Sock, true
	}
	return 0, false
}

// setSock rewrites the socket a request names (to a listener replica, or
// to the socket a moved one became).
func setSock(m msgproto.Message, sock uint64) {
	switch m := m.(type) {
	case *msgproto.Bind:
		m.Sock = sock
	case *msgproto.Connect:
		m.Sock = sock
	case *msgproto.Close:
		m.Sock = sock
	case *msgproto.Getpeername:
		m.Sock = sock
	case *msgproto.SendTo:
		m.Sock = sock
	case *msgproto.RecvFrom:
		m.Sock = sock
	case *msgproto.SendMsg:
		m.Sock = sock
	case *msgproto.RecvMsg:
		m.Sock = sock
	case *msgproto.Getsockname:
		m.Sock = sock
	case *msgproto.Getsockopt:
		m.Sock = sock
	case *msgproto.Setsockopt:
		m.Sock = sock
	case *msgproto.Shutdown:
		m.Sock = sock
	case *msgproto.Ioctl:
		m.Sock = sock
	case *msgproto.Listen:
		m.Sock = sock
	}
}

// errnoOf maps an error of Backend.Call to the errno the app sees. An INS
// that died during the call looks like a connection reset.
func errnoOf(err error) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) && e > 0 && e <= msgproto.MaxErrno {
		return e
	}
	return unix.ECONNRESET
}

// vanished answers a call on a socket whose INS is gone. The kernel never
// loses a socket; the closest it has is a connection reset by the peer:
// SO_ERROR reads ECONNRESET, getpeername and shutdown say ENOTCONN and
// every other call fails with ECONNRESET. (The app's descriptor itself sees
// the hang-up of the INS end: EOF on read, EPIPE on write.)
func vanished(m msgproto.Message) (msgproto.Message, unix.Errno) {
	switch m := m.(type) {
	case *msgproto.Getpeername, *msgproto.Shutdown:
		return nil, unix.ENOTCONN
	case *msgproto.Getsockopt:
		if m.Level == unix.SOL_SOCKET && m.Name == unix.SO_ERROR && m.MaxLen >= 4 {
			v := uint32(unix.ECONNRESET)
			return &msgproto.OptReply{Value: []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}}, 0
		}
	}
	return nil, unix.ECONNRESET
}

// dispatch serves one decoded request of client c; files (ownership passes)
// are the descriptors that came with it. It returns the reply or an errno.
func (s *AppServer) dispatch(ctx context.Context, c *client, m msgproto.Message, files []*os.File) (msgproto.Message, unix.Errno) {
	if s.backends == nil {
		closeFiles(files)
		return nil, unix.ENETDOWN
	}
	switch m := m.(type) {
	case *msgproto.Socket:
		return s.socket(ctx, c, m, files)
	case *msgproto.Resolve:
		closeFiles(files)
		return s.resolve(ctx, c, m)
	}
	sock, ok := sockOf(m)
	if !ok {
		closeFiles(files)
		return nil, unix.EPROTO // not a request
	}
	if moved, ok := s.movedTo(c.group, sock, m); ok {
		sock = moved
		setSock(m, sock)
	}
	if SockINS(sock) == SplitINS {
		closeFiles(files)
		return s.splitCall(c, sock, m)
	}
	if cm, ok := m.(*msgproto.Connect); ok {
		if reply, errno, ok := s.splitConnect(ctx, c, sock, cm); ok {
			closeFiles(files)
			return reply, errno
		}
	}
	// The first bind, connect or send places the socket for good: on the
	// INS that owns the address it names, if one does (see moveFor). A
	// socket bound to the wildcard stays where it is: its first send may
	// be a reply to a peer on another INS.
	var to *msgproto.Addr
	switch m := m.(type) {
	case *msgproto.Bind:
		to = &m.Addr
	case *msgproto.Connect:
		to = &m.Addr
	case *msgproto.SendTo:
		to = &m.Addr
	case *msgproto.SendMsg:
		to = &m.Addr
	}
	if to != nil {
		if moved, ok := s.moveFor(ctx, c, sock, *to); ok {
			sock = moved
			setSock(m, sock)
		}
		s.placed(c.group, sock)
	}
	switch m := m.(type) {
	case *msgproto.Listen:
		s.placed(c.group, sock)
		if len(files) > 0 {
			return s.listen(ctx, c, m, files)
		}
	case *msgproto.Close:
		s.forgetMoved(c.group, sock)
	}
	reply, errno := s.forward(ctx, c.group, sock, m, files)
	if errno != 0 || !succeeded(reply) {
		return reply, errno
	}
	switch m := m.(type) {
	case *msgproto.Bind:
		s.mu.Lock()
		if r := s.socks[sock]; r != nil && r.group == c.group {
			r.bound = m.Addr
		}
		s.mu.Unlock()
	case *msgproto.Setsockopt:
		if recordable(m.Level) {
			s.recordOpt(ctx, c.group, m)
		}
		s.kernelFollow(c, sock, m)
	case *msgproto.Connect:
		s.mu.Lock()
		if r := s.socks[sock]; r != nil && r.group == c.group {
			r.dropFile()
			delete(s.socks, sock) // a connected socket never listens
		}
		s.mu.Unlock()
	case *msgproto.Shutdown, *msgproto.Listen:
		s.toReplicas(ctx, c.group, sock, m)
		s.kernelFollow(c, sock, m)
	}
	return reply, 0
}

// succeeded reports whether an INS reply is a success.
func succeeded(m msgproto.Message) bool {
	if r, ok := m.(*msgproto.Reply); ok {
		return r.Errno == 0
	}
	return m != nil
}

// forward sends m to the INS that serves sock. A listener whose own INS is
// gone is served by one of its replicas.
func (s *AppServer) forward(ctx context.Context, group, sock uint64, m msgproto.Message, files []*os.File) (msgproto.Message, unix.Errno) {
	b, ok := s.backends.Get(SockINS(sock))
	if !ok {
		if rb, rsock, rok := s.replicaOf(sock); rok {
			b, ok = rb, true
			setSock(m, rsock)
		}
	}
	if !ok {
		closeFiles(files)
		return vanished(m)
	}
	reply, err := b.Call(ctx, group, m, files...)
	if err != nil {
		return nil, errnoOf(err)
	}
	if reply == nil {
		return nil, unix.EIO
	}
	return reply, 0
}

// socket places a new socket on the INS Backends.Pick chooses. The daemon
// keeps a duplicate of the app's end until the socket's first bind,
// connect, listen or send, so that a bind to an address of another INS can
// move it there.
func (s *AppServer) socket(ctx context.Context, c *client, m *msgproto.Socket, files []*os.File) (msgproto.Message, unix.Errno) {
	var dup *os.File
	if len(files) == 1 {
		dup, _ = dupFile(files[0]) // without it the socket just stays where it is
	}
	fail := func(reply msgproto.Message, errno unix.Errno) (msgproto.Message, unix.Errno) {
		if dup != nil {
			dup.Close()
		}
		return reply, errno
	}
	b, err := s.backends.Pick()
	if err != nil {
		closeFiles(files)
		c.log.Warn("app: no INS for a new socket", "err", err)
		var e unix.Errno
		if errors.As(err, &e) && e > 0 && e <= msgproto.MaxErrno {
			return fail(nil, e)
		}
		return fail(nil, unix.ENOBUFS)
	}
	reply, err := b.Call(ctx, c.group, m, files...)
	if err != nil {
		return fail(nil, errnoOf(err))
	}
	sr, ok := reply.(*msgproto.SocketReply)
	if !ok {
		if reply == nil {
			return fail(nil, unix.EIO)
		}
		return fail(reply, 0)
	}
	if SockINS(sr.Sock) != b.ID() {
		c.log.Warn("app: INS answered a socket id of another INS", "ins", b.ID(), "sock", sr.Sock)
		return fail(nil, unix.EIO)
	}
	s.mu.Lock()
	s.socks[sr.Sock] = &sockRec{group: c.group, domain: m.Domain, typ: m.SockType, proto: m.Protocol, file: dup}
	s.mu.Unlock()
	return sr, 0
}

// recordOpt remembers a successful setsockopt for replication and applies
// it to the replicas of a listener.
func (s *AppServer) recordOpt(ctx context.Context, group uint64, m *msgproto.Setsockopt) {
	s.mu.Lock()
	if r := s.socks[m.Sock]; r != nil && r.group == group {
		cp := &msgproto.Setsockopt{Sock: m.Sock, Level: m.Level, Name: m.Name, Value: append([]byte(nil), m.Value...)}
		replaced := false
		for i, o := range r.opts {
			if o.Level == m.Level && o.Name == m.Name {
				r.opts[i], replaced = cp, true
				break
			}
		}
		if !replaced && len(r.opts) < maxRecordedOpts {
			r.opts = append(r.opts, cp)
		}
	}
	s.mu.Unlock()
	s.toReplicas(ctx, group, m.Sock, m)
}
