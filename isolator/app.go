package isolator

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/procstat"
	"github.com/mpshim/mpshim/internal/unixfd"
	"github.com/mpshim/mpshim/msgproto"
	"github.com/mpshim/mpshim/ring"
)

// AppConfig tunes the app-facing side of the daemon. Zero fields take
// defaults.
type AppConfig struct {
	// AllowUIDs and AllowGIDs list who may register (SO_PEERCRED). Both
	// empty means only the daemon's own uid.
	AllowUIDs []uint32
	AllowGIDs []uint32
	// Ring is the geometry of every client's ring.
	Ring ring.Config
	// FDTimeout is how long a request flagged FlagFD waits for its FDPass
	// before it is refused with EBADF. Default 1 s.
	FDTimeout time.Duration
	// MaxPendingFDs bounds the descriptors a client may have received but
	// not yet paired with a request; more are closed. Default: twice the
	// ring's slot count (a client has at most that many calls in flight).
	MaxPendingFDs int
	// RegisterTimeout bounds the wait for the Register message on an
	// admitted connection; the shim sends it right after it connects.
	// Default 2 s.
	RegisterTimeout time.Duration
	// MaxPending bounds the admitted connections that have not registered
	// yet, in total; more are answered EAGAIN and closed at once (the shim
	// then tries again). Default 1024.
	MaxPending int
	// MaxPendingPerUID bounds them per peer uid. Default 128: a prefork
	// server's burst of fork children registers at once.
	MaxPendingPerUID int
	// ExecGrace is how long a gone client stays known so that the next
	// image of its process (RegExeced) can join its socket group. Default
	// 10 s.
	ExecGrace time.Duration
	// MaxClients bounds the number of live clients; more registrations are
	// refused with EAGAIN. Default 4096.
	MaxClients int
}

func (c *AppConfig) fill() {
	if c.FDTimeout <= 0 {
		c.FDTimeout = time.Second
	}
	if c.MaxPendingFDs <= 0 {
		slots := c.Ring.Slots
		if slots <= 0 {
			slots = ring.DefaultSlotCount
		}
		c.MaxPendingFDs = 2 * slots
	}
	if c.RegisterTimeout <= 0 {
		c.RegisterTimeout = 2 * time.Second
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 1024
	}
	if c.MaxPendingPerUID <= 0 {
		c.MaxPendingPerUID = 128
	}
	if c.ExecGrace <= 0 {
		c.ExecGrace = 10 * time.Second
	}
	if c.MaxClients <= 0 {
		c.MaxClients = 4096
	}
}

// AppServer is the app-facing side of the daemon: it registers app
// processes (libmpshim.so or mpnet) on the registration socket, gives each
// a shared-memory ring, serves the socket calls arriving on the rings by
// forwarding them to the INS processes (Backends) and replicates listening
// sockets into every INS. See docs/protocol.md.
//
// Everything a client sends is treated as hostile: malformed messages are
// answered with an errno, and a corrupt ring ends that client only.
type AppServer struct {
	cfg      AppConfig
	backends Backends
	log      *slog.Logger
	ownUID   uint32

	nextID atomic.Uint64

	mu      sync.Mutex
	clients map[uint64]*client
	gone    map[uint64]goneClient
	groups  map[uint64]int    // socket group -> live members
	keys    map[uint64]uint64 // socket group -> secret key its descendants present
	socks   map[uint64]*sockRec
	lsns    map[uint64]*listenRec
	moved   map[uint64]movedSock // socket the app names -> where it was moved

	// split, when set, sends connections to its prefixes through the
	// split tunnel; splitSocks are the sockets it carries (app_split.go).
	split      *splitRoutes
	splitSocks map[uint64]*splitSock
	nextSplit  uint64

	// pending counts admitted connections that have not registered yet,
	// in total and per uid (admission.go).
	pending      int
	pendingByUID map[uint32]int
	refusedLog   rateLog
	busyLog      rateLog

	baseCtx context.Context
	wg      sync.WaitGroup
}

// goneClient remembers a client that hung up, for RegExeced.
type goneClient struct {
	pid   int32
	group uint64
	at    time.Time
}

// AppStats counts the AppServer's state for `isolator ls`.
type AppStats struct {
	Clients   int // live registered processes
	Groups    int // socket groups with live members
	Listeners int // listening sockets replicated into the INS
}

