// Package ring is the consumer side of mpshim's per-process shared-memory
// request/response ring.
//
// The isolator creates one ring per app process with Create and hands the
// returned memfd to the app, whose C shim (mpring.c) attaches to it. App
// threads publish variable-length request records into an MPSC byte ring and
// wait on a response slot; the isolator reads records in order with Next (or
// Serve) and answers each with Reply, from any goroutine and in any order.
// Wake-ups use futexes on shared words and are skipped while the other side
// is busy, so a loaded ring costs no system call per request.
//
// The region is hostile memory: every index and length is loaded once and
// bounds-checked, records are copied out before they are validated, and a
// corrupt or stalled ring makes Next return an error wrapping ErrCorrupt for
// that ring only. The layout is defined in layout.go.
package ring

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors reported by the consumer.
var (
	// ErrCorrupt is wrapped by every error caused by the contents of the
	// shared region: the producer side is faulty or malicious.
	ErrCorrupt = errors.New("ring: corrupt shared region")
	// ErrClosed is returned once the ring has been closed.
	ErrClosed = errors.New("ring: closed")
	// ErrNotPending is returned by Reply for a slot that has no request
	// awaiting a reply.
	ErrNotPending = errors.New("ring: slot has no pending request")
	// ErrTooLarge is returned by Reply when the reply exceeds the slot.
	ErrTooLarge = errors.New("ring: reply larger than slot")
)

// Config sets the geometry and timing of a ring. Zero fields take defaults.
type Config struct {
	// ReqSize is the size of the request ring in bytes: a power of two,
	// at least 4096. Default DefaultReqSize.
	ReqSize int
	// Slots is the number of response slots, i.e. the most calls in
	// flight at once (1..MaxSlotCount). Default DefaultSlotCount.
	Slots int
	// SlotSize is the size of one response slot including its header, a
	// multiple of 64 and at least 128. Default DefaultSlotSize.
	SlotSize int
	// StallTimeout is how long a reserved but unpublished record may block
	// the ring before the producer is declared faulty. Default 2 s.
	StallTimeout time.Duration
	// Spin is how long Next polls an empty ring before it sleeps.
	// Default 20 µs; negative means never spin.
	Spin time.Duration
}

func (c *Config) fill() error {
	if c.ReqSize == 0 {
		c.ReqSize = DefaultReqSize
	}
	if c.Slots == 0 {
		c.Slots = DefaultSlotCount
	}
	if c.SlotSize == 0 {
		c.SlotSize = DefaultSlotSize
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = 2 * time.Second
	}
	if c.Spin == 0 {
		c.Spin = 20 * time.Microsecond
	}
	switch {
	case c.ReqSize < 4096 || c.ReqSize > 1<<30 || bits.OnesCount(uint(c.ReqSize)) != 1:
		return fmt.Errorf("ring: request ring size %d is not a power of two in [4096, 1 GiB]", c.ReqSize)
	case c.Slots < 1 || c.Slots > MaxSlotCount:
		return fmt.Errorf("ring: slot count %d outside [1, %d]", c.Slots, MaxSlotCount)
	case c.SlotSize < 2*SlotHdrSize || c.SlotSize%64 != 0 || c.SlotSize > 16<<20:
		return fmt.Errorf("ring: slot size %d is not a multiple of 64 in [128, 16 MiB]", c.SlotSize)
	}
	return nil
}

// Request is one request record read from the ring.
type Request struct {
	// Slot identifies the waiting caller; pass it to Reply.
	Slot uint32
	// Data is the request payload. It is owned by the ring and valid only
	// until the next call of Next; copy it to keep it longer.
	Data []byte
}

// Stats are counters of one ring. Fields read from shared memory are
// reported as the producer wrote them and are informational only.
type Stats struct {
	Requests    uint64 // records delivered by Next
	Replies     uint64 // replies written by Reply
	ConsWakes   uint64 // futex wakes of the consumer by producers (shared)
	ReplyWakes  uint64 // futex wakes of callers by the consumer (shared)
	ConsSleeps  uint64 // times the consumer slept (shared)
	WaitSleeps  uint64 // times a caller futex-waited for its reply (shared)
	SpaceSleeps uint64 // times a producer waited for ring space (shared)
}

// Slot bookkeeping of the consumer (process-private, never shared).
const (
	pendFree     = 0
	pendWaiting  = 1
	pendReplying = 2
)

