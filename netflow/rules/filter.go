package rules

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

// Filter applies a rule set to packets. Its Packet method has the shape of
// an INS tap (ins.Tap): it reads the current table through one atomic
// pointer, walks a trie per packet, counts with atomics and never
// allocates or blocks, so NIC dispatchers call it concurrently. Load
// replaces the table as a whole.
type Filter struct {
	table  atomic.Pointer[Table]
	exempt atomic.Pointer[map[netflow.Key]int64] // see Exempt
	now    func() int64
	mu     sync.Mutex // serialises Load and Exempt
}

var clockBase = time.Now()

// monotonic is the default clock: nanoseconds since the process started
// using this package, from the monotonic clock.
func monotonic() int64 { return int64(time.Since(clockBase)) }

// NewFilter returns a filter without rules. now, if not nil, is its clock
// in nanoseconds (tests inject one); it must never go backwards.
func NewFilter(now func() int64) *Filter {
	if now == nil {
		now = monotonic
	}
	return &Filter{now: now}
}

// Load makes s the filter's rule set. A set older than the current one
// (lower Version) is ignored and reported as not applied, so sets that
// cross on the way from the daemon never roll a filter back; the same
// version again is a no-op. Counters and buckets of rules that stay carry
// over.
func (f *Filter) Load(s Set) (applied bool, err error) {
	if err := s.Validate(); err != nil {
		return false, fmt.Errorf("rule set version %d: %w", s.Version, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := f.table.Load()
	if cur != nil && s.Version <= cur.version {
		return s.Version == cur.version, nil
	}
	f.table.Store(compile(s, cur))
	return true, nil
}

// Version is the version of the loaded rule set (0 when none was loaded).
func (f *Filter) Version() uint64 {
	if t := f.table.Load(); t != nil {
		return t.version
	}
	return 0
}

// Packet decides one packet at an uplink: false drops it. Received packets
// are matched by source, sent ones by destination; limits meter received
// packets only, and sent TCP resets always pass.
func (f *Filter) Packet(_ string, dir netflow.Direction, p *netflow.Packet) bool {
	t := f.table.Load()
	if t == nil || len(t.rules) == 0 {
		return true
	}
	peer := p.Src
	if dir == netflow.Out {
		if p.Proto == netflow.ProtoTCP && p.TCPFlags&netflow.TCPRst != 0 {
			return true
		}
		peer = p.Dst
	}
	block, limit := t.match(peer)
	size := uint64(max(p.Len, 0))
	if block >= 0 && dir == netflow.In && f.exempted(p.Key) {
		return true
	}
	if block >= 0 {
		rs := t.rules[block]
		rs.packets.Add(1)
		rs.bytes.Add(size)
		rs.drops.Add(1)
		rs.dropBytes.Add(size)
		return false
	}
	if limit < 0 || dir != netflow.In {
		return true
	}
	rs := t.rules[limit]
	rs.packets.Add(1)
	rs.bytes.Add(size)
	if rs.lim.allow(f.now(), p.Len) {
		return true
	}
	rs.drops.Add(1)
	rs.dropBytes.Add(size)
	return false
}

// Stats returns every rule's counters, in rule order.
func (f *Filter) Stats() []Stats {
	t := f.table.Load()
	if t == nil {
		return nil
	}
	return t.stats()
}

// Exempt lets received packets of these exact flows (keys as received:
// peer first) through block rules for d. After an INS resets a blocked
// peer's connection, the peer may ignore the RST (RFC 5961: a RST whose
// sequence number is not exactly the next expected one, as when data
// the block dropped is outstanding, only draws a "challenge ACK"); the
// exemption lets that ACK and any retransmission reach TCP, which no
// longer knows the connection and answers with a RST the peer accepts.
func (f *Filter) Exempt(keys []netflow.Key, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	next := map[netflow.Key]int64{}
	if old := f.exempt.Load(); old != nil {
		for k, until := range *old {
			if until > now {
				next[k] = until
			}
		}
	}
	for _, k := range keys {
		next[k] = now + int64(d)
	}
	if len(next) == 0 {
		f.exempt.Store(nil)
		return
	}
	f.exempt.Store(&next)
}

// exempted reports whether k is exempt from blocks now. The map is only
// consulted for blocked packets while exemptions exist.
func (f *Filter) exempted(k netflow.Key) bool {
	m := f.exempt.Load()
	if m == nil {
		return false
	}
	until, ok := (*m)[k]
	return ok && until > f.now()
}
