package isolator

import (
	"context"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/msgproto"
)

// replicaTimeout bounds each call that builds a listener replica.
const replicaTimeout = 5 * time.Second

// listenRec is a live listening socket: its own INS has it, and every
// other INS has a replica (a socket of the same kind, bound to the same
// address, listening on a duplicate of the app's SEQPACKET end), so a
// connection arriving at any INS is delivered to the app.
type listenRec struct {
	sock    uint64 // the socket the app made, on its own INS
	group   uint64
	domain  int32
	typ     int32
	proto   int32
	addr    msgproto.Addr // the bound address, port resolved
	backlog int32
	opts    []*msgproto.Setsockopt
	seq     *os.File // the daemon's duplicate of the INS end of the SEQPACKET pair
	watch   net.Conn // watches seq for the app's hang-up

	mu       sync.Mutex
	replicas map[int]uint64 // INS id -> replica socket id
	kern     []net.Listener // kernel loopback listeners (kernelLoopback)
	closed   bool
	// ownLost: the INS that made sock died; its replacement (same id)
	// gets a replica like any other INS.
	ownLost bool
	// adopted: taken over from an INS of a daemon that died (Adopt); its
	// kernel loopback listeners are made again when a process of its group
	// rejoins (kernTried once that was tried).
	adopted, kernTried bool
}

func (l *listenRec) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	if l.watch != nil {
		l.watch.Close()
	}
	for _, k := range l.kern {
		k.Close()
	}
	l.seq.Close()
}

// dupFile duplicates f (close-on-exec).
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// listen serves the first Listen of a socket: the listener is made on the
// socket's own INS, then replicated into every other live INS before the
// app gets its reply, so that it is reachable everywhere when listen(2)
// returns.
func (s *AppServer) listen(ctx context.Context, c *client, m *msgproto.Listen, files []*os.File) (msgproto.Message, unix.Errno) {
	if len(files) != 1 {
		closeFiles(files)
		return nil, unix.EINVAL
	}
	if s.adoptedPair(c.group, files[0]) {
		// A shim re-making its listener after a daemon restart, on
		// the pair of a listener the INS kept (with SO_REUSEPORT its
		// Bind succeeded): that listener serves it already.
		closeFiles(files)
		return nil, unix.EADDRINUSE
	}
	seq, err := dupFile(files[0])
	if err != nil {
		closeFiles(files)
		return nil, unix.EMFILE
	}
	reply, errno := s.forward(ctx, c.group, m.Sock, m, files)
	if errno != 0 || !succeeded(reply) {
		seq.Close()
		return reply, errno
	}
	name, nerr := s.forward(ctx, c.group, m.Sock, &msgproto.Getsockname{Sock: m.Sock}, nil)
	ar, ok := name.(*msgproto.AddrReply)
	if nerr != 0 || !ok {
		c.log.Warn("app: listener address unknown; not replicated", "sock", m.Sock, "errno", nerr)
		seq.Close()
		return reply, 0
	}
	l := &listenRec{sock: m.Sock, group: c.group, addr: ar.Addr, backlog: m.Backlog, seq: seq,
		typ: unix.SOCK_STREAM, replicas: map[int]uint64{}}
	l.domain = unix.AF_INET
	if ar.Addr.Family == msgproto.FamilyInet6 {
		l.domain = unix.AF_INET6
	}
	s.mu.Lock()
	if r := s.socks[m.Sock]; r != nil && r.group == c.group {
		l.domain, l.typ, l.proto, l.opts = r.domain, r.typ, r.proto, r.opts
		r.dropFile()
		delete(s.socks, m.Sock)
	}
	if _, dup := s.lsns[m.Sock]; dup {
		s.mu.Unlock()
		seq.Close()
		return reply, 0
	}
	s.lsns[m.Sock] = l
	base := s.baseCtx
	s.mu.Unlock()

	var wg sync.WaitGroup
	for _, b := range s.backends.All() {
		if b.ID() == SockINS(m.Sock) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.replicate(base, l, b)
		}()
	}
	wg.Wait()
	s.kernelLoopback(c, l)
	s.startWatch(base, l)
	l.mu.Lock()
	n := len(l.replicas)
	l.mu.Unlock()
	c.log.Info("app: listening", "sock", m.Sock, "addr", addrString(l.addr), "replicas", n)
	return reply, 0
}

