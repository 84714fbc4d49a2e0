package link

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/stopfd"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gVisor's fdbased endpoint receives on a goroutine of its own, blocked in
// ppoll on the packet socket, while the INS's data pump blocks in epoll_wait
// on the app's socketpairs: with one processor (GOMAXPROCS 1) every request
// then hands the processor from one blocked thread to the other through the
// Go runtime (futex wake-ups, sysmon retaking the processor of a thread
// blocked in a system call). A polled endpoint leaves fdbased the sending
// side and reads frames itself, from whichever loop drives it: the data
// pump's own (RxLoop, one epoll set for the packet socket and the
// socketpairs, one thread) or, until one is given and after it stops, a
// reader goroutine of its own as fdbased has.

// RxLoop runs the receive side of polled NICs in an event loop.
type RxLoop interface {
	// AddRx watches fd for readability (edge triggered) and calls rx
	// from the loop once it may be readable, again while rx reports
	// that more may be waiting. orphaned is called (from the loop, at
	// most once) if the loop stops before remove is called. remove
	// stops the watch; rx may still be running when it returns.
	AddRx(fd int, rx func() (more bool), orphaned func()) (remove func(), err error)
}

// Polled is a NIC endpoint whose receive side an RxLoop can drive.
type Polled interface {
	// DriveFrom moves the receive side onto l.
	DriveFrom(l RxLoop) error
}

// rxBatch is the most frames one recvmmsg reads.
const rxBatch = 16

// virtioNetHdrSize is the size of the virtio-net header that precedes every
// frame read from a socket with PACKET_VNET_HDR.
const virtioNetHdrSize = 10

// rxSlot is the buffer chain of one frame of a batch.
type rxSlot struct {
	views []*buffer.View
	iov   []unix.Iovec
}

// iovecs (re)allocates the views the previous frame took and returns the
// iovecs of the chain; vnet, if not nil, receives the virtio-net header.
func (s *rxSlot) iovecs(vnet *[virtioNetHdrSize]byte) []unix.Iovec {
	off := 0
	if vnet != nil {
		s.iov[0] = unix.Iovec{Base: &vnet[0]}
		s.iov[0].SetLen(virtioNetHdrSize)
		off = 1
	}
	for i := range s.views {
		if s.views[i] != nil {
			continue
		}
		v := buffer.NewViewSize(rxBufSizes[i])
		s.views[i] = v
		s.iov[i+off] = unix.Iovec{Base: v.BasePtr()}
		s.iov[i+off].SetLen(v.Size())
	}
	return s.iov
}

// pull hands the first n bytes of the chain to a buffer; the views it
// takes are reallocated by the next iovecs.
func (s *rxSlot) pull(n int) buffer.Buffer {
	var b buffer.Buffer
	for i, v := range s.views {
		if n <= 0 {
			break
		}
		take := min(n, v.Size())
		v.CapLength(take)
		b.Append(v)
		s.views[i] = nil
		n -= take
	}
	return b
}

func (s *rxSlot) release() {
	for i, v := range s.views {
		if v != nil {
			v.Release()
			s.views[i] = nil
		}
	}
}

// PolledEndpoint is a packet socket's NIC endpoint whose receive side runs
// in an RxLoop (or a goroutine of its own until it has one); sending and
// everything else is its fdbased endpoint's.
type PolledEndpoint struct {
	stack.LinkEndpoint // the fdbased endpoint: sending, MTU, address
	fd                 int
	vnet               bool // frames are preceded by a virtio-net header
	csumOK             bool // RX checksum offload: skip verification

	disp atomic.Pointer[dispatcherRef]

	// ctl serializes Attach and DriveFrom.
	ctl     sync.Mutex
	loop    RxLoop
	remove  func()         // the loop's watch, if registered
	stopOwn *stopfd.StopFD // the own reader's stop descriptor, if running
	ownDone chan struct{}

	// rxMu serializes receiving; it guards the buffers below.
	rxMu  sync.Mutex
	slots [rxBatch]rxSlot
	msgs  [rxBatch]rawfile.MMsgHdr
	hdrs  [rxBatch][virtioNetHdrSize]byte
	fresh [rxBatch]bool // msgs[k] points at fresh buffers
}

type dispatcherRef struct{ d stack.NetworkDispatcher }

// newPolledEndpoint wraps ep, the fdbased endpoint of packet socket fd.
func newPolledEndpoint(ep stack.LinkEndpoint, fd int, vnet, rxChecksumOffload bool) *PolledEndpoint {
	e := &PolledEndpoint{LinkEndpoint: ep, fd: fd, vnet: vnet, csumOK: rxChecksumOffload}
	n := len(rxBufSizes)
	if vnet {
		n++
	}
	for k := range e.slots {
		e.slots[k] = rxSlot{views: make([]*buffer.View, len(rxBufSizes)), iov: make([]unix.Iovec, n)}
	}
	return e
}

// Attach implements stack.LinkEndpoint. The fdbased endpoint is never
// attached, so it starts no reader of its own; nil stops receiving and
// waits for a receive in progress.
func (e *PolledEndpoint) Attach(d stack.NetworkDispatcher) {
	e.ctl.Lock()
	defer e.ctl.Unlock()
	if d == nil {
		e.disp.Store(nil)
		e.stopLocked()
		// A receive in progress finishes delivering its batch.
		e.rxMu.Lock()
		for k := range e.slots {
			e.slots[k].release()
			e.fresh[k] = false
		}
		e.rxMu.Unlock()
		return
	}
	e.disp.Store(&dispatcherRef{d})
	e.startLocked()
}

// IsAttached implements stack.LinkEndpoint.
func (e *PolledEndpoint) IsAttached() bool { return e.disp.Load() != nil }