// NewAppServer returns an AppServer that forwards calls to backends.
func NewAppServer(cfg AppConfig, backends Backends, log *slog.Logger) *AppServer {
	cfg.fill()
	if log == nil {
		log = slog.Default()
	}
	return &AppServer{
		cfg:      cfg,
		backends: backends,
		log:      log,
		ownUID:   uint32(os.Getuid()),
		clients:  map[uint64]*client{},
		gone:     map[uint64]goneClient{},
		groups:   map[uint64]int{},
		keys:     map[uint64]uint64{},
		socks:    map[uint64]*sockRec{},
		lsns:     map[uint64]*listenRec{},

		pendingByUID: map[uint32]int{},
		refusedLog:   rateLog{every: 5 * time.Second},
		busyLog:      rateLog{every: 5 * time.Second},
		moved:        map[uint64]movedSock{},
		baseCtx:      context.Background(),
	}
}

// Clients returns the number of live registered processes.
func (s *AppServer) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// Stats returns a snapshot of the server's counters.
func (s *AppServer) Stats() AppStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return AppStats{Clients: len(s.clients), Groups: len(s.groups), Listeners: len(s.lsns)}
}

// ListenRegistration creates the registration socket: an AF_UNIX
// SOCK_SEQPACKET listener at path with permission mode and, when gid >= 0,
// owned by group gid. A stale socket at path (nobody accepts on it) is
// replaced; a live one is an error. The socket is bound under a temporary
// name, given its mode and group and then renamed into place, so it is never
// reachable with wider permissions whatever the umask. The listener does
// not remove path when closed: the caller removes it.
func ListenRegistration(path string, mode os.FileMode, gid int) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("registration socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("registration socket %s: exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unixpacket", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("registration socket %s: in use by a running isolator", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("registration socket: remove stale %s: %w", path, err)
		}
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("registration socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("registration socket %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(tmp, mode.Perm()); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return ln, nil
}

// Serve accepts registrations on ln until ctx ends, then closes ln, ends
// every client and waits for their goroutines. It returns nil when ctx
// ended and the accept error otherwise.
func (s *AppServer) Serve(ctx context.Context, ln *net.UnixListener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.baseCtx = ctx
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.sweep(ctx)
	}()
	var err error
	for {
		var c *net.UnixConn
		c, err = ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				err = nil
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			} else if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				s.log.Warn("app: accept: out of descriptors", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			} else {
				err = fmt.Errorf("app: accept: %w", err)
			}
			break
		}
		cred, ok := s.admitConn(c)
		if !ok {
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.register(ctx, c, cred)
		}()
	}
	cancel()
	s.wg.Wait()
	s.mu.Lock()
	for id, l := range s.lsns {
		l.close()
		delete(s.lsns, id)
	}
	s.mu.Unlock()
	return err
}

// sweep forgets gone clients after the exec grace and closes descriptors
// that were never paired with a request.
func (s *AppServer) sweep(ctx context.Context) {
	t := time.NewTicker(s.cfg.FDTimeout / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			for id, g := range s.gone {
				if now.Sub(g.at) > s.cfg.ExecGrace {
					delete(s.gone, id)
				}
			}
			cs := make([]*client, 0, len(s.clients))
			for _, c := range s.clients {
				cs = append(cs, c)
			}
			s.mu.Unlock()
			for _, c := range cs {
				c.expireFDs(now)
			}
		}
	}
}

// allowed reports whether the peer's uid or gid may register.
func (s *AppServer) allowed(cred *unix.Ucred) bool {
	if len(s.cfg.AllowUIDs) == 0 && len(s.cfg.AllowGIDs) == 0 {
		return cred.Uid == s.ownUID
	}
	for _, u := range s.cfg.AllowUIDs {
		if u == cred.Uid {
			return true
		}
	}
	for _, g := range s.cfg.AllowGIDs {
		if g == cred.Gid {
			return true
		}
	}
	return false
}

