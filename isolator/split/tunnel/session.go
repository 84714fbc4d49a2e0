// Package tunnel is the split tunnel between two isolators: one reliable,
// encrypted byte stream striped over several datagram subflows (Links),
// one per uplink pair. A Session is a net.Conn; yamux multiplexes app
// streams over it (see Mux).
//
// Every packet is sealed by package seal with keys from a Noise IK
// handshake. Inside, the byte stream is cut into frames with data sequence
// numbers (DSN). Each frame is assigned to the path where it is expected
// to arrive first (queue delay + RTT/2 + size/rate), sent when that path's
// congestion window allows, acknowledged per path (path sequence numbers,
// SACK ranges) and, when lost on one path, sent again on another. The
// receiver reorders frames in a buffer bounded by the flow-control window
// it advertises. Idle paths are probed every ProbeEvery; a path silent for
// DownAfter is taken out and its frames go to the others.
package tunnel

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpshim/mpshim/isolator/split/seal"
)

// Sizes of frames and packets.
const (
	// maxPacket is the largest datagram sent: fits a 1500-byte MTU with
	// IPv6 and UDP headers.
	maxPacket = 1452
	// MaxFrame is the most stream bytes one DATA frame carries.
	MaxFrame = maxPacket - seal.Overhead - pathHeaderLen - dataHeaderLen
	// DefaultWindow is the receive window in frames (about 22 MiB): it
	// must cover what the fast paths deliver while the frame the reader
	// waits for crosses the slowest path or is sent again.
	DefaultWindow = 16384
	// maxQueued bounds the frames assigned to paths but not yet sent;
	// writers wait beyond it. It must cover the spread of path delays at
	// full rate so that slow paths get frames at all.
	maxQueued = 2048
	// ackEvery is how many ack-eliciting packets a path receives before
	// it acknowledges at once; fewer wait for the next tick.
	ackEvery = 4
	// tick is the period of the timer loop (delayed ACKs, RTOs, probes).
	tick = 2 * time.Millisecond
	// lateTick: a timer round this much after the previous one means the
	// process was not scheduled; settleAfterLate is how long silence and
	// timeouts are then not judged.
	lateTick        = 25 * time.Millisecond
	settleAfterLate = 50 * time.Millisecond
	// closeWait bounds how long Close waits for the peer to acknowledge
	// everything.
	closeWait = 3 * time.Second
)

// Config configures one side of a session.
type Config struct {
	// Local is this isolator's static key pair.
	Local seal.KeyPair
	// Peer is the other isolator's static public key.
	Peer seal.PublicKey
	// Links are the subflows, in the same order on both sides.
	Links []Link
	// Rekey says when the send key changes.
	Rekey seal.RekeyPolicy
	// Overlap is how long the previous receive key stays valid.
	Overlap time.Duration
	// Window is the receive window in frames; 0 means DefaultWindow.
	Window int
	// Timeout ends the session when no path was heard from for this
	// long; 0 means SessionTimeout.
	Timeout time.Duration
	// Log receives events; nil means slog.Default().
	Log *slog.Logger
}

// sframe is a frame of the outgoing stream until the peer has it.
type sframe struct {
	dsn   uint64
	data  []byte
	fin   bool
	path  int  // path it is queued or in flight on
	acked bool // the peer has it; drop wherever it is found
	sends int
}

// Session is one end of a split tunnel; it implements net.Conn for one
// reliable byte stream.
type Session struct {
	cfg       Config
	log       *slog.Logger
	initiator bool
	localID   uint32
	peerID    uint32
	send      *seal.Sender
	recv      *seal.Receiver
	window    uint64
	timeout   time.Duration

	mu    sync.Mutex
	cond  *sync.Cond
	paths []*path

	// Send side.
	tail      *sframe // the frame enqueued last (Write adds to it while unsent)
	nextDSN   uint64
	unacked   map[uint64]*sframe
	queued    int
	peerCum   uint64
	peerLimit uint64
	finSent   bool

	// Receive side.
	rcum     uint64            // every frame below has arrived
	rbuf     map[uint64][]byte // arrived above rcum
	rfin     uint64            // DSN of the FIN frame + 1, 0 until known
	ready    [][]byte          // in order, not yet read
	consumed uint64            // frames fully read
	advLimit uint64            // last limit advertised
	peerGone bool              // CLOSE received
	readDL   time.Time
	writeDL  time.Time
	closed   bool
	closeErr error
	dlTimers [2]*time.Timer

	// Handshake (initiator side until established).
	hsDone         chan struct{}
	hsOnce         sync.Once
	initMsg        []byte // responder: the INIT answered
	respMsg        []byte // responder: the answer, re-sent for a repeated INIT
	initiatorState *seal.Initiator
	initTime       uint64    // responder: the accepted INIT's clock
	lastInitCheck  time.Time // responder: last time a different INIT was verified
	established    atomic.Bool
	macIn, macOut  [32]byte // mac1 keys of handshake packets to us and to the peer (hsguard.go)

	lastTick time.Time // timer loop: previous round
	lastLate time.Time // timer loop: last round that ran late
	done     chan struct{}
	stopped  chan struct{} // closed when stop has stopped everything
	stopOnce sync.Once
	wg       sync.WaitGroup
	counters Counters
}

