package link

import (
	"encoding/binary"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// AckDelay is how long a NIC holds a pure ACK that may ride on a response
// (DelayAcks): the minimum of Linux's delayed-ACK timer. A peer's
// retransmission timeout is at least 200 ms.
const AckDelay = 40 * time.Millisecond

// ackFlowIdle is how long the ACK delayer remembers a flow that sent
// nothing: flows not seen for one to two periods are forgotten.
const ackFlowIdle = 10 * time.Second

// gVisor's TCP acknowledges every batch of received segments at once with
// a frame of its own, so a request costs two frames out (its ACK, then the
// response) where Linux sends one. The ACK delayer gives an uplink Linux's
// delayed ACK below the netstack: a pure ACK of new data on a flow that
// has been sending data ("ping-pong" mode, as Linux enters it) is held up
// to AckDelay and dropped when a segment of the same flow leaves first
// with an acknowledgement at least as far. A flow leaves ping-pong mode
// when a held ACK times out (as Linux does when its delayed-ACK timer
// fires) and enters it again with its next data segment; a flow the INS
// never sent data on, and so every connection's first exchange, is acked
// at once. Never held: ACKs that advance by two full-sized segments or more
// since the last ACK the flow sent (bulk senders keep their clock), that
// do not advance (duplicates, window updates), that carry SACK blocks or
// any option but timestamps, that advertise a zero window or follow one,
// and every segment with SYN, FIN, RST, URG, ECE or CWR.

// ackKey names a TCP flow in the sending direction.
type ackKey struct {
	src, dst     tcpip.Address
	sport, dport uint16
}

// ackFlow is what the delayer knows of one flow; guarded by ackDelayer.mu.
type ackFlow struct {
	lastAck  uint32 // the acknowledgement last sent
	lastWnd  uint16 // the (scaled) window field last sent
	pingpong bool   // the flow sent data since its last delayed-ACK timeout
	held     *stack.PacketBuffer
	heldAck  uint32
	heldID   uint64 // which hold the timer queue entry is for
}

type ackTimeout struct {
	f        *ackFlow
	id       uint64
	deadline time.Time
}

// ackDelayer holds pure ACKs of one NIC; its state is guarded by mu, which
// is also held while frames are written below so that a held ACK released
// by the timer never overtakes a later segment of its flow.
type ackDelayer struct {
	lower stack.LinkWriter
	mss   uint32 // a full-sized segment's payload
	delay time.Duration

	mu      sync.Mutex
	closed  bool
	cur     map[ackKey]*ackFlow
	old     map[ackKey]*ackFlow
	rotated time.Time
	queue   []ackTimeout // in deadline order: the delay is constant
	nextID  uint64
	timer   *time.Timer
	armed   bool
	// released, dropped and held count ACKs sent by the timer, ACKs
	// that a later segment made unnecessary and ACKs held.
	released, dropped, held uint64
	droppedBytes            uint64
}

func newAckDelayer(lower stack.LinkWriter, mtu uint32, delay time.Duration) *ackDelayer {
	// The smallest MSS a full-sized segment may have on this MTU: IPv6
	// and TCP headers with timestamps.
	mss := uint32(536)
	if mtu > 72+536 {
		mss = mtu - 72
	}
	d := &ackDelayer{lower: lower, mss: mss, delay: delay, cur: map[ackKey]*ackFlow{}, rotated: time.Now()}
	d.timer = time.AfterFunc(time.Hour, d.expire)
	d.timer.Stop()
	return d
}

// tcpSeg is what the delayer reads of an outgoing TCP segment.
type tcpSeg struct {
	key     ackKey
	flags   header.TCPFlags
	ack     uint32
	wnd     uint16
	payload int
	onlyTS  bool // no option but timestamps (and padding)
}

// parseSeg reads an outgoing IP packet's TCP header; ok is false for
// anything else.
func parseSeg(pkt *stack.PacketBuffer) (s tcpSeg, ok bool) {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return s, false
	}
	nh := pkt.NetworkHeader().Slice()
	switch pkt.NetworkProtocolNumber {
	case header.IPv4ProtocolNumber:
		if len(nh) < header.IPv4MinimumSize {
			return s, false
		}
		ip := header.IPv4(nh)
		s.key.src, s.key.dst = ip.SourceAddress(), ip.DestinationAddress()
	case header.IPv6ProtocolNumber:
		if len(nh) < header.IPv6MinimumSize {
			return s, false
		}
		ip := header.IPv6(nh)
		s.key.src, s.key.dst = ip.SourceAddress(), ip.DestinationAddress()
	default:
		return s, false
	}
	th := pkt.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize {
		return s, false
	}
	t := header.TCP(th)
	off := int(t.DataOffset())
	if off < header.TCPMinimumSize || off > len(th) {
		return s, false
	}
	s.key.sport, s.key.dport = t.SourcePort(), t.DestinationPort()
	s.flags = t.Flags()
	s.ack = binary.BigEndian.Uint32(th[8:12])
	s.wnd = t.WindowSize()
	s.payload = pkt.Data().Size() + len(th) - off
	s.onlyTS = onlyTimestamps(th[header.TCPMinimumSize:off])
	return s, true
}

