// Package ins is one isolated network stack (INS) process: its entry point
// (RunProcess), the control channel it serves the daemon on (Server), and
// the management requests it answers — stats, uplinks, flows, mitigation,
// profiles. It wires the layers below it together and owns none of them:
// the engine serves sockets, the netstack owns NICs and uplinks, link owns
// the kernel side of each NIC, and sandbox confines the process. Nothing
// below this package imports it.
package ins

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/isolator/ins/mitigate"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
	"github.com/mpshim/mpshim/isolator/ins/resolve"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/msgproto"
	"github.com/mpshim/mpshim/netflow/flowtable"
)

// ProcessConfig is everything an INS process is started with. The daemon
// passes it as JSON in the environment variable ConfigEnv.
type ProcessConfig struct {
	// Stack configures the netstack and its uplinks.
	Stack netstack.Config
	// DNS configures the resolver that answers the apps' Resolve
	// requests.
	DNS resolve.Config
	// Sandbox confines the process once the link sockets are open.
	Sandbox sandbox.Options
	// NoSandbox skips the sandbox (diagnostics only).
	NoSandbox bool
	// Mitigation are the rules and tunings in force from the start.
	Mitigation mitigate.Mitigation
	// Flows sizes the flow table (see EnableFlows).
	Flows flowtable.Config
	// Successor is where the INS waits for a successor daemon once its
	// daemon is gone; without a socket it exits with its daemon.
	Successor SuccessorConfig
	// Drain is how long open connections may go on after SIGTERM (see
	// Server.SetDrain); 0 ends them at once.
	Drain time.Duration
}

// ConfigEnv names the environment variable holding an INS process's
// ProcessConfig.
const ConfigEnv = "MPSHIM_INS_CONFIG"

// localMask keeps the INS-local part of a global socket id; the INS id sits
// in the top 16 bits (see isolator.SockID).
const localMask = 1<<48 - 1

// Management operations of KindManage frames.
const (
	// ManageStats asks for Status.
	ManageStats = "stats"
	// ManageForget releases the sockets of a socket group that has gone.
	ManageForget = "forget"
	// ManageProfile writes a Go profile (Profile: "cpu" over Seconds, or
	// "heap") to the one descriptor the request carries, then closes it.
	ManageProfile = "profile"
	// ManageSandboxProbe makes the INS attempt every act its sandbox
	// forbids (sandbox.Probe against Probe) and answers ProbeReply. It is
	// refused unless sandbox.ProbeEnv was set in the INS's environment,
	// which only tests do.
	ManageSandboxProbe = "sandbox-probe"
	// ManageAdopt asks a running INS, by a daemon that adopts it, for what
	// it serves: AdoptReply, with the SOCK_SEQPACKET end of each listener
	// attached in order.
	ManageAdopt = "adopt"
	// ManageLog carries one descriptor, the write end of a pipe: the INS
	// writes its standard output and error there from now on (a daemon
	// that adopted it reads it).
	ManageLog = "log"
	// ManageStop makes the INS drain and exit as on SIGTERM; a daemon that
	// cannot signal it (the INS runs as another user) asks this way.
	ManageStop = "stop"
)

// FreeMemory collects garbage until what sync.Pools held is gone too and
// returns the freed memory to the system, so RSS is then what is live
// (isolator ls --gc). A collection moves each pool's objects to a victim
// cache that the next one drops: one collection alone leaves the netstack's
// pooled packet buffers and chunks — and what they still point at, closed
// TCP endpoints among them — in the heap, megabytes after a load, until the
// process's next collection (at rest, the runtime's forced one every two
// minutes).
func FreeMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// tcpStates counts the stack's TCP endpoints by state.
func tcpStates(st *stack.Stack) map[string]int {
	out := map[string]int{}
	for _, ep := range st.RegisteredEndpoints() {
		if e, ok := ep.(*tcp.Endpoint); ok {
			out[tcpStateName(tcp.EndpointState(e.State()))]++
		}
	}
	return out
}

