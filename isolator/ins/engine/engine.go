// Package engine is an INS's socket engine: it serves the socket calls of
// preloaded applications on the INS's netstack with Linux errno semantics
// (sockets, options, listeners, UDP) and moves their bytes over AF_UNIX
// socketpairs (the pump). It picks uplinks through an UplinkChooser and
// knows nothing of NIC setup, the control channel or the INS process.
package engine

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// SockID names one socket inside an Engine. IDs are never reused by an engine;
// zero is never a valid ID.
type SockID uint64

// UplinkChooser picks the NIC and local address a new outbound flow leaves by.
// An error from ChooseUplink that is a unix.Errno is returned to the app as is;
// any other error becomes ENETUNREACH.
type UplinkChooser interface {
	ChooseUplink(remote netip.AddrPort, transport tcpip.TransportProtocolNumber) (tcpip.NICID, tcpip.Address, error)
}

// Options tunes an Engine. The zero value is usable.
type Options struct {
	// EncodeAccept builds the body of the message that announces an accepted
	// connection on a listener's SOCK_SEQPACKET end. Nil selects
	// AppendAcceptRecord.
	EncodeAccept func(listener, sock SockID, local, peer netip.AddrPort) []byte
	// Logger receives diagnostics; nil uses slog.Default().
	Logger *slog.Logger
	// MaxSockets bounds the number of live socket records; Socket returns
	// ENFILE beyond it. Zero means 1<<20.
	MaxSockets int
	// Workers is the number of goroutines that run the data pump; zero means 2.
	Workers int
	// OnRelease, if set, is called after a socket record is released (the
	// engine's live socket count fell). It must not block.
	OnRelease func()
	// Released, if set, is called once for every socket record the engine
	// frees (whatever ended it), outside the engine's locks.
	Released func(id SockID)
}

// Stats is a snapshot of an engine's counters.
type Stats struct {
	Sockets      int    // live socket records
	Listening    int    // sockets in LISTEN
	Connecting   int    // stream sockets with a connect in progress
	Connected    int    // stream sockets whose data pump runs
	Datagram     int    // datagram sockets
	Accepted     uint64 // connections delivered to apps by listeners
	BytesToNet   uint64 // stream bytes moved from apps to the network
	BytesFromNet uint64 // stream bytes moved from the network to apps
	DgramsToNet  uint64 // datagrams sent for apps
	DgramsToApp  uint64 // datagrams delivered to apps over attached sockets
	DgramsDrop   uint64 // datagrams from apps dropped (malformed or refused)
}

// Engine serves socket calls on one netstack. All methods are safe for
// concurrent use. Everything passed in is treated as hostile: unknown IDs,
// wrong lengths and bad values yield errnos, never panics.
type Engine struct {
	st      *stack.Stack
	chooser UplinkChooser
	opts    Options
	log     *slog.Logger
	loop    *loop

	mu    sync.Mutex
	socks map[SockID]*sock
	next  SockID

	rmemMax int
	wmemMax int
	limits  engineLimits // see engine_limits.go

	accepted     atomic.Uint64
	bytesToNet   atomic.Uint64
	bytesFromNet atomic.Uint64
	dgramsToNet  atomic.Uint64
	dgramsToApp  atomic.Uint64
	dgramsDrop   atomic.Uint64
}

type sockState uint8

const (
	stInit       sockState = iota // created, maybe bound
	stListening                   // Listen succeeded
	stConnecting                  // stream connect in progress
	stConnected                   // connected (stream pump running or UDP connected)
	stFailed                      // a connect failed
	stDone                        // stream finished (both directions, reset, or hang-up)
)

