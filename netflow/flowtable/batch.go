package flowtable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

// A batch is how Collect hands records from an INS to the daemon, in one
// packet of the control channel. All integers are big-endian.
//
//	magic "FT", version 1, flags (bit 0: more records follow)
//	stats: flows, created, evicted, lost (u64 each)
//	uplink names: count u16, then each as length u8 and bytes
//	records: count u16, then each:
//	  flags u8 (bit 0: IPv6, bit 1: inbound), end reason u8, protocol u8,
//	  uplink index u16, seq u64, src and dst address (4 or 16 bytes),
//	  src port u16, dst port u16,
//	  fwd and rev counters: bytes u64, packets u64, payload u64, TCP flags u8,
//	  first and last packet time (Unix ns, i64), socket group u64
//
// The daemon decodes it as untrusted input (DecodeBatch).
const (
	batchVersion = 1
	batchFlagsAt = 3
	flagMore     = 1
	headerSize   = 4 + 32
	maxRecords   = 1<<16 - 1
	recFlagV6    = 1
	recFlagIn    = 2
	maxNameLen   = 255
)

// Batch is one decoded batch.
type Batch struct {
	Stats   Stats
	Records []Record
	// More is set when the collection round has more records: ask again.
	More bool
}

func appendBatchHeader(b []byte, st Stats) []byte {
	b = append(b, 'F', 'T', batchVersion, 0)
	for _, v := range []uint64{st.Flows, st.Created, st.Evicted, st.Lost} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

func appendUplinks(b []byte, names []string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(names)))
	for _, n := range names {
		if len(n) > maxNameLen {
			n = n[:maxNameLen]
		}
		b = append(b, byte(len(n)))
		b = append(b, n...)
	}
	return b
}

func recordSize(r *Record) int {
	alen := 4
	if !r.Key.Src.Is4() {
		alen = 16
	}
	return 1 + 1 + 1 + 2 + 8 + 2*alen + 4 + 2*25 + 16 + 8
}

func appendCounters(b []byte, c *netflow.Counters) []byte {
	b = binary.BigEndian.AppendUint64(b, c.Bytes)
	b = binary.BigEndian.AppendUint64(b, c.Packets)
	b = binary.BigEndian.AppendUint64(b, c.Payload)
	return append(b, byte(c.TCPFlags))
}

