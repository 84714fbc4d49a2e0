package link

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// sink records the segments written below the delayer.
type sink struct {
	mu   sync.Mutex
	segs []tcpSeg
}

func (s *sink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range pkts.AsSlice() {
		seg, ok := parseSeg(p)
		if !ok {
			panic("not a TCP segment")
		}
		s.segs = append(s.segs, seg)
	}
	return pkts.Len(), nil
}

func (s *sink) take() []tcpSeg {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.segs
	s.segs = nil
	return out
}

// seg describes a segment the netstack sends from 10.0.0.1:80 to
// 10.0.0.2:port.
type seg struct {
	port    uint16
	flags   header.TCPFlags
	ack     uint32
	wnd     uint16
	payload int
	sack    bool // a SACK block after the timestamps
}

func (s seg) packet() *stack.PacketBuffer {
	optLen := 12 // NOP NOP TS
	if s.sack {
		optLen += 12 // NOP NOP SACK(1 block)
	}
	thLen := header.TCPMinimumSize + optLen
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + thLen,
		Payload:            buffer.MakeWithData(make([]byte, s.payload)),
	})
	th := header.TCP(pkt.TransportHeader().Push(thLen))
	th.Encode(&header.TCPFields{
		SrcPort: 80, DstPort: s.port, SeqNum: 1, AckNum: s.ack,
		DataOffset: uint8(thLen), Flags: s.flags, WindowSize: s.wnd,
	})
	o := th[header.TCPMinimumSize:]
	o[0], o[1] = header.TCPOptionNOP, header.TCPOptionNOP
	header.EncodeTSOption(1, 2, o[2:])
	if s.sack {
		o[12], o[13] = header.TCPOptionNOP, header.TCPOptionNOP
		o[14], o[15] = header.TCPOptionSACK, 10
	}
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + thLen + s.payload), TTL: 64,
		Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr:  tcpip.AddrFrom4([4]byte{10, 0, 0, 1}), DstAddr: tcpip.AddrFrom4([4]byte{10, 0, 0, 2}),
	})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	return pkt
}

const (
	ack  = header.TCPFlagAck
	psh  = header.TCPFlagAck | header.TCPFlagPsh
	fin  = header.TCPFlagAck | header.TCPFlagFin
	rst  = header.TCPFlagRst
	mtu  = 1500
	full = mtu - 72 // the delayer's full-sized segment
)

// write sends segs through d in one batch, as the queue's dispatcher does.
func write(t *testing.T, d *ackDelayer, segs ...seg) {
	t.Helper()
	var l stack.PacketBufferList
	for _, s := range segs {
		l.PushBack(s.packet())
	}
	n, err := d.WritePackets(l)
	if err != nil || n != len(segs) {
		t.Fatalf("WritePackets: %d, %v; want %d, nil", n, err, len(segs))
	}
	l.Reset()
}

// acks lists the acknowledgement numbers of segs, payload and flags aside.
func acks(segs []tcpSeg) []uint32 {
	var out []uint32
	for _, s := range segs {
		out = append(out, s.ack)
	}
	return out
}

