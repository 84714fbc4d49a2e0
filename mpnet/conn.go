package mpnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/unixfd"
	"github.com/mpshim/mpshim/msgproto"
)

// listenBacklog is the backlog of listeners (the INS clamps it to
// somaxconn).
const listenBacklog = 4096

// resolve turns address into one IP address and port for network. With
// passive, an empty host is the wildcard address of the network's family
// (IPv4 for "tcp"/"udp": use tcp6/udp6 or "[::]:port" for IPv6).
func resolve(ctx context.Context, network, address string, passive bool) (netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	proto := network[:3]
	port, err := net.DefaultResolver.LookupPort(ctx, proto, portStr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	fam := network[3:] // "", "4" or "6"
	if host == "" {
		if !passive {
			return netip.AddrPort{}, fmt.Errorf("missing host in %q", address)
		}
		if fam == "6" {
			return netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(port)), nil
		}
		return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(port)), nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if (fam == "4" && !ip.Is4()) || (fam == "6" && ip.Is4()) {
			return netip.AddrPort{}, fmt.Errorf("address %s is not of network %s", host, network)
		}
		return netip.AddrPortFrom(ip, uint16(port)), nil
	}
	ipNet := "ip" + fam
	ips, err := net.DefaultResolver.LookupNetIP(ctx, ipNet, host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("no address for %s", host)
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(port)), nil
}

func domainOf(ip netip.Addr) int {
	if ip.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func netipOf(a msgproto.Addr) netip.AddrPort {
	ap, err := a.AddrPort()
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func tcpAddr(a msgproto.Addr) *net.TCPAddr { return net.TCPAddrFromAddrPort(netipOf(a)) }

func opError(op, network string, addr net.Addr, err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: network, Addr: addr, Err: err}
}

// Conn is a TCP connection served by an INS. Reads and writes go straight
// to the kernel socketpair whose other end the INS pumps.
type Conn struct {
	*net.UnixConn
	c      *Client
	sock   uint64
	local  *net.TCPAddr
	remote *net.TCPAddr
}

// LocalAddr returns the connection's local TCP address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the connection's remote TCP address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// CloseWrite shuts down the sending side (a TCP FIN after the bytes
// already written).
func (c *Conn) CloseWrite() error {
	if err := c.c.callReply(&msgproto.Shutdown{Sock: c.sock, How: unix.SHUT_WR}); err != nil {
		return opError("shutdown", "tcp", c.remote, err)
	}
	return c.UnixConn.CloseWrite()
}

// CloseRead shuts down the receiving side.
func (c *Conn) CloseRead() error {
	if err := c.c.callReply(&msgproto.Shutdown{Sock: c.sock, How: unix.SHUT_RD}); err != nil {
		return opError("shutdown", "tcp", c.remote, err)
	}
	return c.UnixConn.CloseRead()
}

// Sock returns the isolator's id of the socket.
func (c *Conn) Sock() uint64 { return c.sock }

// wrapStream makes a Conn of the app end a of a stream socketpair; a is
// closed (the Conn holds its own descriptor).
func (c *Client) wrapStream(a *os.File, sock uint64, local, remote *net.TCPAddr) (*Conn, error) {
	fc, err := net.FileConn(a)
	a.Close()
	if err != nil {
		return nil, err
	}
	uc, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return nil, errors.New("mpnet: socketpair end is not a unix socket")
	}
	return &Conn{UnixConn: uc, c: c, sock: sock, local: local, remote: remote}, nil
}

// Dial connects to address over network ("tcp", "tcp4" or "tcp6") through
// an INS; the isolator chooses the INS and the INS the uplink. The returned
// *Conn's LocalAddr and RemoteAddr are *net.TCPAddr. Cancelling ctx
// abandons the attempt.
func (c *Client) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	ap, err := resolve(ctx, network, address, false)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	raddr := net.TCPAddrFromAddrPort(ap)
	a, b, err := socketpair(unix.SOCK_STREAM)
	if err != nil {
		return nil, opError("dial", network, raddr, err)
	}
	sock, err := c.socket(domainOf(ap.Addr()), unix.SOCK_STREAM, b)
	b.Close()
	if err != nil {
		a.Close()
		return nil, opError("socket", network, raddr, err)
	}
	done := make(chan error, 1)
	go func() { done <- c.callReply(&msgproto.Connect{Sock: sock, Addr: msgproto.AddrFromNetip(ap)}) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		a.Close() // the INS sees the hang-up and drops the attempt
		return nil, &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: ctx.Err()}
	}
	if err != nil {
		a.Close()
		return nil, opError("connect", network, raddr, err)
	}
	local, err := c.name(sock, false)
	if err != nil {
		a.Close()
		return nil, opError("getsockname", network, raddr, err)
	}
	remote, err := c.name(sock, true)
	if err != nil {
		a.Close()
		return nil, opError("getpeername", network, raddr, err)
	}
	conn, err := c.wrapStream(a, sock, tcpAddr(local), tcpAddr(remote))
	if err != nil {
		return nil, opError("dial", network, raddr, err)
	}
	return conn, nil
}

