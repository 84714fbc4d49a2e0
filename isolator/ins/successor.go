package ins

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/peercred"
	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins/engine"
)

// AdoptVersion is the version of what a running INS tells a daemon that
// adopts it (ManageAdopt). A daemon adopts only INS of its own version; it
// replaces the others.
const AdoptVersion = 1

// maxAdoptListeners bounds the listeners one AdoptReply describes: their
// descriptors travel in one control packet.
const maxAdoptListeners = 250

// SuccessorConfig says how an INS waits for a successor daemon when its
// daemon's control channel hangs up (docs/design.md, "Survival").
type SuccessorConfig struct {
	// Socket is the path of the unix SOCK_SEQPACKET socket the INS binds
	// before it seals itself; "" makes the INS end with its daemon.
	Socket string `json:"socket,omitempty"`
	// DaemonUID is, besides root, the one uid allowed to connect
	// (SO_PEERCRED); the socket file is made its.
	DaemonUID int `json:"daemon_uid,omitempty"`
	// OrphanTimeout ends an INS that no successor adopted in that time; 0
	// waits for ever.
	OrphanTimeout time.Duration `json:"orphan_timeout,omitempty"`
}

// AdoptListener describes one listening socket of the INS in AdoptReply.
type AdoptListener struct {
	Sock    uint64 `json:"sock"` // global id
	Group   uint64 `json:"group"`
	Domain  int32  `json:"domain"`
	Type    int32  `json:"type"`
	Proto   int32  `json:"proto"`
	Backlog int32  `json:"backlog"`
	Addr    string `json:"addr"` // the bound address, ADDR:PORT
}

