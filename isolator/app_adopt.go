package isolator

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/ins"
	"github.com/mpshim/mpshim/msgproto"
)

// adoptedGroupGrace is how long the socket groups found in adopted INS
// wait for a process of theirs to rejoin (the shim tries every 100 ms)
// before their sockets are released: a group whose processes all exited
// while no daemon ran never comes back.
var adoptedGroupGrace = 30 * time.Second

// groupOf is the socket group id of a group key. The id is derived from
// the key so that a restarted daemon gives a group that rejoins
// (RegRejoin, same key) the id its sockets have in the INS that outlived
// the old daemon; the top bit keeps group ids apart from client ids. The
// key cannot be recovered from the id.
func groupOf(key uint64) uint64 {
	var b [8 + 16]byte
	copy(b[:], "mpshim-group-id\x00")
	binary.LittleEndian.PutUint64(b[16:], key)
	h := sha256.Sum256(b[:])
	return binary.LittleEndian.Uint64(h[:8]) | 1<<63
}

// seqIdentity names the socket a SOCK_SEQPACKET descriptor refers to: the
// INS of a listener and of its replicas hold descriptors of one socket.
type seqIdentity struct{ dev, ino uint64 }

func identityOf(f *os.File) (seqIdentity, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return seqIdentity{}, false
	}
	return seqIdentity{dev: st.Dev, ino: st.Ino}, true
}

// Adopt takes over the listeners of INS adopted from a daemon that died:
// the listeners of INS that deliver to one SOCK_SEQPACKET pair are one
// app listener (the one on the lowest INS id is taken for the app's own
// socket, the others for its replicas), replicated into INS that start
// later and watched for the app's close as if made under this daemon. The
// groups that own sockets in the adopted INS get adoptedGroupGrace to
// rejoin; the sockets of those that do not are released.
func (s *AppServer) Adopt(ctx context.Context, adopted []adoptedListeners, groups []uint64) {
	type member struct {
		ins  int
		info adoptedListener
		f    *os.File
	}
	byID := map[seqIdentity][]member{}
	var order []seqIdentity
	for _, a := range adopted {
		for i, info := range a.list {
			f := a.files[i]
			id, ok := identityOf(f)
			ap, err := netip.ParseAddrPort(info.Addr)
			if !ok || err != nil || SockINS(info.Sock) != a.ins {
				f.Close()
				continue
			}
			if _, seen := byID[id]; !seen {
				order = append(order, id)
			}
			byID[id] = append(byID[id], member{ins: a.ins, info: adoptedListener{AdoptListener: info, addr: ap}, f: f})
		}
	}
	n := 0
	for _, id := range order {
		ms := byID[id]
		slices.SortFunc(ms, func(a, b member) int { return a.ins - b.ins })
		own := ms[0]
		l := &listenRec{sock: own.info.Sock, group: own.info.Group, domain: own.info.Domain, typ: own.info.Type,
			proto: own.info.Proto, addr: msgproto.AddrFromNetip(own.info.addr), backlog: own.info.Backlog, seq: own.f,
			replicas: map[int]uint64{}}
		l.adopted = true
		for _, m := range ms[1:] {
			if m.info.Group == l.group {
				l.replicas[m.ins] = m.info.Sock
			}
			m.f.Close()
		}
		l.opts = s.adoptedOpts(ctx, own.ins, l)
		s.mu.Lock()
		if _, dup := s.lsns[l.sock]; dup {
			s.mu.Unlock()
			l.seq.Close()
			continue
		}
		s.lsns[l.sock] = l
		s.mu.Unlock()
		s.startWatch(ctx, l)
		n++
		s.log.Info("app: listener adopted", "sock", l.sock, "addr", addrString(l.addr), "replicas", len(l.replicas))
	}
	if len(groups) > 0 {
		time.AfterFunc(adoptedGroupGrace, func() { s.releaseAbsentGroups(groups) })
	}
}

// listenerOpts are the options of a listener that decide how it is
// replicated and how its kernel loopback listeners are made.
var listenerOpts = []struct{ level, name int32 }{
	{unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT}, {unix.IPPROTO_IPV6, unix.IPV6_V6ONLY},
}

// adoptedOpts asks the INS that holds l for the options of listenerOpts
// that are set, as the daemon records them at setsockopt.
func (s *AppServer) adoptedOpts(ctx context.Context, insID int, l *listenRec) []*msgproto.Setsockopt {
	b, ok := s.backends.Get(insID)
	if !ok {
		return nil
	}
	var opts []*msgproto.Setsockopt
	for _, o := range listenerOpts {
		if o.level == unix.IPPROTO_IPV6 && l.domain != unix.AF_INET6 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, replicaTimeout)
		r, err := b.Call(cctx, l.group, &msgproto.Getsockopt{Sock: l.sock, Level: o.level, Name: o.name, MaxLen: 4})
		cancel()
		if or, ok := r.(*msgproto.OptReply); err == nil && ok && slices.ContainsFunc(or.Value, func(c byte) bool { return c != 0 }) {
			opts = append(opts, &msgproto.Setsockopt{Level: o.level, Name: o.name, Value: or.Value})
		}
	}
	return opts
}

// rejoined makes the kernel loopback listeners of the adopted listeners
// of c's group, in c's network namespace, once: they lived in the daemon
// that died.
func (s *AppServer) rejoined(c *client) {
	s.mu.Lock()
	var ls []*listenRec
	for _, l := range s.lsns {
		if l.group == c.group {
			ls = append(ls, l)
		}
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.mu.Lock()
		try := l.adopted && !l.kernTried
		l.kernTried = true
		l.mu.Unlock()
		if try {
			s.kernelLoopback(c, l)
		}
	}
}

// adoptedPair reports whether f is the SOCK_SEQPACKET pair of an adopted
// listener of group.
func (s *AppServer) adoptedPair(group uint64, f *os.File) bool {
	id, ok := identityOf(f)
	if !ok {
		return false
	}
	s.mu.Lock()
	var ls []*listenRec
	for _, l := range s.lsns {
		if l.group == group && l.adopted {
			ls = append(ls, l)
		}
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.mu.Lock()
		same := false
		if !l.closed {
			lid, ok := identityOf(l.seq)
			same = ok && lid == id
		}
		l.mu.Unlock()
		if same {
			return true
		}
	}
	return false
}

// adoptedListener is an INS's listener with its address parsed.
type adoptedListener struct {
	ins.AdoptListener
	addr netip.AddrPort
}

// releaseAbsentGroups releases the sockets of the adopted groups no
// process rejoined.
func (s *AppServer) releaseAbsentGroups(groups []uint64) {
	var gone []uint64
	s.mu.Lock()
	for _, g := range groups {
		if _, ok := s.keys[g]; !ok {
			gone = append(gone, g)
		}
	}
	var drop []*listenRec
	for id, l := range s.lsns {
		if slices.Contains(gone, l.group) {
			drop = append(drop, l)
			delete(s.lsns, id)
		}
	}
	s.mu.Unlock()
	for _, l := range drop {
		l.close()
	}
	if len(gone) == 0 || s.backends == nil {
		return
	}
	s.log.Info("app: releasing the sockets of socket groups that did not rejoin", "groups", len(gone))
	for _, b := range s.backends.All() {
		for _, g := range gone {
			b.Forget(g)
		}
	}
}