// Counters are session-wide event counts.
type Counters struct {
	// Dropped counts sealed packets refused (by seal's reasons) and
	// malformed plaintexts.
	Dropped   seal.Drops
	Malformed uint64
	// Retransmits counts frames sent again after a loss or path failure.
	Retransmits uint64
	// Duplicates counts frames received twice.
	Duplicates uint64
	// OverWindow counts frames refused beyond the receive window.
	OverWindow uint64
	// PathDown counts paths taken out.
	PathDown uint64
	// Handshake counts handshake packets dropped unread (hsguard.go).
	Handshake HandshakeDrops
}

var errClosed = errors.New("tunnel: session closed")

// ErrTimeout ends a session whose peer went silent on every path.
var ErrTimeout = errors.New("tunnel: peer silent")

// SessionTimeout is how long a session lives with no path heard from.
const SessionTimeout = 10 * time.Second

func newSession(cfg Config, initiator bool) (*Session, error) {
	if len(cfg.Links) == 0 || len(cfg.Links) > 255 {
		return nil, fmt.Errorf("tunnel: %d links, want 1..255", len(cfg.Links))
	}
	if cfg.Peer == (seal.PublicKey{}) {
		return nil, errors.New("tunnel: no peer key")
	}
	s := &Session{
		cfg:       cfg,
		log:       cfg.Log,
		initiator: initiator,
		window:    uint64(cfg.Window),
		unacked:   map[uint64]*sframe{},
		rbuf:      map[uint64][]byte{},
		hsDone:    make(chan struct{}),
		done:      make(chan struct{}),
		stopped:   make(chan struct{}),
		macIn:     mac1Key(cfg.Local.Public),
		macOut:    mac1Key(cfg.Peer),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.window == 0 {
		s.window = DefaultWindow
	}
	s.timeout = cfg.Timeout
	if s.timeout <= 0 {
		s.timeout = SessionTimeout
	}
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("tunnel: session id: %w", err)
	}
	s.localID = binary.BigEndian.Uint32(id[:])
	s.cond = sync.NewCond(&s.mu)
	now := time.Now()
	for i, l := range cfg.Links {
		s.paths = append(s.paths, newPath(i, l, now))
	}
	s.peerLimit = 0
	for _, p := range s.paths {
		s.wg.Add(1)
		go s.reader(p)
	}
	return s, nil
}

