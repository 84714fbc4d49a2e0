package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Packets on a subflow are either handshake messages (clear, see
// handshake.go) or sealed packets (seal.TypeData). The plaintext of a
// sealed packet is a path header followed by one or more frames:
//
//	path header: path id (u8), path sequence number (u64)
//	DATA  0x01: data sequence number (u64), flags (u8: 1 = FIN), length (u16), bytes
//	ACK   0x02: path id (u8), largest path seq (u64), ack delay µs (u32),
//	            cumulative data seq (u64), data limit (u64), range count (u8),
//	            ranges of path seqs received, highest first: high (u64), low (u64)
//	PROBE 0x03: empty; asks for an ACK
//	CLOSE 0x04: empty; the sender ends the session
//
// All integers are big endian. A path sequence number counts the packets
// one side sent on one path; ACKs name them so that each path's RTT, loss
// and delivery rate are measured on that path alone. Data sequence
// numbers order the byte stream's frames across paths; the cumulative data
// seq says every frame below it arrived, the limit is the flow-control
// window (the sender sends no frame at or beyond it).
const (
	frameData  = 0x01
	frameAck   = 0x02
	frameProbe = 0x03
	frameClose = 0x04

	flagFIN = 1

	pathHeaderLen = 9
	dataHeaderLen = 1 + 8 + 1 + 2
	ackFixedLen   = 1 + 1 + 8 + 4 + 8 + 8 + 1
	// MaxAckRanges is the most ranges one ACK carries.
	MaxAckRanges = 16
)

// pathHeader begins every sealed plaintext.
type pathHeader struct {
	path uint8
	seq  uint64
}

// seqRange is an inclusive range of path sequence numbers.
type seqRange struct{ lo, hi uint64 }

// ackFrame acknowledges the packets received on one path and carries the
// stream-wide cumulative ack and flow-control limit.
type ackFrame struct {
	path    uint8
	largest uint64
	delayUS uint32
	cum     uint64
	limit   uint64
	ranges  []seqRange
}

// dataFrame is one piece of the byte stream.
type dataFrame struct {
	dsn  uint64
	fin  bool
	data []byte // aliases the packet buffer
}

// frames is the parsed content of one plaintext.
type frames struct {
	hdr   pathHeader
	data  []dataFrame
	acks  []ackFrame
	probe bool
	close bool
}

// ackEliciting reports whether the packet asks for an acknowledgement.
func (f *frames) ackEliciting() bool { return len(f.data) > 0 || f.probe }

var errFrame = errors.New("tunnel: malformed frame")

func appendPathHeader(b []byte, h pathHeader) []byte {
	b = append(b, h.path)
	return binary.BigEndian.AppendUint64(b, h.seq)
}

func appendData(b []byte, d dataFrame) []byte {
	b = append(b, frameData)
	b = binary.BigEndian.AppendUint64(b, d.dsn)
	var fl byte
	if d.fin {
		fl = flagFIN
	}
	b = append(b, fl)
	b = binary.BigEndian.AppendUint16(b, uint16(len(d.data)))
	return append(b, d.data...)
}

func appendAck(b []byte, a ackFrame) []byte {
	b = append(b, frameAck, a.path)
	b = binary.BigEndian.AppendUint64(b, a.largest)
	b = binary.BigEndian.AppendUint32(b, a.delayUS)
	b = binary.BigEndian.AppendUint64(b, a.cum)
	b = binary.BigEndian.AppendUint64(b, a.limit)
	n := min(len(a.ranges), MaxAckRanges)
	b = append(b, byte(n))
	for _, r := range a.ranges[:n] {
		b = binary.BigEndian.AppendUint64(b, r.hi)
		b = binary.BigEndian.AppendUint64(b, r.lo)
	}
	return b
}

// parseFrames parses a plaintext into f (reusing its slices). Data frames
// alias p. It rejects unknown frame types, truncation, oversize counts and
// ranges that are not disjoint and descending.
func parseFrames(p []byte, f *frames) error {
	*f = frames{data: f.data[:0], acks: f.acks[:0]}
	if len(p) < pathHeaderLen {
		return fmt.Errorf("%w: %d-byte plaintext", errFrame, len(p))
	}
	f.hdr = pathHeader{path: p[0], seq: binary.BigEndian.Uint64(p[1:])}
	p = p[pathHeaderLen:]
	if len(p) == 0 {
		return fmt.Errorf("%w: no frames", errFrame)
	}
	for len(p) > 0 {
		switch p[0] {
		case frameData:
			if len(p) < dataHeaderLen {
				return fmt.Errorf("%w: short data frame", errFrame)
			}
			d := dataFrame{dsn: binary.BigEndian.Uint64(p[1:])}
			fl := p[9]
			if fl&^flagFIN != 0 {
				return fmt.Errorf("%w: data flags %#x", errFrame, fl)
			}
			d.fin = fl&flagFIN != 0
			n := int(binary.BigEndian.Uint16(p[10:]))
			if len(p) < dataHeaderLen+n {
				return fmt.Errorf("%w: data length %d beyond packet", errFrame, n)
			}
			d.data = p[dataHeaderLen : dataHeaderLen+n]
			f.data = append(f.data, d)
			p = p[dataHeaderLen+n:]
		case frameAck:
			if len(p) < ackFixedLen {
				return fmt.Errorf("%w: short ack frame", errFrame)
			}
			a := ackFrame{
				path:    p[1],
				largest: binary.BigEndian.Uint64(p[2:]),
				delayUS: binary.BigEndian.Uint32(p[10:]),
				cum:     binary.BigEndian.Uint64(p[14:]),
				limit:   binary.BigEndian.Uint64(p[22:]),
			}
			n := int(p[30])
			if n > MaxAckRanges {
				return fmt.Errorf("%w: %d ack ranges", errFrame, n)
			}
			if a.limit < a.cum {
				return fmt.Errorf("%w: limit %d below cumulative ack %d", errFrame, a.limit, a.cum)
			}
			p = p[ackFixedLen:]
			if len(p) < 16*n {
				return fmt.Errorf("%w: ack ranges beyond packet", errFrame)
			}
			prevLo := uint64(0)
			for i := range n {
				r := seqRange{hi: binary.BigEndian.Uint64(p[16*i:]), lo: binary.BigEndian.Uint64(p[16*i+8:])}
				if r.lo > r.hi || (i == 0 && r.hi != a.largest) || (i > 0 && r.hi+1 >= prevLo) {
					return fmt.Errorf("%w: ack range %d [%d,%d] out of order", errFrame, i, r.lo, r.hi)
				}
				prevLo = r.lo
				a.ranges = append(a.ranges, r)
			}
			p = p[16*n:]
			f.acks = append(f.acks, a)
		case frameProbe:
			f.probe = true
			p = p[1:]
		case frameClose:
			f.close = true
			p = p[1:]
		default:
			return fmt.Errorf("%w: type %#x", errFrame, p[0])
		}
	}
	return nil
}
