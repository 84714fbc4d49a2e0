package link

import (
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/mpshim/mpshim/isolator/ins/link/xdp"
)

// xdpLink is the xdp backend of one NIC: frames arrive on an AF_XDP socket
// fed by an XDP program on the interface and leave through an AF_PACKET
// socket (with host GSO when enabled). A macvlan has one receive queue, so
// one AF_XDP socket on queue 0 gets every frame.
type xdpLink struct {
	sock     *xdp.Socket
	redirect *xdp.Redirect
	rx       *xdp.Receiver
	// tx is an AF_PACKET socket bound with protocol 0, so it receives
	// nothing: frames are sent through it, interface ioctls go through it
	// (AF_XDP sockets answer none), and it holds the all-multicast
	// membership.
	tx     *packetLink
	ifname string
	once   sync.Once
}

// openXDPLink sets up the xdp backend on u.Interface in the calling
// thread's network namespace and returns the NIC's endpoint. It needs
// CAP_NET_ADMIN, CAP_BPF (or CAP_SYS_ADMIN) and CAP_IPC_LOCK (or enough
// RLIMIT_MEMLOCK for the UMEM), so it runs before the sandbox; afterwards
// the sockets only need ppoll, sendmmsg, ioctl and getsockopt, which the
// sandbox allows for every INS.
func openXDPLink(u Config) (_ NIC, _ stack.LinkEndpoint, err error) {
	ifc, err := net.InterfaceByName(u.Interface)
	if err != nil {
		return nil, nil, fmt.Errorf("link %s: %w", u.Interface, err)
	}
	if len(ifc.HardwareAddr) != 6 {
		return nil, nil, fmt.Errorf("link %s: not an Ethernet interface (hw addr %q)", u.Interface, ifc.HardwareAddr)
	}
	x := &xdpLink{ifname: u.Interface}
	defer func() {
		if err != nil {
			x.Close()
		}
	}()
	if x.tx, err = openPacketTX(ifc, u.GSO); err != nil {
		return nil, nil, err
	}
	if x.sock, err = xdp.Open(ifc.Index, 0, xdp.DefaultConfig); err != nil {
		return nil, nil, fmt.Errorf("link %s: %w", u.Interface, err)
	}
	if x.redirect, err = xdp.NewRedirect(1); err != nil {
		return nil, nil, fmt.Errorf("link %s: %w", u.Interface, err)
	}
	if err := x.redirect.SetSocket(0, x.sock.FD()); err != nil {
		return nil, nil, fmt.Errorf("link %s: %w", u.Interface, err)
	}
	if err := x.redirect.Attach(ifc.Index); err != nil {
		return nil, nil, fmt.Errorf("link %s: %w", u.Interface, err)
	}
	x.tx.mtu = min(x.tx.mtu, x.sock.MaxFrame()-header.EthernetMinimumSize)
	txEP, err := x.tx.endpoint(u.RXChecksumOffload, u.GSO)
	if err != nil {
		return nil, nil, err
	}
	// Generic XDP hands over the frame without the socket buffer's
	// checksum state; see Config.RXChecksumOffload.
	x.rx = xdp.NewReceiver(x.sock, tcpip.LinkAddress(ifc.HardwareAddr), u.RXChecksumOffload)
	return x, &xdpEndpoint{LinkEndpoint: txEP, rx: x.rx}, nil
}

// openPacketTX opens an AF_PACKET socket on ifc that sends but receives
// nothing (bound with protocol 0), with the all-multicast membership the
// netstack's IPv6 groups need and, for GSO, PACKET_VNET_HDR.
func openPacketTX(ifc *net.Interface, gso bool) (_ *packetLink, err error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("link %s: AF_PACKET socket: %w", ifc.Name, err)
	}
	p := &packetLink{fd: fd, ifname: ifc.Name, ifindex: ifc.Index, mac: ifc.HardwareAddr, mtu: ifc.MTU}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: 0, Ifindex: ifc.Index}); err != nil {
		return nil, fmt.Errorf("link %s: bind AF_PACKET: %w", ifc.Name, err)
	}
	opts := []struct {
		level, opt, v int
		name          string
	}{{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, packetSockBuf, "SO_SNDBUFFORCE"}}
	if gso {
		opts = append(opts, struct {
			level, opt, v int
			name          string
		}{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return nil, fmt.Errorf("link %s: %s: %w", ifc.Name, o.name, err)
		}
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifc.Index), Type: unix.PACKET_MR_ALLMULTI}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return nil, fmt.Errorf("link %s: PACKET_MR_ALLMULTI: %w", ifc.Name, err)
	}
	return p, nil
}

// Carrier implements NIC.
func (x *xdpLink) Carrier() (bool, error) { return x.tx.Carrier() }

// KernelDrops implements NIC: frames the kernel could not place in
// the RX ring (ring full, no free frame, or too long for a frame). The
// kernel's counters are cumulative.
func (x *xdpLink) KernelDrops() uint64 {
	st, err := x.sock.Statistics()
	if err != nil {
		return 0
	}
	return st.Rx_dropped + st.Rx_ring_full
}

// Close implements NIC: it waits for the reader to exit, then
// detaches the program, so no frame is redirected to a closing socket, and
// closes the sockets. It must run without netstack locks held (after the
// NIC is removed).
func (x *xdpLink) Close() {
	x.once.Do(func() {
		if x.rx != nil {
			// The NIC wrapper has normally stopped and waited for
			// the reader already; the UMEM stays mapped until it has
			// surely exited (also on a failed setup).
			x.rx.Close()
		}
		if x.redirect != nil {
			_ = x.redirect.Close()
		}
		if x.sock != nil {
			_ = x.sock.Close()
		}
		if x.tx != nil {
			x.tx.Close()
		}
	})
}

// xdpEndpoint is the NIC endpoint of the xdp backend: an fdbased endpoint
// on the transmit socket, never attached (so it reads nothing), for
// everything but receiving, which the Receiver does.
type xdpEndpoint struct {
	stack.LinkEndpoint
	rx *xdp.Receiver
}

// Attach implements stack.LinkEndpoint.
func (e *xdpEndpoint) Attach(d stack.NetworkDispatcher) { e.rx.Attach(d) }

// IsAttached implements stack.LinkEndpoint.
func (e *xdpEndpoint) IsAttached() bool { return e.rx.IsAttached() }

// Wait implements stack.LinkEndpoint.
func (e *xdpEndpoint) Wait() { e.rx.Wait() }

// SetLinkAddress implements stack.LinkEndpoint.
func (e *xdpEndpoint) SetLinkAddress(addr tcpip.LinkAddress) {
	e.LinkEndpoint.SetLinkAddress(addr)
	e.rx.SetLinkAddress(addr)
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *xdpEndpoint) SetOnCloseAction(f func()) { e.rx.SetOnCloseAction(f) }

// GSOMaxSize implements stack.GSOEndpoint.
func (e *xdpEndpoint) GSOMaxSize() uint32 { return e.LinkEndpoint.(stack.GSOEndpoint).GSOMaxSize() }

// SupportedGSO implements stack.GSOEndpoint.
func (e *xdpEndpoint) SupportedGSO() stack.SupportedGSO {
	return e.LinkEndpoint.(stack.GSOEndpoint).SupportedGSO()
}

// XDPStats returns the receive statistics of n if it is a NIC of the xdp
// backend; false otherwise.
func XDPStats(n NIC) (xdp.ReceiverStats, bool) {
	if x, ok := n.(*xdpLink); ok && x.rx != nil {
		return x.rx.Stats(), true
	}
	return xdp.ReceiverStats{}, false
}
