package ring

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	futexWait = 0 // FUTEX_WAIT, shared (not FUTEX_PRIVATE_FLAG): the word is in a MAP_SHARED mapping
	futexWake = 1 // FUTEX_WAKE, shared

	idleSleep  = time.Second          // longest consumer sleep when nothing is reserved
	stallSleep = 5 * time.Millisecond // consumer sleep while a reserved record is unpublished
)

func futexWaitTimeout(addr *uint32, val uint32, d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	// EAGAIN, EINTR and ETIMEDOUT all mean "look again"; the caller loops.
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWait, uintptr(val),
		uintptr(unsafe.Pointer(&ts)), 0, 0)
}

func futexWakeN(addr *uint32, n int) {
	unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWake, uintptr(n), 0, 0, 0)
}

// Next returns the next request, waiting until one is published, ctx is
// done or the ring is closed. It drains published records without sleeping,
// so a burst costs no system call. An error wrapping ErrCorrupt means the
// shared region is corrupt; the ring is then marked dead and every later
// call returns the same error.
func (r *Ring) Next(ctx context.Context) (Request, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.fault != nil {
		return Request{}, r.fault
	}
	var spinUntil time.Time
	for n := 0; ; n++ {
		if r.closed.Load() {
			return Request{}, ErrClosed
		}
		req, ok, err := r.poll()
		if err != nil {
			r.fault = err
			r.markDead()
			return Request{}, err
		}
		if ok {
			return req, nil
		}
		if err := ctx.Err(); err != nil {
			return Request{}, err
		}
		if r.cfg.Spin > 0 {
			if n == 0 {
				spinUntil = time.Now().Add(r.cfg.Spin)
				continue
			}
			if n&63 != 0 || time.Now().Before(spinUntil) {
				if n&1023 == 0 {
					runtime.Gosched()
				}
				continue
			}
		}
		r.sleep(ctx)
		n = -1
	}
}

// sleep advertises that the consumer sleeps, re-checks the ring and waits
// on the consumer-state word until a producer, Close or ctx wakes it.
func (r *Ring) sleep(ctx context.Context) {
	state := r.u32(OffConsState)
	atomic.StoreUint32(state, ConsSleeping)
	// A producer that published before seeing ConsSleeping did not wake us:
	// look once more after the (sequentially consistent) store.
	if r.published() || r.closed.Load() || ctx.Err() != nil {
		atomic.StoreUint32(state, ConsRunning)
		return
	}
	d := idleSleep
	if atomic.LoadUint64(r.u64(OffReserve)) != r.head {
		d = stallSleep // a record is reserved: come back to check for a stall
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, r.wakeConsumerLocked)
		defer stop()
	}
	atomic.AddUint64(r.u64(OffStatConsSleeps), 1)
	futexWaitTimeout(state, ConsSleeping, d)
	atomic.StoreUint32(state, ConsRunning)
}

// wakeConsumerLocked is wakeConsumer for callers that do not hold r.mu.
func (r *Ring) wakeConsumerLocked() {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.mem != nil {
		r.wakeConsumer()
	}
}

func (r *Ring) wakeConsumer() {
	state := r.u32(OffConsState)
	atomic.StoreUint32(state, ConsRunning)
	futexWakeN(state, 1)
}

// published reports whether the record at the head has been published.
func (r *Ring) published() bool {
	return atomic.LoadUint32(r.u32(r.reqOff+(r.head&r.mask)+RecOffCommit)) != 0
}

func (r *Ring) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// poll consumes padding records and returns the next request if one is
// published. It never blocks.
func (r *Ring) poll() (Request, bool, error) {
	for {
		h := r.head
		off := h & r.mask
		base := r.reqOff + off
		commit := atomic.LoadUint32(r.u32(base + RecOffCommit))
		if commit == 0 {
			return Request{}, false, r.checkStall(h)
		}
		r.stallSince = time.Time{}
		room := r.reqSz - off
		n := uint64(commit &^ RecPadFlag)
		if commit&RecPadFlag != 0 {
			if n != room {
				return Request{}, false, r.corrupt("padding record at %d has length %d, want %d", h, n, room)
			}
			atomic.StoreUint32(r.u32(base+RecOffCommit), 0)
			r.advance(n)
			continue
		}
		if n < RecHdrSize || n%RecAlign != 0 || n > room {
			return Request{}, false, r.corrupt("record at %d has length %d (room %d)", h, n, room)
		}
		// Copy out first, validate the copy: the producer may still write.
		rec := r.buf[:n]
		copy(rec, r.mem[base:base+n])
		ln := le32(rec[RecOffLen:])
		slot := le32(rec[RecOffSlot:])
		pos := le32(rec[RecOffPos:])
		switch {
		case uint64(ln) > n-RecHdrSize || alignUp(RecHdrSize+uint64(ln)) != n:
			return Request{}, false, r.corrupt("record at %d: payload length %d does not fit record length %d", h, ln, n)
		case ln > r.maxReq:
			return Request{}, false, r.corrupt("record at %d: payload length %d over limit %d", h, ln, r.maxReq)
		case pos != uint32(h):
			return Request{}, false, r.corrupt("record at %d carries position %d", h, pos)
		case slot >= r.nslots:
			return Request{}, false, r.corrupt("record at %d names slot %d of %d", h, slot, r.nslots)
		}
		if !r.pending[slot].CompareAndSwap(pendFree, pendWaiting) {
			return Request{}, false, r.corrupt("record at %d names slot %d, which already has a request in flight", h, slot)
		}
		clear(r.mem[base : base+n])
		r.advance(n)
		r.requests.Add(1)
		return Request{Slot: slot, Data: rec[RecHdrSize : RecHdrSize+uint64(ln)]}, true, nil
	}
}

