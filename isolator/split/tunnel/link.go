package tunnel

import (
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
)

// Link is one subflow: a datagram channel between one local and one remote
// endpoint. A session stripes over several; both sides list their links in
// the same order, link i of one side facing link i of the other.
type Link interface {
	// WritePacket sends one datagram; errors are counted, not fatal.
	WritePacket(b []byte) error
	// ReadPacket blocks for the next datagram; an error after Close ends
	// the session's reader for this link.
	ReadPacket(b []byte) (int, error)
	// Close unblocks ReadPacket.
	Close() error
	// String names the link for logs and stats.
	String() string
}

// UDPLink is a Link over a UDP socket that talks to one remote address and
// ignores datagrams from any other.
//
// UDP, not TCP, carries the subflows: a lost datagram on one path delays
// only the frames it carried, which the session re-sends on another path,
// whereas a TCP subflow would hold every later byte of that path behind
// its own retransmission and hide the loss from the scheduler. The session
// does its own acknowledgement, retransmission and flow control.
type UDPLink struct {
	c      *net.UDPConn
	local  netip.AddrPort
	remote atomic.Pointer[netip.AddrPort]
	// Strangers counts datagrams from other addresses, dropped.
	Strangers atomic.Uint64
}

// socketBuffer is asked for both directions; the kernel caps it at
// net.core.[rw]mem_max.
const socketBuffer = 4 << 20

// ListenUDP opens a UDP socket bound to local; set the remote with
// SetRemote before use.
func ListenUDP(local netip.AddrPort) (*UDPLink, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, fmt.Errorf("tunnel: udp %s: %w", local, err)
	}
	_ = c.SetReadBuffer(socketBuffer)
	_ = c.SetWriteBuffer(socketBuffer)
	return &UDPLink{c: c, local: c.LocalAddr().(*net.UDPAddr).AddrPort()}, nil
}

// DialUDP is ListenUDP(local) with remote set.
func DialUDP(local, remote netip.AddrPort) (*UDPLink, error) {
	l, err := ListenUDP(local)
	if err != nil {
		return nil, err
	}
	l.SetRemote(remote)
	return l, nil
}

// SetRemote sets the one address the link sends to and accepts from.
func (l *UDPLink) SetRemote(remote netip.AddrPort) {
	r := netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	l.remote.Store(&r)
}

// LocalAddr is the bound address (with the port chosen when local had 0).
func (l *UDPLink) LocalAddr() netip.AddrPort { return l.local }

// WritePacket implements Link.
func (l *UDPLink) WritePacket(b []byte) error {
	r := l.remote.Load()
	if r == nil {
		return fmt.Errorf("tunnel: udp %s: no remote", l.local)
	}
	_, err := l.c.WriteToUDPAddrPort(b, *r)
	return err
}

// ReadPacket implements Link.
func (l *UDPLink) ReadPacket(b []byte) (int, error) {
	for {
		n, from, err := l.c.ReadFromUDPAddrPort(b)
		if err != nil {
			return n, err
		}
		r := l.remote.Load()
		if r != nil && netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) == *r {
			return n, nil
		}
		l.Strangers.Add(1)
	}
}

// Close implements Link.
func (l *UDPLink) Close() error { return l.c.Close() }

// String implements Link.
func (l *UDPLink) String() string {
	if r := l.remote.Load(); r != nil {
		return fmt.Sprintf("%s->%s", l.local, *r)
	}
	return l.local.String()
}
