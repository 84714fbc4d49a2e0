// Package flowtable is the flow table every INS counts its packets into:
// one entry per 5-tuple and uplink (both directions of a conversation in
// one entry), bounded in size, cheap on the packet path, and read by the
// daemon in batches (Collect) that carry what changed and what ended.
//
// The table is a Tap: Packet is called for every IP packet an uplink sends
// or receives. It is split into shards, each a lock, an open-addressing
// index (index.go) and a list in order of last use; counting a packet of a
// known flow takes one shard lock and allocates nothing. When a shard is
// full its least recently used flow is evicted (EndEvicted). Flows end
// after the idle timeout (EndIdle), or shortly after TCP FIN in both
// directions or a RST (EndOfFlow). The active timeout is applied where flows
// are exported, not here: the table keeps totals, the daemon computes the
// deltas it exports.
package flowtable

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

// Defaults of Config.
const (
	DefaultMaxFlows    = 65536
	DefaultIdleTimeout = 15 * time.Second
	DefaultEndGrace    = time.Second
	defaultShards      = 64
)

// Config sizes a table. Zero fields take defaults.
type Config struct {
	// Disable turns accounting off: the INS installs no table.
	Disable bool `json:"disable,omitempty"`
	// MaxFlows bounds the number of flows; more evict the least recently
	// used.
	MaxFlows int `json:"max_flows,omitempty"`
	// IdleTimeout ends a flow that saw no packet for this long.
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
	// EndGrace is how long a TCP flow stays after FIN in both directions
	// or a RST, so that the last ACKs are counted in it.
	EndGrace time.Duration `json:"end_grace,omitempty"`
	// Shards is the number of lock shards (rounded up to a power of 2).
	Shards int `json:"shards,omitempty"`
}

func (c *Config) fill() {
	if c.MaxFlows <= 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.EndGrace <= 0 {
		c.EndGrace = DefaultEndGrace
	}
	if c.Shards <= 0 {
		c.Shards = defaultShards
	}
	c.Shards = 1 << bits.Len(uint(c.Shards-1))
	if c.Shards > c.MaxFlows {
		c.Shards = 1 << (bits.Len(uint(c.MaxFlows)) - 1)
	}
}

// Stats count a table's life.
type Stats struct {
	// Flows is the number of flows in the table now.
	Flows uint64
	// Created counts flows ever created; Evicted those pushed out by a
	// full table; Lost the ended records dropped because the daemon did
	// not collect them in time.
	Created, Evicted, Lost uint64
}

// Record is a flow as Collect reports it: totals since First.
type Record struct {
	// Seq numbers the flows of one table in creation order; it tells two
	// flows of the same 5-tuple apart.
	Seq uint64
	// Key has the initiator first.
	Key    netflow.Key
	Uplink string
	// Inbound is set when the initiator is on the network side.
	Inbound  bool
	Fwd, Rev netflow.Counters
	// First and Last are the times of the first and last packet.
	First, Last time.Time
	// End is why the flow ended; EndNone while it goes on.
	End netflow.EndReason
	// Group is the socket group owning the flow's socket, 0 if unknown.
	Group uint64
}

// endFlags of an entry.
const (
	finFwd = 1 << iota
	finRev
	rstSeen
)

type entry struct {
	hash     uint64      // flowHash of key and up
	up       uint16      // uplink index
	key      netflow.Key // initiator first
	inbound  bool
	dirty    bool
	ends     uint8
	tries    uint8 // owner look-ups left
	fwd, rev netflow.Counters
	first    int64 // ns since the table's base
	last     int64
	seq      uint64
	group    uint64

	prev, next *entry // use order; head is the most recent
}

type shard struct {
	mu    sync.Mutex
	idx   index
	head  *entry
	tail  *entry
	free  *entry
	n     int
	clock int64 // latest time seen, so the use order is time order
	_     [64]byte
}

// ownerTries is how many collections look up a flow's owner before giving
// up (a RST to a closed port has none).
const ownerTries = 3

