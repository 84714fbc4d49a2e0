// Package maglev builds the lookup table of Maglev consistent hashing
// (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016, section 3.4).
//
// The table has a prime number M of entries (DefaultSize, 65,537, unless
// told otherwise). Every backend has a preference list, a permutation of
// 0..M-1 given by two hashes of its name: offset = h1 mod M and
// skip = h2 mod (M-1) + 1, permutation[j] = (offset + j·skip) mod M. The
// backends take turns; in its turn a backend claims the next entry of its
// list that is still free. Weights change how often a backend takes a turn:
// every round a backend earns its weight in credit and claims one entry per
// maximum weight of credit, so shares are proportional to weights.
//
// The table depends only on the backends' names, weights and order-free
// set, never on the host building it: LB hosts with the same backends build
// the same table, which is how a fleet behind ECMP shares one VIP.
package maglev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"
)

// DefaultSize is the table size the paper uses: the smallest prime above
// 2^16. It keeps every backend's share within 1% of its target for up to
// 655 equal backends (M > 100·N).
const DefaultSize = 65537

// MaxSize bounds the table size (entries are 32-bit backend indexes, and a
// larger table buys nothing for the few hundred backends of one host).
const MaxSize = 1<<24 + 43 // a prime

// None is the entry of a table without any backend of positive weight.
const None = -1

// Backend is one destination of the table.
type Backend struct {
	// Name identifies the backend; its two hashes place the backend's
	// preference list, so the same name lands on the same entries on every
	// host and across rebuilds.
	Name string
	// Weight is the backend's relative share; 0 gives it no entries
	// (draining or down).
	Weight uint32
}

// Table is a built Maglev lookup table.
type Table struct {
	size     int
	backends []Backend
	entry    []int32
}

// New builds the table of size entries (a prime ≥ 2, at most MaxSize; 0
// means DefaultSize) for backends. Names must be unique and not empty; the
// order of backends does not change which backend gets which entry, only
// the index Lookup returns for it.
func New(backends []Backend, size int) (*Table, error) {
	if size == 0 {
		size = DefaultSize
	}
	if size < 2 || size > MaxSize || !big.NewInt(int64(size)).ProbablyPrime(20) {
		return nil, fmt.Errorf("maglev: table size %d: want a prime in 2..%d", size, MaxSize)
	}
	seen := make(map[string]bool, len(backends))
	var live int
	for i, b := range backends {
		if b.Name == "" {
			return nil, fmt.Errorf("maglev: backend %d has no name", i)
		}
		if seen[b.Name] {
			return nil, fmt.Errorf("maglev: backend name %q twice", b.Name)
		}
		seen[b.Name] = true
		if b.Weight > 0 {
			live++
		}
	}
	if live > size {
		return nil, fmt.Errorf("maglev: %d backends do not fit a table of %d entries", live, size)
	}
	t := &Table{size: size, backends: slices.Clone(backends), entry: make([]int32, size)}
	for i := range t.entry {
		t.entry[i] = None
	}
	if live == 0 {
		return t, nil
	}
	t.populate()
	return t, nil
}

// perm is one backend's position in its preference list.
type perm struct {
	index        int32 // into Table.backends
	weight       uint64
	offset, skip uint64
	next         uint64 // how many entries of the list were tried
	credit       uint64
}

func (t *Table) populate() {
	m := uint64(t.size)
	var ps []perm
	var maxW uint64
	for i, b := range t.backends {
		if b.Weight == 0 {
			continue
		}
		h1, h2 := NameHashes(b.Name)
		ps = append(ps, perm{index: int32(i), weight: uint64(b.Weight), offset: h1 % m, skip: h2%(m-1) + 1})
		maxW = max(maxW, uint64(b.Weight))
	}
	// Turns go in name order so that the table does not depend on the
	// order the caller listed the backends in.
	slices.SortFunc(ps, func(a, b perm) int {
		switch x, y := t.backends[a.index].Name, t.backends[b.index].Name; {
		case x < y:
			return -1
		case x > y:
			return 1
		}
		return 0
	})
	filled := uint64(0)
	for filled < m {
		for i := range ps {
			p := &ps[i]
			p.credit += p.weight
			for p.credit >= maxW && filled < m {
				p.credit -= maxW
				// skip is in 1..m-1 and m is prime, so the list visits
				// every entry once in m steps: a free one is found.
				for {
					c := (p.offset + p.next*p.skip) % m
					p.next++
					if t.entry[c] == None {
						t.entry[c] = p.index
						filled++
						break
					}
				}
			}
			if filled == m {
				break
			}
		}
	}
}

