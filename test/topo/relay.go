package topo

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel this project runs on may lack sch_netem, so delay, jitter and
// loss are applied by a small user-space wire: for every uplink, two
// AF_PACKET sockets in the topology's link namespace copy frames between the
// wan-facing and the gw-facing veth end, holding each frame until its
// departure time. Frames keep their order (jitter never reorders). The
// sockets use PACKET_VNET_HDR so that GSO frames and partial checksums pass
// through unchanged.

// vnetHdrLen is sizeof(struct virtio_net_hdr).
const vnetHdrLen = 10

// relayQueue bounds the frames in flight per direction, like netem's limit.
const relayQueue = 4096

// relayBuf is the receive buffer: vnet header plus the largest GSO frame.
const relayBuf = vnetHdrLen + 256<<10

// impair is the shaping a wire applies in each direction.
type impair struct {
	delay, jitter time.Duration
	loss          float64 // fraction 0..1
}

// departure returns when a frame received at now leaves and whether it is
// lost; last is the departure of the previous frame, which a frame never
// overtakes.
func (im *impair) departure(now, last time.Time, r *rand.Rand) (time.Time, bool) {
	if im.loss > 0 && r.Float64() < im.loss {
		return time.Time{}, false
	}
	d := im.delay
	if im.jitter > 0 {
		d += time.Duration((r.Float64()*2 - 1) * float64(im.jitter))
		if d < 0 {
			d = 0
		}
	}
	at := now.Add(d)
	if at.Before(last) {
		at = last
	}
	return at, true
}

// wire relays frames both ways between two interfaces of one namespace.
type wire struct {
	a, b   *os.File // a faces wan, b faces gw
	params atomic.Pointer[impair]
	wg     sync.WaitGroup
	once   sync.Once
	// drops counts frames dropped by loss, queue overflow or send errors.
	drops atomic.Uint64
	// sent counts frames delivered.
	sent atomic.Uint64
}

type frame struct {
	at   time.Time
	data []byte
}

// startWire opens packet sockets on ifA and ifB inside ns and starts copying.
func startWire(ns *NS, ifA, ifB string, im impair) (*wire, error) {
	w := &wire{}
	w.params.Store(&im)
	err := ns.Do(func() error {
		var err error
		if w.a, err = openPacket(ifA); err != nil {
			return err
		}
		if w.b, err = openPacket(ifB); err != nil {
			w.a.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("link emulator %s<->%s: %w", ifA, ifB, err)
	}
	w.pump(w.a, w.b)
	w.pump(w.b, w.a)
	return w, nil
}

// set changes the impairment for frames received from now on.
func (w *wire) set(im impair) { w.params.Store(&im) }

// close stops the wire and waits for its goroutines.
func (w *wire) close() {
	w.once.Do(func() {
		w.a.Close()
		w.b.Close()
		w.wg.Wait()
	})
}

// pump starts the reader and writer goroutines for one direction.
func (w *wire) pump(from, to *os.File) {
	q := make(chan frame, relayQueue)
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		defer close(q)
		w.read(from, q)
	}()
	go func() {
		defer w.wg.Done()
		w.write(to, q)
	}()
}

func (w *wire) read(from *os.File, q chan<- frame) {
	rc, err := from.SyscallConn()
	if err != nil {
		return
	}
	r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	buf := make([]byte, relayBuf)
	var last time.Time
	for {
		var n int
		var outgoing bool
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			var sa unix.Sockaddr
			n, _, _, sa, rerr = unix.Recvmsg(int(fd), buf, nil, unix.MSG_TRUNC)
			if ll, ok := sa.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				outgoing = true
			}
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return // socket closed
		}
		if rerr != nil {
			if errors.Is(rerr, unix.EINTR) || errors.Is(rerr, unix.ENETDOWN) {
				continue
			}
			return
		}
		if outgoing || n > len(buf) || n <= vnetHdrLen {
			continue
		}
		now := time.Now()
		at, ok := w.params.Load().departure(now, last, r)
		if !ok {
			w.drops.Add(1)
			continue
		}
		last = at
		select {
		case q <- frame{at: at, data: append([]byte(nil), buf[:n]...)}:
		default:
			w.drops.Add(1)
		}
	}
}

func (w *wire) write(to *os.File, q <-chan frame) {
	rc, err := to.SyscallConn()
	if err != nil {
		return
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for f := range q {
		if d := time.Until(f.at); d > 0 {
			timer.Reset(d)
			<-timer.C
		}
		var werr error
		err := rc.Write(func(fd uintptr) bool {
			_, werr = unix.Write(int(fd), f.data)
			return !errors.Is(werr, unix.EAGAIN)
		})
		if err != nil {
			// Socket closed: drain so the reader never blocks.
			for range q {
			}
			return
		}
		if werr != nil {
			// ENETDOWN while the uplink is down, ENOBUFS when the
			// rate shaper's queue is full: the frame is lost, as on a wire.
			w.drops.Add(1)
			continue
		}
		w.sent.Add(1)
	}
}

// openPacket opens a non-blocking AF_PACKET socket bound to ifname in the
// calling thread's namespace.
func openPacket(ifname string) (*os.File, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	fail := func(what string, err error) (*os.File, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("packet socket on %s: %s: %w", ifname, what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fail("PACKET_VNET_HDR", err)
	}
	// Best effort: the Pkttype check in read covers older kernels.
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	return os.NewFile(uintptr(fd), "packet:"+ifname), nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