// Table is a flow table; see the package documentation.
type Table struct {
	cfg      Config
	base     time.Time
	perShard int
	shards   []shard
	mask     uint64

	uplinks atomic.Pointer[[]string]
	upMu    sync.Mutex

	seq     atomic.Uint64
	created atomic.Uint64
	evicted atomic.Uint64

	endMu sync.Mutex
	ended ring // records of ended flows, oldest first
	lost  uint64

	collectMu sync.Mutex
	pending   []Record // the rest of the current collection round
	need      []needOwner
}

// New returns an empty table.
func New(cfg Config) *Table {
	cfg.fill()
	t := &Table{cfg: cfg, base: time.Now(), shards: make([]shard, cfg.Shards), mask: uint64(cfg.Shards - 1)}
	t.perShard = (cfg.MaxFlows + cfg.Shards - 1) / cfg.Shards
	t.ended.buf = make([]Record, 0, min(cfg.MaxFlows, keepRecords))
	t.ended.max = max(cfg.MaxFlows, 1024)
	empty := []string{}
	t.uplinks.Store(&empty)
	return t
}

// Config returns the table's configuration with defaults filled in.
func (t *Table) Config() Config { return t.cfg }

// uplinkIndex returns the index of an uplink name, adding it if new.
func (t *Table) uplinkIndex(name string) uint16 {
	for i, u := range *t.uplinks.Load() {
		if u == name {
			return uint16(i)
		}
	}
	t.upMu.Lock()
	defer t.upMu.Unlock()
	old := *t.uplinks.Load()
	for i, u := range old {
		if u == name {
			return uint16(i)
		}
	}
	if len(old) >= 1<<16-1 {
		return 1<<16 - 1
	}
	next := append(append(make([]string, 0, len(old)+1), old...), name)
	t.uplinks.Store(&next)
	return uint16(len(old))
}

func (t *Table) uplinkName(i uint16) string {
	ups := *t.uplinks.Load()
	if int(i) < len(ups) {
		return ups[i]
	}
	return ""
}

func (t *Table) shardOf(h uint64) *shard { return &t.shards[(h>>40)&t.mask] }

func (t *Table) since() int64 { return max(1, time.Since(t.base).Nanoseconds()) }

// Packet counts one packet (it implements the INS's Tap) and never drops.
func (t *Table) Packet(uplink string, dir netflow.Direction, p *netflow.Packet) bool {
	t.Account(t.since(), uplink, dir, p)
	return true
}

// Account counts p at now (ns since the table was made).
func (t *Table) Account(now int64, uplink string, dir netflow.Direction, p *netflow.Packet) {
	up := t.uplinkIndex(uplink)
	h := flowHash(&p.Key, up)
	s := t.shardOf(h)
	s.mu.Lock()
	if now < s.clock {
		now = s.clock
	}
	s.clock = now
	e, fwd := s.idx.find(h, &p.Key, up)
	if e == nil {
		e = t.create(s, h, up, dir, p, now)
		fwd = e.key.Src == p.Src && e.key.SrcPort == p.SrcPort
	} else if e != s.head {
		s.unlink(e)
		s.pushFront(e)
	}
	c := &e.rev
	if fwd {
		c = &e.fwd
	}
	c.Add(p)
	if p.TCPFlags&(netflow.TCPFin|netflow.TCPRst) != 0 {
		switch {
		case p.TCPFlags&netflow.TCPRst != 0:
			e.ends |= rstSeen
		case fwd:
			e.ends |= finFwd
		default:
			e.ends |= finRev
		}
	}
	e.last = now
	e.dirty = true
	s.mu.Unlock()
}