// Dial runs the handshake as initiator over every link and returns the
// established session. The context bounds the handshake only.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	s, err := newSession(cfg, true)
	if err != nil {
		return nil, err
	}
	var payload [12]byte
	binary.BigEndian.PutUint32(payload[:], s.localID)
	binary.BigEndian.PutUint64(payload[4:], uint64(time.Now().UnixNano()))
	h, msg, err := seal.StartHandshake(cfg.Local, cfg.Peer, payload[:])
	if err != nil {
		s.abort()
		return nil, err
	}
	s.mu.Lock()
	s.initiatorState = h
	s.mu.Unlock()
	pkt := withMac1(s.macOut, append([]byte{typeInit, 0, 0, 0}, msg...))
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		for _, p := range s.paths {
			_ = p.link.WritePacket(pkt)
		}
		select {
		case <-s.hsDone:
			s.start()
			return s, nil
		case <-ctx.Done():
			s.abort()
			return nil, fmt.Errorf("tunnel: handshake: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Accept waits as responder for the peer's handshake on any link and
// returns the established session.
func Accept(ctx context.Context, cfg Config) (*Session, error) {
	s, err := newSession(cfg, false)
	if err != nil {
		return nil, err
	}
	select {
	case <-s.hsDone:
		s.start()
		return s, nil
	case <-ctx.Done():
		s.abort()
		return nil, fmt.Errorf("tunnel: handshake: %w", ctx.Err())
	}
}

// Handshake packets travel in the clear (Noise protects their content):
//
//	INIT: 0x01, 3 zero bytes, Noise IK message 1 (payload: initiator's
//	      session id u32, unix time ns u64), mac1 (16 bytes, hsguard.go)
//	RESP: 0x02, 3 zero bytes, Noise IK message 2 (payload: responder's
//	      session id u32), mac1
const (
	typeInit = 1
	typeResp = 2
)

func (s *Session) handshakePacket(p *path, pkt []byte) {
	pkt, ok := checkMac1(s.macIn, pkt)
	if !ok || pkt[1]|pkt[2]|pkt[3] != 0 {
		s.mu.Lock()
		s.counters.Handshake.Mac++
		s.mu.Unlock()
		return
	}
	// Past mac1, a message costs Diffie-Hellman: at most hsRate a second
	// per path get that far.
	limited := func() bool {
		if p.hs.take(time.Now()) {
			return false
		}
		s.mu.Lock()
		s.counters.Handshake.Limited++
		s.mu.Unlock()
		return true
	}
	msg := pkt[4:]
	switch pkt[0] {
	case typeInit:
		if s.initiator {
			return
		}
		s.mu.Lock()
		if s.initMsg != nil {
			same := string(s.initMsg) == string(msg)
			resp := s.respMsg
			check := !same && time.Since(s.lastInitCheck) >= initCheckEvery
			if check {
				s.lastInitCheck = time.Now()
			}
			s.mu.Unlock()
			if same {
				_ = p.link.WritePacket(resp)
			} else if check {
				s.newerInit(msg)
			}
			return
		}
		s.mu.Unlock()
		if limited() {
			return
		}
		acc, err := seal.ReadHandshake(s.cfg.Local, msg)
		if err != nil {
			s.log.Debug("split: handshake refused", "link", p.link, "err", err)
			return
		}
		if acc.Peer != s.cfg.Peer || len(acc.Payload) != 12 {
			s.log.Warn("split: handshake from an unknown key", "link", p.link, "key", acc.Peer)
			return
		}
		var payload [4]byte
		binary.BigEndian.PutUint32(payload[:], s.localID)
		out, keys, err := acc.Reply(payload[:])
		if err != nil {
			return
		}
		resp := withMac1(s.macOut, append([]byte{typeResp, 0, 0, 0}, out...))
		s.mu.Lock()
		if s.initMsg != nil {
			s.mu.Unlock()
			return
		}
		s.initMsg, s.respMsg = append([]byte(nil), msg...), resp
		s.initTime = binary.BigEndian.Uint64(acc.Payload[4:])
		s.peerID = binary.BigEndian.Uint32(acc.Payload)
		s.keys(keys)
		s.mu.Unlock()
		_ = p.link.WritePacket(resp)
		s.hsOnce.Do(func() { close(s.hsDone) })
	case typeResp:
		if !s.initiator || limited() {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.initiatorState == nil {
			return
		}
		payload, keys, err := s.initiatorState.Finish(msg)
		if err != nil || len(payload) != 4 {
			s.log.Debug("split: handshake response refused", "link", p.link, "err", err)
			return
		}
		s.initiatorState = nil
		s.peerID = binary.BigEndian.Uint32(payload)
		s.keys(keys)
		s.hsOnce.Do(func() { close(s.hsDone) })
	}
}

// initCheckEvery bounds how often a responder verifies a different INIT
// (a Diffie-Hellman each) on an established session.
const initCheckEvery = 100 * time.Millisecond

// ErrPeerRestarted ends a responder's session when the peer starts a new
// handshake: it lost the session (restart), so this one is dead.
var ErrPeerRestarted = errors.New("tunnel: peer started a new session")

// newerInit ends the session if msg is an authentic INIT from the peer
// made after the one this session was accepted with.
func (s *Session) newerInit(msg []byte) {
	acc, err := seal.ReadHandshake(s.cfg.Local, msg)
	if err != nil || acc.Peer != s.cfg.Peer || len(acc.Payload) != 12 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if binary.BigEndian.Uint64(acc.Payload[4:]) > s.initTime {
		s.fail(ErrPeerRestarted)
	}
}

// keys installs the session keys; s.mu is held.
func (s *Session) keys(k seal.SessionKeys) {
	s.send = seal.NewSender(k.Send, s.cfg.Rekey)
	s.recv = seal.NewReceiver(k.Recv, s.localID, s.cfg.Overlap)
	s.peerLimit = s.window // the peer's window, equal by construction until its first ACK
	s.advLimit = s.window
	s.established.Store(true)
}

// start launches the senders and the timer after the handshake.
func (s *Session) start() {
	now := time.Now()
	s.mu.Lock()
	for _, p := range s.paths {
		p.lastRecv = now
	}
	s.mu.Unlock()
	for _, p := range s.paths {
		s.wg.Add(1)
		go s.sender(p)
		s.sendProbe(p)
	}
	s.wg.Add(1)
	go s.timer()
}

// abort tears down a session that never got established.
func (s *Session) abort() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.stop()
}

// reader receives the packets of one path.
func (s *Session) reader(p *path) {
	defer s.wg.Done()
	const batch = 32
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, batch)
	bl, isBatch := p.link.(BatchLink)
	var plain []byte
	var fr frames
	for {
		var (
			n   int
			err error
		)
		if isBatch {
			n, err = bl.ReadBatch(bufs, sizes)
		} else {
			sizes[0], err = p.link.ReadPacket(bufs[0])
			n = 1
		}
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ECONNREFUSED from an ICMP error
		}
		for i := range n {
			plain = s.packet(p, bufs[i][:sizes[i]], plain, &fr)
		}
	}
}

// packet handles one datagram received on p; plain is scratch space.
func (s *Session) packet(p *path, pkt, plain []byte, fr *frames) []byte {
	if len(pkt) > 0 && pkt[0] != seal.TypeData {
		s.handshakePacket(p, pkt)
		return plain
	}
	if !s.established.Load() {
		return plain
	}
	plain, _, err := s.recv.Open(plain[:0], pkt)
	if err != nil {
		return plain // counted by the receiver
	}
	if err := parseFrames(plain, fr); err != nil || int(fr.hdr.path) != p.id {
		s.mu.Lock()
		s.counters.Malformed++
		s.mu.Unlock()
		return plain
	}
	s.handle(p, fr)
	return plain
}