// onlyTimestamps reports whether TCP options hold nothing but a timestamp
// option, NOPs and an end of options.
func onlyTimestamps(o []byte) bool {
	for i := 0; i < len(o); {
		switch o[i] {
		case header.TCPOptionEOL:
			return true
		case header.TCPOptionNOP:
			i++
		case header.TCPOptionTS:
			if i+1 >= len(o) || o[i+1] != header.TCPOptionTSLength {
				return false
			}
			i += header.TCPOptionTSLength
		default:
			return false
		}
	}
	return true
}

// seqGE reports a >= b in sequence number space.
func seqGE(a, b uint32) bool { return int32(a-b) >= 0 }

// flow returns the state of k, moving it to the current generation; nil
// when unknown and !create.
func (d *ackDelayer) flow(k ackKey, create bool) *ackFlow {
	if f := d.cur[k]; f != nil {
		return f
	}
	if f := d.old[k]; f != nil {
		delete(d.old, k)
		d.cur[k] = f
		return f
	}
	if !create {
		return nil
	}
	f := &ackFlow{}
	d.cur[k] = f
	return f
}

func (d *ackDelayer) forget(k ackKey) {
	delete(d.cur, k)
	delete(d.old, k)
}

// rotate forgets flows idle for a generation; a forgotten flow's held ACK
// (if any) still leaves with its timer.
func (d *ackDelayer) rotate(now time.Time) {
	if now.Sub(d.rotated) < ackFlowIdle {
		return
	}
	d.rotated = now
	d.old, d.cur = d.cur, make(map[ackKey]*ackFlow, len(d.cur))
}

// WritePackets implements stack.LinkWriter.
func (d *ackDelayer) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.lower.WritePackets(pkts)
	}
	all := pkts.AsSlice()
	// out is only built once the list changes (an ACK held or one
	// released ahead of a segment); then it holds its own references.
	var out stack.PacketBufferList
	changed := false
	removed := 0
	var now time.Time
	for i, pkt := range all {
		emit, keep, release := d.decide(pkt, &now)
		if !changed && (!keep || emit != nil) {
			changed = true
			for _, p := range all[:i] {
				out.PushBack(p.IncRef())
			}
		}
		if emit != nil {
			// A held ACK that must leave ahead of pkt: its reference
			// moves to out.
			out.PushBack(emit)
		}
		if release != nil {
			d.dropped++
			d.droppedBytes += uint64(release.Size())
			release.DecRef()
		}
		if !keep {
			removed++
			continue
		}
		if changed {
			out.PushBack(pkt.IncRef())
		}
	}
	if !changed {
		return d.lower.WritePackets(pkts)
	}
	defer out.Reset()
	if out.Len() == 0 {
		return removed, nil
	}
	// The count is of the caller's packets: held ones count as written,
	// released ones riding along do not count.
	n, err := d.lower.WritePackets(out)
	if err == nil {
		return len(all), nil
	}
	return min(n+removed, len(all)), err
}

