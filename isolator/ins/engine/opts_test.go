package engine_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/isolator/ins/internal/instest"

	"golang.org/x/sys/unix"
)

func i32(v int32) []byte { return binary.NativeEndian.AppendUint32(nil, uint32(v)) }

// kernelGetsockopt calls getsockopt(2) with an exact optlen.
func kernelGetsockopt(fd, level, name, maxLen int) ([]byte, unix.Errno) {
	buf := make([]byte, 512)
	l := int32(maxLen)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return nil, e
	}
	return buf[:l], 0
}

func kernelSetsockopt(fd, level, name int, val []byte) unix.Errno {
	if err := unix.SetsockoptString(fd, level, name, string(val)); err != nil {
		return err.(unix.Errno)
	}
	return 0
}

type optCase struct {
	level, name int
	val         []byte // nil: only get
}

// TestSockoptsMatchKernel runs the same setsockopt/getsockopt sequence on an
// engine socket and a kernel socket and requires identical results.
func TestSockoptsMatchKernel(t *testing.T) {
	n := newTestNet(t)
	sol, tcpL, ipL, ip6L := unix.SOL_SOCKET, unix.IPPROTO_TCP, unix.IPPROTO_IP, unix.IPPROTO_IPV6
	seq := []optCase{
		{sol, unix.SO_TYPE, nil}, {sol, unix.SO_DOMAIN, nil}, {sol, unix.SO_PROTOCOL, nil},
		{sol, unix.SO_ERROR, nil}, {sol, unix.SO_ACCEPTCONN, nil},
		{sol, unix.SO_TYPE, i32(1)},
		{sol, unix.SO_REUSEADDR, nil}, {sol, unix.SO_REUSEADDR, i32(5)}, {sol, unix.SO_REUSEADDR, nil},
		{sol, unix.SO_REUSEADDR, []byte{1, 0}}, {sol, unix.SO_REUSEADDR, []byte{}},
		{sol, unix.SO_REUSEPORT, i32(1)}, {sol, unix.SO_REUSEPORT, nil},
		{sol, unix.SO_KEEPALIVE, i32(1)}, {sol, unix.SO_KEEPALIVE, nil},
		{sol, unix.SO_BROADCAST, i32(1)}, {sol, unix.SO_BROADCAST, nil},
		{sol, unix.SO_LINGER, nil}, {sol, unix.SO_LINGER, i32(1)}, {sol, unix.SO_LINGER, append(i32(1), i32(7)...)}, {sol, unix.SO_LINGER, nil},
		{sol, unix.SO_RCVBUF, i32(10000)}, {sol, unix.SO_RCVBUF, nil}, {sol, unix.SO_RCVBUF, i32(1)}, {sol, unix.SO_RCVBUF, nil},
		{sol, unix.SO_RCVBUF, i32(-5)}, {sol, unix.SO_RCVBUF, nil},
		{sol, unix.SO_SNDBUF, i32(10000)}, {sol, unix.SO_SNDBUF, nil}, {sol, unix.SO_SNDBUF, i32(1)}, {sol, unix.SO_SNDBUF, nil},
		{sol, unix.SO_RCVLOWAT, nil}, {sol, unix.SO_RCVLOWAT, i32(100)}, {sol, unix.SO_RCVLOWAT, nil},
		{sol, unix.SO_OOBINLINE, i32(3)}, {sol, unix.SO_OOBINLINE, nil},
		{sol, 9999, i32(1)}, {sol, 9999, []byte{1}}, {sol, 9999, nil},
		{tcpL, unix.TCP_NODELAY, nil}, {tcpL, unix.TCP_NODELAY, i32(1)}, {tcpL, unix.TCP_NODELAY, nil},
		{tcpL, unix.TCP_NODELAY, []byte{1}}, {tcpL, 9999, []byte{1}}, {tcpL, 9999, i32(1)},
		{tcpL, unix.TCP_CORK, i32(1)}, {tcpL, unix.TCP_CORK, nil},
		{tcpL, unix.TCP_KEEPIDLE, nil}, {tcpL, unix.TCP_KEEPIDLE, i32(0)}, {tcpL, unix.TCP_KEEPIDLE, i32(40000)}, {tcpL, unix.TCP_KEEPIDLE, i32(30)}, {tcpL, unix.TCP_KEEPIDLE, nil},
		{tcpL, unix.TCP_KEEPINTVL, nil}, {tcpL, unix.TCP_KEEPINTVL, i32(5)}, {tcpL, unix.TCP_KEEPINTVL, nil},
		{tcpL, unix.TCP_KEEPCNT, nil}, {tcpL, unix.TCP_KEEPCNT, i32(128)}, {tcpL, unix.TCP_KEEPCNT, i32(3)}, {tcpL, unix.TCP_KEEPCNT, nil},
		{tcpL, unix.TCP_USER_TIMEOUT, nil}, {tcpL, unix.TCP_USER_TIMEOUT, i32(-1)}, {tcpL, unix.TCP_USER_TIMEOUT, i32(5000)}, {tcpL, unix.TCP_USER_TIMEOUT, nil},
		{tcpL, unix.TCP_DEFER_ACCEPT, nil}, {tcpL, unix.TCP_DEFER_ACCEPT, i32(5)}, {tcpL, unix.TCP_DEFER_ACCEPT, nil},
		{tcpL, unix.TCP_DEFER_ACCEPT, i32(100)}, {tcpL, unix.TCP_DEFER_ACCEPT, nil},
		{tcpL, unix.TCP_SYNCNT, nil}, {tcpL, unix.TCP_SYNCNT, i32(0)}, {tcpL, unix.TCP_SYNCNT, i32(3)}, {tcpL, unix.TCP_SYNCNT, nil},
		{ipL, unix.IP_TTL, nil}, {ipL, unix.IP_TTL, i32(0)}, {ipL, unix.IP_TTL, i32(256)}, {ipL, unix.IP_TTL, []byte{9}}, {ipL, unix.IP_TTL, nil},
		{ipL, unix.IP_TTL, []byte{}}, {ipL, unix.IP_TTL, i32(-1)}, {ipL, unix.IP_TTL, nil},
		{ipL, unix.IP_TOS, nil}, {ipL, unix.IP_TOS, i32(0x2f)}, {ipL, unix.IP_TOS, nil}, {ipL, unix.IP_TOS, []byte{}}, {ipL, unix.IP_TOS, nil},
		{ipL, unix.IP_RECVERR, i32(1)}, {ipL, unix.IP_RECVERR, nil}, {ipL, unix.IP_FREEBIND, []byte{1}}, {ipL, unix.IP_FREEBIND, nil},
		{ipL, unix.IP_BIND_ADDRESS_NO_PORT, i32(1)}, {ipL, unix.IP_BIND_ADDRESS_NO_PORT, nil},
		{ipL, unix.IP_MTU_DISCOVER, i32(9)}, {ipL, unix.IP_MTU_DISCOVER, i32(2)}, {ipL, unix.IP_MTU_DISCOVER, nil},
		{ip6L, unix.IPV6_V6ONLY, nil}, {ip6L, unix.IPV6_V6ONLY, []byte{1}}, {ip6L, unix.IPV6_V6ONLY, i32(1)}, {ip6L, unix.IPV6_V6ONLY, nil},
		{ip6L, unix.IPV6_UNICAST_HOPS, nil}, {ip6L, unix.IPV6_UNICAST_HOPS, i32(256)}, {ip6L, unix.IPV6_UNICAST_HOPS, i32(7)}, {ip6L, unix.IPV6_UNICAST_HOPS, nil},
		{ip6L, unix.IPV6_TCLASS, nil}, {ip6L, unix.IPV6_TCLASS, i32(-1)}, {ip6L, unix.IPV6_TCLASS, nil}, {ip6L, unix.IPV6_TCLASS, i32(0x40)}, {ip6L, unix.IPV6_TCLASS, nil},
		{ip6L, 9999, i32(1)}, {unix.IPPROTO_UDP, 9999, i32(1)}, {unix.SOL_RAW, 1, i32(1)},
	}
	for _, domain := range []int{unix.AF_INET, unix.AF_INET6} {
		for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_DGRAM} {
			t.Run(fmt.Sprintf("domain%d/type%d", domain, typ), func(t *testing.T) {
				compareOptSeq(t, n, domain, typ, seq)
			})
		}
	}
}

