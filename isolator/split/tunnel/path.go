package tunnel

import (
	"sort"
	"sync/atomic"
	"time"
)

// Path timing constants (see the package documentation).
const (
	// ProbeEvery is how often an idle path is probed.
	ProbeEvery = 100 * time.Millisecond
	// DownAfter is how long a path may stay silent before it is taken out.
	DownAfter = 300 * time.Millisecond
	// initialRTT stands for a path's RTT until the first sample.
	initialRTT = 100 * time.Millisecond
	// minRTO bounds the retransmission timeout from below.
	minRTO = 150 * time.Millisecond
	// rateWindow is how long a delivery-rate sample counts in the max filter.
	rateWindow = 2 * time.Second
	rateSlots  = 10
)

// sent is one ack-eliciting packet in flight on a path.
type sent struct {
	seq  uint64
	at   time.Time
	size int
	f    *sframe // nil for a probe
	// delivered and deliveredAt are the path's counters when it was sent,
	// for the delivery-rate sample its ACK yields.
	delivered   int64
	deliveredAt time.Time
	// firstSentAt is when the packet most recently acknowledged before
	// this one was sent: the start of the send interval.
	firstSentAt time.Time
	// appLimited: sent with nothing else queued and room in the window.
	appLimited bool
}

// path is the state of one subflow. The session's mutex guards it.
type path struct {
	id   int
	link Link
	kick chan struct{}
	hs   hsBucket // handshake work allowed (hsguard.go)

	up        bool
	suspect   bool // see PathStats.Suspect
	upChanges int

	// Sending.
	rq         []*sframe // retransmissions assigned to this path, sent first
	queue      []*sframe // new frames assigned to this path, not yet sent
	queueBytes int
	nextSeq    uint64
	inflight   []sent // in path-seq order
	inBytes    int
	cwnd       int
	lastSend   time.Time // last ack-eliciting packet

	// Measurements.
	srtt, rttvar, minRTT time.Duration
	hasRTT               bool
	delivered            int64
	deliveredAt          time.Time
	lastAckedSentAt      time.Time
	rateMax              [rateSlots]float64 // bytes/s, per slot of rateWindow/rateSlots
	rateSlot             int64
	lastRecv             time.Time

	// Receiving: path seqs received, highest range first.
	rranges    []seqRange
	rfloor     uint64 // below this, ranges were forgotten: ignore
	rlargestAt time.Time
	unacked    int

	// Counters.
	dataSent, lost, retx          uint64
	bytesSent, pktsSent, sendErrs atomic.Uint64
}

func newPath(id int, l Link, now time.Time) *path {
	return &path{id: id, link: l, kick: make(chan struct{}, 1), up: true, cwnd: initialCwnd, lastRecv: now, deliveredAt: now}
}

// initialCwnd lets a fresh path send this many bytes before any ACK.
const initialCwnd = 32 * maxPacket

func (p *path) rtt() time.Duration {
	if !p.hasRTT {
		return initialRTT
	}
	return p.srtt
}

// rto is how long an in-flight packet may go unacknowledged before it is
// sent again elsewhere. Losses are found mostly by later packets of the
// same path being acknowledged; the timeout only covers the tail, so it is
// generous: a spurious one costs a duplicate on another path.
func (p *path) rto() time.Duration {
	return max(2*p.rtt()+4*p.rttvar+10*time.Millisecond, minRTO)
}

// front returns the next frame to send on p, dropping frames that were
// acknowledged or moved meanwhile; s.mu is held.
func (p *path) front(s *Session) *sframe {
	for {
		var f *sframe
		switch {
		case len(p.rq) > 0:
			f = p.rq[0]
		case len(p.queue) > 0:
			f = p.queue[0]
		default:
			return nil
		}
		if !f.acked && f.path == p.id {
			return f
		}
		p.pop(s)
	}
}

// pushRQ inserts f into the retransmission queue, kept in data sequence
// order: the receiver waits for the lowest missing frame first, so a frame
// lost late must not queue behind a path's worth of rehomed ones.
func (p *path) pushRQ(f *sframe) {
	i := sort.Search(len(p.rq), func(i int) bool { return p.rq[i].dsn > f.dsn })
	p.rq = append(p.rq, nil)
	copy(p.rq[i+1:], p.rq[i:])
	p.rq[i] = f
}

// pop removes the frame front returned; s.mu is held.
func (p *path) pop(s *Session) {
	var f *sframe
	if len(p.rq) > 0 {
		f, p.rq[0], p.rq = p.rq[0], nil, p.rq[1:]
	} else {
		f, p.queue[0], p.queue = p.queue[0], nil, p.queue[1:]
	}
	p.queueBytes -= len(f.data)
	s.queued--
}

func (p *path) rttSample(r time.Duration) {
	if r <= 0 {
		r = time.Microsecond
	}
	if !p.hasRTT {
		p.srtt, p.rttvar, p.minRTT, p.hasRTT = r, r/2, r, true
		return
	}
	d := p.srtt - r
	if d < 0 {
		d = -d
	}
	p.rttvar = (3*p.rttvar + d) / 4
	p.srtt = (7*p.srtt + r) / 8
	p.minRTT = min(p.minRTT, r)
}