// Listener is a TCP listener replicated into every INS. Accepting is a
// recvmsg on the app end of its SEQPACKET pair: one AcceptNotify and one
// stream descriptor per connection.
type Listener struct {
	c      *Client
	sock   uint64
	seq    *net.UnixConn
	addr   *net.TCPAddr
	closed atomic.Bool
}

// Listen listens on address over network ("tcp", "tcp4" or "tcp6") in
// every INS. An empty host is the IPv4 wildcard for "tcp" (see resolve).
func (c *Client) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	ap, err := resolve(ctx, network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	laddr := net.TCPAddrFromAddrPort(ap)
	a, b, err := socketpair(unix.SOCK_STREAM)
	if err != nil {
		return nil, opError("listen", network, laddr, err)
	}
	// a stays open until the listener exists: its hang-up would tell the
	// INS that the socket is closed.
	defer a.Close()
	sock, err := c.socket(domainOf(ap.Addr()), unix.SOCK_STREAM, b)
	b.Close()
	if err != nil {
		return nil, opError("socket", network, laddr, err)
	}
	if err := c.callReply(&msgproto.Bind{Sock: sock, Addr: msgproto.AddrFromNetip(ap)}); err != nil {
		return nil, opError("bind", network, laddr, err)
	}
	sa, sb, err := socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		return nil, opError("listen", network, laddr, err)
	}
	err = c.callReply(&msgproto.Listen{Sock: sock, Backlog: listenBacklog}, sb)
	sb.Close()
	if err != nil {
		sa.Close()
		return nil, opError("listen", network, laddr, err)
	}
	name, err := c.name(sock, false)
	if err != nil {
		sa.Close()
		return nil, opError("getsockname", network, laddr, err)
	}
	fc, err := net.FileConn(sa)
	sa.Close()
	if err != nil {
		return nil, opError("listen", network, laddr, err)
	}
	return &Listener{c: c, sock: sock, seq: fc.(*net.UnixConn), addr: tcpAddr(name)}, nil
}

// acceptMsgSize is the size of an AcceptNotify message.
const acceptMsgSize = msgproto.HeaderSize + 72

// Accept waits for the next connection.
func (l *Listener) Accept() (net.Conn, error) {
	buf := make([]byte, acceptMsgSize+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, flags, _, err := l.seq.ReadMsgUnix(buf, oob)
		if err != nil {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
		}
		files, _ := unixfd.Rights(oob[:oobn], "mpnet")
		if n == 0 && len(files) == 0 {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: ErrClosed}
		}
		var an msgproto.AcceptNotify
		_, derr := msgproto.DecodeTo(buf[:n], &an)
		if derr != nil || n != acceptMsgSize || len(files) != 1 || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			for _, f := range files {
				f.Close()
			}
			continue // not a well-formed notification: skip it
		}
		conn, err := l.c.wrapStream(files[0], an.Sock, tcpAddr(an.Local), tcpAddr(an.Peer))
		if err != nil {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
		}
		return conn, nil
	}
}

// Close stops listening: the INS see the hang-up of their ends.
func (l *Listener) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	return l.seq.Close()
}

// Addr returns the bound address (port resolved).
func (l *Listener) Addr() net.Addr { return l.addr }

// Sock returns the isolator's id of the listening socket.
func (l *Listener) Sock() uint64 { return l.sock }

// dgramHeaderSize is the size of the framing in front of every datagram on
// a UDP socket's SEQPACKET pair: msgproto.Datagram's body (docs/protocol.md).
const dgramHeaderSize = msgproto.DatagramSize