// TestTCPOnlySockoptsMatchKernel compares options whose Linux behaviour
// on a TCP socket differs from a UDP socket's: TCP_LINGER2's clamping,
// TCP_WINDOW_CLAMP's minimum and the multicast fields a TCP socket keeps.
func TestTCPOnlySockoptsMatchKernel(t *testing.T) {
	n := newTestNet(t)
	tcpL, ipL := unix.IPPROTO_TCP, unix.IPPROTO_IP
	seq := []optCase{
		{tcpL, unix.TCP_LINGER2, nil}, {tcpL, unix.TCP_LINGER2, i32(-1234)}, {tcpL, unix.TCP_LINGER2, nil},
		{tcpL, unix.TCP_LINGER2, i32(0)}, {tcpL, unix.TCP_LINGER2, nil}, {tcpL, unix.TCP_LINGER2, i32(121)},
		{tcpL, unix.TCP_LINGER2, nil}, {tcpL, unix.TCP_LINGER2, i32(30)}, {tcpL, unix.TCP_LINGER2, nil},
		{tcpL, unix.TCP_WINDOW_CLAMP, nil}, {tcpL, unix.TCP_WINDOW_CLAMP, i32(100)}, {tcpL, unix.TCP_WINDOW_CLAMP, nil},
		{tcpL, unix.TCP_WINDOW_CLAMP, i32(0)}, {tcpL, unix.TCP_WINDOW_CLAMP, nil},
		{tcpL, unix.TCP_WINDOW_CLAMP, i32(-7)}, {tcpL, unix.TCP_WINDOW_CLAMP, nil},
		{tcpL, unix.TCP_WINDOW_CLAMP, i32(40000)}, {tcpL, unix.TCP_WINDOW_CLAMP, nil},
		{ipL, unix.IP_MULTICAST_TTL, nil}, {ipL, unix.IP_MULTICAST_LOOP, nil},
		{ipL, unix.IP_MULTICAST_TTL, i32(5)}, {ipL, unix.IP_MULTICAST_TTL, nil},
		{ipL, unix.IP_MULTICAST_LOOP, i32(0)}, {ipL, unix.IP_MULTICAST_LOOP, nil},
		{ipL, unix.IP_MULTICAST_LOOP, []byte{7}}, {ipL, unix.IP_MULTICAST_LOOP, nil},
		{ipL, unix.IP_MULTICAST_LOOP, []byte{}},
	}
	for _, domain := range []int{unix.AF_INET, unix.AF_INET6} {
		t.Run(fmt.Sprintf("domain%d", domain), func(t *testing.T) {
			compareOptSeq(t, n, domain, unix.SOCK_STREAM, seq)
		})
	}
}

