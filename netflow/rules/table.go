package rules

import (
	"net/netip"
	"sync/atomic"
)

// node is one bit position of a binary trie over address bits. A node
// carries the rules whose prefix ends exactly there.
type node struct {
	child [2]int32 // 0 means none (the root is never a child)
	block int32    // index of the block rule with this prefix, or -1
	limit int32    // index of the limit rule with this prefix, or -1
}

// trie maps prefixes of one address family to rules. Lookups walk at most
// one node per address bit and never allocate.
type trie struct{ nodes []node }

func newTrie() trie { return trie{nodes: []node{{block: -1, limit: -1}}} }

func bit(b []byte, i int) int { return int(b[i>>3]>>(7-i&7)) & 1 }

func addrBytes(a netip.Addr, buf *[16]byte) []byte {
	if a.Is4() {
		b4 := a.As4()
		copy(buf[:], b4[:])
		return buf[:4]
	}
	*buf = a.As16()
	return buf[:]
}

func (t *trie) insert(p netip.Prefix, idx int32, a Action) {
	var buf [16]byte
	b := addrBytes(p.Addr(), &buf)
	n := int32(0)
	for i := range p.Bits() {
		d := bit(b, i)
		next := t.nodes[n].child[d]
		if next == 0 {
			t.nodes = append(t.nodes, node{block: -1, limit: -1})
			next = int32(len(t.nodes) - 1)
			t.nodes[n].child[d] = next
		}
		n = next
	}
	if a == Block {
		t.nodes[n].block = idx
	} else {
		t.nodes[n].limit = idx
	}
}

// lookup returns the most specific block and limit rules covering the
// address whose bytes are b (-1 where none).
func (t *trie) lookup(b []byte) (block, limit int32) {
	block, limit = -1, -1
	n := int32(0)
	for i := 0; ; i++ {
		nd := &t.nodes[n]
		if nd.block >= 0 {
			block = nd.block
		}
		if nd.limit >= 0 {
			limit = nd.limit
		}
		if i == len(b)*8 {
			return
		}
		if n = nd.child[bit(b, i)]; n == 0 {
			return
		}
	}
}

// ruleState is a rule with its counters and, for a limit, its bucket. It
// lives as long as the rule: a recompiled table keeps the states of the
// rules it still has.
type ruleState struct {
	rule      Rule
	lim       *limiter
	packets   atomic.Uint64
	bytes     atomic.Uint64
	drops     atomic.Uint64
	dropBytes atomic.Uint64
}

// Table is a compiled, immutable rule set.
type Table struct {
	version uint64
	v4, v6  trie
	rules   []*ruleState // in rule order
}

// compile builds the table for s, taking over the states of rules that
// prev already had.
func compile(s Set, prev *Table) *Table {
	t := &Table{version: s.Version, v4: newTrie(), v6: newTrie()}
	old := map[uint64]*ruleState{}
	if prev != nil {
		for _, rs := range prev.rules {
			old[rs.rule.ID] = rs
		}
	}
	for _, r := range s.Rules {
		rs := old[r.ID]
		// IDs are never reused, so the same ID is the same rule.
		if rs == nil || rs.rule.Action != r.Action || rs.rule.Prefix != r.Prefix {
			rs = &ruleState{rule: r}
			if r.Action == Limit {
				rs.lim = newLimiter(r)
			}
		}
		idx := int32(len(t.rules))
		t.rules = append(t.rules, rs)
		if r.Prefix.Addr().Is4() {
			t.v4.insert(r.Prefix, idx, r.Action)
		} else {
			t.v6.insert(r.Prefix, idx, r.Action)
		}
	}
	return t
}

// match returns the most specific block and limit rules covering a.
func (t *Table) match(a netip.Addr) (block, limit int32) {
	var buf [16]byte
	a = a.Unmap()
	b := addrBytes(a, &buf)
	if len(b) == 4 {
		return t.v4.lookup(b)
	}
	return t.v6.lookup(b)
}

// Stats are one rule's counters in one INS.
type Stats struct {
	Rule
	// Packets and Bytes count the packets the rule matched (IP bytes).
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	// Drops and DropBytes count the matched packets it dropped.
	Drops     uint64 `json:"drops"`
	DropBytes uint64 `json:"drop_bytes"`
}

// Add sums o's counters into s.
func (s *Stats) Add(o Stats) {
	s.Packets += o.Packets
	s.Bytes += o.Bytes
	s.Drops += o.Drops
	s.DropBytes += o.DropBytes
}

func (t *Table) stats() []Stats {
	out := make([]Stats, 0, len(t.rules))
	for _, rs := range t.rules {
		out = append(out, Stats{Rule: rs.rule, Packets: rs.packets.Load(), Bytes: rs.bytes.Load(),
			Drops: rs.drops.Load(), DropBytes: rs.dropBytes.Load()})
	}
	return out
}
