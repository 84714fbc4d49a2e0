package msgproto

import (
	"fmt"
	"net/netip"
)

// AppendAddrList appends addrs to dst as the Addrs list of a ResolveReply:
// one address block per address, port 0. IPv4-mapped IPv6 addresses stay
// IPv6; zones become scope ids as in AddrFromNetip. Invalid addresses are
// skipped, and at most MaxResolveAddrs are written in all.
func AppendAddrList(dst []byte, addrs []netip.Addr) []byte {
	var blk [AddrSize]byte
	n := 0
	for _, a := range addrs {
		if !a.IsValid() || n == MaxResolveAddrs {
			continue
		}
		ad := AddrFromNetip(netip.AddrPortFrom(a, 0))
		ad.put(blk[:])
		dst = append(dst, blk[:]...)
		n++
	}
	return dst
}

// ParseAddrList decodes the Addrs list of a ResolveReply: whole address
// blocks, each canonical, of family FamilyInet or FamilyInet6, with port 0
// and no flow information. Errors wrap ErrBadField.
func ParseAddrList(b []byte) ([]netip.Addr, error) {
	if len(b)%AddrSize != 0 || len(b) > MaxAddrList {
		return nil, fmt.Errorf("msgproto: address list of %d bytes: %w", len(b), ErrBadField)
	}
	out := make([]netip.Addr, 0, len(b)/AddrSize)
	for off := 0; off < len(b); off += AddrSize {
		a := getAddr(b[off : off+AddrSize])
		if a.Family == FamilyUnspec || a.Port != 0 || a.Flowinfo != 0 {
			return nil, fmt.Errorf("msgproto: address list entry %d: family %d port %d flowinfo %d: %w", off/AddrSize, a.Family, a.Port, a.Flowinfo, ErrBadField)
		}
		ap, err := a.AddrPort()
		if err != nil {
			return nil, fmt.Errorf("msgproto: address list entry %d: %w", off/AddrSize, err)
		}
		out = append(out, ap.Addr())
	}
	return out, nil
}
