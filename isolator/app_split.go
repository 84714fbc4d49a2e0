package isolator

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/split/gateway"
	"github.com/mpshim/mpshim/msgproto"
)

// SplitINS is the INS id in the socket ids of connections carried by the
// split tunnel: such a socket lives in no INS but in the split gateway
// (see splitConnect); the daemon answers its calls itself.
const SplitINS = 1<<16 - 1

// maxSplitOpts bounds the options remembered per carried socket.
const maxSplitOpts = 16

// splitRoutes is where connections of apps under the shim go to be carried
// through a peer: the prefixes of the `split:` routes without a listener
// and the split gateway's hand-off socket.
type splitRoutes struct {
	prefixes []netip.Prefix // longest first
	handoff  string
}

// covers reports whether connections to a go through the tunnel.
func (r *splitRoutes) covers(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range r.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Split-carried socket states.
const (
	splitConnecting = iota
	splitConnected
	splitFailed
	splitOver // both directions ended; the gateway let go of the stream end
)

// splitSock is the daemon's record of a socket carried by the split
// tunnel: what getpeername, getsockopt and a repeated connect answer.
type splitSock struct {
	group  uint64
	domain int32
	dst    netip.AddrPort // as the app named it
	state  int
	soErr  unix.Errno // reported once by SO_ERROR after a nonblocking connect failed
	opts   map[[2]int32][]byte
}

// SetSplit makes connections of apps under the shim to destinations inside
// prefixes go through the split gateway that serves handoff (nil prefixes:
// none do).
func (s *AppServer) SetSplit(prefixes []netip.Prefix, handoff string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(prefixes) == 0 {
		s.split = nil
		return
	}
	ps := append([]netip.Prefix(nil), prefixes...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Bits() > ps[j].Bits() })
	s.split = &splitRoutes{prefixes: ps, handoff: handoff}
	if s.splitSocks == nil {
		s.splitSocks = map[uint64]*splitSock{}
	}
}

// splitConnect carries a connect to a destination of a split route: the
// socket (a stream socket that was neither bound nor connected, whose
// stream end the daemon still holds) leaves its INS, its stream end goes
// to the split gateway, which opens a yamux stream through the peer, and
// from then on the app's socket id names a split socket answered by
// splitCall. It reports false when the connect is not one to carry.
func (s *AppServer) splitConnect(ctx context.Context, c *client, sock uint64, m *msgproto.Connect) (msgproto.Message, unix.Errno, bool) {
	ap, err := m.Addr.AddrPort()
	if err != nil {
		return nil, 0, false
	}
	s.mu.Lock()
	routes := s.split
	r := s.socks[sock]
	if routes == nil || !routes.covers(ap.Addr()) || r == nil || r.group != c.group || r.file == nil || r.typ&0xf != unix.SOCK_STREAM {
		s.mu.Unlock()
		return nil, 0, false
	}
	f := r.file
	r.file = nil
	delete(s.socks, sock)
	s.nextSplit++
	id := SockID(SplitINS, s.nextSplit)
	s.splitSocks[id] = &splitSock{group: c.group, domain: r.domain, dst: ap, opts: map[[2]int32][]byte{}}
	for _, o := range r.opts {
		if len(s.splitSocks[id].opts) < maxSplitOpts {
			s.splitSocks[id].opts[[2]int32{o.Level, o.Name}] = o.Value
		}
	}
	s.moved[sock] = movedSock{group: c.group, sock: id}
	s.mu.Unlock()
	// The INS the socket was made on lets go of it (it closes its copy of
	// the stream end; the gateway gets the daemon's).
	if old, ok := s.backends.Get(SockINS(sock)); ok {
		if _, err := old.Call(ctx, c.group, &msgproto.Close{Sock: sock}); err != nil {
			c.log.Debug("app: closing a socket carried by the split tunnel", "sock", sock, "err", err)
		}
	}
	c.log.Debug("app: connect carried by the split tunnel", "sock", sock, "split", id, "dst", ap)
	nonblock := m.Flags&msgproto.ConnectNonblock != 0
	result := make(chan unix.Errno, 1)
	go func() {
		errno, over := gateway.Handoff(s.baseCtx, routes.handoff, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), int(m.Filler), f, func() {
			s.setSplitState(id, splitConnected, 0)
		})
		if errno != 0 {
			// A blocking connect reports its error itself; a
			// nonblocking one through SO_ERROR, once.
			soErr := errno
			if !nonblock {
				soErr = 0
			}
			s.setSplitState(id, splitFailed, soErr)
		}
		result <- errno
		if over != nil {
			<-over
			s.setSplitState(id, splitOver, 0)
		}
	}()
	if nonblock {
		return &msgproto.Reply{Errno: int32(unix.EINPROGRESS)}, 0, true
	}
	return &msgproto.Reply{Errno: int32(<-result)}, 0, true
}