// compareOptSeq runs seq on an engine socket and a kernel socket of the
// same kind, each get with several lengths, and requires identical results.
func compareOptSeq(t *testing.T, n *testNet, domain, typ int, seq []optCase) {
	t.Helper()
	lens := []int{-1, 0, 1, 2, 4, 8, 300}
	kfd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(kfd)
	id := instest.MustSocket(t, n.e, domain, typ)
	for i, c := range seq {
		what := fmt.Sprintf("step %d level %d name %d", i, c.level, c.name)
		if c.val != nil {
			ke := kernelSetsockopt(kfd, c.level, c.name, c.val)
			ee := n.e.Setsockopt(id, c.level, c.name, c.val)
			if ke != ee {
				t.Errorf("%s: setsockopt(%v) = %v, kernel %v", what, c.val, ee, ke)
			}
			continue
		}
		for _, l := range lens {
			kb, ke := kernelGetsockopt(kfd, c.level, c.name, l)
			eb, ee := n.e.Getsockopt(id, c.level, c.name, l)
			if ke != ee || !bytes.Equal(kb, eb) {
				t.Errorf("%s len %d: getsockopt = %v %v, kernel %v %v", what, l, eb, ee, kb, ke)
			}
		}
	}
}

func TestTCPInfoSizeMatchesKernel(t *testing.T) {
	n := newTestNet(t)
	kfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(kfd)
	id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
	for _, l := range []int{0, 1, 8, 100, 500} {
		kb, ke := kernelGetsockopt(kfd, unix.IPPROTO_TCP, unix.TCP_INFO, l)
		eb, ee := n.e.Getsockopt(id, unix.IPPROTO_TCP, unix.TCP_INFO, l)
		if ke != ee || len(kb) != len(eb) {
			t.Errorf("TCP_INFO len %d: got %d bytes %v, kernel %d bytes %v", l, len(eb), ee, len(kb), ke)
		}
		if len(kb) > 0 && kb[0] != eb[0] {
			t.Errorf("TCP_INFO state %d, kernel %d", eb[0], kb[0])
		}
	}
}