func appendRecord(b []byte, r *Record, names []string) []byte {
	var fl byte
	if !r.Key.Src.Is4() {
		fl |= recFlagV6
	}
	if r.Inbound {
		fl |= recFlagIn
	}
	up := uint16(1<<16 - 1)
	for i, n := range names {
		if n == r.Uplink {
			up = uint16(i)
			break
		}
	}
	b = append(b, fl, byte(r.End), r.Key.Proto)
	b = binary.BigEndian.AppendUint16(b, up)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	if fl&recFlagV6 != 0 {
		s, d := r.Key.Src.As16(), r.Key.Dst.As16()
		b = append(append(b, s[:]...), d[:]...)
	} else {
		s, d := r.Key.Src.As4(), r.Key.Dst.As4()
		b = append(append(b, s[:]...), d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, r.Key.SrcPort)
	b = binary.BigEndian.AppendUint16(b, r.Key.DstPort)
	b = appendCounters(b, &r.Fwd)
	b = appendCounters(b, &r.Rev)
	b = binary.BigEndian.AppendUint64(b, uint64(r.First.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Last.UnixNano()))
	return binary.BigEndian.AppendUint64(b, r.Group)
}

// AppendBatch encodes a batch as Collect does (for tests and tools).
func AppendBatch(b []byte, bt *Batch) ([]byte, error) {
	if len(bt.Records) > maxRecords {
		return b, fmt.Errorf("flowtable: %d records in one batch (max %d)", len(bt.Records), maxRecords)
	}
	var names []string
	seen := map[string]bool{}
	for _, r := range bt.Records {
		if !seen[r.Uplink] {
			seen[r.Uplink] = true
			names = append(names, r.Uplink)
		}
	}
	start := len(b)
	b = appendBatchHeader(b, bt.Stats)
	if bt.More {
		b[start+batchFlagsAt] |= flagMore
	}
	b = appendUplinks(b, names)
	b = binary.BigEndian.AppendUint16(b, uint16(len(bt.Records)))
	for i := range bt.Records {
		if !bt.Records[i].Key.Src.IsValid() || bt.Records[i].Key.Src.Is4() != bt.Records[i].Key.Dst.Is4() {
			return b[:start], fmt.Errorf("flowtable: record %d: bad addresses %v, %v", i, bt.Records[i].Key.Src, bt.Records[i].Key.Dst)
		}
		b = appendRecord(b, &bt.Records[i], names)
	}
	return b, nil
}

// ErrBatch reports a malformed batch.
var ErrBatch = errors.New("flowtable: malformed batch")

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil || len(r.b) < n {
		r.err = ErrBatch
		return make([]byte, n)
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8   { return r.take(1)[0] }
func (r *reader) u16() uint16 { return binary.BigEndian.Uint16(r.take(2)) }
func (r *reader) u64() uint64 { return binary.BigEndian.Uint64(r.take(8)) }

func (r *reader) counters() netflow.Counters {
	return netflow.Counters{Bytes: r.u64(), Packets: r.u64(), Payload: r.u64(), TCPFlags: netflow.TCPFlags(r.u8())}
}

// DecodeBatch decodes a batch made by Collect. It checks every field and
// fails with an error wrapping ErrBatch on anything malformed.
func DecodeBatch(b []byte) (Batch, error) {
	var bt Batch
	r := &reader{b: b}
	h := r.take(4)
	if r.err != nil || h[0] != 'F' || h[1] != 'T' || h[2] != batchVersion || h[3]&^flagMore != 0 {
		return bt, fmt.Errorf("%w: bad header", ErrBatch)
	}
	bt.More = h[3]&flagMore != 0
	bt.Stats = Stats{Flows: r.u64(), Created: r.u64(), Evicted: r.u64(), Lost: r.u64()}
	nNames := int(r.u16())
	names := make([]string, 0, min(nNames, 256))
	for i := 0; i < nNames && r.err == nil; i++ {
		names = append(names, string(r.take(int(r.u8()))))
	}
	nRecs := int(r.u16())
	if r.err != nil {
		return Batch{}, fmt.Errorf("%w: truncated header", ErrBatch)
	}
	// Every record takes at least 99 bytes: no allocation beyond the input.
	if nRecs > len(r.b)/99 {
		return Batch{}, fmt.Errorf("%w: %d records in %d bytes", ErrBatch, nRecs, len(r.b))
	}
	bt.Records = make([]Record, 0, nRecs)
	for i := 0; i < nRecs; i++ {
		var rec Record
		fl, end, proto, up := r.u8(), r.u8(), r.u8(), r.u16()
		if fl&^(recFlagV6|recFlagIn) != 0 || end > uint8(netflow.EndEvicted) || end == uint8(netflow.EndActive) {
			return Batch{}, fmt.Errorf("%w: record %d: flags %#x, end reason %d", ErrBatch, i, fl, end)
		}
		if int(up) >= len(names) {
			return Batch{}, fmt.Errorf("%w: record %d: uplink index %d of %d", ErrBatch, i, up, len(names))
		}
		rec.Seq = r.u64()
		if fl&recFlagV6 != 0 {
			rec.Key.Src = netip.AddrFrom16([16]byte(r.take(16)))
			rec.Key.Dst = netip.AddrFrom16([16]byte(r.take(16)))
		} else {
			rec.Key.Src = netip.AddrFrom4([4]byte(r.take(4)))
			rec.Key.Dst = netip.AddrFrom4([4]byte(r.take(4)))
		}
		rec.Key.SrcPort, rec.Key.DstPort, rec.Key.Proto = r.u16(), r.u16(), proto
		rec.Inbound = fl&recFlagIn != 0
		rec.End = netflow.EndReason(end)
		rec.Uplink = names[up]
		rec.Fwd, rec.Rev = r.counters(), r.counters()
		first, last := int64(r.u64()), int64(r.u64())
		rec.Group = r.u64()
		if r.err != nil {
			return Batch{}, fmt.Errorf("%w: record %d truncated", ErrBatch, i)
		}
		if last < first || first <= 0 {
			return Batch{}, fmt.Errorf("%w: record %d: times %d..%d", ErrBatch, i, first, last)
		}
		rec.First, rec.Last = time.Unix(0, first), time.Unix(0, last)
		bt.Records = append(bt.Records, rec)
	}
	if len(r.b) != 0 {
		return Batch{}, fmt.Errorf("%w: %d bytes after the records", ErrBatch, len(r.b))
	}
	return bt, nil
}