// tcpStateName names a TCP state as ss(8) does; the netstack's own states
// (initial, bound, connecting, error) by theirs.
func tcpStateName(st tcp.EndpointState) string {
	switch st {
	case tcp.StateEstablished:
		return "ESTAB"
	case tcp.StateSynSent:
		return "SYN-SENT"
	case tcp.StateSynRecv:
		return "SYN-RECV"
	case tcp.StateFinWait1:
		return "FIN-WAIT-1"
	case tcp.StateFinWait2:
		return "FIN-WAIT-2"
	case tcp.StateTimeWait:
		return "TIME-WAIT"
	case tcp.StateClose:
		return "CLOSE"
	case tcp.StateCloseWait:
		return "CLOSE-WAIT"
	case tcp.StateLastAck:
		return "LAST-ACK"
	case tcp.StateListen:
		return "LISTEN"
	case tcp.StateClosing:
		return "CLOSING"
	case tcp.StateInitial:
		return "initial"
	case tcp.StateBound:
		return "bound"
	case tcp.StateConnecting:
		return "connecting"
	case tcp.StateError:
		return "error"
	}
	return fmt.Sprintf("state-%d", st)
}

// MaxProfileSeconds bounds a CPU profile.
const MaxProfileSeconds = 300

// ManageRequest is a management request from the daemon.
type ManageRequest struct {
	Op       string            `json:"op"`
	Group    uint64            `json:"group,omitempty"`
	Mitigate *mitigate.Request `json:"mitigate,omitempty"`
	// Uplink carries the arguments of the uplink operations (ManageUplink*).
	Uplink  *UplinkOp `json:"uplink,omitempty"`
	Profile string    `json:"profile,omitempty"`
	Seconds int       `json:"seconds,omitempty"`
	// Debug is the heap profile's format, as net/http/pprof's debug
	// parameter: 0 the binary protocol buffer, 1 text with the Go
	// runtime's memory statistics at its end.
	Debug int `json:"debug,omitempty"`
	// Probe says what ManageSandboxProbe tries to reach.
	Probe *sandbox.ProbeTarget `json:"probe,omitempty"`
	// GC, on ManageStats, collects garbage and returns the freed memory
	// to the system before the answer (isolator ls --gc).
	GC bool `json:"gc,omitempty"`
	// TCP, on ManageStats, has Status.TCP filled (isolator ls): it walks
	// every endpoint, which the frequent polls (load, metrics) need not.
	TCP bool `json:"tcp,omitempty"`
}

// ProbeReply answers ManageSandboxProbe.
type ProbeReply struct {
	Results []sandbox.ProbeResult `json:"results"`
	Error   string                `json:"error,omitempty"`
}

// Status is an INS's answer to ManageStats.
type Status struct {
	Engine   engine.Stats              `json:"engine"`
	Uplinks  []netstack.UplinkCounters `json:"uplinks"`
	Error    string                    `json:"error,omitempty"`
	Mitigate *mitigate.Reply           `json:"mitigate,omitempty"`
	// TCP counts the netstack's TCP endpoints by state (ESTAB,
	// TIME-WAIT, …) when asked (ManageRequest.TCP): connections the engine
	// no longer serves (closed by the app, waiting out TIME_WAIT) still
	// hold an endpoint.
	TCP map[string]int `json:"tcp,omitempty"`
}

// Server answers the daemon's requests for one INS: socket calls go to the
// Engine, after the caller's socket group is checked against the socket's.
type Server struct {
	id int
	// base offsets the local part of every global socket id, drawn at
	// random per process: an INS that replaces a dead one (same INS id)
	// must not hand out the ids its predecessor's sockets had, which apps
	// may still name (a close reported late, a call on a dead
	// connection); those then fail with EBADF instead of reaching a live
	// socket of the new INS.
	base uint64
	st   *netstack.Stack
	eng  *engine.Engine
	chp  atomic.Pointer[ctrl.Conn] // the daemon's channel; a successor's replaces it (conn)
	log  *slog.Logger
	mit  *mitigate.Mitigator // rules, resets and tunings
	res  *resolve.Resolver
	// flows counts every uplink packet; nil when accounting is off.
	flows *flowtable.Table

	mu      sync.Mutex
	owner   map[engine.SockID]uint64   // socket group of each socket
	pending map[engine.SockID]*os.File // stream ends waiting for Connect

	placed   atomic.Uint64 // sockets created by Socket requests (Load)
	loadKick chan struct{} // a load notice is due (reportLoad)

	// succ is where a successor daemon connects once the daemon hangs
	// up; nil: the INS ends with its daemon's channel (successor.go).
	succ *Successor
	// stopSelf ends the process as SIGTERM does (ManageStop).
	stopSelf func()
	// drainGrace is how long open connections may go on once the INS is
	// told to stop (SetDrain); 0 ends them at once.
	drainGrace time.Duration
}

// SetDrain makes the INS, when Serve's context ends (SIGTERM), stop
// accepting and let open connections finish for up to grace before Serve
// returns.
func (s *Server) SetDrain(grace time.Duration) { s.drainGrace = grace }