func TestSocketErrnosMatchKernel(t *testing.T) {
	n := newTestNet(t)
	for _, c := range []struct{ domain, typ, proto int }{
		{unix.AF_INET, unix.SOCK_STREAM, 0}, {unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP},
		{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_UDP}, {unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_TCP},
		{unix.AF_INET6, unix.SOCK_DGRAM, 0}, {unix.AF_INET, unix.SOCK_SEQPACKET, 0},
		{unix.AF_INET, 99, 0}, {unix.AF_INET, unix.SOCK_STREAM | 0x100000, 0}, {unix.AF_INET, unix.SOCK_STREAM, -1},
		{unix.AF_INET, unix.SOCK_STREAM, 300}, {unix.AF_INET6, unix.SOCK_STREAM | unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC, 0},
		{-1, unix.SOCK_STREAM, 0}, {999, unix.SOCK_STREAM, 0},
	} {
		kfd, kerr := unix.Socket(c.domain, c.typ, c.proto)
		var ke unix.Errno
		if kerr != nil {
			ke = kerr.(unix.Errno)
		} else {
			unix.Close(kfd)
		}
		id, ee := n.e.Socket(c.domain, c.typ, c.proto)
		if ke != ee {
			t.Errorf("socket(%d, %#x, %d) = %v, kernel %v", c.domain, c.typ, c.proto, ee, ke)
		}
		if ee == 0 {
			n.e.Close(id)
		}
	}
}

func TestBindListenConnectErrnos(t *testing.T) {
	n := newTestNet(t)
	a := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
	b := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_STREAM)
	a6 := instest.MustSocket(t, n.e, unix.AF_INET6, unix.SOCK_STREAM)
	u := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_DGRAM)
	_, seq := instest.Socketpair(t, unix.SOCK_SEQPACKET)
	_, strm := instest.Socketpair(t, unix.SOCK_STREAM)
	for _, tc := range []struct {
		name string
		op   func() unix.Errno
		want unix.Errno
	}{
		{"bind", func() unix.Errno { return n.e.Bind(a, netip.AddrPortFrom(addrA, 900)) }, 0},
		{"bind again", func() unix.Errno { return n.e.Bind(a, netip.AddrPortFrom(addrA, 901)) }, unix.EINVAL},
		{"bind in use", func() unix.Errno { return n.e.Bind(b, netip.AddrPortFrom(addrA, 900)) }, unix.EADDRINUSE},
		{"bind foreign", func() unix.Errno { return n.e.Bind(b, netip.AddrPortFrom(addrB, 900)) }, unix.EADDRNOTAVAIL},
		{"bind v6 on AF_INET", func() unix.Errno { return n.e.Bind(b, netip.AddrPortFrom(addrA6, 900)) }, unix.EAFNOSUPPORT},
		// A sockaddr_in (16 bytes) is shorter than inet6_bind and
		// tcp_v6_connect accept (24): EINVAL before the family check.
		{"bind v4 on AF_INET6", func() unix.Errno { return n.e.Bind(a6, netip.AddrPortFrom(addrA, 900)) }, unix.EINVAL},
		{"listen udp", func() unix.Errno { return n.e.Listen(u, 1, nil) }, unix.EOPNOTSUPP},
		{"listen with stream file", func() unix.Errno { return n.e.Listen(b, 1, strm) }, unix.EINVAL},
		{"listen nil file", func() unix.Errno { return n.e.Listen(b, 1, nil) }, unix.EINVAL},
		{"relisten unlistened", func() unix.Errno { return n.e.Relisten(b, 1) }, unix.EINVAL},
		{"listen", func() unix.Errno { return n.e.Listen(a, 5, seq) }, 0},
		{"listen again", func() unix.Errno { return n.e.Listen(a, 8, nil) }, 0},
		{"relisten", func() unix.Errno { return n.e.Relisten(a, 511) }, 0},
		{"shutdown bad how", func() unix.Errno { return n.e.Shutdown(b, 7) }, unix.EINVAL},
		{"shutdown unconnected", func() unix.Errno { return n.e.Shutdown(b, unix.SHUT_WR) }, unix.ENOTCONN},
		{"shutdown unconnected udp", func() unix.Errno { return n.e.Shutdown(u, unix.SHUT_RD) }, unix.ENOTCONN},
		{"connect nil stream", func() unix.Errno { return n.e.Connect(b, netip.AddrPortFrom(addrB, 1), nil, true) }, unix.EINVAL},
		{"connect v6 on AF_INET", func() unix.Errno { return n.e.Connect(b, netip.AddrPortFrom(addrB6, 1), nil, true) }, unix.EAFNOSUPPORT},
		{"connect v4 on AF_INET6", func() unix.Errno {
			_, f := instest.Socketpair(t, unix.SOCK_STREAM)
			return n.e.Connect(a6, netip.AddrPortFrom(addrB, 1), f, true)
		}, unix.EINVAL},
		{"sendto on stream", func() unix.Errno { _, e := n.e.SendTo(b, []byte("x"), netip.AddrPort{}, 0); return e }, unix.EOPNOTSUPP},
		{"attach on stream", func() unix.Errno { return n.e.AttachDatagram(b, nil) }, unix.EOPNOTSUPP},
		{"getpeername unconnected", func() unix.Errno { _, e := n.e.Getpeername(b); return e }, unix.ENOTCONN},
		{"ioctl unknown", func() unix.Errno { _, _, e := n.e.Ioctl(b, 0x1234, nil); return e }, unix.ENOTTY},
		{"ioctl SIOCINQ on listener", func() unix.Errno { _, _, e := n.e.Ioctl(a, unix.SIOCINQ, nil); return e }, unix.EINVAL},
		{"ioctl SIOCATMARK on udp", func() unix.Errno { _, _, e := n.e.Ioctl(u, unix.SIOCATMARK, nil); return e }, unix.ENOTTY},
	} {
		if got := tc.op(); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if got, _ := n.e.Getsockname(a6); got != netip.AddrPortFrom(netip.IPv6Unspecified(), 0) {
		t.Errorf("unbound AF_INET6 getsockname = %v", got)
	}
}

