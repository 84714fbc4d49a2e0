package link

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/mpshim/mpshim/isolator/ins/netns"
)

// OpenFile opens the AF_PACKET socket for interface ifname inside the
// network namespace bound at nsPath, configured exactly as Open
// configures its own, and returns it as a file to hand to an INS that can no
// longer open one itself (see Adopt). The caller needs
// CAP_NET_RAW and CAP_NET_ADMIN (the daemon).
func OpenFile(nsPath, ifname string) (*os.File, error) {
	if !netns.ValidIfName(ifname) {
		return nil, fmt.Errorf("open link: bad interface name %q", ifname)
	}
	// A goroutine of its own: a thread that cannot return to the
	// daemon's namespace dies with it (see netns.Do).
	type result struct {
		pl  *packetLink
		err error
	}
	res := make(chan result, 1)
	go func() {
		var r result
		r.err = netns.Do(nsPath, func() (err error) {
			r.pl, err = openPacketLink(ifname)
			return err
		})
		if r.err != nil && r.pl != nil {
			closeFD(r.pl.fd)
			r.pl = nil
		}
		res <- r
	}()
	r := <-res
	if r.err != nil {
		return nil, r.err
	}
	return os.NewFile(uintptr(r.pl.fd), "packet:"+ifname), nil
}

// packetLinkFromFile adopts an AF_PACKET socket opened elsewhere (by
// OpenFile) for interface ifname of this namespace. It checks that the
// descriptor is a raw packet socket bound to that very interface, so a wrong
// or stale descriptor is refused rather than wired to the wrong NIC. f is
// closed in every case; the returned link owns a duplicate.
func packetLinkFromFile(ifname string, f *os.File) (*packetLink, error) {
	defer f.Close()
	if !netns.ValidIfName(ifname) {
		return nil, fmt.Errorf("link %q: bad interface name", ifname)
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("link %s: dup descriptor: %w", ifname, err)
	}
	ok := false
	defer func() {
		if !ok {
			closeFD(fd)
		}
	}()
	if d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || d != unix.AF_PACKET {
		return nil, fmt.Errorf("link %s: descriptor is not an AF_PACKET socket (domain %d, %v)", ifname, d, err)
	}
	if ty, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || ty != unix.SOCK_RAW {
		return nil, fmt.Errorf("link %s: packet socket is not SOCK_RAW (type %d, %v)", ifname, ty, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("link %s: getsockname: %w", ifname, err)
	}
	ll, isLL := sa.(*unix.SockaddrLinklayer)
	if !isLL || ll.Ifindex <= 0 || ll.Halen != 6 {
		return nil, fmt.Errorf("link %s: packet socket not bound to an Ethernet interface (%+v)", ifname, sa)
	}
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", ifname, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return nil, fmt.Errorf("link %s: SIOCGIFINDEX: %w", ifname, err)
	}
	if idx := int(ifr.Uint32()); idx != ll.Ifindex {
		return nil, fmt.Errorf("link %s: socket is bound to interface %d, %s is %d", ifname, ll.Ifindex, ifname, idx)
	}
	if ifr, err = unix.NewIfreq(ifname); err != nil {
		return nil, fmt.Errorf("link %s: %w", ifname, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
		return nil, fmt.Errorf("link %s: SIOCGIFMTU: %w", ifname, err)
	}
	mtu := int(ifr.Uint32())
	if mtu < 68 || mtu > 1<<16 {
		return nil, fmt.Errorf("link %s: MTU %d out of range", ifname, mtu)
	}
	ok = true
	mac := net.HardwareAddr(append([]byte(nil), ll.Addr[:6]...))
	return &packetLink{fd: fd, ifname: ifname, ifindex: ll.Ifindex, mac: mac, mtu: mtu}, nil
}

// Adopt wraps f, an AF_PACKET socket the daemon opened with OpenFile on
// u.Interface in this INS's namespace (a sandboxed INS may not open packet
// sockets), into a NIC. Ownership of f passes to the call. The xdp backend
// cannot be adopted: its setup needs privileges only the INS's start has.
func Adopt(u Config, f *os.File) (NIC, stack.LinkEndpoint, error) {
	if u.Backend == BackendXDP {
		f.Close()
		return nil, nil, fmt.Errorf("link %s: the xdp backend cannot be added at run time", u.Interface)
	}
	pkt, err := packetLinkFromFile(u.Interface, f)
	if err != nil {
		return nil, nil, err
	}
	return packetBackend(u, pkt)
}