// setSplitState records the progress of split socket id.
func (s *AppServer) setSplitState(id uint64, state int, errno unix.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.splitSocks[id]
	if ss == nil {
		return
	}
	ss.state = state
	if state == splitFailed {
		ss.soErr = errno
	}
}

// splitCall answers a call on a socket carried by the split tunnel as the
// kernel would for a TCP socket in the same state.
func (s *AppServer) splitCall(c *client, id uint64, m msgproto.Message) (msgproto.Message, unix.Errno) {
	s.mu.Lock()
	ss := s.splitSocks[id]
	if ss == nil || ss.group != c.group {
		s.mu.Unlock()
		if _, ok := m.(*msgproto.Close); ok {
			s.forgetMoved(c.group, id)
			return &msgproto.Reply{}, 0
		}
		return vanished(m)
	}
	connected := ss.state == splitConnected || ss.state == splitOver
	reply := func(e unix.Errno) (msgproto.Message, unix.Errno) {
		return &msgproto.Reply{Errno: int32(e)}, 0
	}
	switch m := m.(type) {
	case *msgproto.Connect:
		defer s.mu.Unlock()
		switch ss.state {
		case splitConnecting:
			return reply(unix.EALREADY)
		case splitFailed:
			e := ss.soErr
			ss.soErr = 0
			if e == 0 {
				e = unix.ECONNABORTED
			}
			return reply(e)
		}
		return reply(unix.EISCONN)
	case *msgproto.Getpeername:
		defer s.mu.Unlock()
		if !connected {
			return nil, unix.ENOTCONN
		}
		return &msgproto.AddrReply{Addr: msgproto.AddrFromNetip(ss.dst)}, 0
	case *msgproto.Getsockname:
		defer s.mu.Unlock()
		// The connection's own address is the peer's, on the far site;
		// here it has none.
		any := netip.IPv4Unspecified()
		if ss.domain == unix.AF_INET6 {
			any = netip.IPv6Unspecified()
		}
		return &msgproto.AddrReply{Addr: msgproto.AddrFromNetip(netip.AddrPortFrom(any, 0))}, 0
	case *msgproto.Getsockopt:
		defer s.mu.Unlock()
		return ss.getsockopt(m)
	case *msgproto.Setsockopt:
		defer s.mu.Unlock()
		if _, ok := ss.opts[[2]int32{m.Level, m.Name}]; ok || len(ss.opts) < maxSplitOpts {
			ss.opts[[2]int32{m.Level, m.Name}] = append([]byte(nil), m.Value...)
		}
		return reply(0)
	case *msgproto.Shutdown:
		defer s.mu.Unlock()
		if !connected {
			return nil, unix.ENOTCONN
		}
		// The shim shuts its own end after this; the gateway passes the
		// end of stream on.
		return reply(0)
	case *msgproto.Close:
		delete(s.splitSocks, id)
		s.mu.Unlock()
		s.forgetMoved(c.group, id)
		return reply(0)
	case *msgproto.Bind, *msgproto.Listen:
		s.mu.Unlock()
		return reply(unix.EINVAL)
	case *msgproto.SendTo, *msgproto.SendMsg:
		s.mu.Unlock()
		return reply(unix.EISCONN)
	default:
		s.mu.Unlock()
		return reply(unix.EOPNOTSUPP)
	}
}

// getsockopt answers the options of a carried socket: its type, family,
// protocol and pending error, and the values the app set.
func (ss *splitSock) getsockopt(m *msgproto.Getsockopt) (msgproto.Message, unix.Errno) {
	val := func(v int32) (msgproto.Message, unix.Errno) {
		if m.MaxLen < 4 {
			return nil, unix.EINVAL
		}
		return &msgproto.OptReply{Value: binary.LittleEndian.AppendUint32(nil, uint32(v))}, 0
	}
	if m.Level == unix.SOL_SOCKET {
		switch m.Name {
		case unix.SO_ERROR:
			e := ss.soErr
			ss.soErr = 0
			return val(int32(e))
		case unix.SO_TYPE:
			return val(unix.SOCK_STREAM)
		case unix.SO_DOMAIN:
			return val(ss.domain)
		case unix.SO_PROTOCOL:
			return val(unix.IPPROTO_TCP)
		case unix.SO_ACCEPTCONN:
			return val(0)
		}
	}
	if v, ok := ss.opts[[2]int32{m.Level, m.Name}]; ok {
		return &msgproto.OptReply{Value: v[:min(len(v), int(m.MaxLen))]}, 0
	}
	return nil, unix.ENOPROTOOPT
}

// releaseSplitLocked forgets the carried sockets of a released group.
func (s *AppServer) releaseSplitLocked(group uint64) {
	for id, ss := range s.splitSocks {
		if ss.group == group {
			delete(s.splitSocks, id)
		}
	}
}