// handle processes an authenticated, parsed packet received on p.
func (s *Session) handle(p *path, fr *frames) {
	var ackNow bool
	s.mu.Lock()
	now := time.Now()
	p.lastRecv = now
	if !p.up {
		s.pathUp(p, now)
	}
	// Data first: a frame beyond the window is refused and its packet not
	// acknowledged, so that the peer sends it again later.
	accept := true
	for _, d := range fr.data {
		if d.dsn >= s.consumed+s.window {
			accept = false
		}
	}
	if accept {
		for _, d := range fr.data {
			s.receiveData(d)
		}
		// Every packet's number is recorded, so that ACK-only packets
		// leave no holes; only data and probes ask for an ACK.
		p.recordReceived(fr.hdr.seq, now)
		if fr.ackEliciting() {
			p.unacked++
			ackNow = fr.probe || p.unacked >= ackEvery
		}
	} else {
		s.counters.OverWindow++
	}
	for i := range fr.acks {
		s.receiveAck(&fr.acks[i], now)
	}
	if fr.close {
		s.peerGone = true
		s.cond.Broadcast()
	}
	var ack []byte
	if ackNow {
		ack = s.buildAck(p, now)
	}
	s.mu.Unlock()
	if ack != nil {
		s.seal(p, ack)
	}
}

// receiveData stores a data frame; s.mu is held.
func (s *Session) receiveData(d dataFrame) {
	if d.dsn < s.rcum {
		s.counters.Duplicates++
		return
	}
	if _, ok := s.rbuf[d.dsn]; ok {
		s.counters.Duplicates++
		return
	}
	if d.fin {
		s.rfin = d.dsn + 1
	}
	s.rbuf[d.dsn] = append([]byte(nil), d.data...)
	for {
		b, ok := s.rbuf[s.rcum]
		if !ok {
			break
		}
		delete(s.rbuf, s.rcum)
		if len(b) == 0 {
			s.consumed++ // the FIN frame: nothing to read
		} else {
			s.ready = append(s.ready, b)
		}
		s.rcum++
	}
	s.cond.Broadcast()
}

// receiveAck processes an ACK for the packets this side sent on path
// a.path; s.mu is held.
func (s *Session) receiveAck(a *ackFrame, now time.Time) {
	if a.cum > s.nextDSN {
		// Acknowledges frames never sent: a broken or hostile peer.
		s.counters.Malformed++
		return
	}
	if a.limit > s.peerLimit {
		s.peerLimit = a.limit
		s.cond.Broadcast()
	}
	if a.cum > s.peerCum {
		for d := s.peerCum; d < a.cum; d++ {
			if f, ok := s.unacked[d]; ok {
				f.acked = true
				delete(s.unacked, d)
			}
		}
		s.peerCum = a.cum
		s.cond.Broadcast()
	}
	if int(a.path) >= len(s.paths) {
		return
	}
	p := s.paths[a.path]
	if len(a.ranges) == 0 || len(p.inflight) == 0 {
		return
	}
	in := func(seq uint64) bool {
		for _, r := range a.ranges {
			if seq >= r.lo && seq <= r.hi {
				return true
			}
		}
		return false
	}
	keep := p.inflight[:0]
	var lost []sent
	for _, x := range p.inflight {
		switch {
		case in(x.seq):
			p.suspect = false
			p.inBytes -= x.size
			p.delivered += int64(x.size)
			p.deliveredAt = now
			// The sample's interval is the longer of the ACK and the
			// send intervals, so that ACKs arriving in a burst do not
			// inflate it.
			el := max(now.Sub(x.deliveredAt), x.at.Sub(x.firstSentAt))
			if el > 0 {
				// An app-limited sample only counts when it shows more
				// than is known: it says nothing of the path's limit.
				if r := float64(p.delivered-x.delivered) / el.Seconds(); !x.appLimited || r > p.btlbw() {
					p.rateSample(now, r)
				}
			}
			if x.at.After(p.lastAckedSentAt) {
				p.lastAckedSentAt = x.at
			}
			if x.seq == a.largest {
				p.rttSample(now.Sub(x.at) - time.Duration(a.delayUS)*time.Microsecond)
			}
			if x.f != nil && !x.f.acked {
				x.f.acked = true
				delete(s.unacked, x.f.dsn)
			}
		case x.seq+3 <= a.largest:
			p.inBytes -= x.size
			lost = append(lost, x)
		default:
			keep = append(keep, x)
		}
	}
	// Clear the tail so the dropped records' frames can be collected.
	for i := len(keep); i < len(p.inflight); i++ {
		p.inflight[i] = sent{}
	}
	p.inflight = keep
	p.updateCwnd()
	for _, x := range lost {
		if x.f != nil {
			p.lost++
			s.resend(x.f, p)
		}
	}
	s.kickAll()
}

// resend puts a lost frame at the front of the best path other than from;
// s.mu is held.
func (s *Session) resend(f *sframe, from *path) {
	if f == nil || f.acked {
		return
	}
	s.counters.Retransmits++
	from.retx++
	to := s.choose(f, from, true)
	if to == nil {
		to = from
	}
	f.path = to.id
	to.pushRQ(f)
	to.queueBytes += len(f.data)
	s.queued++
}

