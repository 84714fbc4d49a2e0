package engine_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"github.com/mpshim/mpshim/msgproto"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

func TestUDPSocketpairPath(t *testing.T) {
	n := newTestNet(t)
	id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_DGRAM)
	local := netip.AddrPortFrom(addrA, 5000)
	if errno := n.e.Bind(id, local); errno != 0 {
		t.Fatalf("Bind: %v", errno)
	}
	app, ins := instest.Socketpair(t, unix.SOCK_SEQPACKET)
	if errno := n.e.AttachDatagram(id, ins); errno != 0 {
		t.Fatalf("AttachDatagram: %v", errno)
	}
	_, ins2 := instest.Socketpair(t, unix.SOCK_SEQPACKET)
	if errno := n.e.AttachDatagram(id, ins2); errno != unix.EINVAL {
		t.Fatalf("second AttachDatagram = %v, want EINVAL", errno)
	}
	peer, err := gonet.DialUDP(n.b, nil, addrPtr(full(local)), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peerAddr := netip.AddrPortFrom(addrB, uint16(peer.LocalAddr().(*net.UDPAddr).Port))

	big := bytes.Repeat([]byte("0123456789"), 100)
	peer.Write([]byte("ping"))
	peer.Write(big)

	// MSG_PEEK leaves the datagram queued.
	hdr := make([]byte, msgproto.DatagramSize)
	buf := make([]byte, 2000)
	for _, flags := range []int{unix.MSG_PEEK, 0} {
		k, _, _, _, err := unix.RecvmsgBuffers(app, [][]byte{hdr, buf}, nil, flags)
		if err != nil {
			t.Fatal(err)
		}
		var d msgproto.Datagram
		if err := msgproto.GetDatagram(hdr, &d); err != nil {
			t.Fatalf("flags %#x: framing: %v", flags, err)
		}
		from, _ := d.Addr.AddrPort()
		if from != peerAddr || d.Flags != 0 || d.Len != 4 || string(buf[:k-msgproto.DatagramSize]) != "ping" {
			t.Fatalf("flags %#x: got %q (%+v) from %v, want ping from %v", flags, buf[:k-msgproto.DatagramSize], d, from, peerAddr)
		}
	}
	// A short buffer truncates; MSG_TRUNC reports the full length.
	small := make([]byte, 10)
	k, rflags, err := recvTrunc(app, hdr, small)
	if err != nil || k-msgproto.DatagramSize != len(big) || rflags&unix.MSG_TRUNC == 0 || !bytes.Equal(small, big[:10]) {
		t.Fatalf("truncated read: k=%d rflags=%#x err=%v", k, rflags, err)
	}
	// App to network through the socketpair: header + payload.
	if _, err := unix.Write(app, framed(t, peerAddr, "pong")); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	rb := make([]byte, 100)
	rn, err := peer.Read(rb)
	if err != nil || string(rb[:rn]) != "pong" {
		t.Fatalf("peer read %q %v", rb[:rn], err)
	}
	// Without a destination on an unconnected socket the datagram is
	// dropped and the error is reported once by SO_ERROR.
	unix.Write(app, framed(t, netip.AddrPort{}, "x"))
	engWait(t, func() bool { return n.e.Stats().DgramsDrop == 1 })
	if b, _ := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4); unix.Errno(instest.LeU32(b)) != unix.EDESTADDRREQ {
		t.Fatalf("SO_ERROR = %v, want EDESTADDRREQ", unix.Errno(instest.LeU32(b)))
	}
	// A payload that disagrees with the framing's Len is malformed:
	// dropped, EINVAL by SO_ERROR.
	bad := framed(t, peerAddr, "four")
	unix.Write(app, bad[:len(bad)-1])
	engWait(t, func() bool { return n.e.Stats().DgramsDrop == 2 })
	if b, _ := n.e.Getsockopt(id, unix.SOL_SOCKET, unix.SO_ERROR, 4); unix.Errno(instest.LeU32(b)) != unix.EINVAL {
		t.Fatalf("SO_ERROR = %v, want EINVAL", unix.Errno(instest.LeU32(b)))
	}
	// The largest datagram passes the framing in both directions.
	huge := bytes.Repeat([]byte{'h'}, 65507)
	if _, err := unix.Write(app, framed(t, peerAddr, string(huge))); err != nil {
		t.Fatal(err)
	}
	hb := make([]byte, 70000)
	if rn, err := peer.Read(hb); err != nil || rn != len(huge) {
		t.Fatalf("peer read of the largest datagram: %d %v", rn, err)
	}
	if _, _, _, _, errno := n.e.RecvFrom(context.Background(), id, 10, 0); errno != unix.EINVAL {
		t.Fatalf("RecvFrom on attached socket = %v, want EINVAL", errno)
	}
	// The app closing its fd ends the socket.
	n.e.Close(id)
	unix.Close(app)
	engWait(t, func() bool { _, e := n.e.Getsockname(id); return e == unix.EBADF })
}