// rateSample feeds the windowed max filter of the delivery rate.
func (p *path) rateSample(now time.Time, bps float64) {
	slot := now.UnixNano() / int64(rateWindow/rateSlots)
	if slot != p.rateSlot {
		if slot-p.rateSlot >= rateSlots {
			p.rateMax = [rateSlots]float64{}
		} else {
			for s := p.rateSlot + 1; s <= slot; s++ {
				p.rateMax[s%rateSlots] = 0
			}
		}
		p.rateSlot = slot
	}
	i := slot % rateSlots
	p.rateMax[i] = max(p.rateMax[i], bps)
}

// btlbw is the highest delivery rate seen in the window, bytes/s, 0 if none.
func (p *path) btlbw() float64 {
	var m float64
	for _, r := range p.rateMax {
		m = max(m, r)
	}
	return m
}

// rate is the path's expected rate in bytes/s for scheduling: the
// delivery-rate estimate, but never less than the window over the RTT, so
// that a path that was given little to send (and so measured little) is
// still given enough to show what it can do.
func (p *path) rate() float64 {
	return max(p.btlbw(), float64(p.cwnd)/p.rtt().Seconds())
}

// updateCwnd sets the window to twice the estimated bandwidth-delay
// product, the second BDP at most maxQueueTime long, plus cwndSlack at the
// estimated rate: enough to keep the bottleneck busy and to let the
// delivery rate show more capacity when there is some, even when ACKs
// come late (delayed ACKs, a busy machine, a sender that is not
// scheduled), without filling the bottleneck's queue much beyond one BDP,
// nor, on a long path, beyond maxQueueTime. Random loss does not shrink
// it; the rate does.
func (p *path) updateCwnd() {
	bw := p.btlbw()
	if bw == 0 || !p.hasRTT {
		return
	}
	p.cwnd = max(int(bw*(p.minRTT+min(p.minRTT, maxQueueTime)+cwndSlack).Seconds()), initialCwnd)
}

// maxQueueTime bounds the queue a path's window lets build at its
// bottleneck (besides cwndSlack): a full BDP of queue on a path of 80 ms
// is more than common bottleneck buffers hold (tbf's latency 100 ms in
// the test topology overflowed at 80 + 25 ms), and a queue beyond what
// covers late ACKs only delays the frames behind it.
const maxQueueTime = 50 * time.Millisecond

// cwndSlack is the window's allowance, in time at the path's rate, for
// ACKs that arrive late or in bursts.
const cwndSlack = 25 * time.Millisecond

// arrival estimates when a frame of size bytes queued now on p arrives at
// the peer: the path's local queue drained at its rate, half its smoothed
// RTT, and the frame's own serialisation. With head set the frame goes
// before the queue (a retransmission: the retransmission queue is in data
// sequence order and it is older than what waits there), so only the wait
// for room in the window counts.
func (p *path) arrival(size int, head bool) time.Duration {
	r := p.rate()
	q := float64(size) / r
	if !head {
		q += float64(p.queueBytes) / r
	}
	if over := p.inBytes + size - p.cwnd; over > 0 {
		q += float64(over) / r
	}
	return time.Duration(q*float64(time.Second)) + p.rtt()/2
}

// recordReceived notes path seq s as received for the next ACK.
func (p *path) recordReceived(s uint64, now time.Time) {
	if s < p.rfloor {
		return
	}
	rs := p.rranges
	if len(rs) == 0 || s > rs[0].hi {
		p.rlargestAt = now
		if len(rs) > 0 && s == rs[0].hi+1 {
			rs[0].hi = s
			return
		}
		rs = append(rs, seqRange{})
		copy(rs[1:], rs)
		rs[0] = seqRange{lo: s, hi: s}
		rs = p.truncate(rs)
		p.rranges = rs
		return
	}
	for i := range rs {
		r := &rs[i]
		switch {
		case s >= r.lo && s <= r.hi:
			return
		case s == r.lo-1:
			r.lo = s
			if i+1 < len(rs) && rs[i+1].hi+1 >= r.lo {
				r.lo = rs[i+1].lo
				p.rranges = append(rs[:i+1], rs[i+2:]...)
			}
			return
		case s > r.hi:
			// s lies in the gap above r (s == above.lo-1 was handled one
			// step earlier).
			if s == r.hi+1 {
				r.hi = s
				return
			}
			rs = append(rs, seqRange{})
			copy(rs[i+1:], rs[i:])
			rs[i] = seqRange{lo: s, hi: s}
			rs = p.truncate(rs)
			p.rranges = rs
			return
		}
	}
	// Below every range kept: add if there is room, else forget it and
	// everything below.
	last := &rs[len(rs)-1]
	switch {
	case s+1 == last.lo:
		last.lo = s
	case len(rs) < MaxAckRanges:
		p.rranges = append(rs, seqRange{lo: s, hi: s})
	default:
		p.rfloor = s + 1
	}
}

// truncate keeps the MaxAckRanges highest ranges and forgets below them.
func (p *path) truncate(rs []seqRange) []seqRange {
	if len(rs) <= MaxAckRanges {
		return rs
	}
	p.rfloor = rs[MaxAckRanges].hi + 1
	return rs[:MaxAckRanges]
}