// choose returns the up path where a frame is expected to arrive first,
// avoiding avoid unless it is the only one, suspect paths unless only
// they are left; nil when no path is up. head says the frame goes before
// the path's queue (see path.arrival). s.mu is held.
func (s *Session) choose(f *sframe, avoid *path, head bool) *path {
	if p := s.choose1(f, avoid, head, false); p != nil {
		return p
	}
	return s.choose1(f, avoid, head, true)
}

// choose1 is choose over the paths that are up and, unless suspects is
// set, not suspect.
func (s *Session) choose1(f *sframe, avoid *path, head, suspects bool) *path {
	var best *path
	var bestT time.Duration
	for _, p := range s.paths {
		if !p.up || p == avoid || p.suspect && !suspects {
			continue
		}
		t := p.arrival(len(f.data)+seal.Overhead+pathHeaderLen+dataHeaderLen, head)
		if best == nil || t < bestT {
			best, bestT = p, t
		}
	}
	if best == nil && avoid != nil && avoid.up {
		return avoid
	}
	return best
}

// buildAck returns the plaintext of an ACK for path p; s.mu is held.
func (s *Session) buildAck(p *path, now time.Time) []byte {
	p.unacked = 0
	s.advLimit = s.consumed + s.window
	b := make([]byte, 0, 64+16*MaxAckRanges)
	b = appendPathHeader(b, pathHeader{path: uint8(p.id), seq: p.nextSeq})
	p.nextSeq++
	a := ackFrame{path: uint8(p.id), cum: s.rcum, limit: s.advLimit}
	if len(p.rranges) > 0 {
		a.largest = p.rranges[0].hi
		a.delayUS = uint32(min(max(now.Sub(p.rlargestAt).Microseconds(), 0), 1<<31))
		a.ranges = p.rranges
	}
	return appendAck(b, a)
}

// seal seals plaintext and sends it on p.
func (s *Session) seal(p *path, plain []byte) {
	bp := packetPool.Get().(*[]byte)
	defer packetPool.Put(bp)
	pkt, err := s.send.Seal((*bp)[:0], s.peerID, plain)
	if err != nil {
		s.log.Error("split: seal", "err", err)
		return
	}
	*bp = pkt
	if err := p.link.WritePacket(pkt); err != nil {
		p.sendErrs.Add(1)
	}
	p.bytesSent.Add(uint64(len(pkt)))
	p.pktsSent.Add(1)
}

var packetPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func (s *Session) sendProbe(p *path) {
	now := time.Now()
	s.mu.Lock()
	seq := p.nextSeq
	p.nextSeq++
	if p.up {
		p.inflight = append(p.inflight, sent{seq: seq, at: now, delivered: p.delivered, deliveredAt: p.deliveredAt, firstSentAt: p.lastAckedSentAt, appLimited: true})
	}
	p.lastSend = now
	s.mu.Unlock()
	b := appendPathHeader(make([]byte, 0, 16), pathHeader{path: uint8(p.id), seq: seq})
	s.seal(p, append(b, frameProbe))
}

