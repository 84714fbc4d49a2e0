package flowtable

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/mpshim/mpshim/netflow"
)

// TestIndexAgainstMap inserts and removes flows at random, with hashes
// forced into few buckets so that probe runs are long and wrap around,
// and checks every lookup against a map.
func TestIndexAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var x index
	ref := map[uint16]*entry{}
	key := func(port uint16) netflow.Key {
		return netflow.Key{Src: client, Dst: server, SrcPort: port, DstPort: 80, Proto: 6}
	}
	for step := range 20000 {
		port := uint16(rng.IntN(300))
		k := key(port)
		// Few distinct hashes, high bits set so homes wrap at the end.
		h := 0xffff_ffff_ffff_fff8 | uint64(port%7)
		if e := ref[port]; e != nil && rng.IntN(2) == 0 {
			x.remove(e)
			delete(ref, port)
		} else if e == nil {
			e = &entry{hash: h, key: k}
			x.insert(e)
			ref[port] = e
		}
		if x.n != len(ref) || 2*x.n > len(x.slots) {
			t.Fatalf("step %d: %d entries in %d slots, want %d", step, x.n, len(x.slots), len(ref))
		}
		if step%97 == 0 {
			for p := range uint16(300) {
				k := key(p)
				got, fwd := x.find(0xffff_ffff_ffff_fff8|uint64(p%7), &k, 0)
				if got != ref[p] || (got != nil && !fwd) {
					t.Fatalf("step %d: find(%d) = %p, want %p", step, p, got, ref[p])
				}
				r := k.Reverse()
				if got, fwd := x.find(0xffff_ffff_ffff_fff8|uint64(p%7), &r, 0); got != ref[p] || (got != nil && fwd) {
					t.Fatalf("step %d: reverse find(%d) = %p fwd %v", step, p, got, fwd)
				}
			}
		}
	}
}

func TestFlowHashSymmetric(t *testing.T) {
	k := netflow.Key{Src: client, Dst: netip.MustParseAddr("2001:db8::1"), SrcPort: 1, DstPort: 2, Proto: 6}
	r := k.Reverse()
	if flowHash(&k, 3) != flowHash(&r, 3) {
		t.Fatal("hash differs between directions")
	}
	if flowHash(&k, 3) == flowHash(&k, 4) {
		t.Fatal("hash ignores the uplink")
	}
}