// advance moves the head past n consumed bytes and wakes producers that
// wait for space.
func (r *Ring) advance(n uint64) {
	r.head += n
	atomic.StoreUint64(r.u64(OffHead), r.head)
	if atomic.LoadUint32(r.u32(OffSpaceWait)) != 0 {
		futexWakeN(r.u32(OffHead), math.MaxInt32)
	}
}

// checkStall is called when the record at head h is unpublished. It fails
// when the reservation index is impossible or a reserved record has stayed
// unpublished longer than the stall timeout.
func (r *Ring) checkStall(h uint64) error {
	res := atomic.LoadUint64(r.u64(OffReserve))
	if res == h {
		r.stallSince = time.Time{}
		return nil
	}
	if res-h > r.reqSz {
		return r.corrupt("reservation index %d is not within one ring of head %d", res, h)
	}
	now := time.Now()
	if r.stallSince.IsZero() {
		r.stallSince = now
		return nil
	}
	if now.Sub(r.stallSince) > r.cfg.StallTimeout {
		return r.corrupt("record at %d reserved but unpublished for over %v", h, r.cfg.StallTimeout)
	}
	return nil
}

// Reply writes the reply to the request that arrived on slot and wakes its
// caller. It may be called from any goroutine, once per request.
func (r *Ring) Reply(slot uint32, data []byte) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed.Load() {
		return ErrClosed
	}
	if slot >= r.nslots {
		return fmt.Errorf("ring: reply to slot %d of %d: %w", slot, r.nslots, ErrNotPending)
	}
	if uint64(len(data)) > r.slotSz-SlotHdrSize {
		return fmt.Errorf("ring: reply of %d bytes to slot %d: %w", len(data), slot, ErrTooLarge)
	}
	if !r.pending[slot].CompareAndSwap(pendWaiting, pendReplying) {
		return fmt.Errorf("ring: reply to slot %d: %w", slot, ErrNotPending)
	}
	base := r.slotOf + uint64(slot)*r.slotSz
	copy(r.mem[base+SlotHdrSize:base+r.slotSz], data)
	atomic.StoreUint32(r.u32(base+SlotOffLen), uint32(len(data)))
	// Free our bookkeeping before the caller can see the reply and reuse
	// the slot.
	r.pending[slot].Store(pendFree)
	r.replies.Add(1)
	if atomic.SwapUint32(r.u32(base+SlotOffState), SlotDone) == SlotSleeping {
		atomic.AddUint64(r.u64(OffStatReplyWakes), 1)
		futexWakeN(r.u32(base+SlotOffState), 1)
	}
	return nil
}

// Serve calls h for every request until ctx is done, the ring is closed or
// it turns out corrupt, and returns that reason. h may call Reply itself or
// hand the slot to another goroutine; req.Data is valid only during h.
func (r *Ring) Serve(ctx context.Context, h func(Request)) error {
	for {
		req, err := r.Next(ctx)
		if err != nil {
			return err
		}
		h(req)
	}
}

// MarkDead tells the app side that the consumer is gone: every waiting and
// later call fails with EPIPE. The mapping stays valid.
func (r *Ring) MarkDead() {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.mem != nil {
		r.markDead()
	}
}

func (r *Ring) markDead() {
	atomic.StoreUint32(r.u32(OffDead), 1)
	for i := uint64(0); i < uint64(r.nslots); i++ {
		futexWakeN(r.u32(r.slotOf+i*r.slotSz+SlotOffState), math.MaxInt32)
	}
	futexWakeN(r.u32(OffHead), math.MaxInt32)
}

// Close marks the ring dead, wakes every waiter on both sides and unmaps
// the region once Next and Reply have returned.
func (r *Ring) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	r.mu.RLock()
	r.markDead()
	r.wakeConsumer()
	r.mu.RUnlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	mem := r.mem
	r.mem = nil
	if r.unmap != nil {
		if err := r.unmap(mem); err != nil {
			return fmt.Errorf("ring: munmap: %w", err)
		}
	}
	return nil
}

// Stats returns the ring's counters.
func (r *Ring) Stats() Stats {
	s := Stats{Requests: r.requests.Load(), Replies: r.replies.Load()}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.mem == nil {
		return s
	}
	s.ConsWakes = atomic.LoadUint64(r.u64(OffStatConsWakes))
	s.ReplyWakes = atomic.LoadUint64(r.u64(OffStatReplyWakes))
	s.ConsSleeps = atomic.LoadUint64(r.u64(OffStatConsSleeps))
	s.WaitSleeps = atomic.LoadUint64(r.u64(OffStatWaitSleeps))
	s.SpaceSleeps = atomic.LoadUint64(r.u64(OffStatSpaceSleeps))
	return s
}

func le32(b []byte) uint32 {
	_ = b[3]
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func alignUp(n uint64) uint64 { return (n + RecAlign - 1) &^ (RecAlign - 1) }
