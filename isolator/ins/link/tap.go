package link

import (
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/mpshim/mpshim/netflow"
)

// Tap sees every IP packet an uplink receives or sends, at the link layer:
// a received packet before the netstack processes it, a sent one as it
// leaves. Flow accounting and mitigation rules are taps.
//
// Packet is called on the netstack's hot paths, concurrently from the
// NICs' dispatchers and from sending goroutines: it must be quick and must
// not block. p is only valid during the call.
type Tap interface {
	// Packet returns false to drop the packet.
	Packet(uplink string, dir netflow.Direction, p *netflow.Packet) bool
}

// Taps is the chain of taps every NIC of a stack calls, in order; the first
// that drops a packet ends the chain. It is replaced as a whole (copy on
// write) so the packet paths read it without a lock. The zero value is an
// empty chain.
type Taps struct {
	chain atomic.Pointer[[]Tap]
}

// Add appends t to the chain, for every NIC tapped with it, present and
// future.
func (c *Taps) Add(t Tap) {
	for {
		old := c.chain.Load()
		var next []Tap
		if old != nil {
			next = append(next, *old...)
		}
		next = append(next, t)
		if c.chain.CompareAndSwap(old, &next) {
			return
		}
	}
}

// Empty reports whether the chain has no tap.
func (c *Taps) Empty() bool { return c.chain.Load() == nil }

// packets holds the Packet each tapped packet is parsed into: taps are
// called through an interface, so a Packet on the stack would escape and
// cost an allocation per packet. Taps must not keep p (see Tap).
var packets = sync.Pool{New: func() any { return new(netflow.Packet) }}

// run passes p through the chain; false means drop.
func (t *Taps) run(uplink string, dir netflow.Direction, p *netflow.Packet) bool {
	c := t.chain.Load()
	if c == nil {
		return true
	}
	for _, tap := range *c {
		if !tap.Packet(uplink, dir, p) {
			return false
		}
	}
	return true
}

// TapEndpoint wraps a NIC's link endpoint and shows its IP packets to a
// chain of taps. Non-IP frames (ARP) pass untouched; an IP packet whose
// headers do not parse is dropped on the way in (the netstack would drop it
// too) and counted as malformed.
type TapEndpoint struct {
	nested.Endpoint
	uplink string
	taps   *Taps
	// malformed counts received IP packets whose headers did not parse.
	malformed atomic.Uint64
	// detached is set when the netstack detaches the NIC (Attach(nil)):
	// from then on received packets are dropped here, and the child is
	// stopped by Release.
	detached atomic.Bool
	// acks, when set (DelayAcks), holds pure ACKs before the taps.
	acks *ackDelayer
}

// Tapped wraps ep, the NIC of the uplink named name, with the chain c.
func Tapped(name string, ep stack.LinkEndpoint, c *Taps) *TapEndpoint {
	t := &TapEndpoint{uplink: name, taps: c}
	t.Init(ep, t)
	return t
}

// DelayAcks gives the NIC Linux's delayed ACK (see ackDelayer): a pure ACK
// that a response may carry instead is held up to d. It must be called
// before the NIC sends anything.
func (t *TapEndpoint) DelayAcks(d time.Duration) {
	t.acks = newAckDelayer(tapWriter{t}, t.Endpoint.MTU(), d)
}

// AckStats returns the counts of the NIC's ACK delayer (zero without
// DelayAcks).
func (t *TapEndpoint) AckStats() AckStats {
	if t.acks == nil {
		return AckStats{}
	}
	return t.acks.stats()
}

// tapWriter is the part of WritePackets below the ACK delayer.
type tapWriter struct{ t *TapEndpoint }

func (w tapWriter) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return w.t.writePackets(pkts)
}

// Malformed returns the number of received IP packets whose headers did
// not parse (dropped here).
func (t *TapEndpoint) Malformed() uint64 { return t.malformed.Load() }

func isIP(proto tcpip.NetworkProtocolNumber) bool {
	return proto == header.IPv4ProtocolNumber || proto == header.IPv6ProtocolNumber
}

// DeliverNetworkPacket implements stack.NetworkDispatcher: a received
// packet, its link header already consumed.
func (t *TapEndpoint) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if t.detached.Load() {
		return
	}
	if isIP(proto) && t.taps.chain.Load() != nil {
		b, ok := pkt.Data().PullUp(min(pkt.Data().Size(), netflow.HeaderBytes))
		if !ok {
			t.malformed.Add(1)
			return
		}
		p := packets.Get().(*netflow.Packet)
		var err error
		if *p, err = netflow.Parse(b); err != nil {
			packets.Put(p)
			t.malformed.Add(1)
			return
		}
		pass := t.taps.run(t.uplink, netflow.In, p)
		packets.Put(p)
		if !pass {
			return
		}
	}
	t.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// Attach implements stack.LinkEndpoint. The netstack detaches a NIC (nil)
