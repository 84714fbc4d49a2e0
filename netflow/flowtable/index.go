package flowtable

import (
	"encoding/binary"
	"math/bits"

	"github.com/mpshim/mpshim/netflow"
)

// flowHash hashes a 5-tuple and uplink the same for both directions: the
// two endpoints are hashed alone and combined by addition, so no canonical
// order has to be worked out per packet.
func flowHash(k *netflow.Key, up uint16) uint64 {
	h := endpointHash(k.Src.As16(), k.SrcPort) + endpointHash(k.Dst.As16(), k.DstPort) +
		(uint64(k.Proto)<<16|uint64(up))*0x9e3779b97f4a7c15
	h ^= h >> 32
	h *= 0xd6e8feb86659fd93
	return h ^ h>>29
}

func endpointHash(a [16]byte, port uint16) uint64 {
	x := binary.LittleEndian.Uint64(a[0:]) ^ bits.RotateLeft64(binary.LittleEndian.Uint64(a[8:]), 29) ^ uint64(port)<<7
	return x * 0xff51afd7ed558ccd
}

// matches reports whether e is the flow of packet key k on uplink up, and
// whether k goes in e's forward direction.
func (e *entry) matches(k *netflow.Key, up uint16) (ok, fwd bool) {
	if e.up != up || e.key.Proto != k.Proto {
		return false, false
	}
	if e.key.SrcPort == k.SrcPort && e.key.DstPort == k.DstPort && e.key.Src == k.Src && e.key.Dst == k.Dst {
		return true, true
	}
	if e.key.SrcPort == k.DstPort && e.key.DstPort == k.SrcPort && e.key.Src == k.Dst && e.key.Dst == k.Src {
		return true, false
	}
	return false, false
}

// slot is one place of an index; e is nil when it is free.
type slot struct {
	hash uint64
	e    *entry
}

// index maps flows to entries: open addressing with linear probing, kept at
// most half full, with backward-shift deletion (no tombstones).
type index struct {
	slots []slot
	n     int
}

const minSlots = 16

// find returns the entry of key k on uplink up with hash h, and whether k
// goes in its forward direction.
func (x *index) find(h uint64, k *netflow.Key, up uint16) (*entry, bool) {
	if len(x.slots) == 0 {
		return nil, false
	}
	mask := uint64(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := &x.slots[i]
		if s.e == nil {
			return nil, false
		}
		if s.hash == h {
			if ok, fwd := s.e.matches(k, up); ok {
				return s.e, fwd
			}
		}
	}
}

// insert adds e (whose hash is e.hash), growing the index if needed.
func (x *index) insert(e *entry) {
	if 2*(x.n+1) > len(x.slots) {
		x.grow()
	}
	x.place(e)
	x.n++
}

func (x *index) place(e *entry) {
	mask := uint64(len(x.slots) - 1)
	for i := e.hash & mask; ; i = (i + 1) & mask {
		if x.slots[i].e == nil {
			x.slots[i] = slot{hash: e.hash, e: e}
			return
		}
	}
}

func (x *index) grow() {
	old := x.slots
	x.slots = make([]slot, max(minSlots, 2*len(old)))
	for _, s := range old {
		if s.e != nil {
			x.place(s.e)
		}
	}
}

// remove deletes e and shifts later members of its probe run back.
func (x *index) remove(e *entry) {
	mask := uint64(len(x.slots) - 1)
	i := e.hash & mask
	for x.slots[i].e != e {
		if x.slots[i].e == nil {
			return // not present
		}
		i = (i + 1) & mask
	}
	x.n--
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		s := x.slots[j]
		if s.e == nil {
			break
		}
		// s may move to the hole at i if its home is not in (i, j].
		home := s.hash & mask
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			x.slots[i] = s
			i = j
		}
	}
	x.slots[i] = slot{}
}