func (s *Session) kickAll() {
	for _, p := range s.paths {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// sender sends the frames queued on p as its window allows.
func (s *Session) sender(p *path) {
	defer s.wg.Done()
	const batch = 16
	plains := make([][]byte, batch)
	outs := make([][]byte, batch)
	for i := range batch {
		plains[i] = make([]byte, 0, maxPacket)
		outs[i] = make([]byte, 0, maxPacket+seal.Overhead)
	}
	bl, isBatch := p.link.(BatchLink)
	for {
		select {
		case <-s.done:
			return
		case <-p.kick:
		}
		for {
			s.mu.Lock()
			k := 0
			now := time.Now()
			for k < batch {
				f := p.front(s)
				if f == nil {
					f = s.steal(p)
				}
				if f == nil || !p.up || p.inBytes+len(f.data) > p.cwnd && p.inBytes > 0 {
					break
				}
				p.pop(s)
				seq := p.nextSeq
				p.nextSeq++
				size := len(f.data) + seal.Overhead + pathHeaderLen + dataHeaderLen
				// Nothing more to send and room left: the rate this
				// packet measures is the sender's, not the path's.
				appLimited := len(p.rq)+len(p.queue) == 0 && p.inBytes+2*size < p.cwnd
				p.inflight = append(p.inflight, sent{seq: seq, at: now, size: size, f: f, delivered: p.delivered, deliveredAt: p.deliveredAt, firstSentAt: p.lastAckedSentAt, appLimited: appLimited})
				p.inBytes += size
				p.lastSend = now
				p.dataSent += uint64(len(f.data))
				f.sends++
				b := appendPathHeader(plains[k][:0], pathHeader{path: uint8(p.id), seq: seq})
				plains[k] = appendData(b, dataFrame{dsn: f.dsn, fin: f.fin, data: f.data})
				k++
			}
			if k > 0 {
				s.cond.Broadcast()
			}
			s.mu.Unlock()
			if k == 0 {
				break
			}
			var bytes uint64
			for i := range k {
				out, err := s.send.Seal(outs[i][:0], s.peerID, plains[i])
				if err != nil {
					s.log.Error("split: seal", "err", err)
					return
				}
				outs[i] = out
				bytes += uint64(len(out))
			}
			if isBatch {
				if err := bl.WriteBatch(outs[:k]); err != nil {
					p.sendErrs.Add(1)
				}
			} else {
				for _, o := range outs[:k] {
					if err := p.link.WritePacket(o); err != nil {
						p.sendErrs.Add(1)
					}
				}
			}
			p.bytesSent.Add(bytes)
			p.pktsSent.Add(uint64(k))
		}
	}
}

// steal moves to p, which has nothing queued, the frame with the lowest
// data sequence number among the heads of the other paths' queues that
// p is expected to deliver sooner than the path it waits on, and returns
// it at the head of p.rq; nil when there is none or p has no room. A path
// whose estimates were off (or that was briefly suspect) therefore never
// holds frames that an idle path could deliver first. s.mu is held.
func (s *Session) steal(p *path) *sframe {
	if !p.up || p.suspect || p.inBytes+MaxFrame > p.cwnd && p.inBytes > 0 {
		return nil
	}
	var best *sframe
	var from *path
	for _, q := range s.paths {
		if q == p {
			continue
		}
		f := q.front(s)
		if f == nil {
			continue
		}
		size := len(f.data) + seal.Overhead + pathHeaderLen + dataHeaderLen
		viaP := p.rtt()/2 + time.Duration(float64(size)/p.rate()*float64(time.Second))
		viaQ := q.rtt() / 2
		if over := q.inBytes + size - q.cwnd; over > 0 {
			viaQ += time.Duration(float64(over) / q.rate() * float64(time.Second))
		}
		if !q.up || q.suspect {
			viaQ += time.Hour
		}
		if viaP < viaQ && (best == nil || f.dsn < best.dsn) {
			best, from = f, q
		}
	}
	if best == nil {
		return nil
	}
	from.pop(s)
	best.path = p.id
	p.pushRQ(best)
	p.queueBytes += len(best.data)
	s.queued++
	return best
}

// timer runs delayed ACKs, retransmission timeouts, probes and path
// liveness.
func (s *Session) timer() {
	defer s.wg.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		type out struct {
			p     *path
			plain []byte
		}
		var acks []out
		var probes []*path
		s.mu.Lock()
		now := time.Now()
		// When this loop itself ran late, the process was not running
		// (a loaded machine): the readers may not have caught up with
		// what arrived meanwhile, so silence and timeouts are not judged
		// until things have settled.
		if now.Sub(s.lastTick) > lateTick {
			s.lastLate = now
		}
		s.lastTick = now
		judge := now.Sub(s.lastLate) > settleAfterLate
		// A path is taken out when it has been silent for DownAfter
		// while another path was heard from: when all are silent the
		// cause is more likely this process or the peer stalling than
		// every link failing at once, and there is nowhere to move
		// frames to anyway.
		alive := false
		var heard time.Time
		for _, p := range s.paths {
			alive = alive || p.up && now.Sub(p.lastRecv) <= DownAfter
			if p.lastRecv.After(heard) {
				heard = p.lastRecv
			}
		}
		if judge && now.Sub(heard) > s.timeout {
			s.fail(fmt.Errorf("%w: no path heard from for %v", ErrTimeout, now.Sub(heard).Round(time.Millisecond)))
			s.mu.Unlock()
			return
		}
		for _, p := range s.paths {
			if p.unacked > 0 {
				acks = append(acks, out{p, s.buildAck(p, now)})
			}
			if judge && p.up && alive && now.Sub(p.lastRecv) > DownAfter {
				s.pathDown(p, now)
			}
			// Retransmission timeout: the oldest packets in flight.
			if judge && p.up {
				rto := p.rto()
				n := 0
				for n < len(p.inflight) && now.Sub(p.inflight[n].at) > rto {
					n++
				}
				if n > 0 {
					lost := append([]sent(nil), p.inflight[:n]...)
					p.inflight = append(p.inflight[:0], p.inflight[n:]...)
					data := false
					for _, x := range lost {
						p.inBytes -= x.size
						if x.f != nil {
							data = true
							p.lost++
							s.resend(x.f, p)
						}
					}
					// A timeout makes the path suspect: no new frames
					// until it acknowledges something again, and a
					// probe at once.
					if data && !p.suspect {
						p.suspect = true
						p.lastSend = time.Time{}
						s.rehome(p)
					}
					s.kickAll()
				}
			}
			if now.Sub(p.lastSend) >= ProbeEvery {
				probes = append(probes, p)
			}
		}
		// Window update when the reader freed a quarter of the window.
		if s.consumed+s.window >= s.advLimit+s.window/4 {
			if p := s.bestPath(); p != nil {
				acks = append(acks, out{p, s.buildAck(p, now)})
			}
		}
		s.mu.Unlock()
		for _, a := range acks {
			s.seal(a.p, a.plain)
		}
		for _, p := range probes {
			s.sendProbe(p)
		}
	}
}

// bestPath is the up path with the lowest RTT; s.mu is held.
func (s *Session) bestPath() *path {
	var best *path
	for _, p := range s.paths {
		if p.up && (best == nil || p.rtt() < best.rtt()) {
			best = p
		}
	}
	return best
}

// pathDown takes p out and moves its frames to the other paths; s.mu is
// held.
func (s *Session) pathDown(p *path, now time.Time) {
	p.up = false
	p.upChanges++
	s.counters.PathDown++
	s.log.Info("split: path down", "initiator", s.initiator, "path", p.id, "link", p.link, "silent", now.Sub(p.lastRecv).Round(time.Millisecond))
	p.suspect = false
	inflight := p.inflight
	p.inflight, p.inBytes = nil, 0
	// The estimates stay: a path back after a short outage (or after a
	// stall that only looked like one) resumes where it was; one that
	// changed corrects them within a few round trips.
	for _, x := range inflight {
		if x.f != nil {
			s.resend(x.f, p)
		}
	}
	s.rehome(p)
	s.kickAll()
}

// rehome moves the frames queued on p to the other paths, or leaves them
// if there is none; s.mu is held.
func (s *Session) rehome(p *path) {
	queue := append(p.rq, p.queue...)
	p.rq, p.queue, p.queueBytes = nil, nil, 0
	s.queued -= len(queue)
	for _, f := range queue {
		if f.acked || f.path != p.id {
			continue
		}
		to := s.choose(f, p, false)
		if to == nil || to == p {
			// No path left: keep it here until one comes back.
			p.queue = append(p.queue, f)
			p.queueBytes += len(f.data)
			s.queued++
			continue
		}
		// Older than what the other path has queued: sent first.
		f.path = to.id
		to.pushRQ(f)
		to.queueBytes += len(f.data)
		s.queued++
	}
	s.kickAll()
}

// pathUp puts p back in service; s.mu is held.
func (s *Session) pathUp(p *path, now time.Time) {
	p.up = true
	p.suspect = false
	p.upChanges++
	s.log.Info("split: path up", "path", p.id, "link", p.link)
	// Frames parked on paths that are down move to the live ones.
	for _, q := range s.paths {
		if q.up || len(q.queue)+len(q.rq) == 0 {
			continue
		}
		queue := append(q.rq, q.queue...)
		q.rq, q.queue, q.queueBytes = nil, nil, 0
		for _, f := range queue {
			if f.acked {
				s.queued--
				continue
			}
			f.path = p.id
			p.queue = append(p.queue, f)
			p.queueBytes += len(f.data)
		}
	}
	s.kickAll()
}

// Write implements net.Conn: it queues b's bytes as frames and returns
// once all are queued (not yet acknowledged).
func (s *Session) Write(b []byte) (int, error) {
	n := 0
	s.mu.Lock()
	defer s.mu.Unlock()
	for n < len(b) {
		for !s.closed && !s.peerGone && (s.queued >= maxQueued || s.nextDSN >= s.peerLimit) {
			if !s.writeDL.IsZero() && !time.Now().Before(s.writeDL) {
				return n, os.ErrDeadlineExceeded
			}
			s.cond.Wait()
		}
		if s.closed || s.finSent {
			return n, s.errClosed()
		}
		if s.peerGone {
			return n, io.ErrClosedPipe
		}
		// Bytes written while the last frame still waits unsent join it,
		// so that small writes (yamux's 12-byte frame headers, the tails
		// of reads) do not take a packet each.
		if f := s.tail; f != nil && f.sends == 0 && !f.acked && !f.fin && f.dsn+1 == s.nextDSN && len(f.data) < MaxFrame {
			c := min(len(b)-n, MaxFrame-len(f.data))
			f.data = append(f.data, b[n:n+c]...)
			s.paths[f.path].queueBytes += c
			n += c
			continue
		}
		c := min(len(b)-n, MaxFrame)
		data := append([]byte(nil), b[n:n+c]...)
		if c < MaxFrame {
			// Room for what the next writes add.
			data = append(make([]byte, 0, MaxFrame), b[n:n+c]...)
		}
		f := &sframe{dsn: s.nextDSN, data: data}
		s.enqueue(f)
		s.tail = f
		n += c
	}
	return n, nil
}

// enqueue assigns a new frame to a path; s.mu is held.
func (s *Session) enqueue(f *sframe) {
	s.nextDSN++
	s.unacked[f.dsn] = f
	p := s.choose(f, nil, false)
	if p == nil {
		p = s.paths[0] // parked until a path comes up
	}
	f.path = p.id
	p.queue = append(p.queue, f)
	p.queueBytes += len(f.data)
	s.queued++
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Read implements net.Conn.
func (s *Session) Read(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.ready) == 0 {
		if s.rfin != 0 && s.rcum >= s.rfin {
			return 0, io.EOF
		}
		if s.closed {
			return 0, s.errClosed()
		}
		if s.peerGone {
			return 0, io.ErrUnexpectedEOF
		}
		if !s.readDL.IsZero() && !time.Now().Before(s.readDL) {
			return 0, os.ErrDeadlineExceeded
		}
		s.cond.Wait()
	}
	n := 0
	for n < len(b) && len(s.ready) > 0 {
		c := copy(b[n:], s.ready[0])
		n += c
		s.ready[0] = s.ready[0][c:]
		if len(s.ready[0]) == 0 {
			s.ready[0] = nil
			s.ready = s.ready[1:]
			s.consumed++
		}
	}
	return n, nil
}

// Close sends the end of the stream, waits up to closeWait for the peer
// to acknowledge everything, tells it the session ends and stops.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.stop()
		return nil
	}
	if !s.finSent && !s.peerGone {
		s.finSent = true
		s.enqueue(&sframe{dsn: s.nextDSN, fin: true})
		deadline := time.Now().Add(closeWait)
		tm := time.AfterFunc(closeWait, func() {
			s.mu.Lock()
			s.cond.Broadcast()
			s.mu.Unlock()
		})
		for len(s.unacked) > 0 && !s.peerGone && !s.closed && time.Now().Before(deadline) {
			s.cond.Wait()
		}
		tm.Stop()
	}
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	if s.established.Load() {
		for _, p := range s.paths {
			b := appendPathHeader(nil, pathHeader{path: uint8(p.id), seq: 0})
			s.seal(p, append(b, frameClose))
		}
	}
	s.stop()
	return nil
}