func addrString(a msgproto.Addr) string {
	ap, err := a.AddrPort()
	if err != nil {
		return "?"
	}
	return ap.String()
}

// OnSpawn replicates every live listener into b, a newly started INS. The
// daemon calls it once b serves calls; it returns when every listener is
// replicated (or failed to be).
func (s *AppServer) OnSpawn(b Backend) {
	s.mu.Lock()
	ls := make([]*listenRec, 0, len(s.lsns))
	for _, l := range s.lsns {
		ls = append(ls, l)
	}
	base := s.baseCtx
	s.mu.Unlock()
	// In parallel, and done before it returns: a load balancer adds the
	// INS once it listens.
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func() { defer wg.Done(); s.replicate(base, l, b) }()
	}
	wg.Wait()
}

// OnINSGone forgets what INS id held for the listeners: a replacement INS
// of the same id then gets every listener again (OnSpawn), the app's own
// socket of a listener made on it included. The app's descriptors stay as
// they are: the replacement delivers its connections on the same SEQPACKET
// pair.
func (s *AppServer) OnINSGone(id int) {
	s.mu.Lock()
	ls := make([]*listenRec, 0, len(s.lsns))
	for _, l := range s.lsns {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.mu.Lock()
		delete(l.replicas, id)
		if SockINS(l.sock) == id {
			l.ownLost = true
		}
		l.mu.Unlock()
	}
}

// replicate makes listener l listen on INS b too. Failures are logged: the
// listener keeps working on the INS that have it.
func (s *AppServer) replicate(ctx context.Context, l *listenRec, b Backend) {
	id := b.ID()
	l.mu.Lock()
	_, have := l.replicas[id]
	closed := l.closed
	own := id == SockINS(l.sock) && !l.ownLost
	l.mu.Unlock()
	if have || closed || own {
		return
	}
	log := s.log.With("listener", l.sock, "ins", id)
	call := func(m msgproto.Message, files ...*os.File) (msgproto.Message, bool) {
		cctx, cancel := context.WithTimeout(ctx, replicaTimeout)
		defer cancel()
		r, err := b.Call(cctx, l.group, m, files...)
		if err != nil {
			log.Warn("app: replicating listener", "step", m.Type(), "err", err)
			return nil, false
		}
		if !succeeded(r) {
			if rep, ok := r.(*msgproto.Reply); ok {
				log.Warn("app: replicating listener", "step", m.Type(), "errno", unix.Errno(rep.Errno).Error())
			}
			return r, false
		}
		return r, true
	}
	r, ok := call(&msgproto.Socket{Domain: l.domain, SockType: l.typ, Protocol: l.proto})
	if !ok {
		return
	}
	sr, ok := r.(*msgproto.SocketReply)
	if !ok || SockINS(sr.Sock) != id {
		log.Warn("app: replicating listener: unexpected Socket reply", "type", r.Type())
		return
	}
	rs := sr.Sock
	abandon := func() { call(&msgproto.Close{Sock: rs}) }
	for _, o := range l.opts {
		call(&msgproto.Setsockopt{Sock: rs, Level: o.Level, Name: o.Name, Value: o.Value})
	}
	if _, ok := call(&msgproto.Bind{Sock: rs, Addr: l.addr}); !ok {
		abandon()
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		abandon()
		return
	}
	seq, err := dupFile(l.seq)
	l.mu.Unlock()
	if err != nil {
		log.Warn("app: replicating listener: dup", "err", err)
		abandon()
		return
	}
	if _, ok := call(&msgproto.Listen{Sock: rs, Backlog: l.backlog}, seq); !ok {
		abandon()
		return
	}
	l.mu.Lock()
	l.replicas[id] = rs
	l.mu.Unlock()
	log.Debug("app: listener replicated", "replica", rs)
}

