package link

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// packetSockBuf is forced on every AF_PACKET socket. The kernel caps
// SO_RCVBUF/SO_SNDBUF at net.core.rmem_max/wmem_max (about 208 KiB by
// default), which overflows within a millisecond at multi-gigabit rates;
// the FORCE variants (CAP_NET_ADMIN, held while links are opened) bypass the
// cap. 4 MiB absorbs scheduling hiccups of the INS's few threads.
const packetSockBuf = 4 << 20

// packetLink is an open AF_PACKET socket bound to one interface.
type packetLink struct {
	fd      int
	ifname  string
	ifindex int
	mac     net.HardwareAddr
	mtu     int
	drops   uint64 // accumulated PACKET_STATISTICS drops (the kernel resets on read)
}

// openPacketLink opens an AF_PACKET socket for all protocols bound to ifname
// in the network namespace of the calling thread.
func openPacketLink(ifname string) (*packetLink, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", ifname, err)
	}
	if len(ifc.HardwareAddr) != 6 {
		return nil, fmt.Errorf("link %s: not an Ethernet interface (hw addr %q)", ifname, ifc.HardwareAddr)
	}
	// Protocol 0 at socket() and ETH_P_ALL at bind(): no frames are
	// queued before the socket is bound to the interface.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("link %s: AF_PACKET socket: %w", ifname, err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
		return nil, fmt.Errorf("link %s: bind AF_PACKET: %w", ifname, err)
	}
	for _, o := range []struct {
		opt  int
		name string
	}{{unix.SO_RCVBUFFORCE, "SO_RCVBUFFORCE"}, {unix.SO_SNDBUFFORCE, "SO_SNDBUFFORCE"}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.opt, packetSockBuf); err != nil {
			return nil, fmt.Errorf("link %s: %s: %w", ifname, o.name, err)
		}
	}
	// Do not read back our own transmissions (the kernel already skips
	// frames sent on this socket; this also skips any other local sender).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return nil, fmt.Errorf("link %s: PACKET_IGNORE_OUTGOING: %w", ifname, err)
	}
	// The netstack joins IPv6 solicited-node and all-nodes groups in user
	// space; the macvlan only passes multicast the device subscribed to, so
	// ask for all multicast on this interface (tied to the socket's life).
	mreq := unix.PacketMreq{Ifindex: int32(ifc.Index), Type: unix.PACKET_MR_ALLMULTI}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return nil, fmt.Errorf("link %s: PACKET_MR_ALLMULTI: %w", ifname, err)
	}
	ok = true
	return &packetLink{fd: fd, ifname: ifname, ifindex: ifc.Index, mac: ifc.HardwareAddr, mtu: ifc.MTU}, nil
}

// endpoint wraps the socket in a gVisor fdbased link endpoint. With gso the
// socket must have PACKET_VNET_HDR set.
func (p *packetLink) endpoint(rxChecksumOffload, gso bool) (stack.LinkEndpoint, error) {
	gsoMax := uint32(0)
	if gso {
		gsoMax = gsoMaxSize
	}
	ep, err := fdbased.New(&fdbased.Options{
		FDs:            []int{p.fd},
		MTU:            uint32(p.mtu),
		EthernetHeader: true,
		Address:        tcpip.LinkAddress(p.mac),
		// recvmmsg reads a batch of frames per system call; PACKET_MMAP
		// would save the copy but pins a ring of memory per NIC per INS,
		// which costs more than it saves at the per-INS rates we run.
		PacketDispatchMode: fdbased.RecvMMsg,
		// The netstack computes transmit checksums itself. With GSO the
		// virtio header asks the kernel to finish TCP checksums, but only
		// TCP segments carry GSO options: UDP and ICMP would leave with
		// no checksum if the netstack skipped them.
		TXChecksumOffload: false,
		// See Config.RXChecksumOffload.
		RXChecksumOffload: rxChecksumOffload,
		// Host GSO (Config.GSO): TCP hands segments of up to
		// 64 KiB to the kernel, which splits them into frames.
		GSOMaxSize: gsoMax,
		// One dispatcher goroutine per NIC: an INS gets one or two cores
		// (GOMAXPROCS) for all its NICs, more processors only contend.
		ProcessorsPerChannel: 1,
		IsPacketSocket:       []bool{true},
		// Socket already bound and configured above; a single FD needs
		// no PACKET_FANOUT group.
		PreConfigured: true,
	})
	if err != nil {
		return nil, fmt.Errorf("link %s: fdbased endpoint: %w", p.ifname, err)
	}
	return ep, nil
}

// Carrier implements NIC: it reports whether the interface is administratively up and has
// carrier (IFF_UP and IFF_RUNNING), asking the kernel through the link's own
// socket so it works after the sandbox forbids opening new sockets.
func (p *packetLink) Carrier() (bool, error) {
	ifr, err := unix.NewIfreq(p.ifname)
	if err != nil {
		return false, fmt.Errorf("link %s: %w", p.ifname, err)
	}
	if err := unix.IoctlIfreq(p.fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return false, fmt.Errorf("link %s: SIOCGIFFLAGS: %w", p.ifname, err)
	}
	f := ifr.Uint16()
	return f&unix.IFF_UP != 0 && f&unix.IFF_RUNNING != 0, nil
}

// KernelDrops implements NIC: it returns the total number of frames the kernel dropped because
// the socket's receive buffer was full.
func (p *packetLink) KernelDrops() uint64 {
	if st, err := unix.GetsockoptTpacketStats(p.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
		p.drops += uint64(st.Drops)
	}
	return p.drops
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func closeFD(fd int) { _ = unix.Close(fd) }