// sock is one socket record. Fields below mu are guarded by it.
type sock struct {
	id     SockID
	e      *Engine
	family int // unix.AF_INET or unix.AF_INET6
	typ    int // unix.SOCK_STREAM or unix.SOCK_DGRAM
	proto  int // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	ep     tcpip.Endpoint
	wq     *waiter.Queue
	// stamp: SO_TIMESTAMP (ctlStamp) or SO_TIMESTAMPNS (ctlStampNS) is
	// on: received datagrams carry their receive time (dgramctl.go).
	stamp atomic.Uint32

	mu       sync.Mutex
	state    sockState
	soErr    unix.Errno // pending error reported once by SO_ERROR
	closeReq bool       // Close was called
	attDone  bool       // the attached kernel end is finished
	// appShutWR records a successful write shutdown of a stream by the
	// app. The shim asks before it shuts its own end, so when the pump
	// reads end-of-file from a stream without it, the app's last
	// descriptor is gone (see streamConn.appGone).
	appShutWR atomic.Bool
	conn      *streamConn
	lis       *listener
	dg        *dgramPump
	o         sockOpts
	peer      netip.AddrPort // remote address once connected
	backlog   int            // backlog asked for by listen(2)
	counted   bool           // counted as accepted from peer (see admit)
	// connUnreported: a nonblocking connect succeeded and no connect
	// call has reported it yet.
	connUnreported bool
}

// New returns an engine serving sockets on s. A nil chooser lets the
// stack's routing table choose the uplink of outbound flows. Call Stop to
// release it.
func New(s *stack.Stack, chooser UplinkChooser, opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxSockets <= 0 {
		opts.MaxSockets = 1 << 20
	}
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.EncodeAccept == nil {
		opts.EncodeAccept = func(l, c SockID, local, peer netip.AddrPort) []byte {
			return AppendAcceptRecord(nil, l, c, local, peer)
		}
	}
	e := &Engine{
		st:      s,
		chooser: chooser,
		opts:    opts,
		log:     opts.Logger.With("component", "ins.engine"),
		socks:   make(map[SockID]*sock),
		rmemMax: readSysctl("/proc/sys/net/core/rmem_max", 212992),
		wmemMax: readSysctl("/proc/sys/net/core/wmem_max", 212992),
	}
	l, err := newLoop(opts.Workers, e.log)
	if err != nil {
		// Without epoll nothing can be pumped; record it and let every
		// data-path call fail with the errno.
		e.log.Error("event loop unavailable", "err", err)
	}
	e.loop = l
	return e
}

func readSysctl(path string, def int) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || v <= 0 {
		return def
	}
	return v
}

// Stop closes every socket abruptly and stops the data pump. The engine must
// not be used afterwards.
func (e *Engine) Stop() {
	if e.loop != nil {
		e.loop.stop()
	}
	e.mu.Lock()
	socks := make([]*sock, 0, len(e.socks))
	for _, s := range e.socks {
		socks = append(socks, s)
	}
	e.socks = map[SockID]*sock{}
	e.mu.Unlock()
	// The workers are gone: tearing down from here cannot race a run.
	for _, s := range socks {
		s.mu.Lock()
		c, l, d := s.conn, s.lis, s.dg
		s.mu.Unlock()
		switch {
		case c != nil && c.connecting:
			c.failConnect(unix.ECONNABORTED)
		case c != nil:
			c.teardown(true)
		case l != nil:
			l.teardown()
		case d != nil:
			d.teardown()
		}
		s.ep.Abort()
	}
}