// replicaOf returns a live replica of listener sock.
func (s *AppServer) replicaOf(sock uint64) (Backend, uint64, bool) {
	s.mu.Lock()
	l := s.lsns[sock]
	s.mu.Unlock()
	if l == nil {
		return nil, 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, rs := range l.replicas {
		if b, ok := s.backends.Get(id); ok {
			return b, rs, true
		}
	}
	return nil, 0, false
}

// toReplicas applies a successful Shutdown, Setsockopt or backlog Listen on
// listener sock to its replicas, best effort.
func (s *AppServer) toReplicas(ctx context.Context, group, sock uint64, m msgproto.Message) {
	s.mu.Lock()
	l := s.lsns[sock]
	s.mu.Unlock()
	if l == nil || l.group != group {
		return
	}
	if o, ok := m.(*msgproto.Setsockopt); ok {
		l.mu.Lock()
		cp := &msgproto.Setsockopt{Level: o.Level, Name: o.Name, Value: append([]byte(nil), o.Value...)}
		replaced := false
		for i, x := range l.opts {
			if x.Level == o.Level && x.Name == o.Name {
				l.opts[i], replaced = cp, true
			}
		}
		if !replaced && len(l.opts) < maxRecordedOpts {
			l.opts = append(l.opts, cp)
		}
		l.mu.Unlock()
	}
	l.mu.Lock()
	reps := make(map[int]uint64, len(l.replicas))
	for id, rs := range l.replicas {
		reps[id] = rs
	}
	l.mu.Unlock()
	for id, rs := range reps {
		b, ok := s.backends.Get(id)
		if !ok {
			continue
		}
		var cp msgproto.Message
		switch m := m.(type) {
		case *msgproto.Shutdown:
			cp = &msgproto.Shutdown{Sock: rs, How: m.How}
		case *msgproto.Setsockopt:
			cp = &msgproto.Setsockopt{Sock: rs, Level: m.Level, Name: m.Name, Value: m.Value}
		case *msgproto.Listen:
			cp = &msgproto.Listen{Sock: rs, Backlog: m.Backlog}
		default:
			return
		}
		if _, err := b.Call(ctx, group, cp); err != nil {
			s.log.Debug("app: applying to listener replica", "ins", id, "type", m.Type(), "err", err)
		}
	}
}

// startWatch forgets listener l once the app has closed every copy of its
// descriptor (the SEQPACKET end hangs up). Anything the app writes on its
// end is discarded.
func (s *AppServer) startWatch(ctx context.Context, l *listenRec) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	w, err := net.FileConn(l.seq)
	if err == nil {
		l.watch = w
	}
	l.mu.Unlock()
	if err != nil {
		s.log.Warn("app: cannot watch listener", "sock", l.sock, "err", err)
		return
	}
	go func() {
		s.watchHangup(w)
		s.mu.Lock()
		if s.lsns[l.sock] == l {
			delete(s.lsns, l.sock)
		}
		s.mu.Unlock()
		l.close()
		if ctx.Err() == nil {
			s.log.Debug("app: listener closed by the app", "sock", l.sock)
		}
	}()
}

// watchHangup returns when the peer of the SEQPACKET socket w hangs up or
// w is closed. It consumes whatever the peer writes.
func (s *AppServer) watchHangup(w net.Conn) {
	sc, ok := w.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(4*maxFDsPerPass))
	rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, _, _, err := unix.Recvmsg(int(fd), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			closeRights(oob[:max(oobn, 0)])
			switch {
			case err == unix.EAGAIN:
				return false
			case err == unix.EINTR:
				continue
			case err != nil, n == 0 && oobn == 0:
				return true
			}
		}
	})
}
