package tunnel

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
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
	raw    syscall.RawConn
	batch  batcher
	wmu    sync.Mutex
	wms    []ipv4.Message
	rms    []ipv4.Message
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
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("tunnel: udp %s: %w", local, err)
	}
	l := &UDPLink{c: c, raw: raw, local: c.LocalAddr().(*net.UDPAddr).AddrPort()}
	if l.local.Addr().Is4() {
		l.batch = ipv4.NewPacketConn(c)
	} else {
		l.batch = ipv6.NewPacketConn(c)
	}
	return l, nil
}

// batcher is what x/net's ipv4 and ipv6 PacketConns offer: sendmmsg and
// recvmmsg on Linux.
type batcher interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// BatchLink is a Link that moves several datagrams per system call.
type BatchLink interface {
	Link
	// WriteBatch sends the datagrams in order.
	WriteBatch(pkts [][]byte) error
	// ReadBatch fills bufs[:n] with n ≥ 1 datagrams of sizes[:n].
	ReadBatch(bufs [][]byte, sizes []int) (int, error)
}

// WriteBatch implements BatchLink with sendmmsg.
func (l *UDPLink) WriteBatch(pkts [][]byte) error {
	r := l.remote.Load()
	if r == nil {
		return fmt.Errorf("tunnel: udp %s: no remote", l.local)
	}
	addr := net.UDPAddrFromAddrPort(*r)
	l.wmu.Lock()
	defer l.wmu.Unlock()
	for len(l.wms) < len(pkts) {
		l.wms = append(l.wms, ipv4.Message{Buffers: make([][]byte, 1)})
	}
	ms := l.wms[:len(pkts)]
	for i, p := range pkts {
		ms[i].Buffers[0] = p
		ms[i].Addr = addr
	}
	for len(ms) > 0 {
		n, err := l.batch.WriteBatch(ms, 0)
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

// ReadBatch implements BatchLink with recvmmsg; datagrams from other
// addresses are dropped and counted.
func (l *UDPLink) ReadBatch(bufs [][]byte, sizes []int) (int, error) {
	for len(l.rms) < len(bufs) {
		l.rms = append(l.rms, ipv4.Message{Buffers: make([][]byte, 1)})
	}
	ms := l.rms[:len(bufs)]
	for i := range ms {
		ms[i].Buffers[0] = bufs[i]
	}
	for {
		n, err := l.batch.ReadBatch(ms, 0)
		if err != nil {
			return 0, err
		}
		r := l.remote.Load()
		k := 0
		for i := range n {
			ua, ok := ms[i].Addr.(*net.UDPAddr)
			if !ok || r == nil || netip.AddrPortFrom(ua.AddrPort().Addr().Unmap(), ua.AddrPort().Port()) != *r {
				l.Strangers.Add(1)
				continue
			}
			if k != i {
				bufs[k], bufs[i] = bufs[i], bufs[k]
			}
			sizes[k] = ms[i].N
			k++
		}
		if k > 0 {
			return k, nil
		}
	}
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

// WritePacket implements Link. It never waits: when the socket buffer is
// full (e.g. packets held for a neighbour that no longer answers after
// the carrier went) the datagram is dropped with EAGAIN, as a router would,
// so that ACKs and probes of the other paths, which share the caller, are
// not held up.
func (l *UDPLink) WritePacket(b []byte) error {
	r := l.remote.Load()
	if r == nil {
		return fmt.Errorf("tunnel: udp %s: no remote", l.local)
	}
	var sa unix.Sockaddr
	if r.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(r.Port()), Addr: r.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(r.Port()), Addr: r.Addr().As16()}
	}
	var serr error
	err := l.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, unix.MSG_DONTWAIT, sa)
		return true
	})
	if err != nil {
		return err
	}
	return serr
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
