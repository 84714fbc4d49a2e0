package link

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestRxSlotPull fills a frame's buffer chain as recvmmsg would and checks
// that pull hands over exactly the frame's bytes, and that the next
// iovecs replace only the buffers the frame took.
func TestRxSlotPull(t *testing.T) {
	total := 0
	for _, s := range rxBufSizes {
		total += s
	}
	for _, tc := range []struct {
		name  string
		n     int
		taken int // buffers the frame spans
	}{
		{"minimum frame", 60, 1},
		{"full MTU frame", 1514, 1},
		{"first buffer exactly", rxBufSizes[0], 1},
		{"one byte into the second", rxBufSizes[0] + 1, 2},
		{"jumbo", 9000, 3},
		{"whole chain", total, len(rxBufSizes)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := rxSlot{views: make([]*buffer.View, len(rxBufSizes)), iov: make([]unix.Iovec, len(rxBufSizes))}
			defer s.release()
			s.iovecs(nil)
			want := make([]byte, tc.n)
			for i := range want {
				want[i] = byte(i * 7)
			}
			// Scatter the frame over the chain as the kernel does.
			rest := want
			for _, v := range s.views {
				rest = rest[copy(v.AsSlice(), rest):]
				if len(rest) == 0 {
					break
				}
			}
			kept := append([]*buffer.View(nil), s.views...)
			b := s.pull(tc.n)
			defer b.Release()
			if got := b.Flatten(); !bytes.Equal(got, want) {
				t.Fatalf("pulled %d bytes, want the %d of the frame", len(got), tc.n)
			}
			for i, v := range s.views {
				if (v == nil) != (i < tc.taken) {
					t.Fatalf("buffer %d taken = %v, want %v", i, v == nil, i < tc.taken)
				}
			}
			s.iovecs(nil)
			for i, v := range s.views {
				if v == nil {
					t.Fatalf("buffer %d not reallocated", i)
				}
				if i >= tc.taken && v != kept[i] {
					t.Fatalf("buffer %d reallocated though the frame did not take it", i)
				}
			}
		})
	}
}

// FuzzDeliverable feeds arbitrary frames to the receive filter: it must
// never panic, must drop runts, and must accept exactly the frames for
// its address or a group address, with the EtherType as protocol.
func FuzzDeliverable(f *testing.F) {
	addr := tcpip.LinkAddress("\x02\x00\x00\x00\x00\x01")
	f.Add([]byte("\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00payload"))
	f.Add([]byte("\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x02\x08\x06"))
	f.Add([]byte("\x02\x00\x00\x00\x00\x09\x02\x00\x00\x00\x00\x02\x86\xdd"))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, frame []byte) {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		defer pkt.DecRef()
		ok := deliverable(pkt, addr)
		if len(frame) < header.EthernetMinimumSize {
			if ok {
				t.Fatalf("a %d-byte frame was accepted", len(frame))
			}
			return
		}
		dst := tcpip.LinkAddress(frame[:6])
		if want := dst == addr || frame[0]&1 == 1; ok != want {
			t.Fatalf("frame to %v accepted = %v, want %v", dst, ok, want)
		}
		if p := tcpip.NetworkProtocolNumber(binary.BigEndian.Uint16(frame[12:14])); pkt.NetworkProtocolNumber != p {
			t.Fatalf("protocol %#x, want %#x", pkt.NetworkProtocolNumber, p)
		}
	})
}