func TestAckDelayer(t *testing.T) {
	// Every case starts with the flow having sent a response (ack 100,
	// window 500): it is in ping-pong mode.
	start := seg{port: 1000, flags: psh, ack: 100, wnd: 500, payload: 10}
	for _, tc := range []struct {
		name string
		segs [][]seg    // batches written after start
		want [][]uint32 // acknowledgements seen below after each batch
	}{
		{
			name: "request ACK rides on the response",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 200, wnd: 500}}, {{port: 1000, flags: psh, ack: 200, wnd: 500, payload: 1024}}},
			want: [][]uint32{nil, {200}},
		},
		{
			name: "ACK and response in one batch",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 200, wnd: 500}, {port: 1000, flags: psh, ack: 200, wnd: 500, payload: 1024}}},
			want: [][]uint32{{200}},
		},
		{
			name: "a later ACK replaces the held one",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 200, wnd: 500}}, {{port: 1000, flags: ack, ack: 300, wnd: 500}}, {{port: 1000, flags: psh, ack: 300, wnd: 500, payload: 1}}},
			want: [][]uint32{nil, nil, {300}},
		},
		{
			name: "two full segments are acked at once",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 100 + 2*full, wnd: 500}}},
			want: [][]uint32{{100 + 2*full}},
		},
		{
			name: "an ACK that does not advance leaves at once (window update)",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 100, wnd: 900}}},
			want: [][]uint32{{100}},
		},
		{
			name: "SACK blocks leave at once",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 200, wnd: 500, sack: true}}},
			want: [][]uint32{{200}},
		},
		{
			name: "a zero window leaves at once, and so does the ACK after it",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 200, wnd: 0}}, {{port: 1000, flags: ack, ack: 300, wnd: 500}}},
			want: [][]uint32{{200}, {300}},
		},
		{
			name: "a FIN carries the held ACK; ACKs after it leave at once",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 200, wnd: 500}}, {{port: 1000, flags: fin, ack: 200, wnd: 500}}, {{port: 1000, flags: ack, ack: 201, wnd: 500}}},
			want: [][]uint32{nil, {200}, {201}},
		},
		{
			name: "a reset without ACK lets the held ACK leave first",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 200, wnd: 500}}, {{port: 1000, flags: rst}}},
			want: [][]uint32{nil, {200, 0}},
		},
		{
			name: "a flow that never sent data is acked at once",
			segs: [][]seg{{{port: 2000, flags: ack, ack: 200, wnd: 500}}},
			want: [][]uint32{{200}},
		},
		{
			name: "flows are apart",
			segs: [][]seg{{{port: 1000, flags: ack, ack: 200, wnd: 500}, {port: 2000, flags: psh, ack: 7, wnd: 500, payload: 5}}, {{port: 1000, flags: psh, ack: 200, wnd: 500, payload: 5}}},
			want: [][]uint32{{7}, {200}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &sink{}
			d := newAckDelayer(s, mtu, time.Hour)
			defer d.close()
			write(t, d, start)
			s.take()
			for i, b := range tc.segs {
				write(t, d, b...)
				if got := acks(s.take()); !equal(got, tc.want[i]) {
					t.Fatalf("batch %d: acks below %v, want %v", i, got, tc.want[i])
				}
			}
		})
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestAckDelayerTimeout: a held ACK leaves after the delay, and the flow
// then acks at once until it sends data again.
func TestAckDelayerTimeout(t *testing.T) {
	s := &sink{}
	const delay = 20 * time.Millisecond
	d := newAckDelayer(s, mtu, delay)
	defer d.close()
	write(t, d, seg{port: 1000, flags: psh, ack: 100, wnd: 500, payload: 10})
	s.take()
	held := time.Now()
	write(t, d, seg{port: 1000, flags: ack, ack: 200, wnd: 500})
	// The trickle of small segments: the replacement keeps the first's
	// deadline.
	time.Sleep(delay / 2)
	write(t, d, seg{port: 1000, flags: ack, ack: 210, wnd: 500})
	var got []tcpSeg
	for deadline := time.Now().Add(10 * time.Second); len(got) == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		got = s.take()
	}
	waited := time.Since(held)
	if a := acks(got); !equal(a, []uint32{210}) {
		t.Fatalf("acks after the delay %v, want [210]", a)
	}
	if waited < delay {
		t.Fatalf("held ACK left after %v, before the delay %v", waited, delay)
	}
	write(t, d, seg{port: 1000, flags: ack, ack: 300, wnd: 500})
	if a := acks(s.take()); !equal(a, []uint32{300}) {
		t.Fatalf("after a timeout: acks %v, want [300] at once", a)
	}
	st := d.stats()
	if st.Held != 1 || st.Released != 1 || st.Dropped != 1 {
		t.Fatalf("stats %+v, want 1 held, 1 released, 1 dropped (replaced)", st)
	}
}

// TestAckDelayerClose: closing releases held ACKs and the timer sends
// nothing after it.
func TestAckDelayerClose(t *testing.T) {
	s := &sink{}
	d := newAckDelayer(s, mtu, 5*time.Millisecond)
	write(t, d, seg{port: 1000, flags: psh, ack: 100, wnd: 500, payload: 10})
	write(t, d, seg{port: 1000, flags: ack, ack: 200, wnd: 500})
	s.take()
	d.close()
	time.Sleep(30 * time.Millisecond)
	if got := s.take(); len(got) != 0 {
		t.Fatalf("after close, %d segments written", len(got))
	}
}

func TestOnlyTimestamps(t *testing.T) {
	for _, tc := range []struct {
		opts []byte
		want bool
	}{
		{nil, true},
		{[]byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, true},
		{[]byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 5, 10}, true}, // EOL ends them
		{[]byte{1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2}, false},          // SACK
		{[]byte{1, 1, 8, 9, 0, 0, 0, 1, 0, 0, 0}, false},              // bad length
		{[]byte{8}, false}, // truncated
	} {
		if got := onlyTimestamps(tc.opts); got != tc.want {
			t.Errorf("onlyTimestamps(%v) = %v, want %v", tc.opts, got, tc.want)
		}
	}
}

// FuzzParseSeg: any bytes as the headers of an outgoing packet parse or
// are refused without a panic, and options are read within their bounds.
func FuzzParseSeg(f *testing.F) {
	f.Add(make([]byte, 20), []byte{0, 80, 3, 232, 0, 0, 0, 1, 0, 0, 0, 100, 0x80, 0x10, 1, 244, 0, 0, 0, 0, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	f.Add([]byte{0x45}, []byte{0, 80, 3, 232, 0, 0, 0, 1, 0, 0, 0, 100, 0xf0, 0x10})
	f.Fuzz(func(t *testing.T, nh, th []byte) {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: len(nh) + len(th)})
		defer pkt.DecRef()
		copy(pkt.TransportHeader().Push(len(th)), th)
		copy(pkt.NetworkHeader().Push(len(nh)), nh)
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
		pkt.TransportProtocolNumber = header.TCPProtocolNumber
		s, ok := parseSeg(pkt)
		if ok && (len(nh) < header.IPv4MinimumSize || len(th) < header.TCPMinimumSize || s.payload < 0) {
			t.Fatalf("parsed %+v from %d network and %d transport header bytes", s, len(nh), len(th))
		}
		onlyTimestamps(th)
	})
}
