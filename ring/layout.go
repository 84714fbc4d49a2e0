package ring

// This file is the single definition of the shared-memory layout. The C
// header mpring_layout.h is generated from the tables below by
// `go generate ./ring`; a test fails when the committed header is stale.

//go:generate go run ./internal/mkheader -o mpring_layout.h

// Identity of a ring region.
const (
	// Magic is the first word of every ring region ("MPRG" little-endian).
	Magic = 0x4752504d
	// Version is the layout version; both sides refuse any other.
	Version = 1
)

// Geometry of the header page.
const (
	// HeaderSize is the size of the header page that starts the region.
	HeaderSize = 4096
	// CacheLine is the spacing used to keep hot words apart.
	CacheLine = 128
)

// Offsets of the words in the header page. Words written by different
// parties live on different cache lines.
const (
	OffMagic     = 0  // u32 Magic
	OffVersion   = 4  // u32 Version
	OffTotalSize = 8  // u64 size of the whole region in bytes
	OffReqOff    = 16 // u64 offset of the request ring
	OffReqSize   = 24 // u64 size of the request ring (power of two)
	OffSlotOff   = 32 // u64 offset of the first response slot
	OffSlotCount = 40 // u32 number of response slots
	OffSlotSize  = 44 // u32 size of one response slot, header included
	OffMaxReq    = 48 // u32 largest request payload accepted

	OffConsState = 1 * CacheLine // u32 consumer state (ConsRunning/ConsSleeping), futex word
	OffDead      = 2 * CacheLine // u32 nonzero once the ring is dead
	OffReserve   = 3 * CacheLine // u64 producers' reservation index (bytes, monotonic)
	OffHead      = 4 * CacheLine // u64 consumer's read index (bytes, monotonic), futex word (low half) for space waiters
	OffSpaceWait = 5 * CacheLine // u32 number of producers waiting for ring space

	// Statistics, each a u64 counter on its own line.
	OffStatConsWakes   = 6 * CacheLine // futex wakes of the consumer issued by producers
	OffStatReplyWakes  = 7 * CacheLine // futex wakes of waiting callers issued by the consumer
	OffStatConsSleeps  = 8 * CacheLine // times the consumer went to sleep
	OffStatWaitSleeps  = 9 * CacheLine // times a caller futex-waited for its reply
	OffStatSpaceSleeps = 10 * CacheLine
)

// Consumer state values (word at OffConsState).
const (
	ConsRunning  = 0 // consumer is draining; producers do not wake it
	ConsSleeping = 1 // consumer sleeps on the word; the first producer to CAS it to ConsRunning wakes it
)

// Request record layout. Records start at 8-byte aligned positions of the
// request ring and never straddle its end: a producer that would straddle
// first publishes a padding record that fills the rest of the ring.
const (
	RecHdrSize   = 16 // bytes of record header
	RecAlign     = 8  // record alignment and length granule
	RecOffCommit = 0  // u32 record length in bytes (header included, RecAlign multiple) | RecPadFlag; 0 = not yet published
	RecOffLen    = 4  // u32 payload length
	RecOffSlot   = 8  // u32 response slot index
	RecOffPos    = 12 // u32 low 32 bits of the record's reservation index (consistency check)
	RecPadFlag   = 0x80000000
)

// Response slot layout.
const (
	SlotHdrSize  = 64 // bytes of slot header; the reply payload follows
	SlotOffState = 0  // u32 slot state, futex word of the waiting caller
	SlotOffLen   = 4  // u32 reply payload length
)

// Slot state values (word at SlotOffState).
const (
	SlotIdle     = 0 // no call in flight
	SlotWaiting  = 1 // request published, caller spinning
	SlotSleeping = 2 // caller futex-waits; the consumer must wake it
	SlotDone     = 3 // reply written
)