// putDgramHeader writes the framing of an n-byte datagram to ap (the zero
// AddrPort: the connected peer).
func putDgramHeader(h []byte, ap netip.AddrPort, n int) error {
	return msgproto.PutDatagram(h, &msgproto.Datagram{Addr: msgproto.AddrFromNetip(ap), Len: uint32(n)})
}

// getDgramHeader decodes received framing; the zero AddrPort means no
// address.
func getDgramHeader(h []byte) (netip.AddrPort, bool) {
	var d msgproto.Datagram
	if msgproto.GetDatagram(h, &d) != nil {
		return netip.AddrPort{}, false
	}
	if d.Addr.Family == msgproto.FamilyUnspec {
		return netip.AddrPort{}, true
	}
	ap, err := d.Addr.AddrPort()
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// PacketConn is a UDP socket served by an INS; each datagram is one
// message on a SEQPACKET socketpair.
type PacketConn struct {
	*net.UnixConn
	c     *Client
	sock  uint64
	local *net.UDPAddr
	rc    syscall.RawConn
}

// ListenPacket opens a UDP socket bound to address on network ("udp",
// "udp4" or "udp6").
func (c *Client) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	ap, err := resolve(ctx, network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	laddr := net.UDPAddrFromAddrPort(ap)
	a, b, err := socketpair(unix.SOCK_SEQPACKET)
	if err != nil {
		return nil, opError("listen", network, laddr, err)
	}
	defer a.Close()
	sock, err := c.socket(domainOf(ap.Addr()), unix.SOCK_DGRAM, b)
	b.Close()
	if err != nil {
		return nil, opError("socket", network, laddr, err)
	}
	if err := c.callReply(&msgproto.Bind{Sock: sock, Addr: msgproto.AddrFromNetip(ap)}); err != nil {
		return nil, opError("bind", network, laddr, err)
	}
	name, err := c.name(sock, false)
	if err != nil {
		return nil, opError("getsockname", network, laddr, err)
	}
	fc, err := net.FileConn(a)
	if err != nil {
		return nil, opError("listen", network, laddr, err)
	}
	uc := fc.(*net.UnixConn)
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, opError("listen", network, laddr, err)
	}
	return &PacketConn{UnixConn: uc, c: c, sock: sock, local: net.UDPAddrFromAddrPort(netipOf(name)), rc: rc}, nil
}

// LocalAddr returns the bound UDP address.
func (p *PacketConn) LocalAddr() net.Addr { return p.local }

// RemoteAddr returns nil: the socket is not connected.
func (p *PacketConn) RemoteAddr() net.Addr { return nil }

// ReadFrom reads one datagram; a datagram longer than b is truncated.
func (p *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	var hdr [dgramHeaderSize]byte
	var n int
	var rerr error
	err := p.rc.Read(func(fd uintptr) bool {
		n, _, _, _, rerr = unix.RecvmsgBuffers(int(fd), [][]byte{hdr[:], b}, nil, unix.MSG_DONTWAIT)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Addr: p.local, Err: err}
	}
	if n == 0 {
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Addr: p.local, Err: ErrClosed}
	}
	ap, ok := getDgramHeader(hdr[:min(n, dgramHeaderSize)])
	if !ok || n < dgramHeaderSize {
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Addr: p.local, Err: unix.EPROTO}
	}
	return n - dgramHeaderSize, net.UDPAddrFromAddrPort(ap), nil
}

// WriteTo sends b as one datagram to addr (a *net.UDPAddr).
func (p *PacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: unix.EINVAL}
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	var hdr [dgramHeaderSize]byte
	if err := putDgramHeader(hdr[:], ap, len(b)); err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: unix.EMSGSIZE}
	}
	var werr error
	err := p.rc.Write(func(fd uintptr) bool {
		_, werr = unix.SendmsgBuffers(int(fd), [][]byte{hdr[:], b}, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return werr != unix.EAGAIN
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: err}
	}
	return len(b), nil
}

// Read reads one datagram and drops its source address.
func (p *PacketConn) Read(b []byte) (int, error) {
	n, _, err := p.ReadFrom(b)
	return n, err
}

// Write is refused: use WriteTo.
func (p *PacketConn) Write(b []byte) (int, error) {
	return 0, &net.OpError{Op: "write", Net: "udp", Addr: p.local, Err: unix.EDESTADDRREQ}
}
