package isolator

import (
	"fmt"
	"net/netip"
	"sync"
)

// addrPool hands out consecutive addresses of one subnet, starting at a
// configured first address, and takes them back when an INS goes away.
type addrPool struct {
	mu     sync.Mutex
	first  netip.Addr
	prefix netip.Prefix // the subnet, masked
	bits   int
	used   map[netip.Addr]bool
}

// newAddrPool parses "FIRST/LEN" (e.g. 10.77.0.10/24). An empty string
// gives a nil pool (no addresses of that family).
func newAddrPool(s string) (*addrPool, error) {
	if s == "" {
		return nil, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return nil, fmt.Errorf("address pool %q: %w", s, err)
	}
	return &addrPool{first: p.Addr(), prefix: p.Masked(), bits: p.Bits(), used: map[netip.Addr]bool{}}, nil
}

// get returns the lowest free address with the subnet's prefix length.
func (p *addrPool) get() (netip.Prefix, error) {
	if p == nil {
		return netip.Prefix{}, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for a := p.first; p.prefix.Contains(a); a = a.Next() {
		if !p.used[a] {
			p.used[a] = true
			return netip.PrefixFrom(a, p.bits), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("address pool %s from %s is exhausted", p.prefix, p.first)
}

// put returns an address to the pool.
func (p *addrPool) put(a netip.Prefix) {
	if p == nil || !a.IsValid() {
		return
	}
	p.mu.Lock()
	delete(p.used, a.Addr())
	p.mu.Unlock()
}

// take marks address a used, as an INS adopted from a dead daemon holds it.
func (p *addrPool) take(a netip.Prefix) {
	if p == nil || !a.IsValid() {
		return
	}
	p.mu.Lock()
	p.used[a.Addr()] = true
	p.mu.Unlock()
}
