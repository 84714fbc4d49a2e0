package ring

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors reported by the producer.
var (
	// ErrDead is returned by Call once the ring is dead: the consumer
	// marked it so, or the Producer was closed.
	ErrDead = errors.New("ring: dead")
	// ErrRequestTooLarge is returned by Call for a request longer than the
	// ring accepts (Producer.MaxRequest).
	ErrRequestTooLarge = errors.New("ring: request too large")
	// ErrReplyTooLarge is returned by Call when the reply does not fit the
	// caller's buffer; the returned length is the reply's.
	ErrReplyTooLarge = errors.New("ring: reply larger than buffer")
	// ErrBadReply is returned by Call when the consumer left an impossible
	// slot state or reply length.
	ErrBadReply = errors.New("ring: impossible reply")
)

// Timing of the producer, as in mpring.c.
const (
	prodSpin    = 100                   // polls of the reply word before yielding
	prodYields  = 16                    // scheduler yields before futex-waiting
	prodWait    = 50 * time.Millisecond // re-check the dead word this often
	prodSpaceNs = time.Millisecond      // wait for ring space at most this long per round
)

// Producer is the app side of a ring, the Go counterpart of mpring.c: the
// same layout and protocol, so a Go program (mpnet) talks to the isolator
// exactly as the C shim does. Call is safe for concurrent use by any number
// of goroutines; at most the ring's slot count are in flight, the others
// wait for a slot.
type Producer struct {
	mu     sync.RWMutex // held shared by Call, exclusively by Close to unmap
	mem    []byte
	closed atomic.Bool

	reqOff    uint64
	reqSize   uint64
	slotOff   uint64
	slotCount uint32
	slotSize  uint64
	maxReq    uint32

	sem     chan struct{} // one token per response slot
	hint    atomic.Uint32
	slotMap [MaxSlotCount / 64]atomic.Uint64
}

// Attach validates the ring region in f (a memfd received at registration)
// and maps it. f may be closed afterwards.
func Attach(f *os.File) (*Producer, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("ring: attach: fstat: %w", err)
	}
	if st.Size < HeaderSize || st.Size > 1<<40 || st.Size > int64(^uint(0)>>1) {
		return nil, fmt.Errorf("ring: attach: region of %d bytes: %w", st.Size, ErrCorrupt)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("ring: attach: mmap: %w", err)
	}
	runtime.KeepAlive(f)
	p, err := newProducer(mem, uint64(st.Size))
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return p, nil
}

// newProducer validates the header of mem like mpring_attach.
func newProducer(mem []byte, size uint64) (*Producer, error) {
	p := &Producer{mem: mem}
	total := *p.u64(OffTotalSize)
	reqOff := *p.u64(OffReqOff)
	reqSize := *p.u64(OffReqSize)
	slotOff := *p.u64(OffSlotOff)
	count := *p.u32(OffSlotCount)
	ssize := uint64(*p.u32(OffSlotSize))
	maxReq := *p.u32(OffMaxReq)
	switch {
	case atomic.LoadUint32(p.u32(OffMagic)) != Magic,
		*p.u32(OffVersion) != Version,
		total != size,
		reqOff < HeaderSize || reqOff%64 != 0,
		reqSize < 4096 || bits.OnesCount64(reqSize) != 1,
		reqSize > total || reqOff > total-reqSize,
		slotOff < reqOff+reqSize || slotOff%64 != 0,
		count == 0 || count > MaxSlotCount,
		ssize < 2*SlotHdrSize || ssize%64 != 0,
		slotOff > total || uint64(count)*ssize > total-slotOff,
		maxReq == 0 || uint64(maxReq) > reqSize/4-RecHdrSize:
		return nil, fmt.Errorf("ring: attach: bad header: %w", ErrCorrupt)
	}
	p.reqOff, p.reqSize, p.slotOff = reqOff, reqSize, slotOff
	p.slotCount, p.slotSize, p.maxReq = count, ssize, maxReq
	p.sem = make(chan struct{}, count)
	// Bits past the slot count stay set so they are never handed out.
	for i := count; i < MaxSlotCount; i++ {
		p.slotMap[i/64].Or(1 << (i % 64))
	}
	return p, nil
}

func (p *Producer) u32(off uint64) *uint32 {
	w := p.mem[off : off+4 : off+4]
	return (*uint32)(unsafe.Pointer(&w[0]))
}

