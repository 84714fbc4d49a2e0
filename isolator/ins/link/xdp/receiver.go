package xdp

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/stopfd"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// rxBatch bounds the frames handled per pass over the RX ring, so the
// fill ring is replenished while a long burst is being read.
const rxBatch = 64

// Receiver is the receive half of a gVisor link endpoint over a Socket:
// once attached, one goroutine waits for frames and delivers each Ethernet
// frame to the netstack in turn (one copy, into a single view). Unicast
// frames for another MAC address are dropped and counted; a macvlan never
// passes any, so the counter shows that no INS sees another's traffic.
type Receiver struct {
	sock        *Socket
	rxChecksums bool

	mu         sync.RWMutex
	addr       tcpip.LinkAddress
	dispatcher stack.NetworkDispatcher
	stop       stopfd.StopFD
	onClose    func()
	wg         sync.WaitGroup
	// stopped is set by Attach(nil); the reader delivers no frame once
	// it is set.
	stopped atomic.Bool

	frames  atomic.Uint64
	foreign atomic.Uint64
	short   atomic.Uint64
}

// NewReceiver reads frames for addr from sock. With rxChecksumOffload the
// netstack skips checksum verification (only for frames from a local
// kernel over virtual links). The receiver does not own the socket: close
// it after Attach(nil).
func NewReceiver(sock *Socket, addr tcpip.LinkAddress, rxChecksumOffload bool) *Receiver {
	return &Receiver{sock: sock, addr: addr, rxChecksums: rxChecksumOffload}
}

// SetLinkAddress changes the address unicast frames must carry.
func (r *Receiver) SetLinkAddress(addr tcpip.LinkAddress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addr = addr
}

// SetOnCloseAction sets what runs if the reader stops on a socket error.
func (r *Receiver) SetOnCloseAction(action func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onClose = action
}

// IsAttached reports whether a dispatcher is attached.
func (r *Receiver) IsAttached() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.dispatcher != nil
}

// Wait returns once the reader has stopped. A frame the reader is
// delivering may wait for the netstack's lock, so Wait must not be called
// with it held (the INS's NIC wrapper waits only once the NIC is removed).
func (r *Receiver) Wait() { r.wg.Wait() }

// Close stops the reader if it runs and waits until it has exited, after
// which the socket may be closed. It must not be called with a netstack
// lock held.
func (r *Receiver) Close() {
	r.Attach(nil)
	r.wg.Wait()
}

// Attach starts delivering frames to d; nil tells the reader to stop and
// returns without waiting for it (Wait and Close do). It has the semantics
// of stack.NetworkLinkEndpoint.Attach.
func (r *Receiver) Attach(d stack.NetworkDispatcher) {
	r.mu.Lock()
	if d == nil {
		if r.dispatcher == nil {
			r.mu.Unlock()
			return
		}
		// Signal the reader and return without waiting for it: the
		// netstack detaches a NIC with its own lock held, and a packet
		// the reader is delivering may need that lock. The reader
		// closes its eventfd as it exits; Wait waits for it.
		r.stopped.Store(true)
		r.stop.Stop()
		r.dispatcher = nil
		r.mu.Unlock()
		return
	}
	defer r.mu.Unlock()
	if r.dispatcher != nil {
		return
	}
	stop, err := stopfd.New()
	if err != nil {
		// Without an eventfd the reader could never be stopped; the
		// NIC stays deaf rather than leak a goroutine.
		return
	}
	r.stop, r.dispatcher = stop, d
	r.stopped.Store(false)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer unix.Close(stop.EFD)
		if !r.read(stop.EFD, d) {
			r.mu.RLock()
			f := r.onClose
			r.mu.RUnlock()
			if f != nil {
				f()
			}
		}
	}()
}

// read delivers received frames until efd is signalled (true) or polling
// the socket fails (false).
func (r *Receiver) read(efd int, d stack.NetworkDispatcher) bool {
	var addr tcpip.LinkAddress
	deliver := func(frame []byte) {
		if !r.stopped.Load() {
			r.deliver(d, addr, frame)
		}
	}
	for {
		r.mu.RLock()
		addr = r.addr
		r.mu.RUnlock()
		for !r.stopped.Load() {
			n := r.sock.Receive(rxBatch, deliver)
			if n == 0 {
				break
			}
			r.frames.Add(uint64(n))
		}
		stopped, errno := rawfile.BlockingPollUntilStopped(efd, r.sock.FD(), unix.POLLIN)
		if stopped {
			return true
		}
		if errno != 0 && errno != unix.EINTR {
			return false
		}
	}
}

// deliver hands one frame to the netstack unless it is shorter than an
// Ethernet header or a unicast frame for another address than addr.
func (r *Receiver) deliver(d stack.NetworkDispatcher, addr tcpip.LinkAddress, frame []byte) {
	if len(frame) < header.EthernetMinimumSize {
		r.short.Add(1)
		return
	}
	eth := header.Ethernet(frame)
	if frame[0]&1 == 0 && eth.DestinationAddress() != addr {
		r.foreign.Add(1)
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
	defer pkt.DecRef()
	if _, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize); !ok {
		return
	}
	pkt.NetworkProtocolNumber = eth.Type()
	pkt.RXChecksumValidated = r.rxChecksums
	d.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
}

// ReceiverStats are a Receiver's counters.
type ReceiverStats struct {
	// Frames counts frames taken from the RX ring.
	Frames uint64
	// Foreign counts unicast frames for another MAC address.
	Foreign uint64
	// Short counts frames shorter than an Ethernet header.
	Short uint64
}

// Stats returns the receiver's counters.
func (r *Receiver) Stats() ReceiverStats {
	return ReceiverStats{Frames: r.frames.Load(), Foreign: r.foreign.Load(), Short: r.short.Load()}
}
