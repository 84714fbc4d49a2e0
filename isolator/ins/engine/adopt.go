package engine

import (
	"cmp"
	"net/netip"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// ListenerInfo describes one listening socket for a daemon that adopts a
// running INS (docs/design.md, "Survival"): what it was made as, where it
// listens, and a duplicate of the INS end of its SOCK_SEQPACKET pair, by
// which the daemon recognises the app's listener it serves.
type ListenerInfo struct {
	ID      SockID
	Family  int // unix.AF_INET or unix.AF_INET6
	Type    int
	Proto   int
	Backlog int // as listen(2) was asked
	Addr    netip.AddrPort
	// Seq is a close-on-exec duplicate of the INS end; the caller owns it.
	Seq *os.File
}

// Listeners returns every socket that listens, by id, each with a duplicate
// of its SOCK_SEQPACKET end. A listener whose end cannot be duplicated (it is
// being torn down) is left out.
func (e *Engine) Listeners() []ListenerInfo {
	e.mu.Lock()
	socks := make([]*sock, 0, len(e.socks))
	for _, s := range e.socks {
		socks = append(socks, s)
	}
	e.mu.Unlock()
	var out []ListenerInfo
	for _, s := range socks {
		s.mu.Lock()
		if s.state != stListening || s.lis == nil || s.lis.done || s.lis.fd < 0 {
			s.mu.Unlock()
			continue
		}
		fd, err := unix.FcntlInt(uintptr(s.lis.fd), unix.F_DUPFD_CLOEXEC, 0)
		backlog := s.backlog
		s.mu.Unlock()
		if err != nil {
			continue
		}
		// The loop may have closed the end meanwhile and the number been
		// reused: keep only what is still a SOCK_SEQPACKET socket.
		if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_SEQPACKET {
			unix.Close(fd)
			continue
		}
		addr, _ := e.Getsockname(s.id)
		out = append(out, ListenerInfo{ID: s.id, Family: s.family, Type: s.typ, Proto: s.proto, Backlog: backlog,
			Addr: addr, Seq: os.NewFile(uintptr(fd), "listener")})
	}
	slices.SortFunc(out, func(a, b ListenerInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