// framed returns one socketpair message: the framing for a datagram to to
// followed by payload.
func framed(t *testing.T, to netip.AddrPort, payload string) []byte {
	t.Helper()
	b := make([]byte, msgproto.DatagramSize+len(payload))
	if err := msgproto.PutDatagram(b, &msgproto.Datagram{Addr: msgproto.AddrFromNetip(to), Len: uint32(len(payload))}); err != nil {
		t.Fatal(err)
	}
	copy(b[msgproto.DatagramSize:], payload)
	return b
}

func recvTrunc(fd int, hdr, buf []byte) (int, int, error) {
	iov := []unix.Iovec{{Base: &hdr[0]}, {Base: &buf[0]}}
	iov[0].SetLen(len(hdr))
	iov[1].SetLen(len(buf))
	msg := unix.Msghdr{Iov: &iov[0], Iovlen: 2}
	r, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptrOf(&msg), unix.MSG_TRUNC)
	if e != 0 {
		return 0, 0, e
	}
	return int(r), int(msg.Flags), nil
}

func TestUDPRingPath(t *testing.T) {
	n := newTestNet(t)
	id := instest.MustSocket(t, n.e, unix.AF_INET6, unix.SOCK_DGRAM)
	if errno := n.e.Bind(id, netip.AddrPortFrom(netip.IPv6Unspecified(), 5001)); errno != 0 {
		t.Fatalf("Bind: %v", errno)
	}
	peer, err := gonet.DialUDP(n.b, addrPtr(full(netip.AddrPortFrom(addrB, 6000))), nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	// Peer to engine socket, read with RecvFrom.
	peer.WriteTo([]byte("hello world"), &net.UDPAddr{IP: net.ParseIP("10.0.0.1"), Port: 5001})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, from, rflags, fullLen, errno := n.e.RecvFrom(ctx, id, 5, unix.MSG_PEEK)
	want := netip.AddrPortFrom(netip.AddrFrom16(addrB.As16()), 6000)
	if errno != 0 || string(p) != "hello" || from != want || rflags&unix.MSG_TRUNC == 0 || fullLen != 11 {
		t.Fatalf("RecvFrom(PEEK) = %q %v %#x %d %v; want hello from %v", p, from, rflags, fullLen, errno, want)
	}
	p, _, rflags, _, errno = n.e.RecvFrom(ctx, id, 100, 0)
	if errno != 0 || string(p) != "hello world" || rflags != 0 {
		t.Fatalf("RecvFrom = %q %#x %v", p, rflags, errno)
	}
	if _, _, _, _, errno := n.e.RecvFrom(ctx, id, 100, unix.MSG_DONTWAIT); errno != unix.EAGAIN {
		t.Fatalf("empty RecvFrom(DONTWAIT) = %v, want EAGAIN", errno)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, _, _, _, errno := n.e.RecvFrom(short, id, 100, 0); errno != unix.EAGAIN {
		t.Fatalf("blocking RecvFrom past deadline = %v, want EAGAIN", errno)
	}
	// SendTo errors and success.
	for _, tc := range []struct {
		name  string
		to    netip.AddrPort
		size  int
		flags int
		errno unix.Errno
	}{
		{"no destination", netip.AddrPort{}, 1, 0, unix.EDESTADDRREQ},
		{"too large", netip.AddrPortFrom(addrB, 6000), 70000, 0, unix.EMSGSIZE},
		{"MSG_OOB", netip.AddrPortFrom(addrB, 6000), 1, unix.MSG_OOB, unix.EOPNOTSUPP},
		{"ipv4 dest on AF_INET6 socket", netip.AddrPortFrom(addrB, 6000), 3, 0, 0},
	} {
		k, errno := n.e.SendTo(id, make([]byte, tc.size), tc.to, tc.flags)
		if errno != tc.errno || (errno == 0 && k != tc.size) {
			t.Errorf("%s: SendTo = %d %v, want %v", tc.name, k, errno, tc.errno)
		}
	}
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	rb := make([]byte, 100)
	k, _, err := peer.ReadFrom(rb)
	if err != nil || k != 3 {
		t.Fatalf("peer ReadFrom = %d %v", k, err)
	}
	// AF_INET socket refuses an IPv6 destination.
	id4 := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_DGRAM)
	if _, errno := n.e.SendTo(id4, []byte("x"), netip.AddrPortFrom(addrB6, 1), 0); errno != unix.EAFNOSUPPORT {
		t.Fatalf("v6 dest on AF_INET = %v", errno)
	}
	// Connected UDP: zero destination goes to the peer.
	if errno := n.e.Connect(id4, netip.AddrPortFrom(addrB, 6000), nil, false); errno != 0 {
		t.Fatalf("Connect udp: %v", errno)
	}
	if k, errno := n.e.SendTo(id4, []byte("conn"), netip.AddrPort{}, 0); errno != 0 || k != 4 {
		t.Fatalf("connected SendTo = %d %v", k, errno)
	}
	if got, errno := n.e.Getpeername(id4); errno != 0 || got != netip.AddrPortFrom(addrB, 6000) {
		t.Fatalf("Getpeername udp = %v %v", got, errno)
	}
}

func addrPtr[T any](v T) *T { return &v }

// TestUDPReadShutdown: shutdown(SHUT_RD) of an attached UDP socket delivers
// what was queued before it, then the app's end reads end-of-file and later
// datagrams are dropped; on a socket that is bound and not connected it
// takes effect too and answers ENOTCONN, as Linux.
func TestUDPReadShutdown(t *testing.T) {
	for _, connected := range []bool{true, false} {
		n := newTestNet(t)
		id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_DGRAM)
		local := netip.AddrPortFrom(addrA, 5001)
		if errno := n.e.Bind(id, local); errno != 0 {
			t.Fatalf("Bind: %v", errno)
		}
		app, ins := instest.Socketpair(t, unix.SOCK_SEQPACKET)
		if errno := n.e.AttachDatagram(id, ins); errno != 0 {
			t.Fatalf("AttachDatagram: %v", errno)
		}
		peer, err := gonet.DialUDP(n.b, nil, addrPtr(full(local)), ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		peerAddr := netip.AddrPortFrom(addrB, uint16(peer.LocalAddr().(*net.UDPAddr).Port))
		want := unix.ENOTCONN
		if connected {
			if errno := n.e.Connect(id, peerAddr, nil, false); errno != 0 {
				t.Fatalf("Connect: %v", errno)
			}
			want = 0
		}
		peer.Write([]byte("before"))
		engWait(t, func() bool { return n.e.Stats().DgramsToApp == 1 })
		if errno := n.e.Shutdown(id, unix.SHUT_RD); errno != want {
			t.Fatalf("connected=%v: Shutdown(SHUT_RD) = %v, want %v", connected, errno, want)
		}
		peer.Write([]byte("after"))
		hdr := make([]byte, msgproto.DatagramSize)
		buf := make([]byte, 100)
		k, _, _, _, err := unix.RecvmsgBuffers(app, [][]byte{hdr, buf}, nil, 0)
		if err != nil || string(buf[:k-msgproto.DatagramSize]) != "before" {
			t.Fatalf("connected=%v: first read %q %v, want the datagram queued before the shutdown", connected, buf[:max(k-msgproto.DatagramSize, 0)], err)
		}
		// Blocking: end-of-file once the INS shut its end's write half.
		unix.SetsockoptTimeval(app, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
		k, _, _, _, err = unix.RecvmsgBuffers(app, [][]byte{hdr, buf}, nil, 0)
		if err != nil || k != 0 {
			t.Fatalf("connected=%v: read after the shutdown = %d %v, want end-of-file", connected, k, err)
		}
		if pfd := []unix.PollFd{{Fd: int32(app)}}; func() bool { unix.Poll(pfd, 0); return pfd[0].Revents&unix.POLLHUP != 0 }() {
			t.Fatalf("connected=%v: the app's end hangs up: it would read as the INS gone", connected)
		}
		if s := n.e.Stats(); s.DgramsToApp != 1 {
			t.Fatalf("connected=%v: %d datagrams to the app, want 1 (the one after the shutdown is dropped)", connected, s.DgramsToApp)
		}
		peer.Close()
	}
}

// TestUDPControlBlock: once the socket asks for IP_PKTINFO and IP_RECVTTL,
// each datagram on the app's end carries the control block between the
// framing (Flags 1) and the payload, with the destination and the TTL;
// without such an option there is none.
func TestUDPControlBlock(t *testing.T) {
	n := newTestNet(t)
	id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_DGRAM)
	local := netip.AddrPortFrom(addrA, 5002)
	if errno := n.e.Bind(id, local); errno != 0 {
		t.Fatalf("Bind: %v", errno)
	}
	app, ins := instest.Socketpair(t, unix.SOCK_SEQPACKET)
	if errno := n.e.AttachDatagram(id, ins); errno != 0 {
		t.Fatalf("AttachDatagram: %v", errno)
	}
	peer, err := gonet.DialUDP(n.b, nil, addrPtr(full(local)), ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	buf := make([]byte, 200)
	read := func() (msgproto.Datagram, []byte) {
		t.Helper()
		k, _, _, _, err := unix.Recvmsg(app, buf, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		var d msgproto.Datagram
		if err := msgproto.GetDatagram(buf[:k], &d); err != nil {
			t.Fatal(err)
		}
		return d, buf[msgproto.DatagramSize:k]
	}
	peer.Write([]byte("plain"))
	if d, rest := read(); d.Flags != 0 || string(rest) != "plain" {
		t.Fatalf("without an option: flags %d, %q; want 0 and the bare payload", d.Flags, rest)
	}
	for _, name := range []int{unix.IP_PKTINFO, unix.IP_RECVTTL} {
		if errno := n.e.Setsockopt(id, unix.IPPROTO_IP, name, i32(1)); errno != 0 {
			t.Fatalf("Setsockopt(%d): %v", name, errno)
		}
	}
	peer.Write([]byte("ctl"))
	d, rest := read()
	if d.Flags != 1 || len(rest) != 64+3 || string(rest[64:]) != "ctl" {
		t.Fatalf("with IP_PKTINFO: flags %d, %d bytes after the framing; want 1 and 64+3", d.Flags, len(rest))
	}
	mask := binary.NativeEndian.Uint32(rest)
	if mask != 16|2 || rest[5] == 0 || netip.AddrFrom4([4]byte(rest[20:24])) != addrA {
		t.Fatalf("control block: mask %#x ttl %d dst %v; want PKTINFO|TTL, a TTL, %v", mask, rest[5], rest[20:24], addrA)
	}
	// SO_TIMESTAMP adds the receive time.
	if errno := n.e.Setsockopt(id, unix.SOL_SOCKET, unix.SO_TIMESTAMP, i32(1)); errno != 0 {
		t.Fatalf("Setsockopt(SO_TIMESTAMP): %v", errno)
	}
	before := time.Now()
	peer.Write([]byte("ts"))
	_, rest = read()
	at := time.Unix(0, int64(binary.NativeEndian.Uint64(rest[56:])))
	if mask := binary.NativeEndian.Uint32(rest); mask&128 == 0 || at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Fatalf("with SO_TIMESTAMP: mask %#x, receive time %v; want bit 128 and about %v", mask, at, before)
	}
}