// Socket creates a socket like socket(2). domain is AF_INET or AF_INET6; typ
// is SOCK_STREAM or SOCK_DGRAM, optionally or'ed with SOCK_NONBLOCK and
// SOCK_CLOEXEC (which concern only the app's fd and are ignored here); proto
// is 0 or the matching IPPROTO_TCP / IPPROTO_UDP. Errors follow Linux:
// EAFNOSUPPORT for another domain, EINVAL for bad type bits or protocol
// range, ESOCKTNOSUPPORT for another type, EPROTONOSUPPORT for a mismatched
// protocol, ENFILE when the engine is full.
func (e *Engine) Socket(domain, typ, proto int) (SockID, unix.Errno) {
	if domain < 0 || domain >= unix.AF_MAX {
		return 0, unix.EAFNOSUPPORT
	}
	if typ&^(unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC|0xf) != 0 {
		return 0, unix.EINVAL
	}
	base := typ & 0xf
	if base < 1 || base > unix.SOCK_PACKET {
		return 0, unix.EINVAL
	}
	if domain != unix.AF_INET && domain != unix.AF_INET6 {
		return 0, unix.EAFNOSUPPORT
	}
	if proto < 0 || proto >= 263 /* IPPROTO_MAX */ {
		return 0, unix.EINVAL
	}
	var tp tcpip.TransportProtocolNumber
	switch base {
	case unix.SOCK_STREAM:
		if proto != 0 && proto != unix.IPPROTO_TCP {
			return 0, unix.EPROTONOSUPPORT
		}
		proto, tp = unix.IPPROTO_TCP, tcp.ProtocolNumber
	case unix.SOCK_DGRAM:
		if proto != 0 && proto != unix.IPPROTO_UDP {
			return 0, unix.EPROTONOSUPPORT
		}
		proto, tp = unix.IPPROTO_UDP, udp.ProtocolNumber
	default:
		return 0, unix.ESOCKTNOSUPPORT
	}
	np := ipv4.ProtocolNumber
	if domain == unix.AF_INET6 {
		np = ipv6.ProtocolNumber
	}
	e.mu.Lock()
	full := len(e.socks) >= e.opts.MaxSockets
	e.mu.Unlock()
	if full {
		return 0, unix.ENFILE
	}
	wq := new(waiter.Queue)
	ep, terr := e.st.NewEndpoint(tp, np, wq)
	if terr != nil {
		if _, ok := terr.(*tcpip.ErrUnknownProtocol); ok {
			return 0, unix.EAFNOSUPPORT
		}
		return 0, ErrnoOf(terr)
	}
	if tp == tcp.ProtocolNumber {
		// Linux default: Nagle's algorithm on (TCP_NODELAY 0).
		ep.SocketOptions().SetDelayOption(true)
	}
	if domain == unix.AF_INET6 {
		// Linux default net.ipv6.bindv6only=0: dual stack.
		ep.SocketOptions().SetV6Only(false)
	}
	return e.insert(&sock{family: domain, typ: base, proto: proto, ep: ep, wq: wq}), 0
}

// insert registers s under a fresh ID.
func (e *Engine) insert(s *sock) SockID {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.next++
	s.id = e.next
	s.e = e
	e.socks[s.id] = s
	return s.id
}

func (e *Engine) lookup(id SockID) (*sock, unix.Errno) {
	e.mu.Lock()
	s := e.socks[id]
	e.mu.Unlock()
	if s == nil {
		return nil, unix.EBADF
	}
	return s, 0
}

func (e *Engine) forget(id SockID) {
	e.mu.Lock()
	s := e.socks[id]
	delete(e.socks, id)
	e.mu.Unlock()
	if s != nil {
		e.unadmit(s)
		if e.opts.OnRelease != nil {
			e.opts.OnRelease()
		}
		if e.opts.Released != nil {
			e.opts.Released(id)
		}
	}
}

// Live returns the number of live socket records.
func (e *Engine) Live() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.socks)
}

// toFull converts an app address for a socket of the given family. A 4-byte
// netip.Addr stands for a sockaddr_in, a 16-byte one for a sockaddr_in6.
// dgram selects the datagram rules, under which an AF_INET6 socket accepts a
// sockaddr_in as an IPv4 destination.
func toFull(family int, ap netip.AddrPort, dgram bool) (tcpip.FullAddress, unix.Errno) {
	a := ap.Addr()
	switch family {
	case unix.AF_INET:
		if !a.Is4() {
			return tcpip.FullAddress{}, unix.EAFNOSUPPORT
		}
	case unix.AF_INET6:
		if a.Is4() {
			if !dgram {
				return tcpip.FullAddress{}, unix.EAFNOSUPPORT
			}
			a = netip.AddrFrom16(a.As16())
		}
	}
	fa := tcpip.FullAddress{Port: ap.Port()}
	if !a.IsUnspecified() {
		fa.Addr = tcpip.AddrFromSlice(a.AsSlice())
	}
	return fa, 0
}

