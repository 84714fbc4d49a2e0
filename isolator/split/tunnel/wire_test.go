package tunnel

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestFramesRoundTrip(t *testing.T) {
	b := appendPathHeader(nil, pathHeader{path: 2, seq: 77})
	b = appendData(b, dataFrame{dsn: 5, data: []byte("hello")})
	b = appendData(b, dataFrame{dsn: 6, fin: true})
	b = appendAck(b, ackFrame{path: 2, largest: 90, delayUS: 12, cum: 4, limit: 100, ranges: []seqRange{{80, 90}, {10, 70}}})
	b = append(b, frameProbe, frameClose)
	var f frames
	if err := parseFrames(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.hdr != (pathHeader{2, 77}) || len(f.data) != 2 || !bytes.Equal(f.data[0].data, []byte("hello")) ||
		f.data[0].dsn != 5 || !f.data[1].fin || f.data[1].dsn != 6 || !f.probe || !f.close || len(f.acks) != 1 {
		t.Fatalf("%+v", f)
	}
	a := f.acks[0]
	if a.path != 2 || a.largest != 90 || a.delayUS != 12 || a.cum != 4 || a.limit != 100 || !slices.Equal(a.ranges, []seqRange{{80, 90}, {10, 70}}) {
		t.Fatalf("%+v", a)
	}
}

func TestFramesMalformed(t *testing.T) {
	hdr := appendPathHeader(nil, pathHeader{})
	ack := func(a ackFrame) []byte { return appendAck(slices.Clone(hdr), a) }
	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"header only", hdr},
		{"unknown type", append(slices.Clone(hdr), 0x7f)},
		{"short data", append(slices.Clone(hdr), frameData, 0, 0)},
		{"data length beyond", appendData(slices.Clone(hdr), dataFrame{data: []byte("abc")})[:len(hdr)+dataHeaderLen+2]},
		{"data flags", func() []byte { b := appendData(slices.Clone(hdr), dataFrame{}); b[len(hdr)+9] = 0x80; return b }()},
		{"short ack", ack(ackFrame{})[:len(hdr)+10]},
		{"limit below cum", ack(ackFrame{cum: 5, limit: 4})},
		{"range not at largest", ack(ackFrame{largest: 9, limit: 1, ranges: []seqRange{{1, 8}}})},
		{"range inverted", ack(ackFrame{largest: 9, limit: 1, ranges: []seqRange{{10, 9}}})},
		{"ranges touching", ack(ackFrame{largest: 9, limit: 1, ranges: []seqRange{{5, 9}, {2, 4}}})},
		{"ranges ascending", ack(ackFrame{largest: 9, limit: 1, ranges: []seqRange{{5, 9}, {20, 30}}})},
		{"ranges truncated", ack(ackFrame{largest: 9, limit: 1, ranges: []seqRange{{5, 9}, {1, 2}}})[:len(hdr)+ackFixedLen+20]},
		{"too many ranges", func() []byte { b := ack(ackFrame{limit: 1}); b[len(hdr)+30] = MaxAckRanges + 1; return b }()},
	} {
		var f frames
		if err := parseFrames(c.b, &f); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}

func FuzzFrames(f *testing.F) {
	b := appendPathHeader(nil, pathHeader{path: 1, seq: 3})
	f.Add(appendData(slices.Clone(b), dataFrame{dsn: 1, data: []byte("x")}))
	f.Add(appendAck(slices.Clone(b), ackFrame{largest: 9, limit: 10, ranges: []seqRange{{5, 9}, {1, 3}}}))
	f.Add(append(slices.Clone(b), frameProbe, frameClose))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		var fr frames
		if err := parseFrames(p, &fr); err != nil {
			return
		}
		// Whatever parses re-encodes to the same bytes.
		out := appendPathHeader(nil, fr.hdr)
		i := pathHeaderLen
		for i < len(p) {
			switch p[i] {
			case frameData:
				d := fr.data[0]
				fr.data = fr.data[1:]
				out = appendData(out, d)
				i += dataHeaderLen + len(d.data)
			case frameAck:
				a := fr.acks[0]
				fr.acks = fr.acks[1:]
				out = appendAck(out, a)
				i += ackFixedLen + 16*len(a.ranges)
			default:
				out = append(out, p[i])
				i++
			}
		}
		if !bytes.Equal(out, p) {
			t.Fatalf("re-encoded %x, parsed %x", out, p)
		}
	})
}

// TestRecordReceived checks the receiver's SACK ranges against a plain
// set: every range is received, ranges are disjoint, descending and not
// adjacent, and the highest numbers are covered.
func TestRecordReceived(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		p := &path{}
		got := map[uint64]bool{}
		n := 20 + r.IntN(200)
		for range n {
			s := uint64(r.IntN(n + 50))
			if trial%2 == 0 {
				s = uint64(len(got)) + uint64(r.IntN(3)) // mostly in order, with holes
			}
			p.recordReceived(s, testNow)
			got[s] = true
		}
		rs := p.rranges
		if len(rs) == 0 || len(rs) > MaxAckRanges {
			t.Fatalf("%d ranges", len(rs))
		}
		var top uint64
		for s := range got {
			top = max(top, s)
		}
		if rs[0].hi != top {
			t.Fatalf("trial %d: largest %d, ranges %v", trial, top, rs)
		}
		for i, x := range rs {
			if x.lo > x.hi || i > 0 && x.hi+1 >= rs[i-1].lo {
				t.Fatalf("trial %d: bad ranges %v", trial, rs)
			}
			for s := x.lo; s <= x.hi; s++ {
				if !got[s] {
					t.Fatalf("trial %d: %d in %v never received", trial, s, rs)
				}
			}
		}
		// Everything between the lowest kept range and the top is described.
		for s := rs[len(rs)-1].lo; s <= top; s++ {
			in := false
			for _, x := range rs {
				in = in || s >= x.lo && s <= x.hi
			}
			if in != got[s] {
				t.Fatalf("trial %d: %d received=%v but in ranges=%v: %v", trial, s, got[s], in, rs)
			}
		}
	}
}