// Ring is the consumer side of one shared-memory ring. Next and Serve must
// be called from one goroutine at a time; Reply, Close, MarkDead and Stats
// may be called from any goroutine.
type Ring struct {
	mem    []byte
	unmap  func([]byte) error
	cfg    Config
	reqOff uint64
	reqSz  uint64
	mask   uint64
	slotOf uint64
	nslots uint32
	slotSz uint64
	maxReq uint32

	mu      sync.RWMutex // held shared while the mapping is used, exclusively by Close to unmap
	closed  atomic.Bool
	pending []atomic.Uint32

	// consumer-goroutine state
	head       uint64
	buf        []byte
	stallSince time.Time
	fault      error

	requests atomic.Uint64
	replies  atomic.Uint64
}

// Create makes a new ring in a sealed memfd and maps it. The returned file
// is the memfd to hand to the app (SCM_RIGHTS); the caller closes it once
// sent. The Ring keeps its own mapping until Close.
func Create(cfg Config) (*Ring, *os.File, error) {
	if err := cfg.fill(); err != nil {
		return nil, nil, err
	}
	total := regionSize(cfg)
	fd, err := unix.MemfdCreate("mpring", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, nil, fmt.Errorf("ring: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mpring")
	fail := func(what string, err error) (*Ring, *os.File, error) {
		f.Close()
		return nil, nil, fmt.Errorf("ring: %s: %w", what, err)
	}
	if err := unix.Ftruncate(fd, int64(total)); err != nil {
		return fail("ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return fail("seal", err)
	}
	mem, err := unix.Mmap(fd, 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	populate(mem[:HeaderSize+cfg.ReqSize])
	r := newRing(mem, cfg)
	r.unmap = unix.Munmap
	r.writeHeader()
	return r, f, nil
}

// populate faults in the header and the request ring at once. Records go
// round the request ring from its start, so its pages would otherwise come
// in one by one as calls advance through it — the consumer's RSS creeping
// up by the ring's size (1 MiB by default) over the first thousands of
// calls of every app process — and stop once it has wrapped. Taken at the
// start, the same pages make the RSS flat from the registration. The
// response slots stay lazy: a call touches only the first page of a slot
// unless its reply is large, and few slots are ever in use at once. A
// kernel without MADV_POPULATE_WRITE (before 5.14) faults them in lazily
// as before.
func populate(b []byte) {
	_ = unix.Madvise(b, unix.MADV_POPULATE_WRITE)
}

// regionSize is the size of the whole region for cfg.
func regionSize(cfg Config) uint64 {
	return HeaderSize + uint64(cfg.ReqSize) + uint64(cfg.Slots)*uint64(cfg.SlotSize)
}

// newRing builds a consumer over mem, which must be at least
// regionSize(cfg) bytes and 8-byte aligned. cfg must be filled.
func newRing(mem []byte, cfg Config) *Ring {
	r := &Ring{
		mem:     mem,
		cfg:     cfg,
		reqOff:  HeaderSize,
		reqSz:   uint64(cfg.ReqSize),
		mask:    uint64(cfg.ReqSize) - 1,
		slotOf:  HeaderSize + uint64(cfg.ReqSize),
		nslots:  uint32(cfg.Slots),
		slotSz:  uint64(cfg.SlotSize),
		maxReq:  uint32(cfg.ReqSize/4 - RecHdrSize),
		pending: make([]atomic.Uint32, cfg.Slots),
		buf:     make([]byte, cfg.ReqSize),
	}
	return r
}

func (r *Ring) writeHeader() {
	le32 := func(off uint64, v uint32) { *r.u32(off) = v }
	le64 := func(off uint64, v uint64) { *r.u64(off) = v }
	le32(OffVersion, Version)
	le64(OffTotalSize, regionSize(r.cfg))
	le64(OffReqOff, r.reqOff)
	le64(OffReqSize, r.reqSz)
	le64(OffSlotOff, r.slotOf)
	le32(OffSlotCount, r.nslots)
	le32(OffSlotSize, uint32(r.slotSz))
	le32(OffMaxReq, r.maxReq)
	atomic.StoreUint32(r.u32(OffMagic), Magic) // last: the header is complete
}

// MaxRequest is the largest request payload the ring accepts.
func (r *Ring) MaxRequest() int { return int(r.maxReq) }

// MaxReply is the largest reply payload Reply accepts.
func (r *Ring) MaxReply() int { return int(r.slotSz - SlotHdrSize) }

// u32 and u64 return pointers into the mapping. off must be aligned; the
// slice bound check on the whole word keeps every access in range.
func (r *Ring) u32(off uint64) *uint32 {
	w := r.mem[off : off+4 : off+4]
	return (*uint32)(unsafe.Pointer(&w[0]))
}

func (r *Ring) u64(off uint64) *uint64 {
	w := r.mem[off : off+8 : off+8]
	return (*uint64)(unsafe.Pointer(&w[0]))
}

// unsafeBytes views a word slice as bytes (8-byte aligned backing).
func unsafeBytes(w []uint64) []byte {
	if len(w) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), len(w)*8)
}