// shortForV6 reports an IPv4 address (from a sockaddr_in, 16 bytes) given
// to an AF_INET6 socket's bind, or its stream connect: Linux checks the
// length first (SIN6_LEN_RFC2133, 24 bytes) and answers EINVAL.
func shortForV6(family int, ap netip.AddrPort) bool {
	return family == unix.AF_INET6 && ap.Addr().Is4()
}

// fromFull converts a netstack address into the form the app expects for its
// socket family: 4-byte for AF_INET, 16-byte (IPv4-mapped when needed) for
// AF_INET6.
func fromFull(family int, fa tcpip.FullAddress) netip.AddrPort {
	var a netip.Addr
	switch fa.Addr.Len() {
	case 4:
		a = netip.AddrFrom4(fa.Addr.As4())
	case 16:
		a = netip.AddrFrom16(fa.Addr.As16())
	default:
		if family == unix.AF_INET6 {
			a = netip.IPv6Unspecified()
		} else {
			a = netip.IPv4Unspecified()
		}
	}
	if family == unix.AF_INET6 && a.Is4() {
		a = netip.AddrFrom16(a.As16())
	}
	if family == unix.AF_INET {
		a = a.Unmap()
	}
	return netip.AddrPortFrom(a, fa.Port)
}

// Bind binds like bind(2): EINVAL if already bound or connected,
// EAFNOSUPPORT for an address of the other family, EADDRNOTAVAIL for an
// address the stack does not own, EADDRINUSE for a taken port.
func (e *Engine) Bind(id SockID, addr netip.AddrPort) unix.Errno {
	s, errno := e.lookup(id)
	if errno != 0 {
		return errno
	}
	if !addr.IsValid() || shortForV6(s.family, addr) {
		return unix.EINVAL
	}
	fa, errno := toFull(s.family, addr, false)
	if errno != 0 {
		return errno
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stInit {
		return unix.EINVAL
	}
	if err := s.ep.Bind(fa); err != nil {
		return ErrnoOf(err)
	}
	return 0
}

// Getsockname returns the local address like getsockname(2); an unbound
// socket reports the unspecified address with port 0.
func (e *Engine) Getsockname(id SockID) (netip.AddrPort, unix.Errno) {
	s, errno := e.lookup(id)
	if errno != 0 {
		return netip.AddrPort{}, errno
	}
	fa, err := s.ep.GetLocalAddress()
	if err != nil {
		fa = tcpip.FullAddress{}
	}
	return fromFull(s.family, fa), 0
}

// Getpeername returns the remote address like getpeername(2): ENOTCONN
// unless connected (a finished or reset stream is no longer connected).
func (e *Engine) Getpeername(id SockID) (netip.AddrPort, unix.Errno) {
	s, errno := e.lookup(id)
	if errno != 0 {
		return netip.AddrPort{}, errno
	}
	s.mu.Lock()
	st := s.state
	s.mu.Unlock()
	if st != stConnected {
		return netip.AddrPort{}, unix.ENOTCONN
	}
	fa, err := s.ep.GetRemoteAddress()
	if err != nil {
		return netip.AddrPort{}, unix.ENOTCONN
	}
	return fromFull(s.family, fa), 0
}

// Shutdown validates and applies shutdown(2). For a connected stream the shim
// applies the write half to its own socketpair end after this call succeeds:
// SHUT_WR there queues the end-of-file behind the bytes already written, and
// the pump turns it into a FIN after them. The shim never shuts the read side
// of its end (the engine would take the resulting hang-up of its end for the
// app's last close); SHUT_RD here stops the netstack receiving, and the pump
// then ends the app's read side (it reads EOF once the queued bytes are read).
// A successful write shutdown is recorded (sock.appShutWR): it tells the
// pump that the end-of-file it will read is a half-close, not the app's
// last close.
// Errors, as Linux's inet_shutdown: EINVAL for a bad how, ENOTCONN when the
// socket is not connected or its connection is over (TCP_CLOSE, which
// includes TIME_WAIT after FINs both ways and a reset). A listener stops
// listening on SHUT_RD.
func (e *Engine) Shutdown(id SockID, how int) unix.Errno {
	s, errno := e.lookup(id)
	if errno != 0 {
		return errno
	}
	if how < unix.SHUT_RD || how > unix.SHUT_RDWR {
		return unix.EINVAL
	}
	s.mu.Lock()
	st := s.state
	s.mu.Unlock()
	if s.typ == unix.SOCK_DGRAM && (st == stInit || st == stConnected || st == stDone) {
		// As Linux, a bound socket that is not connected is shut
		// down all the same and gets ENOTCONN. A read shutdown ends
		// the app's end once the datagrams queued before it are
		// delivered (dgramPump.run).
		var f tcpip.ShutdownFlags
		if how != unix.SHUT_WR {
			f |= tcpip.ShutdownRead
		}
		if how != unix.SHUT_RD {
			f |= tcpip.ShutdownWrite
		}
		return ErrnoOf(s.ep.Shutdown(f))
	}
	switch st {
	case stListening:
		if how == unix.SHUT_WR {
			return 0
		}
		s.ep.Shutdown(tcpip.ShutdownRead)
		return 0
	case stConnected, stDone:
		if streamClosed(s.ep) {
			return unix.ENOTCONN
		}
		if how != unix.SHUT_WR {
			s.ep.Shutdown(tcpip.ShutdownRead)
		}
		if how != unix.SHUT_RD {
			s.appShutWR.Store(true)
		}
		return 0
	case stConnecting:
		// Linux disconnects a socket in SYN-SENT on any shutdown: the
		// connect fails with ECONNRESET. The pump ends it and closes
		// the INS end before this returns, the filler still queued, so
		// the app's end polls POLLHUP|POLLERR at once as Linux's does.
		s.mu.Lock()
		c := s.conn
		s.mu.Unlock()
		if c == nil || s.typ != unix.SOCK_STREAM {
			return 0
		}
		c.abortConn.Store(true)
		e.loop.schedule(c)
		<-c.connDone
		s.mu.Lock()
		st = s.state
		s.mu.Unlock()
		if st == stConnected {
			return e.Shutdown(id, how) // established meanwhile
		}
		return 0
	default:
		return unix.ENOTCONN
	}
}

// streamClosed reports whether a TCP endpoint that was connected is in what
// Linux calls TCP_CLOSE: the connection was reset or both FINs were exchanged
// and acknowledged (Linux moves the socket to TCP_CLOSE when it hands the
// connection to a TIME_WAIT mini-socket).
func streamClosed(ep tcpip.Endpoint) bool {
	switch tcp.EndpointState(ep.State()) {
	case tcp.StateTimeWait, tcp.StateClose, tcp.StateError:
		return true
	}
	return false
}

// Close tells the engine that the app closed the socket's descriptor. It is
// idempotent. A socket without an attached kernel end is released at once.
// For a socket with one (a stream, listener or datagram socketpair end) the
// kernel hang-up of that end is the ground truth: the record is released when
// both Close was called and the end hung up (or the stream finished), so a
// descriptor still held by a forked process keeps working. The daemon must
// call Close for every socket of an app process that exits.
func (e *Engine) Close(id SockID) {
	s, errno := e.lookup(id)
	if errno != 0 {
		return
	}
	s.mu.Lock()
	if s.closeReq {
		s.mu.Unlock()
		return
	}
	s.closeReq = true
	c, l, d, done := s.conn, s.lis, s.dg, s.attDone
	s.mu.Unlock()
	switch {
	case c == nil && l == nil && d == nil:
		s.ep.Close()
		e.forget(id)
	case done:
		e.forget(id)
	case c != nil:
		e.loop.schedule(c)
	case l != nil:
		e.loop.schedule(l)
	case d != nil:
		e.loop.schedule(d)
	}
}

// attachmentDone records that the socket's kernel end is finished and
// releases the record if Close was already called.
func (s *sock) attachmentDone() {
	s.mu.Lock()
	s.attDone = true
	release := s.closeReq
	s.mu.Unlock()
	if release {
		s.e.forget(s.id)
	}
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	socks := make([]*sock, 0, len(e.socks))
	for _, s := range e.socks {
		socks = append(socks, s)
	}
	e.mu.Unlock()
	st := Stats{
		Sockets:      len(socks),
		Accepted:     e.accepted.Load(),
		BytesToNet:   e.bytesToNet.Load(),
		BytesFromNet: e.bytesFromNet.Load(),
		DgramsToNet:  e.dgramsToNet.Load(),
		DgramsToApp:  e.dgramsToApp.Load(),
		DgramsDrop:   e.dgramsDrop.Load(),
	}
	for _, s := range socks {
		s.mu.Lock()
		switch {
		case s.typ == unix.SOCK_DGRAM:
			st.Datagram++
		case s.state == stListening:
			st.Listening++
		case s.state == stConnecting:
			st.Connecting++
		case s.state == stConnected:
			st.Connected++
		}
		s.mu.Unlock()
	}
	return st
}

// AcceptRecordSize is the size of the record AppendAcceptRecord writes.
const AcceptRecordSize = 56

// AppendAcceptRecord appends the engine's built-in accept announcement, used
// when Options.EncodeAccept is nil. Layout, host byte order:
//
//	0  u64 listener SockID
//	8  u64 accepted SockID
//	16 local address: [16]byte addr (IPv4 in the first 4 bytes),
//	   u16 port, u16 family (AF_INET or AF_INET6)
//	36 peer address, same 20-byte layout
//
// It is 56 bytes long.
func AppendAcceptRecord(dst []byte, listener, sock SockID, local, peer netip.AddrPort) []byte {
	dst = binary.NativeEndian.AppendUint64(dst, uint64(listener))
	dst = binary.NativeEndian.AppendUint64(dst, uint64(sock))
	for _, ap := range []netip.AddrPort{local, peer} {
		var a [16]byte
		fam := unix.AF_INET6
		if ap.Addr().Is4() {
			fam = unix.AF_INET
			a4 := ap.Addr().As4()
			copy(a[:], a4[:])
		} else if ap.Addr().IsValid() {
			a = ap.Addr().As16()
		}
		dst = append(dst, a[:]...)
		dst = binary.NativeEndian.AppendUint16(dst, ap.Port())
		dst = binary.NativeEndian.AppendUint16(dst, uint16(fam))
	}
	return dst
}

// End is the network end of one socket, as Ends reports it.
type End struct {
	ID SockID
	// Proto is unix.IPPROTO_TCP or unix.IPPROTO_UDP.
	Proto int
	// Local is the bound address (zero port: not bound).
	Local tcpip.FullAddress
	// Remote is the peer; Connected says whether there is one.
	Remote    tcpip.FullAddress
	Connected bool
}

// Ends returns the local and remote address of every socket whose local
// address is known, in no order. It takes the engine's lock only to copy
// the socket list.
func (e *Engine) Ends() []End {
	e.mu.Lock()
	socks := make([]*sock, 0, len(e.socks))
	for _, k := range e.socks {
		socks = append(socks, k)
	}
	e.mu.Unlock()
	out := make([]End, 0, len(socks))
	for _, k := range socks {
		la, err := k.ep.GetLocalAddress()
		if err != nil {
			continue
		}
		end := End{ID: k.id, Proto: k.proto, Local: la}
		if ra, err := k.ep.GetRemoteAddress(); err == nil && ra.Port != 0 {
			end.Remote, end.Connected = ra, true
		}
		out = append(out, end)
	}
	return out
}
