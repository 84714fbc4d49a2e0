package isolator

import (
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/peercred"
	"github.com/mpshim/mpshim/msgproto"
)

// registerSize is the exact length of a Register message.
var registerSize = msgproto.Size(&msgproto.Register{})

// admitConn decides, in the accept loop and before a byte is read, whether
// a new registration connection may go on. It reads the peer's credentials
// (SO_PEERCRED); a peer the policy does not admit is sent RegisterRefused
// and closed at once, and a peer over the caps on connections that have not
// registered yet (in total, per uid) is sent Reply{EAGAIN} and closed. An
// admitted connection holds a pending slot until register has read its
// first message (donePending).
//
// Nothing here allocates per connection beyond the connection itself and
// the small refusal, so a flood of connections from a stranger costs the
// daemon one descriptor for the time it takes to refuse each.
func (s *AppServer) admitConn(c *net.UnixConn) (*unix.Ucred, bool) {
	cred, err := peercred.Of(c)
	if err != nil {
		s.refusedLog.warn(s, "app: registration without credentials", "err", err)
		c.Close()
		return nil, false
	}
	if !s.allowed(cred) {
		s.refusedLog.warn(s, "app: registration refused by policy (allow_uids, allow_gids)",
			"uid", cred.Uid, "gid", cred.Gid, "pid", cred.Pid)
		sendNow(c, &msgproto.RegisterRefused{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Errno: int32(unix.EACCES)})
		c.Close()
		return nil, false
	}
	if !s.takePending(cred.Uid) {
		s.busyLog.warn(s, "app: registration refused: too many connections that have not registered",
			"uid", cred.Uid, "pid", cred.Pid, "max_pending", s.cfg.MaxPending, "max_pending_per_uid", s.cfg.MaxPendingPerUID)
		sendNow(c, &msgproto.Reply{Errno: int32(unix.EAGAIN)})
		c.Close()
		return nil, false
	}
	return cred, true
}

// takePending counts one more admitted connection of uid that has not
// registered yet, unless a cap is reached.
func (s *AppServer) takePending(uid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending >= s.cfg.MaxPending || s.pendingByUID[uid] >= s.cfg.MaxPendingPerUID {
		return false
	}
	s.pending++
	s.pendingByUID[uid]++
	return true
}

// donePending releases the pending slot taken by takePending.
func (s *AppServer) donePending(uid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending--
	if s.pendingByUID[uid]--; s.pendingByUID[uid] <= 0 {
		delete(s.pendingByUID, uid)
	}
}

// Pending returns the number of admitted connections that have not
// registered yet.
func (s *AppServer) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending
}

// sendNow sends m on c if the socket takes it at once; it never waits (a
// fresh connection's buffer is empty, so it normally does).
func sendNow(c *net.UnixConn, m msgproto.Message) {
	b, err := msgproto.Append(nil, 0, 0, m)
	if err != nil {
		return
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.Sendto(int(fd), b, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, nil)
	})
}

// rateLog writes at most one warning per interval and counts the ones it
// left out, so that a flood of refused connections cannot flood the log.
type rateLog struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// warn logs msg with args unless a warning went out less than every ago;
// the next one that goes out says how many were suppressed in between.
func (r *rateLog) warn(s *AppServer, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed_since_last", n)
	}
	s.log.Warn(msg, args...)
}