// drain stops every listener of the INS (new connections are refused with
// a reset; the app's listeners go on being served by the other INS, which
// have replicas), then waits until no stream connection is left or the
// drain grace is over.
func (s *Server) drain() {
	if s.drainGrace <= 0 {
		return
	}
	start := time.Now()
	ls := s.eng.Listeners()
	for _, l := range ls {
		l.Seq.Close()
		s.eng.Shutdown(l.ID, unix.SHUT_RDWR)
	}
	open := func() int { st := s.eng.Stats(); return st.Connected + st.Connecting }
	n := open()
	s.log.Info("INS draining: listeners closed, waiting for open connections", "listeners", len(ls), "connections", n, "grace", s.drainGrace)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for n > 0 && time.Since(start) < s.drainGrace {
		<-t.C
		n = open()
	}
	if n > 0 {
		s.log.Warn("INS drain: grace over, ending the remaining connections", "connections", n, "after", time.Since(start).Round(time.Millisecond))
		return
	}
	s.log.Info("INS drained", "after", time.Since(start).Round(time.Millisecond))
}

// NewServer builds the engine on st and serves the daemon on ch; dns
// configures the resolver.
func NewServer(id int, st *netstack.Stack, dns resolve.Config, ch *ctrl.Conn, log *slog.Logger) *Server {
	s := &Server{id: id, st: st, log: log, owner: map[engine.SockID]uint64{}, pending: map[engine.SockID]*os.File{},
		loadKick: make(chan struct{}, 1)}
	s.chp.Store(ch)
	var b [8]byte
	if _, err := rand.Read(b[:]); err == nil {
		s.base = binary.LittleEndian.Uint64(b[:]) & localMask
	}
	s.eng = engine.New(st.Stack(), st, engine.Options{EncodeAccept: s.encodeAccept, Logger: log, OnRelease: s.loadChanged, Released: s.released})
	s.res = resolve.New(st, dns, log)
	return s
}

// Engine returns the socket engine.
func (s *Server) Engine() *engine.Engine { return s.eng }

func (s *Server) global(id engine.SockID) uint64 {
	return uint64(s.id)<<48 | (uint64(id)+s.base)&localMask
}

// encodeAccept announces an accepted connection: it belongs to its
// listener's socket group, and the app learns its global id.
func (s *Server) encodeAccept(listener, sock engine.SockID, local, peer netip.AddrPort) []byte {
	s.mu.Lock()
	s.owner[sock] = s.owner[listener]
	s.mu.Unlock()
	s.loadChanged()
	b, err := msgproto.Append(nil, 0, msgproto.FlagFD, &msgproto.AcceptNotify{
		Listener: s.global(listener), Sock: s.global(sock),
		Local: msgproto.AddrFromNetip(local), Peer: msgproto.AddrFromNetip(peer),
	})
	if err != nil {
		s.log.Error("encode accept notification", "err", err)
	}
	return b
}

// conn is the channel to the daemon that serves this INS now.
func (s *Server) conn() *ctrl.Conn { return s.chp.Load() }

// Serve handles frames until ctx ends or the daemon hangs up. With a
// successor socket (SetSuccessor) a hang-up does not end it: the sockets go
// on being served without a daemon, and the first daemon that connects on
// that socket is served next (successor.go).
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		s.conn().Close()
		if s.succ != nil {
			s.succ.close()
		}
	})
	defer stop()
	defer s.eng.Stop()
	defer func() {
		if ctx.Err() != nil {
			s.drain()
		}
	}()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.reportLoad(lctx)
	handle := func(m ctrl.Msg) {
		switch m.Kind {
		case ctrl.KindSocket:
			// A call may block (connect); each runs on its own.
			go s.socketCall(ctx, m)
		case ctrl.KindManage:
			s.manage(m)
		default:
			m.CloseFiles()
			s.log.Warn("unknown frame kind from daemon", "kind", m.Kind)
		}
	}
	for {
		err := s.conn().ReadLoop(handle)
		if ctx.Err() != nil || s.succ == nil {
			return err
		}
		ch, werr := s.awaitSuccessor(ctx, err)
		if werr != nil {
			if ctx.Err() != nil {
				return nil
			}
			return werr
		}
		s.chp.Store(ch)
		s.loadChanged()
	}
}

