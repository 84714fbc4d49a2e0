package netstack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/mpshim/mpshim/isolator/ins/internal/instest"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

// rawPeer is a TCP peer of the INS made of hand-built segments on a
// channel link, so a test can put the INS's receiver exactly where it
// wants it.
type rawPeer struct {
	ch                    *channel.Endpoint
	local, remote         tcpip.Address
	lport, rport          uint16
	sndNxt                uint32 // the peer's next sequence number
	rcvNxt                uint32 // the INS's next sequence number, as the peer acks it
	insScale              uint8  // the INS's receive window scale
	insEdge               uint32 // the highest right edge the INS advertised
	lastWnd               uint32 // the INS's last advertised window, scaled out
	lastAck               uint32 // the INS's last acknowledgement
	dataFromINS, segments int
}

// send injects one segment from the peer.
func (p *rawPeer) send(flags header.TCPFlags, seq uint32, opts, payload []byte) {
	tcpLen := header.TCPMinimumSize + len(opts) + len(payload)
	b := make([]byte, header.IPv4MinimumSize+tcpLen)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: p.remote, DstAddr: p.local})
	ip.SetChecksum(^ip.CalculateChecksum())
	tc := header.TCP(b[header.IPv4MinimumSize:])
	tc.Encode(&header.TCPFields{SrcPort: p.rport, DstPort: p.lport, SeqNum: seq, AckNum: p.rcvNxt,
		DataOffset: uint8(header.TCPMinimumSize + len(opts)), Flags: flags, WindowSize: 65535})
	copy(tc[header.TCPMinimumSize:], opts)
	copy(tc[header.TCPMinimumSize+len(opts):], payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, p.remote, p.local, uint16(tcpLen))
	xsum = checksum.Checksum(payload, xsum)
	tc.SetChecksum(^tc.CalculateChecksum(xsum))
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	p.ch.InjectInbound(ipv4.ProtocolNumber, pkt)
	pkt.DecRef()
}

// recv returns the INS's next segment to the peer within d (nil if none)
// and notes its window and how much data it carried.
func (p *rawPeer) recv(d time.Duration) header.TCP {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		pkt := p.ch.ReadContext(ctx)
		if pkt == nil {
			return nil
		}
		v := pkt.ToView()
		b := bytes.Clone(v.AsSlice())
		v.Release()
		pkt.DecRef()
		ip := header.IPv4(b)
		if len(b) < header.IPv4MinimumSize || ip.Protocol() != uint8(header.TCPProtocolNumber) {
			continue
		}
		tc := header.TCP(ip.Payload())
		if tc.DestinationPort() != p.rport {
			continue
		}
		p.segments++
		if n := len(tc) - int(tc.DataOffset()); n > 0 {
			p.dataFromINS++
		}
		if tc.Flags().Contains(header.TCPFlagAck) && tc.Flags()&header.TCPFlagSyn == 0 {
			p.lastAck = tc.AckNumber()
			p.lastWnd = uint32(tc.WindowSize()) << p.insScale
			if e := p.lastAck + p.lastWnd; int32(e-p.insEdge) > 0 {
				p.insEdge = e
			}
		}
		return tc
	}
}

// drain reads the INS's segments until none comes for d.
func (p *rawPeer) drain(d time.Duration) {
	for p.recv(d) != nil {
	}
}

