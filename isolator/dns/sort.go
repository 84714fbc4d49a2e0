package dns

import (
	"net/netip"
	"slices"
)

// SortAddrs orders destination addresses the way glibc's getaddrinfo does
// (RFC 3484 section 6, as updated by RFC 6724, with glibc's default policy
// table), so that an application trying them in order meets them in the
// order it would without the shim on a host with the INS's addresses.
// source gives the address a flow to a destination would leave from, and
// false when no uplink reaches it. Rules applied: 1 (avoid unusable
// destinations), 2 (prefer matching scope), 5 (prefer matching label),
// 6 (prefer higher precedence), 8 (prefer smaller scope), 9 (longest
// matching prefix, IPv6 only) and 10 (otherwise keep the order). Rules 3,
// 4 and 7 concern deprecated, home and transitional addresses, which an
// INS does not have.
func SortAddrs(addrs []netip.Addr, source func(netip.Addr) (netip.Addr, bool)) {
	type info struct {
		dst, src      netip.Addr
		ok            bool
		dstPrec       int
		dstLbl        int
		srcLbl        int
		dstSc, srcSc  int
		commonPrefix6 int
	}
	infos := make(map[netip.Addr]info, len(addrs))
	for _, d := range addrs {
		i := info{dst: d}
		i.src, i.ok = source(d)
		i.dstPrec, i.dstLbl = policy(d)
		_, i.srcLbl = policy(i.src)
		i.dstSc, i.srcSc = scope(d), scope(i.src)
		if d.Is6() && !d.Is4In6() && i.ok && i.src.Is6() {
			i.commonPrefix6 = commonPrefixLen(d, i.src)
		}
		infos[d] = i
	}
	slices.SortStableFunc(addrs, func(x, y netip.Addr) int {
		a, b := infos[x], infos[y]
		prefer := func(ca, cb bool) int {
			switch {
			case ca && !cb:
				return -1
			case cb && !ca:
				return 1
			}
			return 0
		}
		if r := prefer(a.ok, b.ok); r != 0 || !a.ok {
			return r // rule 1
		}
		if r := prefer(a.dstSc == a.srcSc, b.dstSc == b.srcSc); r != 0 {
			return r // rule 2
		}
		if r := prefer(a.dstLbl == a.srcLbl, b.dstLbl == b.srcLbl); r != 0 {
			return r // rule 5
		}
		if a.dstPrec != b.dstPrec {
			return b.dstPrec - a.dstPrec // rule 6
		}
		if a.dstSc != b.dstSc {
			return a.dstSc - b.dstSc // rule 8
		}
		if x.Is6() && y.Is6() && !x.Is4In6() && !y.Is4In6() && a.commonPrefix6 != b.commonPrefix6 {
			return b.commonPrefix6 - a.commonPrefix6 // rule 9
		}
		return 0 // rule 10
	})
}

// policyTable is glibc's built-in policy table (used when /etc/gai.conf
// sets none, as on Debian): RFC 3484's precedences, under which a ULA or
// any global IPv6 address (40) comes before IPv4 (10), with labels that
// also set apart site-local, ULA and Teredo sources. Longest prefix first.
var policyTable = []struct {
	prefix     netip.Prefix
	prec, labl int
}{
	{netip.MustParsePrefix("::1/128"), 50, 0},
	{netip.MustParsePrefix("::ffff:0:0/96"), 10, 4},
	{netip.MustParsePrefix("::/96"), 20, 3},
	{netip.MustParsePrefix("2001::/32"), 40, 7},
	{netip.MustParsePrefix("2002::/16"), 30, 2},
	{netip.MustParsePrefix("fec0::/10"), 40, 5},
	{netip.MustParsePrefix("fc00::/7"), 40, 6},
	{netip.MustParsePrefix("::/0"), 40, 1},
}

// policy returns the precedence and label of a (IPv4 as IPv4-mapped).
func policy(a netip.Addr) (prec, label int) {
	if !a.IsValid() {
		return 0, -1
	}
	if a.Is4() {
		a = netip.AddrFrom16(a.As16())
	}
	for _, p := range policyTable {
		if p.prefix.Contains(a) {
			return p.prec, p.labl
		}
	}
	return 40, 1
}

// scope returns the RFC 4291/6724 scope value of a: 0x2 link-local, 0x5
// site-local, 0xe global (IPv4 loopback and link-local map to 0x2).
func scope(a netip.Addr) int {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return 0
	case a.IsLoopback(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return 0x2
	case a.Is6() && netip.MustParsePrefix("fec0::/10").Contains(a):
		return 0x5
	case a.Is6() && a.IsMulticast():
		return int(a.As16()[1] & 0xf)
	}
	return 0xe
}

// commonPrefixLen is the number of leading bits a and b share, up to the
// 64-bit prefix RFC 6724 rule 9 looks at.
func commonPrefixLen(a, b netip.Addr) int {
	x, y := a.As16(), b.As16()
	n := 0
	for i := 0; i < 8; i++ {
		d := x[i] ^ y[i]
		if d == 0 {
			n += 8
			continue
		}
		for d&0x80 == 0 {
			n++
			d <<= 1
		}
		return n
	}
	return n
}