// Defaults used by Create when a Config field is zero.
const (
	DefaultReqSize   = 1 << 20
	DefaultSlotCount = 256
	DefaultSlotSize  = 64<<10 + 4096 // a 64 KiB datagram plus headers
	MaxSlotCount     = 1024
)

// layoutConst is one named value exported to the C header.
type layoutConst struct {
	name  string
	value uint64
	doc   string
}

// layoutConsts lists every constant the C side needs, in header order.
var layoutConsts = []layoutConst{
	{"MPRING_MAGIC", Magic, "first word of the region"},
	{"MPRING_VERSION", Version, "layout version"},
	{"MPRING_HEADER_SIZE", HeaderSize, "size of the header page"},
	{"MPRING_OFF_MAGIC", OffMagic, "u32"},
	{"MPRING_OFF_VERSION", OffVersion, "u32"},
	{"MPRING_OFF_TOTAL_SIZE", OffTotalSize, "u64"},
	{"MPRING_OFF_REQ_OFF", OffReqOff, "u64"},
	{"MPRING_OFF_REQ_SIZE", OffReqSize, "u64, power of two"},
	{"MPRING_OFF_SLOT_OFF", OffSlotOff, "u64"},
	{"MPRING_OFF_SLOT_COUNT", OffSlotCount, "u32"},
	{"MPRING_OFF_SLOT_SIZE", OffSlotSize, "u32"},
	{"MPRING_OFF_MAX_REQ", OffMaxReq, "u32"},
	{"MPRING_OFF_CONS_STATE", OffConsState, "u32 futex word"},
	{"MPRING_OFF_DEAD", OffDead, "u32"},
	{"MPRING_OFF_RESERVE", OffReserve, "u64"},
	{"MPRING_OFF_HEAD", OffHead, "u64, low half is a futex word"},
	{"MPRING_OFF_SPACE_WAIT", OffSpaceWait, "u32"},
	{"MPRING_OFF_STAT_CONS_WAKES", OffStatConsWakes, "u64"},
	{"MPRING_OFF_STAT_REPLY_WAKES", OffStatReplyWakes, "u64"},
	{"MPRING_OFF_STAT_CONS_SLEEPS", OffStatConsSleeps, "u64"},
	{"MPRING_OFF_STAT_WAIT_SLEEPS", OffStatWaitSleeps, "u64"},
	{"MPRING_OFF_STAT_SPACE_SLEEPS", OffStatSpaceSleeps, "u64"},
	{"MPRING_CONS_RUNNING", ConsRunning, "consumer state"},
	{"MPRING_CONS_SLEEPING", ConsSleeping, "consumer state"},
	{"MPRING_REC_HDR_SIZE", RecHdrSize, "record header bytes"},
	{"MPRING_REC_ALIGN", RecAlign, "record alignment"},
	{"MPRING_REC_OFF_COMMIT", RecOffCommit, "u32 length|pad flag, 0 = unpublished"},
	{"MPRING_REC_OFF_LEN", RecOffLen, "u32 payload length"},
	{"MPRING_REC_OFF_SLOT", RecOffSlot, "u32 slot index"},
	{"MPRING_REC_OFF_POS", RecOffPos, "u32 low half of reservation index"},
	{"MPRING_REC_PAD_FLAG", RecPadFlag, "commit flag of a padding record"},
	{"MPRING_SLOT_HDR_SIZE", SlotHdrSize, "slot header bytes"},
	{"MPRING_SLOT_OFF_STATE", SlotOffState, "u32 futex word"},
	{"MPRING_SLOT_OFF_LEN", SlotOffLen, "u32 reply length"},
	{"MPRING_SLOT_IDLE", SlotIdle, "slot state"},
	{"MPRING_SLOT_WAITING", SlotWaiting, "slot state"},
	{"MPRING_SLOT_SLEEPING", SlotSleeping, "slot state"},
	{"MPRING_SLOT_DONE", SlotDone, "slot state"},
	{"MPRING_MAX_SLOT_COUNT", MaxSlotCount, "largest slot count a ring may have"},
}