// and then waits for its link endpoint while holding its own lock, and a
// packet the link's reader is delivering at that moment may be waiting for
// that lock (an unknown destination's reset looks up the NIC by ID). gVisor's
// fdbased endpoint waits for its reader inside Attach(nil), so passing the
// detach on would deadlock the stack. So detaching only stops deliveries
// here; Release, called without netstack locks, stops and waits for the
// child.
func (t *TapEndpoint) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		t.detached.Store(true)
		return
	}
	t.detached.Store(false)
	t.Endpoint.Attach(d)
}

// IsAttached implements stack.LinkEndpoint.
func (t *TapEndpoint) IsAttached() bool {
	return !t.detached.Load() && t.Endpoint.IsAttached()
}

// Wait implements stack.LinkEndpoint. Once detached it returns at once
// (see Attach); Release waits for the child.
func (t *TapEndpoint) Wait() {
	if t.detached.Load() {
		return
	}
	t.Endpoint.Wait()
}

// Release detaches the child link endpoint and waits for its reader to
// exit, after which its sockets may be closed. It must not be called with a
// netstack lock held: the reader may be finishing a packet that needs one.
func (t *TapEndpoint) Release() {
	if t.acks != nil {
		t.acks.close()
	}
	t.detached.Store(true)
	t.Endpoint.Attach(nil)
	t.Endpoint.Wait()
}

// WritePackets implements stack.LinkEndpoint: packets on their way out,
// link header already added. Packets a tap drops are reported as written
// (as a firewall's silent drop: the sender sees no error), as are ACKs the
// delayer holds.
func (t *TapEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if t.acks != nil {
		return t.acks.WritePackets(pkts)
	}
	return t.writePackets(pkts)
}

// writePackets shows pkts to the taps and writes what they pass.
func (t *TapEndpoint) writePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if t.taps.chain.Load() == nil {
		return t.Endpoint.WritePackets(pkts)
	}
	all := pkts.AsSlice()
	// keep is only built once a packet is dropped: the common case
	// passes the caller's list through without allocating.
	var keep stack.PacketBufferList
	dropped := 0
	var buf [netflow.HeaderBytes]byte
	for i, pkt := range all {
		if t.pass(pkt, buf[:]) {
			if dropped > 0 {
				keep.PushBack(pkt.IncRef())
			}
			continue
		}
		if dropped == 0 {
			for _, k := range all[:i] {
				keep.PushBack(k.IncRef())
			}
		}
		dropped++
	}
	if dropped == 0 {
		return t.Endpoint.WritePackets(pkts)
	}
	defer keep.Reset()
	if keep.Len() == 0 {
		return dropped, nil
	}
	n, err := t.Endpoint.WritePackets(keep)
	return n + dropped, err
}

// pass shows an outgoing packet to the taps, using buf to gather its
// headers; false means drop.
func (t *TapEndpoint) pass(pkt *stack.PacketBuffer, buf []byte) bool {
	if !isIP(pkt.NetworkProtocolNumber) {
		return true
	}
	n := copy(buf, pkt.NetworkHeader().Slice())
	th := pkt.TransportHeader().Slice()
	n += copy(buf[n:], th)
	// The netstack sets the transport header of what it sends, and Parse
	// needs nothing beyond it. The data is read only without one: PullUp
	// merges the payload's views into a new chunk, which costs more than
	// all the rest of the tap.
	if len(th) == 0 && n < len(buf) {
		if d, ok := pkt.Data().PullUp(min(pkt.Data().Size(), len(buf)-n)); ok {
			n += copy(buf[n:], d)
		}
	}
	p := packets.Get().(*netflow.Packet)
	defer packets.Put(p)
	var err error
	if *p, err = netflow.Parse(buf[:n]); err != nil {
		// Our own netstack built it; never drop what we cannot read.
		return true
	}
	// A GSO segment leaves as one frame per MSS of payload: count what
	// the wire carries.
	if g := pkt.GSOOptions; g.Type != stack.GSONone && g.MSS > 0 && p.Payload > int(g.MSS) {
		p.Segments = (p.Payload + int(g.MSS) - 1) / int(g.MSS)
	}
	return t.taps.run(t.uplink, netflow.Out, p)
}