// create adds a flow for the first packet p, evicting the least recently
// used flow of s if it is full. s is locked.
func (t *Table) create(s *shard, h uint64, up uint16, dir netflow.Direction, p *netflow.Packet, now int64) *entry {
	if s.n >= t.perShard && s.tail != nil {
		old := s.tail
		t.pushEnded(t.record(old, netflow.EndEvicted))
		s.remove(old)
		t.evicted.Add(1)
	}
	e := s.free
	if e != nil {
		s.free = e.next
		*e = entry{}
	} else {
		e = new(entry)
	}
	e.hash, e.up = h, up
	e.key = p.Key
	e.inbound = dir == netflow.In
	// A SYN-ACK first means the SYN was missed: its receiver started it.
	if p.Proto == netflow.ProtoTCP && p.TCPFlags&(netflow.TCPSyn|netflow.TCPAck) == netflow.TCPSyn|netflow.TCPAck {
		e.key = p.Key.Reverse()
		e.inbound = !e.inbound
	}
	e.first = now
	e.seq = t.seq.Add(1)
	e.tries = ownerTries
	s.idx.insert(e)
	s.pushFront(e)
	s.n++
	t.created.Add(1)
	return e
}

func (s *shard) pushFront(e *entry) {
	e.prev, e.next = nil, s.head
	if s.head != nil {
		s.head.prev = e
	}
	s.head = e
	if s.tail == nil {
		s.tail = e
	}
}

func (s *shard) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// remove takes e out of the shard and keeps its memory for the next flow.
func (s *shard) remove(e *entry) {
	s.unlink(e)
	s.idx.remove(e)
	s.n--
	e.next = s.free
	s.free = e
}

func (t *Table) wall(ns int64) time.Time { return t.base.Add(time.Duration(ns)) }

func (t *Table) record(e *entry, end netflow.EndReason) Record {
	return Record{
		Seq: e.seq, Key: e.key, Uplink: t.uplinkName(e.up), Inbound: e.inbound,
		Fwd: e.fwd, Rev: e.rev, First: t.wall(e.first), Last: t.wall(e.last), End: end, Group: e.group,
	}
}

// pushEnded queues an ended flow's record for the next collection; when
// the queue is full the oldest is dropped and counted as lost.
func (t *Table) pushEnded(r Record) {
	t.endMu.Lock()
	if !t.ended.push(r) {
		t.lost++
	}
	t.endMu.Unlock()
}

// ring is a bounded FIFO of records that overwrites its oldest when full.
type ring struct {
	buf   []Record // grows up to max, then wraps
	head  int      // index of the oldest once wrapped
	max   int
	count int
}

// push appends r; it returns false when it overwrote the oldest record.
func (q *ring) push(r Record) bool {
	if len(q.buf) < q.max {
		q.buf = append(q.buf, r)
		q.count++
		return true
	}
	i := (q.head + q.count) % len(q.buf)
	q.buf[i] = r
	if q.count < len(q.buf) {
		q.count++
		return true
	}
	q.head = (q.head + 1) % len(q.buf)
	return false
}

// drain appends every record to dst, oldest first, and empties the ring.
func (q *ring) drain(dst []Record) []Record {
	for i := range q.count {
		dst = append(dst, q.buf[(q.head+i)%len(q.buf)])
	}
	clear(q.buf)
	q.buf = q.buf[:0]
	if cap(q.buf) > keepRecords {
		q.buf = make([]Record, 0, keepRecords)
	}
	q.head, q.count = 0, 0
	return dst
}

// keepRecords bounds the record buffers (the ended ring, a round's pending
// records) kept between rounds. A burst (thousands of connections ending
// at once) grows them to its size; past the round that drained them they
// are made again at this size, so an INS does not keep the burst's
// buffers — 184 bytes a record — until the next one.
const keepRecords = 1024

// Stats returns the table's counters.
func (t *Table) Stats() Stats {
	var n uint64
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += uint64(s.n)
		s.mu.Unlock()
	}
	t.endMu.Lock()
	lost := t.lost
	t.endMu.Unlock()
	return Stats{Flows: n, Created: t.created.Load(), Evicted: t.evicted.Load(), Lost: lost}
}

// expired says whether e has ended at now, and why.
func (t *Table) expired(e *entry, now int64) netflow.EndReason {
	idle := now - e.last
	if idle >= int64(t.cfg.IdleTimeout) {
		if e.ends&rstSeen != 0 || e.ends&(finFwd|finRev) == finFwd|finRev {
			return netflow.EndOfFlow
		}
		return netflow.EndIdle
	}
	if idle >= int64(t.cfg.EndGrace) && (e.ends&rstSeen != 0 || e.ends&(finFwd|finRev) == finFwd|finRev) {
		return netflow.EndOfFlow
	}
	return netflow.EndNone
}