// errClosed is the error of an operation on a closed session; s.mu held.
func (s *Session) errClosed() error {
	if s.closeErr != nil {
		return s.closeErr
	}
	return errClosed
}

// stop ends the goroutines and closes the links, once; later callers
// wait for the first.
func (s *Session) stop() {
	s.stopOnce.Do(func() {
		close(s.done)
		for _, p := range s.paths {
			_ = p.link.Close()
		}
		s.wg.Wait()
		close(s.stopped)
	})
	<-s.stopped
}

// fail ends the session from inside (s.mu held): readers and writers get
// err, and the goroutines stop in the background.
func (s *Session) fail(err error) {
	if s.closed {
		return
	}
	s.log.Warn("split: session failed", "err", err)
	s.closed, s.closeErr = true, err
	s.cond.Broadcast()
	go s.stop()
}

// Done is closed when the session has ended (Close, no path heard from
// for the timeout, or the peer starting anew) and its links are closed.
func (s *Session) Done() <-chan struct{} { return s.stopped }

// Err is why the session ended on its own, nil otherwise.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeErr
}

// sessionAddr is the net.Addr of a session end.
type sessionAddr string

func (a sessionAddr) Network() string { return "split" }
func (a sessionAddr) String() string  { return string(a) }

// LocalAddr implements net.Conn: the local key.
func (s *Session) LocalAddr() net.Addr { return sessionAddr(s.cfg.Local.Public.String()) }