// register runs one registration connection: it checks the Register
// message and, if it is accepted, serves the client until it hangs up.
//
// conn has been admitted (admitConn) with the peer credentials cred; its
// pending slot is released once the Register is read or the deadline
// passes.
func (s *AppServer) register(ctx context.Context, conn *net.UnixConn, cred *unix.Ucred) {
	defer conn.Close()
	log := s.log.With("pid", cred.Pid, "uid", cred.Uid)
	conn.SetReadDeadline(time.Now().Add(s.cfg.RegisterTimeout))
	// A Register has a fixed size: one byte more tells a longer message
	// (which the kernel truncates) from an exact one.
	buf := make([]byte, registerSize+1)
	oob := make([]byte, unix.CmsgSpace(4*8))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	closeRights(oob[:oobn])
	s.donePending(cred.Uid)
	if err != nil || n == 0 {
		log.Debug("app: no Register", "err", err)
		return
	}
	conn.SetReadDeadline(time.Time{})
	refuse := func(errno unix.Errno, why string) {
		log.Warn("app: registration refused", "why", why, "errno", errno.Error())
		b, _ := msgproto.Append(nil, 0, 0, &msgproto.Reply{Errno: int32(errno)})
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		conn.Write(b)
	}
	var reg msgproto.Register
	if flags&unix.MSG_TRUNC != 0 || n > registerSize {
		refuse(unix.EPROTO, fmt.Sprintf("bad Register: a message longer than %d bytes", registerSize))
		return
	}
	h, err := msgproto.DecodeTo(buf[:n], &reg)
	if err != nil {
		refuse(unix.EPROTO, "bad Register: "+err.Error())
		return
	}
	if h.Flags != 0 {
		refuse(unix.EINVAL, "Register with header flags")
		return
	}
	if reg.ProtoVersion != msgproto.Version {
		refuse(unix.EPROTO, fmt.Sprintf("protocol version %d", reg.ProtoVersion))
		return
	}
	if cred.Pid <= 0 || int32(reg.PID) != cred.Pid {
		refuse(unix.EACCES, fmt.Sprintf("claims pid %d", reg.PID))
		return
	}
	st, err := procstat.Read(int(cred.Pid))
	if err != nil {
		refuse(unix.EACCES, "cannot read /proc stat: "+err.Error())
		return
	}
	if st.StartTime != reg.StartTime {
		refuse(unix.EACCES, fmt.Sprintf("start time %d, /proc says %d", reg.StartTime, st.StartTime))
		return
	}
	if reg.Flags == msgproto.RegProbe {
		// A launcher asking whether this process may register: everything
		// above is checked as for a real registration, nothing is admitted.
		if reg.Parent != 0 || reg.Key != 0 {
			refuse(unix.EINVAL, "Parent or Key with RegProbe")
			return
		}
		b, _ := msgproto.Append(nil, 0, 0, &msgproto.Reply{})
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		conn.Write(b)
		log.Debug("app: probe answered")
		return
	}
	group, key, errno, why := s.admit(cred.Pid, &reg)
	if errno != 0 {
		refuse(errno, why)
		return
	}
	r, memfd, err := ring.Create(s.cfg.Ring)
	if err != nil {
		s.leaveGroup(group)
		log.Error("app: creating ring", "err", err)
		refuse(unix.ENOMEM, "ring")
		return
	}
	defer memfd.Close()
	fi, err := memfd.Stat()
	if err != nil {
		r.Close()
		s.leaveGroup(group)
		refuse(unix.ENOMEM, "ring stat")
		return
	}
	id := s.nextID.Add(1)
	comm := strings.TrimRight(string(reg.Comm[:]), "\x00")
	c := &client{
		s: s, id: id, pid: cred.Pid, uid: cred.Uid, group: group, comm: comm,
		conn: conn, ring: r,
		fds:     map[uint64]pendingFDs{},
		waiters: map[uint64]chan []*os.File{},
		log:     s.log.With("client", id, "pid", cred.Pid, "comm", comm),
	}
	// The client is known before its reply leaves: a process that
	// forks as soon as it is registered sends a child that names it as
	// parent, possibly before this goroutine runs again.
	s.mu.Lock()
	s.clients[id] = c
	s.mu.Unlock()
	b, err := msgproto.Append(nil, 0, msgproto.FlagFD, &msgproto.RegisterReply{ClientID: id, RingSize: uint32(fi.Size()), Flags: uint32(reg.Flags), Key: key})
	if err == nil {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _, err = conn.WriteMsgUnix(b, unix.UnixRights(int(memfd.Fd())), nil)
		conn.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		s.mu.Lock()
		delete(s.clients, id)
		s.mu.Unlock()
		r.Close()
		s.leaveGroup(group)
		log.Warn("app: sending RegisterReply", "err", err)
		return
	}
	c.log.Info("app: registered", "group", group, "flags", reg.Flags)
	if reg.Flags == msgproto.RegRejoin {
		go s.rejoined(c)
	}
	c.run(ctx)
	s.mu.Lock()
	delete(s.clients, id)
	s.gone[id] = goneClient{pid: cred.Pid, group: group, at: time.Now()}
	s.mu.Unlock()
	s.leaveGroup(group)
	c.log.Info("app: client gone")
}