func (s *Server) manage(m ctrl.Msg) {
	defer m.CloseFiles()
	var req ManageRequest
	var out any
	var files []*os.File // sent with the reply, then closed
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err := json.Unmarshal(m.Payload, &req); err != nil {
		out = Status{Error: fmt.Sprintf("bad management request: %v", err)}
	} else if req.Op == ManageFlows {
		go s.replyFlows(m.Frame)
		return
	} else {
		switch req.Op {
		case ManageUplinkAdd, ManageUplinkDel, ManageUplinkDrain, ManageUplinkCarrier, ManageUplinkStats:
			out = s.manageUplink(req, &m)
		case ManageProfile:
			out = Status{}
			if err := startProfile(req, oneFile(&m)); err != nil {
				out = Status{Error: err.Error()}
			}
		case ManageStats:
			if req.GC {
				FreeMemory()
			}
			st := Status{Engine: s.eng.Stats(), Uplinks: s.st.Counters()}
			if req.TCP {
				st.TCP = tcpStates(s.st.Stack())
			}
			out = st
		case ManageForget:
			s.forget(req.Group)
			out = Status{}
		case ManageAdopt:
			var rep AdoptReply
			rep, files = s.adoptReply()
			out = rep
		case ManageLog:
			out = Status{}
			if err := redirectOutput(oneFile(&m)); err != nil {
				out = Status{Error: err.Error()}
			}
		case ManageStop:
			out = Status{}
			if s.stopSelf == nil {
				out = Status{Error: "stop: not a process"}
			} else {
				defer s.stopSelf()
			}
		case ManageMitigate:
			out = s.mitigate(req.Mitigate)
		case ManageSandboxProbe:
			if !sandbox.ProbeEnabled() {
				out = ProbeReply{Error: "sandbox probe disabled (" + sandbox.ProbeEnv + " is not set)"}
			} else {
				var t sandbox.ProbeTarget
				if req.Probe != nil {
					t = *req.Probe
				}
				out = ProbeReply{Results: sandbox.Probe(t)}
			}
		default:
			out = Status{Error: fmt.Sprintf("unknown management op %q", req.Op)}
		}
	}
	b, _ := json.Marshal(out)
	if err := s.conn().Reply(m.Frame, b, files...); err != nil {
		s.log.Debug("management reply", "err", err)
	}
}