// TestKernelIoctlOracle confirms the ENOTTY choices against the kernel.
func TestKernelIoctlOracle(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, req := range []uint{unix.SIOCATMARK, 0x1234} {
		_, err := unix.IoctlGetInt(fd, req)
		n := newTestNet(t)
		u := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_DGRAM)
		_, _, e := n.e.Ioctl(u, req, nil)
		if err != e {
			t.Errorf("ioctl %#x: engine %v, kernel %v", req, e, err)
		}
	}
}

func TestHostileIDs(t *testing.T) {
	n := newTestNet(t)
	bad := engine.SockID(987654321)
	checks := map[string]unix.Errno{}
	checks["Bind"] = n.e.Bind(bad, netip.AddrPortFrom(addrA, 1))
	checks["Listen"] = n.e.Listen(bad, 1, nil)
	checks["Connect"] = n.e.Connect(bad, netip.AddrPortFrom(addrB, 1), nil, false)
	checks["Shutdown"] = n.e.Shutdown(bad, 0)
	checks["Setsockopt"] = n.e.Setsockopt(bad, unix.SOL_SOCKET, unix.SO_REUSEADDR, i32(1))
	_, checks["Getsockopt"] = n.e.Getsockopt(bad, unix.SOL_SOCKET, unix.SO_TYPE, 4)
	_, checks["Getsockname"] = n.e.Getsockname(bad)
	_, checks["Getpeername"] = n.e.Getpeername(bad)
	_, _, checks["Ioctl"] = n.e.Ioctl(bad, unix.SIOCINQ, nil)
	_, checks["SendTo"] = n.e.SendTo(bad, nil, netip.AddrPort{}, 0)
	_, _, _, _, checks["RecvFrom"] = n.e.RecvFrom(t.Context(), bad, 1, 0)
	checks["AttachDatagram"] = n.e.AttachDatagram(bad, nil)
	for name, errno := range checks {
		if errno != unix.EBADF {
			t.Errorf("%s with unknown id = %v, want EBADF", name, errno)
		}
	}
	n.e.Close(bad) // must not panic
	n.e.Close(0)
	id := instest.MustSocket(t, n.e, unix.AF_INET, unix.SOCK_DGRAM)
	if _, _, _, _, errno := n.e.RecvFrom(t.Context(), id, -5, 0); errno != unix.EINVAL {
		t.Errorf("RecvFrom negative maxLen = %v", errno)
	}
	for _, val := range [][]byte{nil, {}, {1}, make([]byte, 4096)} {
		n.e.Setsockopt(id, unix.SOL_SOCKET, unix.SO_LINGER, val)
		n.e.Setsockopt(id, unix.IPPROTO_TCP, unix.TCP_CONGESTION, val)
	}
	n.e.Close(id)
	n.e.Close(id)
}