// Wait implements stack.LinkEndpoint; Attach(nil) already waited.
func (e *PolledEndpoint) Wait() {}

// GSOMaxSize implements stack.GSOEndpoint for the fdbased endpoint.
func (e *PolledEndpoint) GSOMaxSize() uint32 {
	if g, ok := e.LinkEndpoint.(stack.GSOEndpoint); ok {
		return g.GSOMaxSize()
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint for the fdbased endpoint.
func (e *PolledEndpoint) SupportedGSO() stack.SupportedGSO {
	if g, ok := e.LinkEndpoint.(stack.GSOEndpoint); ok {
		return g.SupportedGSO()
	}
	return stack.GSONotSupported
}

// DriveFrom implements Polled: from now on l runs the receive side.
func (e *PolledEndpoint) DriveFrom(l RxLoop) error {
	e.ctl.Lock()
	defer e.ctl.Unlock()
	attached := e.disp.Load() != nil
	e.stopLocked()
	e.loop = l
	if attached {
		return e.startLocked()
	}
	return nil
}

// startLocked starts receiving: in the loop if there is one, else on a
// reader goroutine.
func (e *PolledEndpoint) startLocked() error {
	if e.remove != nil || e.stopOwn != nil {
		return nil
	}
	if e.loop != nil {
		var once sync.Once
		remove, err := e.loop.AddRx(e.fd, e.rx, func() {
			// The loop stopped: go back to a reader of our own.
			once.Do(func() { go e.orphaned() })
		})
		if err == nil {
			e.remove = remove
			return nil
		}
		e.loop = nil
		// Fall back to a reader goroutine; err is reported.
		e.startOwn()
		return err
	}
	e.startOwn()
	return nil
}

func (e *PolledEndpoint) orphaned() {
	e.ctl.Lock()
	defer e.ctl.Unlock()
	e.remove = nil
	e.loop = nil
	if e.disp.Load() != nil {
		e.startOwn()
	}
}

func (e *PolledEndpoint) startOwn() {
	sfd, err := stopfd.New()
	if err != nil {
		// Without an eventfd the reader could not be stopped: poll
		// with a timeout instead.
		sfd = stopfd.StopFD{EFD: -1}
	}
	e.stopOwn = &sfd
	done := make(chan struct{})
	e.ownDone = done
	go e.ownReader(sfd.EFD, done)
}

// stopLocked stops whichever receiver runs and waits for the own reader.
func (e *PolledEndpoint) stopLocked() {
	if e.remove != nil {
		e.remove()
		e.remove = nil
	}
	if e.stopOwn != nil {
		if e.stopOwn.EFD >= 0 {
			e.stopOwn.Stop()
		}
		<-e.ownDone
		if e.stopOwn.EFD >= 0 {
			unix.Close(e.stopOwn.EFD)
		}
		e.stopOwn, e.ownDone = nil, nil
	}
}

// ownReader receives until efd is signalled (or, without one, until the
// endpoint is detached).
func (e *PolledEndpoint) ownReader(efd int, done chan struct{}) {
	defer close(done)
	for {
		for e.rx() {
		}
		if efd < 0 {
			if e.disp.Load() == nil {
				return
			}
			pfd := []unix.PollFd{{Fd: int32(e.fd), Events: unix.POLLIN}}
			unix.Poll(pfd, 100)
			continue
		}
		stopped, _ := rawfile.BlockingPollUntilStopped(efd, e.fd, unix.POLLIN)
		if stopped {
			return
		}
		// An error (POLLERR: the interface went down) is read and
		// cleared by the next recvmmsg.
	}
}

// rx reads one batch of frames and delivers them; it reports whether the
// batch was full, so more may be waiting. A batch shorter than asked means
// the socket's queue was empty: frames queued later raise a new edge.
func (e *PolledEndpoint) rx() bool {
	e.rxMu.Lock()
	defer e.rxMu.Unlock()
	ref := e.disp.Load()
	if ref == nil {
		return false
	}
	for k := range e.msgs {
		if e.fresh[k] {
			continue
		}
		var vnet *[virtioNetHdrSize]byte
		if e.vnet {
			vnet = &e.hdrs[k]
		}
		iov := e.slots[k].iovecs(vnet)
		e.msgs[k].Len = 0
		e.msgs[k].Msg.Iov = &iov[0]
		e.msgs[k].Msg.SetIovlen(len(iov))
		e.fresh[k] = true
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(e.fd), uintptr(unsafe.Pointer(&e.msgs[0])), uintptr(len(e.msgs)), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		// EAGAIN: drained. Any other error (ENETDOWN) is cleared by
		// reading it; the next frame raises a new edge.
		return errno == unix.EINTR
	}
	addr := e.LinkEndpoint.LinkAddress()
	for k := 0; k < int(n); k++ {
		size := int(e.msgs[k].Len)
		if e.vnet {
			size -= virtioNetHdrSize
		}
		e.fresh[k] = false
		if size <= 0 {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: e.slots[k].pull(size)})
		if deliverable(pkt, addr) {
			pkt.RXChecksumValidated = e.csumOK
			ref.d.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
		}
		pkt.DecRef()
	}
	return int(n) == len(e.msgs)
}

// deliverable consumes pkt's Ethernet header and reports whether the frame
// is for addr or a group address (as fdbased's receive filter).
func deliverable(pkt *stack.PacketBuffer, addr tcpip.LinkAddress) bool {
	b, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		return false
	}
	eth := header.Ethernet(b)
	pkt.NetworkProtocolNumber = eth.Type()
	dst := eth.DestinationAddress()
	return dst == addr || dst[0]&1 == 1
}