func (p *Producer) u64(off uint64) *uint64 {
	w := p.mem[off : off+8 : off+8]
	return (*uint64)(unsafe.Pointer(&w[0]))
}

// MaxRequest is the largest request payload Call accepts.
func (p *Producer) MaxRequest() int { return int(p.maxReq) }

// MaxReply is the largest reply the consumer can write.
func (p *Producer) MaxReply() int { return int(p.slotSize - SlotHdrSize) }

// Dead reports whether the ring is dead (marked by the consumer or closed).
func (p *Producer) Dead() bool {
	if p.closed.Load() {
		return true
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.mem == nil || p.deadLocked()
}

func (p *Producer) deadLocked() bool {
	return p.closed.Load() || atomic.LoadUint32(p.u32(OffDead)) != 0
}

// Call publishes req and waits for its reply, which it copies into resp.
// It returns the reply length. Errors: ErrDead (the consumer is gone or the
// Producer closed), ErrRequestTooLarge, ErrReplyTooLarge (n is then the
// reply's length), ErrBadReply.
func (p *Producer) Call(req, resp []byte) (int, error) {
	return p.CallPrepared(req, resp, nil)
}

// CallPrepared is Call with prepare run once the call holds a response
// slot and before the request is published; if prepare fails, nothing is
// published and its error is returned. The client uses it to send a
// request's descriptors on the registration connection only when the
// request is sure to follow at once (the isolator waits for descriptors a
// bounded time and holds a bounded number of them).
func (p *Producer) CallPrepared(req, resp []byte, prepare func() error) (int, error) {
	if uint64(len(req)) > uint64(p.maxReq) {
		return 0, fmt.Errorf("ring: request of %d bytes (limit %d): %w", len(req), p.maxReq, ErrRequestTooLarge)
	}
	if p.closed.Load() {
		return 0, ErrDead
	}
	p.sem <- struct{}{}
	defer func() { <-p.sem }()
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.mem == nil || p.deadLocked() {
		return 0, ErrDead
	}
	slot := p.slotAlloc()
	defer p.slotFree(slot)
	if prepare != nil {
		if err := prepare(); err != nil {
			return 0, err
		}
	}
	s := p.slotOff + uint64(slot)*p.slotSize
	st := p.u32(s + SlotOffState)
	atomic.StoreUint32(st, SlotWaiting)

	need := alignUp(RecHdrSize + uint64(len(req)))
	pos, ok := p.reserve(need)
	if !ok {
		atomic.StoreUint32(st, SlotIdle)
		return 0, ErrDead
	}
	rec := p.reqOff + pos&(p.reqSize-1)
	*p.u32(rec + RecOffLen) = uint32(len(req))
	*p.u32(rec + RecOffSlot) = slot
	*p.u32(rec + RecOffPos) = uint32(pos)
	copy(p.mem[rec+RecHdrSize:], req)
	// Publish (sequentially consistent: the consumer-state load in kick
	// cannot pass it).
	atomic.StoreUint32(p.u32(rec+RecOffCommit), uint32(need))
	p.kick()

	err := p.waitReply(st)
	n := 0
	if err == nil {
		n = int(atomic.LoadUint32(p.u32(s + SlotOffLen)))
		switch {
		case uint64(n) > p.slotSize-SlotHdrSize:
			n, err = 0, fmt.Errorf("ring: reply length %d over slot size: %w", n, ErrBadReply)
		case n > len(resp):
			err = fmt.Errorf("ring: reply of %d bytes, buffer %d: %w", n, len(resp), ErrReplyTooLarge)
		default:
			copy(resp, p.mem[s+SlotHdrSize:s+SlotHdrSize+uint64(n)])
		}
	}
	atomic.StoreUint32(st, SlotIdle)
	return n, err
}

// slotAlloc takes a free response slot from the private bitmap. The
// semaphore guarantees one is free or about to be.
func (p *Producer) slotAlloc() uint32 {
	nwords := (p.slotCount + 63) / 64
	for {
		start := p.hint.Add(1) % nwords
		for k := uint32(0); k < nwords; k++ {
			w := (start + k) % nwords
			v := p.slotMap[w].Load()
			for ^v != 0 {
				bit := uint32(bits.TrailingZeros64(^v))
				if p.slotMap[w].CompareAndSwap(v, v|1<<bit) {
					return w*64 + bit
				}
				v = p.slotMap[w].Load()
			}
		}
		runtime.Gosched()
	}
}

func (p *Producer) slotFree(slot uint32) {
	p.slotMap[slot/64].And(^(uint64(1) << (slot % 64)))
}

// reserve reserves need bytes at a record boundary and returns the
// record's index; a reservation that would straddle the ring's end takes
// the rest of the ring too and publishes a padding record there. ok is
// false when the ring died while waiting for space.
func (p *Producer) reserve(need uint64) (pos uint64, ok bool) {
	resv := p.u64(OffReserve)
	size := p.reqSize
	pos = atomic.LoadUint64(resv)
	var off, total uint64
	for {
		off = pos & (size - 1)
		total = need
		if off+need > size {
			total = (size - off) + need
		}
		head := atomic.LoadUint64(p.u64(OffHead))
		if pos < head { // stale: the consumer is already past it
			pos = atomic.LoadUint64(resv)
			continue
		}
		if pos+total-head > size {
			if p.deadLocked() {
				return 0, false
			}
			p.waitSpace()
			pos = atomic.LoadUint64(resv)
			continue
		}
		if atomic.CompareAndSwapUint64(resv, pos, pos+total) {
			break
		}
		pos = atomic.LoadUint64(resv)
	}
	if total != need {
		atomic.StoreUint32(p.u32(p.reqOff+off+RecOffCommit), uint32(size-off)|RecPadFlag)
		pos += size - off
	}
	return pos, true
}

// waitSpace waits until the consumer frees space or a short timeout passes.
func (p *Producer) waitSpace() {
	head := p.u32(OffHead) // low half of the u64 index (little-endian)
	atomic.AddUint32(p.u32(OffSpaceWait), 1)
	h := atomic.LoadUint32(head)
	atomic.AddUint64(p.u64(OffStatSpaceSleeps), 1)
	futexWaitTimeout(head, h, prodSpaceNs)
	atomic.AddUint32(p.u32(OffSpaceWait), ^uint32(0))
}

// kick wakes the consumer if it advertised that it sleeps.
func (p *Producer) kick() {
	st := p.u32(OffConsState)
	if atomic.LoadUint32(st) != ConsSleeping {
		return
	}
	if atomic.CompareAndSwapUint32(st, ConsSleeping, ConsRunning) {
		atomic.AddUint64(p.u64(OffStatConsWakes), 1)
		futexWakeN(st, 1)
	}
}

// waitReply waits for the reply on a slot state word: spin, yield, then
// futex-wait with a timeout so that a dead ring is noticed.
func (p *Producer) waitReply(st *uint32) error {
	for range prodSpin {
		if atomic.LoadUint32(st) == SlotDone {
			return nil
		}
	}
	for range prodYields {
		runtime.Gosched()
		if atomic.LoadUint32(st) == SlotDone {
			return nil
		}
	}
	for {
		if !atomic.CompareAndSwapUint32(st, SlotWaiting, SlotSleeping) {
			switch atomic.LoadUint32(st) {
			case SlotDone:
				return nil
			case SlotSleeping:
			default:
				return fmt.Errorf("ring: slot state %d: %w", atomic.LoadUint32(st), ErrBadReply)
			}
		}
		if p.deadLocked() {
			return ErrDead
		}
		atomic.AddUint64(p.u64(OffStatWaitSleeps), 1)
		futexWaitTimeout(st, SlotSleeping, prodWait)
		if atomic.LoadUint32(st) == SlotDone {
			return nil
		}
		if p.deadLocked() {
			return ErrDead
		}
	}
}

// Close makes every waiting and later Call fail with ErrDead and unmaps
// the region once they have returned. It does not mark the shared region
// dead: the consumer learns that the app is gone from its registration
// connection.
func (p *Producer) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	p.mu.RLock()
	if p.mem != nil {
		for i := uint64(0); i < uint64(p.slotCount); i++ {
			futexWakeN(p.u32(p.slotOff+i*p.slotSize+SlotOffState), 1<<30)
		}
	}
	p.mu.RUnlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mem == nil {
		return nil
	}
	mem := p.mem
	p.mem = nil
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("ring: munmap: %w", err)
	}
	return nil
}