// startProfile starts writing the profile req asks for to f in the
// background; f is closed when the profile is complete or refused.
func startProfile(req ManageRequest, f *os.File) error {
	if f == nil {
		return errors.New("profile: no descriptor to write to")
	}
	switch req.Profile {
	case "cpu":
		if req.Seconds < 1 || req.Seconds > MaxProfileSeconds {
			f.Close()
			return fmt.Errorf("profile: %d seconds, want 1..%d", req.Seconds, MaxProfileSeconds)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("profile: %w", err)
		}
		time.AfterFunc(time.Duration(req.Seconds)*time.Second, func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	case "heap":
		go func() {
			defer f.Close()
			_ = pprof.Lookup("heap").WriteTo(f, min(max(req.Debug, 0), 1))
		}()
	default:
		f.Close()
		return fmt.Errorf("profile: unknown profile %q (cpu or heap)", req.Profile)
	}
	return nil
}

// forget closes every socket of a group that has gone.
func (s *Server) forget(group uint64) {
	s.mu.Lock()
	var ids []engine.SockID
	for id, g := range s.owner {
		if g == group {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.release(id)
	}
}

// released drops the group of a socket the engine has freed: the engine
// frees an accepted connection when the app's last descriptor of it is
// gone, with no call from the daemon.
func (s *Server) released(id engine.SockID) {
	s.mu.Lock()
	delete(s.owner, id)
	s.mu.Unlock()
}

// release ends the daemon's interest in a socket: it is no longer anyone's,
// its unused stream end is closed, and the engine frees it once the app's
// descriptors are gone too.
func (s *Server) release(id engine.SockID) {
	s.mu.Lock()
	delete(s.owner, id)
	s.mu.Unlock()
	if f := s.takePending(id); f != nil {
		f.Close()
	}
	s.eng.Close(id)
}

// takePending removes and returns the stream end a socket got at creation
// and has not yet handed to a connection (nil if none).
func (s *Server) takePending(id engine.SockID) *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.pending[id]
	delete(s.pending, id)
	return f
}

func (s *Server) socketCall(ctx context.Context, m ctrl.Msg) {
	reply := s.handle(ctx, m)
	b, err := msgproto.Append(nil, 0, 0, reply)
	if err != nil {
		s.log.Error("encode reply", "err", err)
		b, _ = msgproto.Append(nil, 0, 0, &msgproto.Reply{Errno: int32(unix.EIO)})
	}
	if err := s.conn().Reply(m.Frame, b); err != nil {
		s.log.Debug("reply", "err", err)
	}
}

func errReply(e unix.Errno) msgproto.Message { return &msgproto.Reply{Errno: int32(e)} }

// sock resolves a global id of this INS owned by group.
func (s *Server) sock(group, global uint64) (engine.SockID, unix.Errno) {
	if int(global>>48) != s.id {
		return 0, unix.EBADF
	}
	id := engine.SockID((global - s.base) & localMask)
	s.mu.Lock()
	g, ok := s.owner[id]
	s.mu.Unlock()
	if !ok || g != group {
		return 0, unix.EBADF
	}
	return id, 0
}

// oneFile returns the single descriptor a request carries (or nil) and
// closes any extra.
func oneFile(m *ctrl.Msg) *os.File {
	if len(m.Files) == 0 {
		return nil
	}
	f := m.Files[0]
	for _, x := range m.Files[1:] {
		x.Close()
	}
	m.Files = nil
	return f
}

func addrPort(a msgproto.Addr) (netip.AddrPort, unix.Errno) {
	if a.Family == msgproto.FamilyUnspec {
		return netip.AddrPort{}, 0
	}
	ap, err := a.AddrPort()
	if err != nil {
		return netip.AddrPort{}, unix.EINVAL
	}
	return ap, 0
}

func (s *Server) handle(ctx context.Context, m ctrl.Msg) msgproto.Message {
	f := oneFile(&m)
	closeF := func() {
		if f != nil {
			f.Close()
		}
	}
	_, req, err := msgproto.Decode(m.Payload)
	if err != nil {
		closeF()
		return errReply(unix.EPROTO)
	}
	group := m.Group
	switch r := req.(type) {
	case *msgproto.Socket:
		return s.socket(group, r, f)
	case *msgproto.Resolve:
		closeF()
		return s.res.Resolve(ctx, r)
	}
	sockOf := func(global uint64) (engine.SockID, unix.Errno) { return s.sock(group, global) }
	switch r := req.(type) {
	case *msgproto.Bind:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		ap, e := addrPort(r.Addr)
		if e != 0 {
			return errReply(e)
		}
		return errReply(s.eng.Bind(id, ap))
	case *msgproto.Listen:
		id, e := sockOf(r.Sock)
		if e == 0 && f == nil {
			// listen(2) again on a listener updates its backlog; the
			// engine refuses it on a socket that does not listen.
			return errReply(s.eng.Relisten(id, int(r.Backlog)))
		}
		if e != 0 {
			closeF()
			return errReply(e)
		}
		// A listener's stream end is replaced by the SEQPACKET end f.
		if old := s.takePending(id); old != nil {
			old.Close()
		}
		return errReply(s.eng.Listen(id, int(r.Backlog), f))
	case *msgproto.Connect:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		ap, e := addrPort(r.Addr)
		if e != 0 {
			return errReply(e)
		}
		stream := s.takePending(id)
		return errReply(s.eng.Connect(id, ap, stream, r.Flags&msgproto.ConnectNonblock != 0))
	case *msgproto.Shutdown:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		return errReply(s.eng.Shutdown(id, int(r.How)))
	case *msgproto.Close:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		s.release(id)
		return errReply(0)
	case *msgproto.Setsockopt:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		return errReply(s.eng.Setsockopt(id, int(r.Level), int(r.Name), r.Value))
	case *msgproto.Getsockopt:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		v, e := s.eng.Getsockopt(id, int(r.Level), int(r.Name), int(r.MaxLen))
		if e != 0 {
			return errReply(e)
		}
		return &msgproto.OptReply{Value: v}
	case *msgproto.Getsockname, *msgproto.Getpeername:
		closeF()
		var global uint64
		get := s.eng.Getsockname
		if g, ok := r.(*msgproto.Getsockname); ok {
			global = g.Sock
		} else {
			global = r.(*msgproto.Getpeername).Sock
			get = s.eng.Getpeername
		}
		id, e := sockOf(global)
		if e != 0 {
			return errReply(e)
		}
		ap, e := get(id)
		if e != 0 {
			return errReply(e)
		}
		return &msgproto.AddrReply{Addr: msgproto.AddrFromNetip(ap)}
	case *msgproto.Ioctl:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		res, arg, e := s.eng.Ioctl(id, uint(r.Request), r.Arg)
		if e != 0 {
			return errReply(e)
		}
		return &msgproto.IoctlReply{Result: res, Arg: arg}
	case *msgproto.SendTo:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		to, e := addrPort(r.Addr)
		if e != 0 {
			return errReply(e)
		}
		n, e := s.eng.SendTo(id, r.Payload, to, int(r.Flags))
		if e != 0 {
			return errReply(e)
		}
		return &msgproto.Reply{Value: int64(n)}
	case *msgproto.RecvFrom:
		closeF()
		id, e := sockOf(r.Sock)
		if e != 0 {
			return errReply(e)
		}
		p, from, rflags, full, e := s.eng.RecvFrom(ctx, id, int(r.MaxLen), int(r.Flags))
		if e != 0 {
			return errReply(e)
		}
		return &msgproto.RecvReply{Addr: msgproto.AddrFromNetip(from), Flags: int32(rflags), FullLen: uint32(full), Payload: p}
	default:
		closeF()
		return errReply(unix.EOPNOTSUPP)
	}
}

func (s *Server) socket(group uint64, r *msgproto.Socket, f *os.File) msgproto.Message {
	id, e := s.eng.Socket(int(r.Domain), int(r.SockType), int(r.Protocol))
	if e != 0 {
		if f != nil {
			f.Close()
		}
		return errReply(e)
	}
	s.mu.Lock()
	s.owner[id] = group
	s.mu.Unlock()
	if f != nil {
		if int(r.SockType)&0xf == unix.SOCK_DGRAM {
			if e := s.eng.AttachDatagram(id, f); e != 0 {
				s.eng.Close(id)
				return errReply(e)
			}
		} else {
			s.mu.Lock()
			s.pending[id] = f
			s.mu.Unlock()
		}
	}
	s.placed.Add(1)
	s.loadChanged()
	return &msgproto.SocketReply{Sock: s.global(id)}
}

// RunProcess is the body of an INS process: it reads its ProcessConfig,
// builds the stack on the link interfaces of its network namespace, confines
// itself and serves the daemon on ctrlFile until the daemon hangs up.
func RunProcess(ctx context.Context, ctrlFile *os.File, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var cfg ProcessConfig
	if err := json.Unmarshal([]byte(os.Getenv(ConfigEnv)), &cfg); err != nil {
		return fmt.Errorf("ins: config from %s: %w", ConfigEnv, err)
	}
	os.Unsetenv(ConfigEnv)
	log = log.With("ins", cfg.Stack.ID)
	cfg.Stack.Logger = log
	mit, err := mitigate.New(cfg.Stack.ID, cfg.Mitigation, log)
	if err != nil {
		return fmt.Errorf("ins %d: %w", cfg.Stack.ID, err)
	}
	cfg.Stack.Taps = append(cfg.Stack.Taps, mit.Tap())
	st, err := netstack.New(cfg.Stack)
	if err != nil {
		return fmt.Errorf("ins %d: %w", cfg.Stack.ID, err)
	}
	defer st.Close()
	ch := ctrl.New(ctrlFile)
	srv := NewServer(cfg.Stack.ID, st, cfg.DNS, ch, log)
	if err := srv.setMitigation(mit); err != nil {
		return fmt.Errorf("ins %d: %w", cfg.Stack.ID, err)
	}
	srv.EnableFlows(cfg.Flows)
	srv.SetDrain(cfg.Drain)
	if cfg.Successor.Socket != "" {
		sc, err := ListenSuccessor(cfg.Successor)
		if err != nil {
			// Served all the same, but it ends with its daemon.
			log.Warn("no successor socket: this INS will not outlive its daemon", "err", err)
		}
		if sc != nil {
			srv.SetSuccessor(sc, cancel)
			cfg.Sandbox.AcceptFD = sc.FD()
		}
		// The log pipe's reader dies with the daemon: a write must fail
		// with EPIPE, not end the process with SIGPIPE.
		signal.Ignore(unix.SIGPIPE)
	}
	if !cfg.NoSandbox {
		if err := sandbox.Enter(cfg.Sandbox); err != nil {
			return fmt.Errorf("ins %d: %w", cfg.Stack.ID, err)
		}
	}
	log.Info("INS serving", "pid", os.Getpid(), "uplinks", len(cfg.Stack.Uplinks))
	if err := srv.Serve(ctx); err != nil {
		return fmt.Errorf("ins %d: %w", cfg.Stack.ID, err)
	}
	return nil
}