// AdoptReply answers ManageAdopt: the listeners (their SOCK_SEQPACKET ends
// attached, in order) and every socket group that owns a socket.
type AdoptReply struct {
	Version   int             `json:"version"`
	ID        int             `json:"id"`
	Listeners []AdoptListener `json:"listeners,omitempty"`
	Groups    []uint64        `json:"groups,omitempty"`
	// Orphaned is how long the INS served without a daemon before this
	// one connected; Refused counts the peers it hung up on meanwhile.
	Orphaned time.Duration `json:"orphaned,omitempty"`
	Refused  int           `json:"refused,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// Successor is the socket a successor daemon connects on.
type Successor struct {
	ln        *net.UnixListener
	fd        int // the listener's descriptor, the one accept4 is allowed on
	daemonUID int
	orphan    time.Duration
	once      sync.Once

	mu       sync.Mutex
	orphaned time.Duration // how long the last wait for a successor took
	refused  int           // peers hung up on during it
}

// ListenSuccessor binds the successor socket of cfg (replacing a stale
// file), makes it the daemon's (mode 0600), and returns it with the
// descriptor number the sandbox must allow accept4 on. Call it before the
// sandbox is entered.
func ListenSuccessor(cfg SuccessorConfig) (*Successor, error) {
	if cfg.Socket == "" {
		return nil, errors.New("successor socket: no path")
	}
	if len(cfg.Socket) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("successor socket: path %s is too long for a unix socket", cfg.Socket)
	}
	if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("successor socket: %w", err)
	}
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: cfg.Socket, Net: "unixpacket"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("successor socket: %w", err)
	}
	// Closed after the seal, the file is out of reach; the daemon removes it.
	ln.SetUnlinkOnClose(false)
	if err := os.Chown(cfg.Socket, cfg.DaemonUID, -1); err != nil {
		ln.Close()
		return nil, fmt.Errorf("successor socket: %w", err)
	}
	sc, err := ln.SyscallConn()
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("successor socket: %w", err)
	}
	fd := -1
	_ = sc.Control(func(f uintptr) { fd = int(f) })
	return &Successor{ln: ln, fd: fd, daemonUID: cfg.DaemonUID, orphan: cfg.OrphanTimeout}, nil
}

// FD is the listener's descriptor (sandbox.Options.AcceptFD).
func (sc *Successor) FD() int { return sc.fd }

func (sc *Successor) close() { sc.once.Do(func() { sc.ln.Close() }) }

// SetSuccessor makes Serve wait for a successor daemon on sc when the
// daemon hangs up, and stop end the process as SIGTERM does.
// A nil sc leaves the INS ending with its daemon.
func (s *Server) SetSuccessor(sc *Successor, stop func()) {
	s.succ, s.stopSelf = sc, stop
}

// awaitSuccessor waits, after the daemon's channel ended (why), for a
// daemon to connect on the successor socket: root or the daemon's uid, by
// SO_PEERCRED; anyone else is hung up on. It gives up after the orphan
// timeout.
func (s *Server) awaitSuccessor(ctx context.Context, why error) (*ctrl.Conn, error) {
	s.log.Warn("daemon gone: serving on, waiting for a successor", "err", why, "orphan_timeout", s.succ.orphan)
	since := time.Now()
	refused := 0
	if s.succ.orphan > 0 {
		_ = s.succ.ln.SetDeadline(since.Add(s.succ.orphan))
	}
	for {
		c, err := s.succ.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, fmt.Errorf("no successor daemon within %v", s.succ.orphan)
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) ||
				errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ECONNABORTED) {
				time.Sleep(50 * time.Millisecond) // passing: descriptors or memory short
				continue
			}
			return nil, fmt.Errorf("successor socket: %w", err)
		}
		cred, err := peercred.Of(c)
		if err != nil || (cred.Uid != 0 && int(cred.Uid) != s.succ.daemonUID) {
			s.log.Warn("successor socket: refused a peer", "uid", credUID(cred), "pid", credPID(cred), "err", err)
			c.Close()
			refused++
			continue
		}
		f, err := c.File()
		c.Close()
		if err != nil {
			s.log.Warn("successor socket", "err", err)
			continue
		}
		_ = s.succ.ln.SetDeadline(time.Time{})
		s.succ.mu.Lock()
		s.succ.orphaned, s.succ.refused = time.Since(since), refused
		s.succ.mu.Unlock()
		s.log.Info("successor daemon connected", "pid", cred.Pid, "uid", cred.Uid, "after", time.Since(since).Round(time.Millisecond))
		return ctrl.New(f), nil
	}
}

func credUID(c *unix.Ucred) int64 {
	if c == nil {
		return -1
	}
	return int64(c.Uid)
}

func credPID(c *unix.Ucred) int64 {
	if c == nil {
		return -1
	}
	return int64(c.Pid)
}

// adoptReply describes the listeners and groups for ManageAdopt; the
// returned files are the listeners' SOCK_SEQPACKET ends, in order.
func (s *Server) adoptReply() (AdoptReply, []*os.File) {
	rep := AdoptReply{Version: AdoptVersion, ID: s.id}
	if s.succ != nil {
		s.succ.mu.Lock()
		rep.Orphaned, rep.Refused = s.succ.orphaned, s.succ.refused
		s.succ.mu.Unlock()
	}
	s.mu.Lock()
	owner := make(map[engine.SockID]uint64, len(s.owner))
	for id, g := range s.owner {
		owner[id] = g
		if !slices.Contains(rep.Groups, g) {
			rep.Groups = append(rep.Groups, g)
		}
	}
	s.mu.Unlock()
	slices.Sort(rep.Groups)
	var files []*os.File
	for _, l := range s.eng.Listeners() {
		g, ok := owner[l.ID]
		if !ok || len(files) == maxAdoptListeners {
			l.Seq.Close()
			continue
		}
		rep.Listeners = append(rep.Listeners, AdoptListener{Sock: s.global(l.ID), Group: g,
			Domain: int32(l.Family), Type: int32(l.Type), Proto: int32(l.Proto), Backlog: int32(l.Backlog),
			Addr: l.Addr.String()})
		files = append(files, l.Seq)
	}
	return rep, files
}

// redirectOutput makes f the process's standard output and error.
func redirectOutput(f *os.File) error {
	if f == nil {
		return errors.New("log: no descriptor")
	}
	defer f.Close()
	for _, to := range []int{1, 2} {
		if err := unix.Dup3(int(f.Fd()), to, 0); err != nil {
			return fmt.Errorf("log: dup onto %d: %w", to, err)
		}
	}
	output.flush()
	return nil
}