// needOwner is a flow whose owner a collection looks up.
type needOwner struct {
	s   *shard
	e   *entry
	seq uint64
	rec int // index in pending
}

// OwnerFunc looks up the socket group owning each flow of recs (Key,
// Inbound and Uplink are set) and stores it in Group; it leaves Group 0
// where there is none. It is called without the table's locks held.
type OwnerFunc func(recs []*Record)

// Sweep ends the flows that timed out or finished at now and queues their
// records; Collect sweeps too.
func (t *Table) Sweep(now time.Time) {
	t.scan(now.Sub(t.base).Nanoseconds(), false)
}

// scan walks every shard: it ends expired flows and, if snapshot is set,
// appends the changed ones to t.pending (clearing their change mark).
func (t *Table) scan(now int64, snapshot bool) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for e := s.head; e != nil; {
			next := e.next
			if why := t.expired(e, now); why != netflow.EndNone {
				t.pushEnded(t.record(e, why))
				s.remove(e)
			} else if snapshot && e.dirty {
				e.dirty = false
				t.pending = append(t.pending, t.record(e, netflow.EndNone))
				if e.group == 0 && e.tries > 0 {
					e.tries--
					t.need = append(t.need, needOwner{s: s, e: e, seq: e.seq, rec: len(t.pending) - 1})
				}
			}
			e = next
		}
		s.mu.Unlock()
	}
}

// Collect returns the next batch for the daemon, encoded (AppendBatch) in
// at most maxBytes. A collection round starts when the previous one has
// been handed out completely: it sweeps, then takes every ended flow and
// every flow that changed since the last round; the batch says More while
// the round has records left. owners, if not nil, fills in the owner of
// changed flows whose owner is not known yet.
func (t *Table) Collect(now time.Time, maxBytes int, owners OwnerFunc) []byte {
	t.collectMu.Lock()
	defer t.collectMu.Unlock()
	if len(t.pending) == 0 {
		t.need = t.need[:0]
		t.scan(now.Sub(t.base).Nanoseconds(), true)
		if owners != nil && len(t.need) > 0 {
			t.resolve(owners)
		}
		// Ended flows (evicted since the last round, or ended in the
		// scan just made) follow the changed ones.
		t.endMu.Lock()
		t.pending = t.ended.drain(t.pending)
		t.endMu.Unlock()
	}
	st := t.Stats()
	b := appendBatchHeader(make([]byte, 0, maxBytes), st)
	n := 0
	names := *t.uplinks.Load()
	b = appendUplinks(b, names)
	countAt := len(b)
	b = append(b, 0, 0)
	for n < len(t.pending) && n < maxRecords {
		r := &t.pending[n]
		if len(b)+recordSize(r) > maxBytes {
			break
		}
		b = appendRecord(b, r, names)
		n++
	}
	b[countAt], b[countAt+1] = byte(n>>8), byte(n)
	rest := copy(t.pending, t.pending[n:])
	clear(t.pending[rest:])
	t.pending = t.pending[:rest]
	if rest == 0 && cap(t.pending) > keepRecords {
		t.pending, t.need = nil, nil
	}
	if rest > 0 {
		b[batchFlagsAt] |= flagMore
	}
	return b
}

// resolve looks up owners of t.need and stores them in the pending
// records and in the flows.
func (t *Table) resolve(owners OwnerFunc) {
	recs := make([]*Record, len(t.need))
	for i, n := range t.need {
		recs[i] = &t.pending[n.rec]
	}
	owners(recs)
	for _, n := range t.need {
		g := t.pending[n.rec].Group
		if g == 0 {
			continue
		}
		// The entry may have ended and been reused since: its seq says.
		n.s.mu.Lock()
		if n.e.seq == n.seq {
			n.e.group = g
		}
		n.s.mu.Unlock()
	}
	// The slots point at entries, which may be removed before the next
	// round: cleared, they do not keep them alive.
	clear(t.need)
	t.need = t.need[:0]
}