// TestZeroWindowAckBeyondRoundedWindow puts the INS's receiver in the state
// of the zero-window stall and checks that the peer's ACK still counts. The
// INS's app does not read, so its receive window only shrinks; the peer
// sends up to one byte short of the highest edge the INS advertised, and
// the INS answers with a window that the scale rounds down to zero although
// the byte left is still within what it had allowed. The peer sends that
// byte and then acknowledges data the INS sent meanwhile, with a sequence
// number past the INS's rounded-down window. Unpatched, gVisor drops both
// unprocessed (an unacceptable segment's ACK field is never looked at), so
// the INS retransmits data that was acknowledged — and an app that waits
// for that write before it reads again never gets going: the stall. With
// third_party/gvisor's patch both are within the window and the INS sends
// nothing more.
func TestZeroWindowAckBeyondRoundedWindow(t *testing.T) {
	ch := channel.New(4096, 1500, "")
	s, err := netstack.New(netstack.Config{ID: 1, ProbeInterval: -1, Uplinks: []netstack.UplinkConfig{{
		Name: "a", Endpoint: ch, Weight: 1,
		Addr4: netip.MustParsePrefix("10.1.0.2/24"), Gateway4: netip.MustParseAddr("10.1.0.1"),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ln, err := gonet.ListenTCP(s.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()

	p := &rawPeer{ch: ch, local: instest.TCPAddr(netip.MustParseAddr("10.1.0.2")),
		remote: instest.TCPAddr(netip.MustParseAddr("10.1.0.1")), lport: 7, rport: 40000, sndNxt: 1000}
	opts := make([]byte, 8)
	n := header.EncodeMSSOption(1460, opts)
	n += header.EncodeWSOption(0, opts[n:])
	opts[n] = header.TCPOptionNOP
	p.send(header.TCPFlagSyn, p.sndNxt, opts, nil)
	p.sndNxt++
	synAck := p.recv(5 * time.Second)
	if synAck == nil || !synAck.Flags().Contains(header.TCPFlagSyn|header.TCPFlagAck) {
		t.Fatalf("no SYN-ACK from the INS: %v", synAck)
	}
	so := header.ParseSynOptions(synAck.Options(), true)
	if so.WS <= 0 {
		t.Fatalf("the INS offers window scale %d: the rounding this test is about needs one above 0", so.WS)
	}
	p.insScale = uint8(so.WS)
	p.rcvNxt = synAck.SequenceNumber() + 1
	p.insEdge = p.sndNxt + uint32(synAck.WindowSize())
	p.send(header.TCPFlagAck, p.sndNxt, nil, nil)
	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the INS's app accepted nothing")
	}
	defer c.Close()

	// Fill the INS's receive buffer (its app never reads) up to one byte
	// short of the highest edge it advertised, until its answer rounds the
	// byte left down to a zero window.
	chunk := make([]byte, 1000)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("the INS never advertised a zero window one byte short of its edge (last ack %d, window %d, edge %d)",
				p.lastAck, p.lastWnd, p.insEdge)
		}
		target := p.insEdge - 1
		for p.sndNxt != target {
			l := min(uint32(len(chunk)), target-p.sndNxt)
			p.send(header.TCPFlagAck|header.TCPFlagPsh, p.sndNxt, nil, chunk[:l])
			p.sndNxt += l
		}
		p.drain(100 * time.Millisecond)
		if p.lastAck == p.sndNxt && p.lastWnd == 0 && p.insEdge == p.sndNxt+1 {
			break
		}
	}

	// The INS's app writes; the peer takes the data and, having sent its
	// last allowed byte, acknowledges it.
	msg := []byte("written by the INS's app while it does not read")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	for {
		tc := p.recv(5 * time.Second)
		if tc == nil {
			t.Fatal("the INS did not send its app's data")
		}
		if tc.SequenceNumber() == p.rcvNxt && len(tc)-int(tc.DataOffset()) == len(msg) {
			break
		}
	}
	p.send(header.TCPFlagAck|header.TCPFlagPsh, p.sndNxt, nil, chunk[:1])
	p.sndNxt++
	p.rcvNxt += uint32(len(msg))
	p.send(header.TCPFlagAck, p.sndNxt, nil, nil)

	// Acknowledged data is never sent again: look for 3 s, several of the
	// INS's retransmission timeouts.
	before := p.dataFromINS
	p.drain(3 * time.Second)
	if p.dataFromINS != before {
		t.Fatalf("the INS sent %d data segments after the peer acknowledged all its data with a sequence number "+
			"within the window it had advertised: the ACK was dropped (gVisor without third_party/gvisor's patch; see docs/design.md)",
			p.dataFromINS-before)
	}
	if p.lastAck != p.sndNxt {
		t.Errorf("the INS acknowledges %d, want %d: the byte within its advertised edge was dropped", p.lastAck, p.sndNxt)
	}
}

// zeroWindowRuns is how many 4 MiB echoes TestZeroWindowEcho makes:
// MPSHIM_ZEROWINDOW_RUNS (make conformance: 100), or 20 (about 10 s).
func zeroWindowRuns(t *testing.T) int {
	if s := os.Getenv("MPSHIM_ZEROWINDOW_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("MPSHIM_ZEROWINDOW_RUNS=%q: want a positive count", s)
		}
		return n
	}
	return 20
}

// TestZeroWindowEcho is the app's view of the zero-window stall: the INS
// serves a plain io.Copy echo, which stops reading while its write waits,
// and a kernel client in the wan namespace, with a small receive buffer,
// writes 4 MiB while it reads the echo slowly, so both sides' buffers fill
// and the INS's receive window closes again and again while its own writes
// wait for the client's ACKs. Every run must complete.
func TestZeroWindowEcho(t *testing.T) {
	m := instest.NewMiniTopo(t, 1)
	_, s := instest.StartINS(t, m, 61, 61, -1, 0)
	ln, err := gonet.ListenTCP(s.Stack(), tcpip.FullAddress{Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go instest.EchoServe(ln)
	msg := make([]byte, 4<<20)
	if _, err := rand.Read(msg); err != nil {
		t.Fatal(err)
	}
	runs := zeroWindowRuns(t)
	start := time.Now()
	addr := netip.AddrPortFrom(m.Ups[0].HostAddr(61).Addr(), 7).String()
	for i := 0; i < runs; i++ {
		if err := echoKernelClient(m, addr, msg); err != nil {
			t.Fatalf("run %d of %d: %v", i+1, runs, err)
		}
	}
	t.Logf("%d echoes of %d bytes in %v", runs, len(msg), time.Since(start).Round(time.Millisecond))
}

// echoKernelClient dials addr from the wan namespace, writes msg while it
// reads the echo 4 KiB at a time, and checks what comes back.
func echoKernelClient(m *instest.MiniTopo, addr string, msg []byte) error {
	var c net.Conn
	if err := m.InWAN(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("dial %s from wan: %w", addr, err)
	}
	defer c.Close()
	if err := c.(*net.TCPConn).SetReadBuffer(16 << 10); err != nil {
		return err
	}
	// A stall never ends by itself; 60 s is ample on a loaded machine.
	c.SetDeadline(time.Now().Add(60 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got := bytes.NewBuffer(make([]byte, 0, len(msg)))
	_, err := io.CopyBuffer(got, c, make([]byte, 4<<10))
	if err != nil {
		return fmt.Errorf("read after %d of %d bytes (stalled): %w", got.Len(), len(msg), err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got.Bytes(), msg) {
		return fmt.Errorf("echo differs: %d bytes back for %d", got.Len(), len(msg))
	}
	return nil
}
