// Package link owns the kernel side of an INS's NICs: the AF_PACKET and
// AF_XDP sockets an uplink's frames cross, host GSO, and the tap that shows
// every packet to flow accounting and mitigation. It knows nothing of
// uplinks, routes, sockets or the INS process: it opens an interface and
// hands the netstack a link endpoint. Opening a socket inside another
// namespace for the daemon (OpenFile) enters it with package netns.
package link

import (
	"fmt"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Backend names the kernel interface through which an uplink's NIC reads
// and writes frames.
type Backend string

const (
	// BackendPacket is an AF_PACKET socket read with recvmmsg and written
	// with sendmmsg, optionally with host GSO (the default).
	BackendPacket Backend = "packet"
	// BackendXDP receives on an AF_XDP socket fed by an XDP program on the
	// interface (generic mode on a macvlan: the kernel still builds a
	// socket buffer per frame, then copies the frame into the socket's
	// ring) and sends through an AF_PACKET socket, as BackendPacket does.
	BackendXDP Backend = "xdp"
)

// ParseBackend parses a backend name; "" is BackendPacket.
func ParseBackend(s string) (Backend, error) {
	switch Backend(s) {
	case "", BackendPacket:
		return BackendPacket, nil
	case BackendXDP:
		return BackendXDP, nil
	}
	return "", fmt.Errorf("link backend %q: want %s or %s", s, BackendPacket, BackendXDP)
}

// rxBufSizes is the chain of buffers fdbased reads each received frame
// into. gVisor's default starts at 128 bytes and doubles, so a full-size
// frame spans six buffers, each its own view in the packet; a first buffer
// that holds a whole 1500-byte-MTU frame halves the netstack's CPU time per
// received byte (bench/link, in-cpu). The sum still covers a 64 KiB frame
// (a GRO'd one, or a GSO one with a virtio-net header).
var rxBufSizes = []int{2048, 4096, 4096, 8192, 16384, 32768}

// fdbased.BufConfig is read when an endpoint is created; every fdbased
// endpoint of an INS process is a NIC of its stack.
func init() { fdbased.BufConfig = rxBufSizes }

// gsoMaxSize is the largest TCP segment (headers included) handed to the
// kernel with host GSO: the legacy 64 KiB limit every device accepts, so an
// IPv4 total length always fits in 16 bits. The kernel splits it into
// MTU-sized frames (in software when the device cannot).
const gsoMaxSize = 1 << 16

// Config says how to open one NIC's link.
type Config struct {
	// Interface is the interface inside the INS network namespace.
	Interface string
	// RXChecksumOffload skips checksum verification of received frames.
	// Only safe when every frame comes from a local kernel over virtual
	// links (veth), whose offloaded partial checksums would otherwise be
	// rejected; frames from a physical wire must be verified (false).
	RXChecksumOffload bool
	// Backend is how frames reach the netstack; "" is BackendPacket.
	Backend Backend
	// GSO lets TCP hand segments of up to 64 KiB to the kernel, which
	// splits them into frames (PACKET_VNET_HDR on the sending socket).
	GSO bool
}

// NIC is the kernel side of one NIC, opened when an uplink is added and
// closed when its NIC is removed.
type NIC interface {
	// Carrier reports IFF_UP and IFF_RUNNING of the interface.
	Carrier() (bool, error)
	// KernelDrops is the number of received frames the kernel dropped
	// because the NIC's socket had no room for them.
	KernelDrops() uint64
	// Close releases the sockets; it may be called more than once.
	Close()
}

// Open opens u.Interface in the calling thread's network namespace with
// u's backend and returns the backend and the NIC's link endpoint.
func Open(u Config) (NIC, stack.LinkEndpoint, error) {
	b, err := ParseBackend(string(u.Backend))
	if err != nil {
		return nil, nil, err
	}
	if b == BackendXDP {
		return openXDPLink(u)
	}
	p, err := openPacketLink(u.Interface)
	if err != nil {
		return nil, nil, err
	}
	return packetBackend(u, p)
}

// packetBackend configures the open AF_PACKET socket p for u (GSO) and
// wraps it in its endpoint; p is closed on failure.
func packetBackend(u Config, p *packetLink) (NIC, stack.LinkEndpoint, error) {
	if u.GSO {
		// The virtio-net header carries GSO type, segment size and
		// checksum offsets with every frame written, and precedes every
		// frame read (the endpoint then skips it).
		if err := unix.SetsockoptInt(p.fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			p.Close()
			return nil, nil, fmt.Errorf("link %s: PACKET_VNET_HDR: %w", u.Interface, err)
		}
	}
	ep, err := p.endpoint(u.RXChecksumOffload, u.GSO)
	if err != nil {
		p.Close()
		return nil, nil, err
	}
	return p, ep, nil
}

// Close implements NIC: it closes the socket once.
func (p *packetLink) Close() {
	if p.fd >= 0 {
		closeFD(p.fd)
		p.fd = -1
	}
}