// NameHashes returns the two independent 64-bit hashes of a backend name
// that place its preference list (offset from the first, skip from the
// second). They are FNV-1a with different seeds, finished by a 64-bit mixer,
// so that they are the same on every host and architecture.
func NameHashes(name string) (h1, h2 uint64) {
	return mix(fnv1a(0xcbf29ce484222325, name)), mix(fnv1a(0x84222325cbf29ce4^0x9e3779b97f4a7c15, name))
}

func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 0x100000001b3
	}
	return h
}

// mix is the finaliser of SplitMix64.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Size is the number of entries M.
func (t *Table) Size() int { return t.size }

// Backends returns the backends the table was built from, in the caller's
// order (Lookup's results index this slice).
func (t *Table) Backends() []Backend { return slices.Clone(t.backends) }

// Lookup returns the index (into the backends given to New) of the backend
// for a flow with hash h, or None when no backend has a positive weight.
func (t *Table) Lookup(h uint64) int { return int(t.entry[h%uint64(t.size)]) }

// Entry returns the backend index of entry i (0 ≤ i < Size), or None.
func (t *Table) Entry(i int) int { return int(t.entry[i]) }

// Entries returns a copy of the table: entry i holds a backend index or
// None.
func (t *Table) Entries() []int32 { return slices.Clone(t.entry) }

// Counts returns how many entries each backend holds, indexed like the
// backends given to New.
func (t *Table) Counts() []int {
	c := make([]int, len(t.backends))
	for _, e := range t.entry {
		if e != None {
			c[e]++
		}
	}
	return c
}

// ErrDifferentSize is returned by Moved for tables of different sizes.
var ErrDifferentSize = errors.New("maglev: tables of different sizes")

// Moved compares two tables by backend name: it returns how many entries
// changed backend, and of those how many had, in from, a backend that still
// has entries in to (the disruption beyond the minimum, which moves only
// the entries of removed backends and those taken by added ones).
func Moved(from, to *Table) (changed, ofKept int, err error) {
	if from.size != to.size {
		return 0, 0, ErrDifferentSize
	}
	name := func(t *Table, i int) string {
		if e := t.entry[i]; e != None {
			return t.backends[e].Name
		}
		return ""
	}
	kept := map[string]bool{}
	for i, c := range to.Counts() {
		if c > 0 {
			kept[to.backends[i].Name] = true
		}
	}
	for i := range from.entry {
		a, b := name(from, i), name(to, i)
		if a == b {
			continue
		}
		changed++
		if kept[a] {
			ofKept++
		}
	}
	return changed, ofKept, nil
}

// FlowHash is the hash of a flow key that the XDP program computes (see
// package lb/xdp): the key's five little-endian 64-bit words folded with a
// multiply-xorshift, then mixed. It lives here so that tests and tools can
// say which entry a flow uses without the kernel.
func FlowHash(key [40]byte) uint64 {
	var h uint64
	for i := 0; i < 40; i += 8 {
		h ^= binary.LittleEndian.Uint64(key[i:])
		h *= FlowMul
		h ^= h >> 32
	}
	h ^= h >> 29
	h *= FlowFinal
	h ^= h >> 32
	return h
}

// Multipliers of FlowHash.
const (
	FlowMul   = 0x9e3779b97f4a7c15
	FlowFinal = 0xbf58476d1ce4e5b9
)