// admit decides the socket group of a registering process, counts it as a
// member and returns the group's key. It returns an errno (and why) when it
// refuses.
//
// A fork child proves that it descends from a member by presenting the
// group's key, which only processes holding a member's memory know; this
// holds also when the parent has already exited (a daemonizing server
// forks and exits at once). A new image of a process must in addition be
// the same pid as the image it follows.
func (s *AppServer) admit(pid int32, reg *msgproto.Register) (uint64, uint64, unix.Errno, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.clients) >= s.cfg.MaxClients {
		return 0, 0, unix.EAGAIN, "too many clients"
	}
	var group uint64
	switch reg.Flags {
	case 0:
		if reg.Parent != 0 || reg.Key != 0 {
			return 0, 0, unix.EINVAL, "Parent or Key without RegForked/RegExeced"
		}
		// The group id follows from the key (groupOf), so that the group
		// keeps its id when it rejoins a restarted daemon.
		for {
			var b [8]byte
			if _, err := rand.Read(b[:]); err != nil {
				return 0, 0, unix.ENOMEM, "no randomness for a group key"
			}
			key := binary.LittleEndian.Uint64(b[:]) | 1
			if group = groupOf(key); s.keys[group] == 0 {
				s.keys[group] = key
				break
			}
		}
	case msgproto.RegForked, msgproto.RegExeced:
		var memberPID int32
		if p, ok := s.clients[reg.Parent]; ok {
			group, memberPID = p.group, p.pid
		} else if g, ok := s.gone[reg.Parent]; ok {
			group, memberPID = g.group, g.pid
		} else {
			return 0, 0, unix.EACCES, fmt.Sprintf("%s: client %d is unknown", flagName(reg.Flags), reg.Parent)
		}
		key, ok := s.keys[group]
		if !ok || subtle.ConstantTimeCompare(le64(key), le64(reg.Key)) != 1 {
			return 0, 0, unix.EACCES, fmt.Sprintf("%s: wrong key for the group of client %d", flagName(reg.Flags), reg.Parent)
		}
		if reg.Flags == msgproto.RegExeced && memberPID != pid {
			return 0, 0, unix.EACCES, fmt.Sprintf("RegExeced: client %d is not an earlier image of pid %d", reg.Parent, pid)
		}
		if reg.Flags == msgproto.RegExeced {
			delete(s.gone, reg.Parent)
		}
	case msgproto.RegRejoin:
		// The process belonged to a group of a daemon that died: the
		// group lives on under the same key, so the processes of one
		// server (a master and its workers) stay one group and share
		// the listeners they re-create (docs/protocol.md, "Daemon
		// restart"). Knowing the key is the proof, as for RegForked.
		if reg.Parent != 0 || reg.Key == 0 {
			return 0, 0, unix.EINVAL, "RegRejoin needs Key and no Parent"
		}
		// Its id is the one the group had under the dead daemon, which
		// its sockets in INS that outlived that daemon carry.
		group = groupOf(reg.Key)
		if k, ok := s.keys[group]; !ok {
			s.keys[group] = reg.Key
		} else if subtle.ConstantTimeCompare(le64(k), le64(reg.Key)) != 1 {
			return 0, 0, unix.EACCES, "RegRejoin: a group of another key has this id"
		}
	default:
		return 0, 0, unix.EINVAL, fmt.Sprintf("registration flags %#x", reg.Flags)
	}
	s.groups[group]++
	return group, s.keys[group], 0, ""
}

func flagName(f uint16) string {
	switch f {
	case msgproto.RegForked:
		return "RegForked"
	case msgproto.RegRejoin:
		return "RegRejoin"
	}
	return "RegExeced"
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// leaveGroup removes one member from group; the last one to leave makes
// every INS forget the group.
func (s *AppServer) leaveGroup(group uint64) {
	s.mu.Lock()
	s.groups[group]--
	last := s.groups[group] <= 0
	s.mu.Unlock()
	if last {
		// A descendant may still register (a daemonizing parent exits
		// before its child registers; an exec'ed image follows): the
		// group and its sockets stay for ExecGrace.
		time.AfterFunc(s.cfg.ExecGrace, func() { s.releaseGroup(group) })
	}
}

// releaseGroup forgets a group that has had no member for ExecGrace.
func (s *AppServer) releaseGroup(group uint64) {
	s.mu.Lock()
	last := s.groups[group] <= 0
	if last {
		delete(s.keys, group)
		delete(s.groups, group)
		for id, r := range s.socks {
			if r.group == group {
				r.dropFile()
				delete(s.socks, id)
			}
		}
		for id, m := range s.moved {
			if m.group == group {
				delete(s.moved, id)
			}
		}
		s.releaseSplitLocked(group)
	}
	s.mu.Unlock()
	if !last || s.backends == nil {
		return
	}
	for _, b := range s.backends.All() {
		b.Forget(group)
	}
}

// closeRights closes every descriptor carried by the control message oob.
func closeRights(oob []byte) {
	files, _ := unixfd.Rights(oob, "passed-fd")
	unixfd.Close(files)
}