// decide applies the delayed-ACK rules to pkt: emit is a held ACK to send
// before it (owned by the caller), keep false means pkt is now held, and
// release is a held ACK pkt makes unnecessary (to be released).
func (d *ackDelayer) decide(pkt *stack.PacketBuffer, now *time.Time) (emit *stack.PacketBuffer, keep bool, release *stack.PacketBuffer) {
	s, ok := parseSeg(pkt)
	if !ok {
		return nil, true, nil
	}
	const special = header.TCPFlagSyn | header.TCPFlagFin | header.TCPFlagRst | header.TCPFlagUrg | header.TCPFlagEce | header.TCPFlagCwr
	hasAck := s.flags&header.TCPFlagAck != 0
	if s.flags&special != 0 {
		f := d.flow(s.key, false)
		if f == nil {
			return nil, true, nil
		}
		emit, release = f.settle(s, hasAck)
		// After SYN, FIN or RST every ACK leaves at once until the
		// flow sends data again (a new flow after a reuse).
		d.forget(s.key)
		return emit, true, release
	}
	if s.payload > 0 {
		if now.IsZero() {
			*now = time.Now()
			d.rotate(*now)
		}
		f := d.flow(s.key, true)
		emit, release = f.settle(s, hasAck)
		f.pingpong = true
		f.sent(s, hasAck)
		return emit, true, release
	}
	f := d.flow(s.key, false)
	if f == nil || !hasAck {
		return nil, true, nil
	}
	// A pure ACK.
	if f.held != nil && !seqGE(s.ack, f.heldAck) {
		// Acknowledgements do not go back; should one, the held ACK
		// leaves first.
		emit, f.held = f.held, nil
		f.lastAck = f.heldAck
	}
	holdable := f.pingpong && s.onlyTS && s.wnd != 0 && f.lastWnd != 0 &&
		s.ack != f.lastAck && seqGE(s.ack, f.lastAck) && s.ack-f.lastAck < 2*d.mss
	if !holdable {
		if f.held != nil {
			// It supersedes the held one.
			release, f.held = f.held, nil
		}
		f.sent(s, true)
		return emit, true, release
	}
	if f.held != nil {
		// It supersedes the held one and leaves by the held one's
		// deadline: a trickle of small segments is still acked within
		// the delay of its first.
		release = f.held
		f.held, f.heldAck = pkt.IncRef(), s.ack
		return emit, false, release
	}
	if now.IsZero() {
		*now = time.Now()
	}
	d.nextID++
	f.held, f.heldAck, f.heldID = pkt.IncRef(), s.ack, d.nextID
	d.held++
	d.queue = append(d.queue, ackTimeout{f: f, id: d.nextID, deadline: now.Add(d.delay)})
	if !d.armed {
		d.armed = true
		d.timer.Reset(d.delay)
	}
	return emit, false, release
}

// settle resolves f's held ACK before segment s leaves: released when s
// acknowledges as far, else emitted ahead of s.
func (f *ackFlow) settle(s tcpSeg, hasAck bool) (emit, release *stack.PacketBuffer) {
	if f.held == nil {
		return nil, nil
	}
	h := f.held
	f.held = nil
	if hasAck && seqGE(s.ack, f.heldAck) {
		return nil, h
	}
	f.lastAck = f.heldAck
	return h, nil
}

// sent records the acknowledgement and window of a segment that leaves.
func (f *ackFlow) sent(s tcpSeg, hasAck bool) {
	if hasAck {
		f.lastAck, f.lastWnd = s.ack, s.wnd
	}
}

// expire sends the held ACKs whose time is up.
func (d *ackDelayer) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.armed = false
	if d.closed {
		return
	}
	now := time.Now()
	var out stack.PacketBufferList
	i := 0
	for ; i < len(d.queue); i++ {
		t := d.queue[i]
		if t.deadline.After(now) {
			break
		}
		f := t.f
		if f.held == nil || f.heldID != t.id {
			continue
		}
		out.PushBack(f.held)
		f.held = nil
		f.lastAck = f.heldAck
		// Linux leaves ping-pong mode when its delayed ACK times out.
		f.pingpong = false
		d.released++
	}
	d.queue = d.queue[i:]
	if len(d.queue) == 0 {
		d.queue = nil
	} else {
		d.armed = true
		d.timer.Reset(d.queue[0].deadline.Sub(now))
	}
	d.rotate(now)
	if out.Len() > 0 {
		_, _ = d.lower.WritePackets(out)
		out.Reset()
	}
}

// close sends nothing more from the timer and releases the held ACKs.
func (d *ackDelayer) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.closed = true
	d.timer.Stop()
	for _, t := range d.queue {
		if t.f.held != nil && t.f.heldID == t.id {
			t.f.held.DecRef()
			t.f.held = nil
		}
	}
	d.queue, d.cur, d.old = nil, nil, nil
}

// AckStats counts what a NIC's ACK delayer did.
type AckStats struct {
	// Held is the number of pure ACKs held back.
	Held uint64
	// Dropped is the number of held ACKs a later segment of the flow made
	// unnecessary (the ACK rode on it).
	Dropped uint64
	// DroppedBytes is the size of the Dropped ACKs.
	DroppedBytes uint64
	// Released is the number of held ACKs sent when their delay ran out.
	Released uint64
}

func (d *ackDelayer) stats() AckStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return AckStats{Held: d.held, Dropped: d.dropped, DroppedBytes: d.droppedBytes, Released: d.released}
}