// RemoteAddr implements net.Conn: the peer's key.
func (s *Session) RemoteAddr() net.Addr { return sessionAddr(s.cfg.Peer.String()) }

// SetDeadline implements net.Conn.
func (s *Session) SetDeadline(t time.Time) error {
	_ = s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (s *Session) SetReadDeadline(t time.Time) error { return s.setDeadline(0, t) }

// SetWriteDeadline implements net.Conn.
func (s *Session) SetWriteDeadline(t time.Time) error { return s.setDeadline(1, t) }

func (s *Session) setDeadline(i int, t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i == 0 {
		s.readDL = t
	} else {
		s.writeDL = t
	}
	if s.dlTimers[i] != nil {
		s.dlTimers[i].Stop()
		s.dlTimers[i] = nil
	}
	if !t.IsZero() {
		s.dlTimers[i] = time.AfterFunc(time.Until(t), func() {
			s.mu.Lock()
			s.cond.Broadcast()
			s.mu.Unlock()
		})
	}
	s.cond.Broadcast()
	return nil
}

// PathStats describes one path for `isolator peer ls`.
type PathStats struct {
	Link string
	Up   bool
	// Suspect: a retransmission timeout fired; no new frames until the
	// path acknowledges again.
	Suspect   bool
	SRTT      time.Duration
	MinRTT    time.Duration
	RateMbit  float64 // delivery rate estimate
	Cwnd      int
	BytesSent uint64 // sealed bytes sent
	DataBytes uint64 // stream bytes sent (retransmissions included)
	Packets   uint64
	Lost      uint64
	Resent    uint64 // frames lost here and sent on another path
	// SendErrors counts datagrams the link refused (e.g. no carrier).
	SendErrors uint64
	// Share is this path's part of the stream bytes sent, 0..1.
	Share float64
	// Loss is Lost over data packets sent, 0..1.
	Loss float64
}

// Stats returns the per-path and session-wide statistics.
func (s *Session) Stats() ([]PathStats, Counters) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var total uint64
	for _, p := range s.paths {
		total += p.dataSent
	}
	out := make([]PathStats, len(s.paths))
	for i, p := range s.paths {
		st := PathStats{
			Link: p.link.String(), Up: p.up, Suspect: p.suspect, SRTT: p.srtt, MinRTT: p.minRTT,
			RateMbit: p.btlbw() * 8 / 1e6, Cwnd: p.cwnd, BytesSent: p.bytesSent.Load(),
			DataBytes: p.dataSent, Packets: p.pktsSent.Load(), Lost: p.lost, Resent: p.retx,
			SendErrors: p.sendErrs.Load(),
		}
		if total > 0 {
			st.Share = float64(p.dataSent) / float64(total)
		}
		if p.dataSent > 0 {
			st.Loss = float64(p.lost) / (float64(p.dataSent) / float64(MaxFrame))
		}
		out[i] = st
	}
	c := s.counters
	if s.recv != nil {
		c.Dropped = s.recv.Drops()
	}
	return out, c
}
