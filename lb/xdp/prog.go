package xdp

import (
	"fmt"

	"github.com/cilium/ebpf/asm"

	"github.com/mpshim/mpshim/lb/maglev"
)

// XDP actions (enum xdp_action).
const (
	ActionAborted = 0
	ActionDrop    = 1
	ActionPass    = 2
	ActionTX      = 3
)

// Counter indexes of the program's statistics (the per-CPU array "stats").
const (
	CountPass        = iota // not IPv4/IPv6, or not to a VIP: passed untouched
	CountShort              // too short to tell the destination: passed untouched
	CountMalformed          // to a VIP but malformed or truncated: dropped
	CountUnsupported        // to a VIP but not steerable (IPv6 extension headers, foreign ICMP errors): dropped
	CountFragMiss           // a non-first fragment whose first fragment was not seen: dropped
	CountNoBackend          // no backend in the table: dropped
	CountSteered            // sent to a backend: est_hit + new_hit + maglev + frag_hit (summed by Counters)
	CountEstHit             // found in the established table
	CountNewHit             // found in the new-flow table
	CountMaglev             // decided by the Maglev table
	CountPromoted           // moved from the new-flow to the established table
	CountFragHit            // a non-first fragment sent where its first fragment went
	CountNDP                // NDP message to a VIP: sent to every backend
	CountARPReply           // ARP request for a VIP: answered with the VIP's MAC
	CountNAReply            // neighbour solicitation for a VIP: answered with the VIP's MAC
	CountEncap              // sent to a backend on another host in an IP-in-IP header (XDP_TX)
	CountDecap              // IP-in-IP to a tunnel endpoint: outer header removed, then steered
	CountTunnelFail         // the packet could not be grown or shrunk for a tunnel: dropped
	NumCounters
)

// CounterNames names the counters, indexed by Count*.
var CounterNames = [NumCounters]string{
	"pass", "short", "malformed", "unsupported", "frag_miss", "no_backend",
	"steered", "est_hit", "new_hit", "maglev", "promoted", "frag_hit", "ndp",
	"arp_reply", "na_reply", "encap", "decap", "tunnel_fail",
}

// Backend states in the backend map.
const (
	stateDown     = 0
	stateUp       = 1
	stateDraining = 2
)

// Backend kinds in the backend map (byte 7 of an entry).
const (
	kindLocal  = 0 // on a macvlan of the interface: rewrite the MAC, XDP_PASS
	kindTunnel = 1 // on another host: IP-in-IP from the entry's addresses, XDP_TX
	kindGUE    = 2 // on another host: in UDP to the entry's port (GUE variant 1), XDP_TX
)

// A backend map entry (backendValue bytes): the MAC frames for it get
// (for a tunnel, the next hop's), the state, the kind; for a tunnel the
// outer source and destination IPv4 addresses, the source MAC, the one's
// complement sum (host order) of the outer header's fixed words, and for
// GUE the UDP port.
const (
	beMAC        = 0
	beState      = 6
	beKind       = 7
	beTunSrc     = 8
	beTunDst     = 12
	beTunSrcMAC  = 16
	beTunSum     = 22
	beTunPort    = 24 // GUE: the UDP port, network order
	backendValue = 32
)

// noBackend is the table entry of an empty table.
const noBackend = 0xffffffff

// A flow map entry (flowValue bytes, the value of the established,
// new-flow and fragment maps): the backend's MAC and kind as they were
// when the entry was written or last checked, the backend's id, the
// control generation then, and the MAC the frame was sent to (the VIP's).
// An established packet whose entry carries the live generation needs no
// other map: the entry says where it goes. Every change of the backend
// set or of the VIPs moves the generation on, and the next packet of each
// flow takes the full path once, which checks the VIP and the backend and
// writes the entry anew.
const (
	fvMAC     = 0
	fvKind    = 6
	fvBackend = 8
	fvGen     = 12
	fvVIPMAC  = 16
	flowValue = 24
)

// A flow cache slot (cacheValue bytes, one cache line; the slot is the
// flow hash's low bits): the flow key (5 words), the backend's MAC and the
// VIP's MAC (a word each, zero-padded), and a word of the generation (low
// half) and a check (high half) that binds the key's hash to both MACs.
// Two CPUs writing one slot at once may leave words of both; the check
// then fails (but for one chance in 2^32) and the packet takes the
// established table.
const (
	cacheKey   = 0
	cacheMAC   = 40
	cacheVIP   = 48
	cacheGen   = 56
	cacheValue = 64
)

// The control map's single entry (ctlValue bytes): the live half of the
// Maglev table, the generation, and the prefilter of the fast path: with
// ctlMode modeOneMAC every VIP is reached at ctlMAC, so a frame sent to
// another MAC is not looked up in the established table; with modeAny the
// VIPs have several MACs and every unicast TCP or UDP frame is; with
// modeNoVIP nothing is.
const (
	ctlActive = 0
	ctlGen    = 4
	ctlMAC    = 8
	ctlMode   = 14
	ctlValue  = 16

	modeNoVIP  = 0
	modeOneMAC = 1
	modeAny    = 2
)

// Flags kept in R9 while a packet is looked at.
const (
	flagSyn       = 1  // TCP SYN: never promoted
	flagNoInsert  = 2  // ICMP errors and 3-tuple flows: looked up, never inserted
	flagFirstFrag = 4  // first fragment: its decision goes into the fragment map
	flagNewFlow   = 8  // decided by Maglev
	flagEstMissed = 16 // the fast path looked this key up in the established table: not there
)

// Stack layout (offsets from R10). The flow key is 40 bytes:
//
//	saddr[16] daddr[16] sport[2] dport[2] proto[1] pad[3]
//
// with IPv4 addresses v4-mapped (::ffff:a.b.c.d) and ports in network
// order. The fragment key is the same with the fragment ID (network order,
// zero-extended to 32 bits) in place of the ports.
const (
	stKey      = -40
	stSaddr    = -40
	stDaddr    = -24
	stPorts    = -8
	stSport    = -8
	stDport    = -6
	stProto    = -4
	stFragID   = -44
	stScratch  = -48 // u32 map key
	stHash     = -64
	stCountKey = -72
	stPseudo   = -112                // IPv6 pseudo-header for the NA checksum (40 bytes)
	stCtx      = -120                // the program's context (for the helpers that resize the packet)
	stInnerLen = -124                // u32: the IP packet's length, for the tunnel header
	stInnerPro = -128                // u8: the tunnel header's protocol (4 or 41)
	stValue    = -152                // a flow map entry being written (flowValue bytes)
	stBackend  = stValue + fvBackend // u32 backend id
	stFlowPtr  = -160                // the established entry found (a map value pointer)
	stGen      = -164                // u32: the control generation
	stCacheIdx = -168                // u32: the flow cache slot
	stCachePtr = -176                // the flow cache slot (a map value pointer)
	stackBytes = 176
)

// The hash's multipliers as the signed immediates the instructions carry.
var flowMul, flowFinal uint64 = maglev.FlowMul, maglev.FlowFinal

// KeySize is the size of the flow key.
const KeySize = 40

// mapFDs are the file descriptors the program's instructions refer to.
type mapFDs struct {
	vips, est, new, frags, ctl, table, backends, bstats, stats, tunnels, cache int
}

// builder assembles the program with generated labels.
type builder struct {
	insns   asm.Instructions
	pending string
	n       int
}

func (b *builder) emit(ins ...asm.Instruction) {
	for _, in := range ins {
		if b.pending != "" {
			in = in.WithSymbol(b.pending)
			b.pending = ""
		}
		b.insns = append(b.insns, in)
	}
}

// label names the next instruction.
func (b *builder) label(name string) {
	if b.pending != "" {
		// Two labels at one place: a no-op carries the first.
		b.emit(asm.Mov.Reg(asm.R6, asm.R6))
	}
	b.pending = name
}

func (b *builder) fresh(prefix string) string {
	b.n++
	return fmt.Sprintf("%s_%d", prefix, b.n)
}

// count adds one to counter idx (clobbers R0–R5).
func (b *builder) count(fd, idx int) {
	skip := b.fresh("count")
	b.emit(
		asm.StoreImm(asm.R10, stCountKey, int64(idx), asm.Word),
		asm.LoadMapPtr(asm.R1, fd),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, stCountKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, skip),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
	)
	b.label(skip)
}

// exit counts idx and returns action.
func (b *builder) exit(name string, fd, idx, action int) {
	b.label(name)
	b.count(fd, idx)
	b.emit(asm.Mov.Imm(asm.R0, int32(action)), asm.Return())
}

// lookup calls bpf_map_lookup_elem(fd, R10+keyOff); the result is in R0.
func (b *builder) lookup(fd int, keyOff int16) {
	b.emit(
		asm.LoadMapPtr(asm.R1, fd),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, int32(keyOff)),
		asm.FnMapLookupElem.Call(),
	)
}

// flowBackend looks the key at R10+stKey up in the flow table fd, stores
// the backend index it holds at R10+stBackend and leaves that backend's
// entry of the backends table in R8; it jumps to miss when the flow is not
// in the table, the backend is unknown or the backend is down. With
// refresh, the flow's entry is written anew from the backend's (MAC, kind)
// and the live generation, so that its next packet takes the fast path.
func (b *builder) flowBackend(fd, backends int, miss string, refresh bool) {
	b.lookup(fd, stKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, miss),
		asm.StoreMem(asm.R10, stFlowPtr, asm.R0, asm.DWord),
		asm.LoadMem(asm.R2, asm.R0, fvBackend, asm.Word),
		asm.StoreMem(asm.R10, stBackend, asm.R2, asm.Word),
	)
	b.lookup(backends, stBackend)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, miss),
		asm.LoadMem(asm.R2, asm.R0, beState, asm.Byte),
		asm.JEq.Imm(asm.R2, stateDown, miss),
		asm.Mov.Reg(asm.R8, asm.R0),
	)
	if !refresh {
		return
	}
	b.emit(
		asm.LoadMem(asm.R1, asm.R10, stFlowPtr, asm.DWord),
		asm.LoadMem(asm.R2, asm.R8, beMAC, asm.Word),
		asm.StoreMem(asm.R1, fvMAC, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, beMAC+4, asm.Half),
		asm.StoreMem(asm.R1, fvMAC+4, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, beKind, asm.Byte),
		asm.StoreMem(asm.R1, fvKind, asm.R2, asm.Byte),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.StoreMem(asm.R1, fvVIPMAC, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 4, asm.Half),
		asm.StoreMem(asm.R1, fvVIPMAC+4, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R10, stGen, asm.Word),
		asm.StoreMem(asm.R1, fvGen, asm.R2, asm.Word),
	)
}

// flowHash leaves the flow hash of the key at R10+stKey in R2 (maglev.
// FlowHash) and stores it at R10+stHash; it clobbers R3 and R4.
func (b *builder) flowHash() {
	b.emit(asm.Mov.Imm(asm.R2, 0), asm.LoadImm(asm.R4, int64(flowMul), asm.DWord))
	for off := int16(stKey); off < stKey+KeySize; off += 8 {
		b.emit(
			asm.LoadMem(asm.R3, asm.R10, off, asm.DWord),
			asm.Xor.Reg(asm.R2, asm.R3),
			asm.Mul.Reg(asm.R2, asm.R4),
			asm.Mov.Reg(asm.R3, asm.R2),
			asm.RSh.Imm(asm.R3, 32),
			asm.Xor.Reg(asm.R2, asm.R3),
		)
	}
	b.emit(
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.RSh.Imm(asm.R3, 29),
		asm.Xor.Reg(asm.R2, asm.R3),
		asm.LoadImm(asm.R4, int64(flowFinal), asm.DWord),
		asm.Mul.Reg(asm.R2, asm.R4),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.RSh.Imm(asm.R3, 32),
		asm.Xor.Reg(asm.R2, asm.R3),
		asm.StoreMem(asm.R10, stHash, asm.R2, asm.DWord),
	)
}

// cacheCheck leaves in R2 the check of a flow cache slot: the flow hash
// (R10+stHash) mixed with the MAC word in R4 and the VIP's MAC word in R5,
// in the high 32 bits (the low ones zero). It clobbers R3.
func (b *builder) cacheCheck() {
	b.emit(
		asm.LoadMem(asm.R2, asm.R10, stHash, asm.DWord),
		asm.Xor.Reg(asm.R2, asm.R4),
		asm.LoadImm(asm.R3, int64(flowMul), asm.DWord),
		asm.Mul.Reg(asm.R2, asm.R3),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.RSh.Imm(asm.R3, 29),
		asm.Xor.Reg(asm.R2, asm.R3),
		asm.Xor.Reg(asm.R2, asm.R5),
		asm.LoadImm(asm.R3, int64(flowFinal), asm.DWord),
		asm.Mul.Reg(asm.R2, asm.R3),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.LSh.Imm(asm.R3, 32),
		asm.Xor.Reg(asm.R2, asm.R3),
		asm.RSh.Imm(asm.R2, 32),
		asm.LSh.Imm(asm.R2, 32),
	)
}

// fillValue writes the flow map entry for the decision at R10+stValue: R8
// the backend's entry, R10+stBackend its id, the live generation and the
// frame's destination MAC (the VIP's).
func (b *builder) fillValue() {
	b.emit(
		asm.LoadMem(asm.R2, asm.R8, beMAC, asm.Word),
		asm.StoreMem(asm.R10, stValue+fvMAC, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, beMAC+4, asm.Half),
		asm.StoreMem(asm.R10, stValue+fvMAC+4, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, beKind, asm.Byte),
		asm.StoreMem(asm.R10, stValue+fvKind, asm.R2, asm.Byte),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.StoreMem(asm.R10, stValue+fvVIPMAC, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 4, asm.Half),
		asm.StoreMem(asm.R10, stValue+fvVIPMAC+4, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R10, stGen, asm.Word),
		asm.StoreMem(asm.R10, stValue+fvGen, asm.R2, asm.Word),
	)
}

// update calls bpf_map_update_elem(fd, R10+stKey, R10+stValue, BPF_ANY).
func (b *builder) update(fd int) {
	b.emit(
		asm.LoadMapPtr(asm.R1, fd),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, stKey),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, stValue),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
	)
}

// vipMAC passes the frame unless R0 (the VIP map's answer) is an entry
// whose MAC address is the frame's destination: frames to a VIP's address
// but sent to a backend's own MAC (a neighbour advertisement answering the
// backend's solicitation, say) are not the balancer's to steer.
func (b *builder) vipMAC() {
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 0, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
		asm.LoadMem(asm.R2, asm.R0, 4, asm.Half),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Half),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
	)
}

// arp answers ARP requests for a VIP with the VIP's MAC (XDP_TX), so the
// backends, which all hold the VIP, never see them and the network learns
// one MAC for it. Other ARP frames pass.
//
//	Ethernet 0..13 | htype 14 ptype 16 hlen 18 plen 19 op 20
//	sha 22..27 spa 28..31 tha 32..37 tpa 38..41
func (b *builder) arp(fd mapFDs) {
	b.label("arp")
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 42),
		asm.JGT.Reg(asm.R2, asm.R7, "pass"),
	)
	for _, f := range []struct {
		off  int16
		size asm.Size
		want int32
	}{{14, asm.Half, 1}, {16, asm.Half, 0x0800}, {18, asm.Byte, 6}, {19, asm.Byte, 4}, {20, asm.Half, 1}} {
		b.emit(asm.LoadMem(asm.R2, asm.R6, f.off, f.size))
		if f.size == asm.Half {
			b.emit(asm.HostTo(asm.BE, asm.R2, asm.Half))
		}
		b.emit(asm.JNE.Imm(asm.R2, f.want, "pass"))
	}
	b.emit(
		asm.StoreImm(asm.R10, stDaddr+10, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, 38, asm.Word),
		asm.StoreMem(asm.R10, stDaddr+12, asm.R2, asm.Word),
	)
	b.lookup(fd.vips, stDaddr)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R6, 22, asm.Word), // requester's MAC
		asm.LoadMem(asm.R3, asm.R6, 26, asm.Half),
		asm.LoadMem(asm.R4, asm.R6, 28, asm.Word), // requester's address
		asm.LoadMem(asm.R5, asm.R6, 38, asm.Word), // the VIP
		asm.StoreMem(asm.R6, 32, asm.R2, asm.Word),
		asm.StoreMem(asm.R6, 36, asm.R3, asm.Half),
		asm.StoreMem(asm.R6, 0, asm.R2, asm.Word),
		asm.StoreMem(asm.R6, 4, asm.R3, asm.Half),
		asm.StoreMem(asm.R6, 38, asm.R4, asm.Word),
		asm.StoreMem(asm.R6, 28, asm.R5, asm.Word),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Word), // the VIP's MAC
		asm.LoadMem(asm.R3, asm.R0, 4, asm.Half),
		asm.StoreMem(asm.R6, 22, asm.R2, asm.Word),
		asm.StoreMem(asm.R6, 26, asm.R3, asm.Half),
		asm.StoreMem(asm.R6, 6, asm.R2, asm.Word),
		asm.StoreMem(asm.R6, 10, asm.R3, asm.Half),
		asm.Mov.Imm(asm.R2, 0),
		asm.StoreMem(asm.R6, 20, asm.R2, asm.Byte),
		asm.Mov.Imm(asm.R2, 2), // reply
		asm.StoreMem(asm.R6, 21, asm.R2, asm.Byte),
	)
	b.exit("arpreply", fd.stats, CountARPReply, ActionTX)
}

// solicitation answers a neighbour solicitation for a VIP (the target)
// with a neighbour advertisement carrying the VIP's MAC (XDP_TX), built in
// place; anything else goes on to "ipv6vip". Only solicitations of the
// two usual shapes are answered: with a source link-layer address option
// (payload 32 bytes, the advertisement then carries the target's) or
// without options (24 bytes). Duplicate address detection (unspecified
// source) passes.
//
//	Ethernet 0..13 | IPv6 14..53: plen 18 next 20 hops 21 src 22 dst 38
//	ICMPv6 54: type 54 code 55 csum 56 flags 58 target 62..77 option 78..85
func (b *builder) solicitation(fd mapFDs) {
	b.emit(
		asm.LoadMem(asm.R2, asm.R6, 20, asm.Byte),
		asm.JNE.Imm(asm.R2, 58, "ipv6vip"),
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 78),
		asm.JGT.Reg(asm.R2, asm.R7, "ipv6vip"),
		asm.LoadMem(asm.R2, asm.R6, 54, asm.Byte),
		asm.JNE.Imm(asm.R2, 135, "ipv6vip"),
		asm.LoadMem(asm.R2, asm.R6, 62, asm.DWord),
		asm.StoreMem(asm.R10, stDaddr, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, 70, asm.DWord),
		asm.StoreMem(asm.R10, stDaddr+8, asm.R2, asm.DWord),
	)
	b.lookup(fd.vips, stDaddr)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "ipv6vip"),
		asm.Mov.Reg(asm.R8, asm.R0),
		// A solicitation for a VIP that is not one we answer is dropped:
		// backends must not answer it either.
		asm.LoadMem(asm.R2, asm.R6, 21, asm.Byte),
		asm.JNE.Imm(asm.R2, 255, "malformed"),
		asm.LoadMem(asm.R2, asm.R6, 55, asm.Byte),
		asm.JNE.Imm(asm.R2, 0, "malformed"),
		asm.LoadMem(asm.R2, asm.R6, 22, asm.DWord),
		asm.LoadMem(asm.R3, asm.R6, 30, asm.DWord),
		asm.Or.Reg(asm.R2, asm.R3),
		asm.JEq.Imm(asm.R2, 0, "pass"), // DAD
	)
	b.emit(be16(asm.R4, asm.R6, 18)...)
	b.emit(
		asm.JEq.Imm(asm.R4, 24, "nabuild"),
		asm.JNE.Imm(asm.R4, 32, "malformed"),
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 86),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
		asm.LoadMem(asm.R2, asm.R6, 78, asm.Byte),
		asm.JNE.Imm(asm.R2, 1, "malformed"),
		asm.LoadMem(asm.R2, asm.R6, 79, asm.Byte),
		asm.JNE.Imm(asm.R2, 1, "malformed"),
		// Target link-layer address option.
		asm.Mov.Imm(asm.R2, 2),
		asm.StoreMem(asm.R6, 78, asm.R2, asm.Byte),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Word),
		asm.StoreMem(asm.R6, 80, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, 4, asm.Half),
		asm.StoreMem(asm.R6, 84, asm.R2, asm.Half),
	)
	b.label("nabuild")
	b.emit(
		// R4 is the ICMPv6 length (24 or 32); keep it for the checksum.
		asm.StoreMem(asm.R10, stScratch, asm.R4, asm.Word),
		// Ethernet: back to the solicitor, from the VIP's MAC.
		asm.LoadMem(asm.R2, asm.R6, 6, asm.Word),
		asm.StoreMem(asm.R6, 0, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 10, asm.Half),
		asm.StoreMem(asm.R6, 4, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Word),
		asm.StoreMem(asm.R6, 6, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, 4, asm.Half),
		asm.StoreMem(asm.R6, 10, asm.R2, asm.Half),
		// IPv6: destination the solicitor, source the target.
		asm.LoadMem(asm.R2, asm.R6, 22, asm.DWord),
		asm.StoreMem(asm.R6, 38, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, 30, asm.DWord),
		asm.StoreMem(asm.R6, 46, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R10, stDaddr, asm.DWord),
		asm.StoreMem(asm.R6, 22, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R10, stDaddr+8, asm.DWord),
		asm.StoreMem(asm.R6, 30, asm.R2, asm.DWord),
		// ICMPv6: advertisement, solicited and override, checksum 0.
		asm.Mov.Imm(asm.R2, 136),
		asm.StoreMem(asm.R6, 54, asm.R2, asm.Byte),
		asm.Mov.Imm(asm.R2, 0),
		asm.StoreMem(asm.R6, 56, asm.R2, asm.Half),
		asm.StoreMem(asm.R6, 58, asm.R2, asm.Word),
		asm.Mov.Imm(asm.R2, 0x60),
		asm.StoreMem(asm.R6, 58, asm.R2, asm.Byte),
		// Pseudo-header: source, destination, length, next header.
		asm.LoadMem(asm.R2, asm.R6, 22, asm.DWord),
		asm.StoreMem(asm.R10, stPseudo, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, 30, asm.DWord),
		asm.StoreMem(asm.R10, stPseudo+8, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, 38, asm.DWord),
		asm.StoreMem(asm.R10, stPseudo+16, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R6, 46, asm.DWord),
		asm.StoreMem(asm.R10, stPseudo+24, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R10, stScratch, asm.Word),
		asm.HostTo(asm.BE, asm.R2, asm.Word),
		asm.StoreMem(asm.R10, stPseudo+32, asm.R2, asm.Word),
		asm.Mov.Imm(asm.R2, 58),
		asm.HostTo(asm.BE, asm.R2, asm.Word),
		asm.StoreMem(asm.R10, stPseudo+36, asm.R2, asm.Word),
		asm.Mov.Imm(asm.R1, 0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, stPseudo),
		asm.Mov.Imm(asm.R4, 40),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnCsumDiff.Call(),
		asm.Mov.Reg(asm.R5, asm.R0), // the pseudo-header's sum seeds the next
		asm.LoadMem(asm.R0, asm.R10, stScratch, asm.Word),
		asm.JEq.Imm(asm.R0, 24, "na24"),
	)
	// Each length gets its own call so that the verifier sees a constant
	// size with the packet range checked for it.
	for _, n := range []int32{32, 24} {
		if n == 24 {
			b.label("na24")
		}
		b.emit(
			asm.Mov.Reg(asm.R3, asm.R6),
			asm.Add.Imm(asm.R3, 54),
			asm.Mov.Reg(asm.R2, asm.R3),
			asm.Add.Imm(asm.R2, n),
			asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
			asm.Mov.Imm(asm.R1, 0),
			asm.Mov.Imm(asm.R2, 0),
			asm.Mov.Imm(asm.R4, n),
			asm.FnCsumDiff.Call(),
		)
		if n == 32 {
			b.emit(asm.Ja.Label("nafold"))
		}
	}
	b.label("nafold")
	b.emit(
		// Fold the 32-bit sum to 16 bits and complement it.
		asm.Mov.Reg(asm.R2, asm.R0),
		asm.RSh.Imm(asm.R2, 16),
		asm.And.Imm(asm.R0, 0xffff),
		asm.Add.Reg(asm.R0, asm.R2),
		asm.Mov.Reg(asm.R2, asm.R0),
		asm.RSh.Imm(asm.R2, 16),
		asm.And.Imm(asm.R0, 0xffff),
		asm.Add.Reg(asm.R0, asm.R2),
		asm.Xor.Imm(asm.R0, 0xffff),
		asm.StoreMem(asm.R6, 56, asm.R0, asm.Half),
	)
	b.exit("nareply", fd.stats, CountNAReply, ActionTX)
}

// fast is the path of a packet of an established flow: one lookup keyed
// by the flow, before any VIP check, and the entry found says where the
// frame goes. It reads the control entry (the generation, the prefilter)
// and takes only unfragmented TCP and UDP over IPv4 without options and
// IPv6 without extension headers, whole and well-formed; everything else,
// an entry of another generation, a frame sent to a MAC other than the
// one the entry was made for, or a backend on another host goes on to
// "slow", the full program (flagEstMissed set when the key was not in
// the established table, so that it is not looked up twice). R6 and R7
// hold the frame; the stack is zeroed.
//
// The established table is the only map whose lines an established packet
// brings in besides the control entry: under real traffic each is a cache
// miss, which is most of the program's cost.
func (b *builder) fast(fd mapFDs, cacheSlots uint32) {
	b.lookup(fd.ctl, stScratch)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "slow"),
		asm.LoadMem(asm.R2, asm.R0, ctlGen, asm.Word),
		asm.StoreMem(asm.R10, stGen, asm.R2, asm.Word),
		asm.LoadMem(asm.R3, asm.R0, ctlMode, asm.Byte),
		asm.JEq.Imm(asm.R3, modeNoVIP, "slow"),
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 42), // Ethernet, IPv4, UDP
		asm.JGT.Reg(asm.R2, asm.R7, "slow"),
		asm.JNE.Imm(asm.R3, modeOneMAC, "fastv"),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R0, ctlMAC, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "slow"),
		asm.LoadMem(asm.R2, asm.R6, 4, asm.Half),
		asm.LoadMem(asm.R3, asm.R0, ctlMAC+4, asm.Half),
		asm.JNE.Reg(asm.R2, asm.R3, "slow"),
	)
	b.label("fastv")
	b.emit(
		asm.LoadMem(asm.R2, asm.R6, 12, asm.Half),
		asm.JEq.Imm(asm.R2, 0xdd86, "fast6"), // 0x86dd in network order, read little-endian
		asm.JNE.Imm(asm.R2, 0x0008, "slow"),
		// IPv4: no options, not a fragment, TCP or UDP, the total length
		// within the frame and at least the headers.
		asm.LoadMem(asm.R2, asm.R6, 14, asm.Byte),
		asm.JNE.Imm(asm.R2, 0x45, "slow"),
		asm.LoadMem(asm.R2, asm.R6, 20, asm.Half),
		asm.JSet.Imm(asm.R2, 0xff3f, "slow"), // MF and the offset, read little-endian
		asm.LoadMem(asm.R3, asm.R6, 23, asm.Byte),
	)
	b.emit(be16(asm.R4, asm.R6, 16)...)
	b.emit(
		asm.JLT.Imm(asm.R4, 28, "slow"),
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 14),
		asm.Add.Reg(asm.R2, asm.R4),
		asm.JGT.Reg(asm.R2, asm.R7, "slow"),
		asm.JEq.Imm(asm.R3, 17, "fast4ports"),
		asm.JNE.Imm(asm.R3, 6, "slow"),
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 54),
		asm.JGT.Reg(asm.R2, asm.R7, "slow"),
	)
	b.label("fast4ports")
	b.emit(
		asm.StoreImm(asm.R10, stSaddr+10, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, 26, asm.Word),
		asm.StoreMem(asm.R10, stSaddr+12, asm.R2, asm.Word),
		asm.StoreImm(asm.R10, stDaddr+10, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, 30, asm.Word),
		asm.StoreMem(asm.R10, stDaddr+12, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 34, asm.Word),
		asm.StoreMem(asm.R10, stPorts, asm.R2, asm.Word),
		asm.StoreMem(asm.R10, stProto, asm.R3, asm.Byte),
		asm.Ja.Label("fastlookup"),
	)
	// IPv6: TCP or UDP right after the fixed header, the payload within
	// the frame.
	b.label("fast6")
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 62), // Ethernet, IPv6, UDP
		asm.JGT.Reg(asm.R2, asm.R7, "slow"),
		asm.LoadMem(asm.R2, asm.R6, 14, asm.Byte),
		asm.RSh.Imm(asm.R2, 4),
		asm.JNE.Imm(asm.R2, 6, "slow"),
		asm.LoadMem(asm.R3, asm.R6, 20, asm.Byte),
	)
	b.emit(be16(asm.R4, asm.R6, 18)...)
	b.emit(
		asm.JLT.Imm(asm.R4, 8, "slow"),
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 54),
		asm.Add.Reg(asm.R2, asm.R4),
		asm.JGT.Reg(asm.R2, asm.R7, "slow"),
		asm.JEq.Imm(asm.R3, 17, "fast6ports"),
		asm.JNE.Imm(asm.R3, 6, "slow"),
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 74),
		asm.JGT.Reg(asm.R2, asm.R7, "slow"),
	)
	b.label("fast6ports")
	for off := int16(0); off < 32; off += 8 {
		b.emit(
			asm.LoadMem(asm.R2, asm.R6, 22+off, asm.DWord),
			asm.StoreMem(asm.R10, stSaddr+off, asm.R2, asm.DWord),
		)
	}
	b.emit(
		asm.LoadMem(asm.R2, asm.R6, 54, asm.Word),
		asm.StoreMem(asm.R10, stPorts, asm.R2, asm.Word),
		asm.StoreMem(asm.R10, stProto, asm.R3, asm.Byte),
	)
	b.label("fastlookup")
	b.flowHash()
	b.emit(
		asm.And.Imm(asm.R2, int32(cacheSlots-1)),
		asm.StoreMem(asm.R10, stCacheIdx, asm.R2, asm.Word),
	)
	b.lookup(fd.cache, stCacheIdx)
	b.emit(
		asm.StoreMem(asm.R10, stCachePtr, asm.R0, asm.DWord),
		asm.JEq.Imm(asm.R0, 0, "fastest"),
	)
	for off := int16(0); off < KeySize; off += 8 {
		b.emit(
			asm.LoadMem(asm.R2, asm.R0, cacheKey+off, asm.DWord),
			asm.LoadMem(asm.R3, asm.R10, stKey+off, asm.DWord),
			asm.JNE.Reg(asm.R2, asm.R3, "fastest"),
		)
	}
	b.emit(
		asm.LoadMem(asm.R2, asm.R0, cacheGen, asm.Word),
		asm.LoadMem(asm.R3, asm.R10, stGen, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "fastest"),
		asm.LoadMem(asm.R2, asm.R0, cacheVIP, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 0, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "fastest"),
		asm.LoadMem(asm.R2, asm.R0, cacheVIP+4, asm.Half),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Half),
		asm.JNE.Reg(asm.R2, asm.R3, "fastest"),
		asm.LoadMem(asm.R4, asm.R0, cacheMAC, asm.DWord),
		asm.LoadMem(asm.R5, asm.R0, cacheVIP, asm.DWord),
	)
	b.cacheCheck()
	b.emit(
		asm.LoadMem(asm.R0, asm.R10, stCachePtr, asm.DWord),
		asm.JEq.Imm(asm.R0, 0, "fastest"),
		asm.LoadMem(asm.R3, asm.R0, cacheGen, asm.DWord),
		asm.RSh.Imm(asm.R3, 32),
		asm.LSh.Imm(asm.R3, 32),
		asm.JNE.Reg(asm.R2, asm.R3, "fastest"),
		asm.LoadMem(asm.R2, asm.R0, cacheMAC, asm.Word),
		asm.StoreMem(asm.R6, 0, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R0, cacheMAC+4, asm.Half),
		asm.StoreMem(asm.R6, 4, asm.R2, asm.Half),
		asm.Mov.Imm(asm.R0, ActionPass),
		asm.Return(),
	)
	// Not in the cache: the established table.
	b.label("fastest")
	b.lookup(fd.est, stKey)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, "fasthit"),
		asm.Or.Imm(asm.R9, flagEstMissed),
		asm.Ja.Label("slow"),
	)
	b.label("fasthit")
	b.emit(
		asm.LoadMem(asm.R2, asm.R0, fvGen, asm.Word),
		asm.LoadMem(asm.R3, asm.R10, stGen, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "slow"),
		asm.LoadMem(asm.R2, asm.R0, fvKind, asm.Byte),
		asm.JNE.Imm(asm.R2, kindLocal, "slow"),
		asm.LoadMem(asm.R2, asm.R0, fvVIPMAC, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 0, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "slow"),
		asm.LoadMem(asm.R2, asm.R0, fvVIPMAC+4, asm.Half),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Half),
		asm.JNE.Reg(asm.R2, asm.R3, "slow"),
		asm.LoadMem(asm.R2, asm.R0, fvMAC, asm.Word),
		asm.StoreMem(asm.R6, 0, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R0, fvMAC+4, asm.Half),
		asm.StoreMem(asm.R6, 4, asm.R2, asm.Half),
		// Into the cache: the key, the MACs (the entry's words: the kind
		// and padding after the MACs are zero), the generation and check.
		asm.LoadMem(asm.R4, asm.R0, fvMAC, asm.DWord),
		asm.LoadMem(asm.R5, asm.R0, fvVIPMAC, asm.DWord),
		asm.LoadMem(asm.R1, asm.R10, stCachePtr, asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "fastpass"),
		asm.StoreMem(asm.R1, cacheMAC, asm.R4, asm.DWord),
		asm.StoreMem(asm.R1, cacheVIP, asm.R5, asm.DWord),
	)
	for off := int16(0); off < KeySize; off += 8 {
		b.emit(
			asm.LoadMem(asm.R2, asm.R10, stKey+off, asm.DWord),
			asm.StoreMem(asm.R1, cacheKey+off, asm.R2, asm.DWord),
		)
	}
	b.cacheCheck()
	b.emit(
		asm.LoadMem(asm.R3, asm.R10, stGen, asm.Word),
		asm.Or.Reg(asm.R2, asm.R3),
		asm.LoadMem(asm.R1, asm.R10, stCachePtr, asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "fastpass"),
		asm.StoreMem(asm.R1, cacheGen, asm.R2, asm.DWord),
	)
	b.label("fastpass")
	b.emit(
		asm.Mov.Imm(asm.R0, ActionPass),
		asm.Return(),
	)
}

// reload points R6 and R7 at the packet again after a helper resized it.
func (b *builder) reload() {
	b.emit(
		asm.LoadMem(asm.R1, asm.R10, stCtx, asm.DWord),
		asm.LoadMem(asm.R6, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R7, asm.R1, 4, asm.Word),
	)
}

// decap removes the outer header of an IPv4 packet in IP-in-IP (protocol
// 4) or IPv6-in-IPv4 (41) sent to a tunnel endpoint of this host (an LB
// host in front sent it to a backend here), so that the inner packet is
// steered like one that arrived directly. The Ethernet addresses move on
// by the 20 bytes of the outer header, which then goes. Only outer headers
// without options are taken; anything else goes on to "parse" untouched.
func (b *builder) decap(fd mapFDs) {
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 34),
		asm.JGT.Reg(asm.R2, asm.R7, "parse"),
		asm.LoadMem(asm.R2, asm.R6, 12, asm.Half),
		asm.JNE.Imm(asm.R2, 0x0008, "parse"), // 0x0800 in network order, read little-endian
		asm.LoadMem(asm.R2, asm.R6, 14, asm.Byte),
		asm.JNE.Imm(asm.R2, 0x45, "parse"),
		asm.LoadMem(asm.R2, asm.R6, 23, asm.Byte),
		asm.JEq.Imm(asm.R2, 4, "tunnel"),
		asm.JEq.Imm(asm.R2, 41, "tunnel"),
		asm.JEq.Imm(asm.R2, 17, "guetunnel"),
		asm.Ja.Label("parse"),
	)
	b.label("tunnel")
	b.emit(
		asm.StoreImm(asm.R10, stDaddr+10, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, 30, asm.Word),
		asm.StoreMem(asm.R10, stDaddr+12, asm.R2, asm.Word),
	)
	b.lookup(fd.tunnels, stDaddr)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "parse"),
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 34),
		asm.JGT.Reg(asm.R2, asm.R7, "parse"),
		// The protocol first: the addresses' move overwrites it.
		asm.LoadMem(asm.R3, asm.R6, 23, asm.Byte),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.StoreMem(asm.R6, 20, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 4, asm.Word),
		asm.StoreMem(asm.R6, 24, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 8, asm.Word),
		asm.StoreMem(asm.R6, 28, asm.R2, asm.Word),
		asm.StoreImm(asm.R6, 32, 0x08, asm.Byte),
		asm.StoreImm(asm.R6, 33, 0x00, asm.Byte),
		asm.JNE.Imm(asm.R3, 41, "decapshrink"),
		asm.StoreImm(asm.R6, 32, 0x86, asm.Byte),
		asm.StoreImm(asm.R6, 33, 0xdd, asm.Byte),
	)
	b.label("decapshrink")
	b.emit(
		asm.LoadMem(asm.R1, asm.R10, stCtx, asm.DWord),
		asm.Mov.Imm(asm.R2, 20),
		asm.FnXdpAdjustHead.Call(),
		asm.JNE.Imm(asm.R0, 0, "tunnelfail"),
	)
	b.reload()
	b.count(fd.stats, CountDecap)
	b.emit(asm.Ja.Label("parse"))

	// GUE (variant 1): UDP to the endpoint's port, the IP packet right
	// after the UDP header; 28 bytes go.
	b.label("guetunnel")
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 43),
		asm.JGT.Reg(asm.R2, asm.R7, "parse"),
		asm.StoreImm(asm.R10, stDaddr+10, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, 30, asm.Word),
		asm.StoreMem(asm.R10, stDaddr+12, asm.R2, asm.Word),
	)
	b.lookup(fd.tunnels, stDaddr)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "parse"),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Half),
		asm.JEq.Imm(asm.R2, 0, "parse"),
		asm.Mov.Reg(asm.R3, asm.R6),
		asm.Add.Imm(asm.R3, 43),
		asm.JGT.Reg(asm.R3, asm.R7, "parse"),
		asm.LoadMem(asm.R3, asm.R6, 36, asm.Half),
		asm.JNE.Reg(asm.R2, asm.R3, "parse"),
		asm.LoadMem(asm.R3, asm.R6, 42, asm.Byte),
		asm.RSh.Imm(asm.R3, 4),
		asm.JEq.Imm(asm.R3, 4, "gue4"),
		asm.JNE.Imm(asm.R3, 6, "parse"),
		asm.StoreImm(asm.R6, 40, 0x86, asm.Byte),
		asm.StoreImm(asm.R6, 41, 0xdd, asm.Byte),
		asm.Ja.Label("guemove"),
	)
	b.label("gue4")
	b.emit(
		asm.StoreImm(asm.R6, 40, 0x08, asm.Byte),
		asm.StoreImm(asm.R6, 41, 0x00, asm.Byte),
	)
	b.label("guemove")
	b.emit(
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.StoreMem(asm.R6, 28, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 4, asm.Word),
		asm.StoreMem(asm.R6, 32, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 8, asm.Word),
		asm.StoreMem(asm.R6, 36, asm.R2, asm.Word),
		asm.LoadMem(asm.R1, asm.R10, stCtx, asm.DWord),
		asm.Mov.Imm(asm.R2, 28),
		asm.FnXdpAdjustHead.Call(),
		asm.JNE.Imm(asm.R0, 0, "tunnelfail"),
	)
	b.reload()
	b.count(fd.stats, CountDecap)
}

// encap sends the packet to a backend on another host (R8 its entry): it
// grows the frame by an IPv4 header (IP-in-IP for an IPv4 packet, 41 for
// an IPv6 one) from the entry's source to its destination address, writes
// a new Ethernet header to the entry's next hop and sends the frame back
// out of the interface (XDP_TX). The header checksum is the entry's sum of
// the fixed words plus the total length and protocol.
func (b *builder) encap(st int, gue bool) {
	name, grow, proto := "encap", int32(20), int32(-1)
	if gue {
		name, grow, proto = "encapgue", 28, 17
	}
	b.label(name)
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 54),
		asm.LoadMem(asm.R3, asm.R6, 12, asm.Half),
		asm.JEq.Imm(asm.R3, 0xdd86, name+"6"), // 0x86dd in network order, read little-endian
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 34),
		asm.JGT.Reg(asm.R2, asm.R7, "tunnelfail"),
	)
	b.emit(be16(asm.R3, asm.R6, 16)...) // IPv4 total length
	b.emit(
		asm.StoreImm(asm.R10, stInnerPro, 4, asm.Byte),
		asm.Ja.Label(name+"grow"),
	)
	b.label(name + "6")
	b.emit(asm.JGT.Reg(asm.R2, asm.R7, "tunnelfail"))
	b.emit(be16(asm.R3, asm.R6, 18)...) // IPv6 payload length
	b.emit(
		asm.Add.Imm(asm.R3, 40),
		asm.StoreImm(asm.R10, stInnerPro, 41, asm.Byte),
	)
	b.label(name + "grow")
	if proto >= 0 {
		b.emit(asm.StoreImm(asm.R10, stInnerPro, int64(proto), asm.Byte))
	}
	b.emit(
		asm.StoreMem(asm.R10, stInnerLen, asm.R3, asm.Word),
		asm.LoadMem(asm.R1, asm.R10, stCtx, asm.DWord),
		asm.Mov.Imm(asm.R2, -grow),
		asm.FnXdpAdjustHead.Call(),
		asm.JNE.Imm(asm.R0, 0, "tunnelfail"),
	)
	b.reload()
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 14+grow),
		asm.JGT.Reg(asm.R2, asm.R7, "tunnelfail"),
		// Ethernet: to the next hop, from the entry's source MAC.
		asm.LoadMem(asm.R2, asm.R8, beMAC, asm.Word),
		asm.StoreMem(asm.R6, 0, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, beMAC+4, asm.Half),
		asm.StoreMem(asm.R6, 4, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, beTunSrcMAC, asm.Word),
		asm.StoreMem(asm.R6, 6, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, beTunSrcMAC+4, asm.Half),
		asm.StoreMem(asm.R6, 10, asm.R2, asm.Half),
		asm.StoreImm(asm.R6, 12, 0x08, asm.Byte),
		asm.StoreImm(asm.R6, 13, 0x00, asm.Byte),
		// IPv4: version and length, TOS, total length, ID 0, DF, TTL 64,
		// protocol, checksum, addresses.
		asm.StoreImm(asm.R6, 14, 0x45, asm.Byte),
		asm.StoreImm(asm.R6, 15, 0, asm.Byte),
		asm.LoadMem(asm.R3, asm.R10, stInnerLen, asm.Word),
		asm.Add.Imm(asm.R3, grow),
		asm.Mov.Reg(asm.R4, asm.R3),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.StoreMem(asm.R6, 16, asm.R4, asm.Half),
		asm.StoreImm(asm.R6, 18, 0, asm.Half),
		asm.StoreImm(asm.R6, 20, 0x40, asm.Byte),
		asm.StoreImm(asm.R6, 21, 0, asm.Byte),
		asm.StoreImm(asm.R6, 22, 64, asm.Byte),
		asm.LoadMem(asm.R5, asm.R10, stInnerPro, asm.Byte),
		asm.StoreMem(asm.R6, 23, asm.R5, asm.Byte),
		asm.LoadMem(asm.R2, asm.R8, beTunSrc, asm.Word),
		asm.StoreMem(asm.R6, 26, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, beTunDst, asm.Word),
		asm.StoreMem(asm.R6, 30, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, beTunSum, asm.Half),
		asm.Add.Reg(asm.R2, asm.R3),
		asm.Add.Imm(asm.R5, 64<<8),
		asm.Add.Reg(asm.R2, asm.R5),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.RSh.Imm(asm.R4, 16),
		asm.And.Imm(asm.R2, 0xffff),
		asm.Add.Reg(asm.R2, asm.R4),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.RSh.Imm(asm.R4, 16),
		asm.And.Imm(asm.R2, 0xffff),
		asm.Add.Reg(asm.R2, asm.R4),
		asm.Xor.Imm(asm.R2, 0xffff),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.R6, 24, asm.R2, asm.Half),
	)
	if gue {
		// UDP from a port of the flow's hash (so that the other host's
		// receive queues spread the flows) to the entry's, the length, no
		// checksum; the packet follows at once (GUE's variant 1).
		b.flowHash()
		b.emit(
			asm.And.Imm(asm.R2, 0x3fff),
			asm.Or.Imm(asm.R2, 0xc000),
			asm.HostTo(asm.BE, asm.R2, asm.Half),
			asm.Mov.Reg(asm.R3, asm.R6),
			asm.Add.Imm(asm.R3, 42),
			asm.JGT.Reg(asm.R3, asm.R7, "tunnelfail"),
			asm.StoreMem(asm.R6, 34, asm.R2, asm.Half),
			asm.LoadMem(asm.R2, asm.R8, beTunPort, asm.Half),
			asm.StoreMem(asm.R6, 36, asm.R2, asm.Half),
			asm.LoadMem(asm.R2, asm.R10, stInnerLen, asm.Word),
			asm.Add.Imm(asm.R2, 8),
			asm.HostTo(asm.BE, asm.R2, asm.Half),
			asm.StoreMem(asm.R6, 38, asm.R2, asm.Half),
			asm.StoreImm(asm.R6, 40, 0, asm.Half),
		)
	}
	b.count(st, CountEncap)
	b.emit(asm.Mov.Imm(asm.R0, ActionTX), asm.Return())
}

// be16 loads a big-endian 16-bit field at src+off into dst in host order.
func be16(dst, src asm.Register, off int16) []asm.Instruction {
	return []asm.Instruction{asm.LoadMem(dst, src, off, asm.Half), asm.HostTo(asm.BE, dst, asm.Half)}
}

// instructions returns the steering program for a Maglev table of size
// entries per half. Registers: R6 packet start, R7 packet end, R8 the
// header being parsed (later the backend's map value), R9 flags.
//
// The program, in outline:
//
//	ARP request or neighbour solicitation for a VIP: answered, XDP_TX
//	not IPv4/IPv6, or too short to hold the IP header: XDP_PASS
//	destination not a VIP, or the frame not sent to the VIP's MAC: XDP_PASS
//	malformed or truncated IP header, or a truncated L4 header: XDP_DROP
//	non-first fragment: the backend of its first fragment, else XDP_DROP
//	ICMP error (unreachable, too big, time exceeded, parameter problem)
//	    quoting a packet from the VIP: the flow key of the quoted packet,
//	    reversed, looked up but never inserted
//	established table hit (backend up or draining): that backend
//	new-flow table hit: that backend; unless a SYN, promote the flow to
//	    the established table
//	else the Maglev table on the key's hash; record in the new-flow table
//	NDP for a VIP: to the broadcast MAC (every backend), XDP_PASS
//	first fragment: remember its backend in the fragment map
//	rewrite the destination MAC to the backend's, XDP_PASS
func instructions(fd mapFDs, size, cacheSlots uint32) asm.Instructions {
	b := &builder{}
	st := fd.stats
	b.emit(
		asm.LoadMem(asm.R6, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R7, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Imm(asm.R9, 0),
		asm.Mov.Imm(asm.R0, 0),
	)
	for off := -stackBytes; off < 0; off += 8 {
		b.emit(asm.StoreMem(asm.R10, int16(off), asm.R0, asm.DWord))
	}
	b.emit(asm.StoreMem(asm.R10, stCtx, asm.R1, asm.DWord))
	b.fast(fd, cacheSlots)
	b.label("slow")
	b.decap(fd)
	b.label("parse")
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.Add.Imm(asm.R2, 14),
		asm.JGT.Reg(asm.R2, asm.R7, "short"),
	)
	b.emit(be16(asm.R2, asm.R6, 12)...)
	b.emit(
		asm.JEq.Imm(asm.R2, 0x0800, "ipv4"),
		asm.JEq.Imm(asm.R2, 0x86dd, "ipv6"),
		asm.JEq.Imm(asm.R2, 0x0806, "arp"),
		asm.Ja.Label("pass"),
	)
	b.arp(fd)

	// IPv4.
	b.label("ipv4")
	b.emit(
		asm.Mov.Reg(asm.R8, asm.R6),
		asm.Add.Imm(asm.R8, 14),
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 20),
		asm.JGT.Reg(asm.R2, asm.R7, "short"),
		asm.StoreImm(asm.R10, stDaddr+10, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, 16, asm.Word),
		asm.StoreMem(asm.R10, stDaddr+12, asm.R2, asm.Word),
	)
	b.lookup(fd.vips, stDaddr)
	b.vipMAC()
	b.emit(
		asm.StoreImm(asm.R10, stSaddr+10, 0xffff, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, 12, asm.Word),
		asm.StoreMem(asm.R10, stSaddr+12, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Byte),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.RSh.Imm(asm.R3, 4),
		asm.JNE.Imm(asm.R3, 4, "malformed"),
		asm.And.Imm(asm.R2, 0xf),
		asm.JLT.Imm(asm.R2, 5, "malformed"),
		asm.LSh.Imm(asm.R2, 2), // header length 20..60
	)
	b.emit(be16(asm.R3, asm.R8, 2)...) // total length
	b.emit(
		asm.JLT.Reg(asm.R3, asm.R2, "malformed"),
		asm.Mov.Reg(asm.R4, asm.R8),
		asm.Add.Reg(asm.R4, asm.R3),
		asm.JGT.Reg(asm.R4, asm.R7, "malformed"),
		asm.LoadMem(asm.R3, asm.R8, 9, asm.Byte),
		asm.StoreMem(asm.R10, stProto, asm.R3, asm.Byte),
		asm.LoadMem(asm.R4, asm.R8, 4, asm.Half), // ID, network order
		asm.StoreMem(asm.R10, stFragID, asm.R4, asm.Half),
	)
	b.emit(be16(asm.R4, asm.R8, 6)...)
	b.emit(
		asm.Mov.Reg(asm.R5, asm.R4),
		asm.And.Imm(asm.R5, 0x1fff),
		asm.JNE.Imm(asm.R5, 0, "nonfirst"),
		asm.JSet.Imm(asm.R4, 0x2000, "v4first"),
		asm.Ja.Label("v4l4"),
	)
	b.label("v4first")
	b.emit(asm.Or.Imm(asm.R9, flagFirstFrag))
	b.label("v4l4")
	b.emit(
		asm.Add.Reg(asm.R8, asm.R2),
		asm.JEq.Imm(asm.R3, 1, "icmp4"),
		asm.Ja.Label("l4"),
	)

	// ICMPv4: errors go by the quoted packet, the rest by 3-tuple.
	b.label("icmp4")
	b.emit(
		asm.Or.Imm(asm.R9, flagNoInsert),
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 8),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Byte),
		asm.JEq.Imm(asm.R2, 3, "icmp4err"),
		asm.JEq.Imm(asm.R2, 11, "icmp4err"),
		asm.JEq.Imm(asm.R2, 12, "icmp4err"),
		asm.Ja.Label("decide"),
	)
	b.label("icmp4err")
	b.emit(
		asm.Add.Imm(asm.R8, 8), // quoted IPv4 header
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 20),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Byte),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.RSh.Imm(asm.R3, 4),
		asm.JNE.Imm(asm.R3, 4, "malformed"),
		asm.And.Imm(asm.R2, 0xf),
		asm.JLT.Imm(asm.R2, 5, "malformed"),
		asm.LSh.Imm(asm.R2, 2),
		// The quoted packet must come from the VIP the error is for.
		asm.LoadMem(asm.R3, asm.R8, 12, asm.Word),
		asm.LoadMem(asm.R4, asm.R10, stDaddr+12, asm.Word),
		asm.JNE.Reg(asm.R3, asm.R4, "unsupported"),
		asm.LoadMem(asm.R3, asm.R8, 16, asm.Word),
		asm.StoreMem(asm.R10, stSaddr+12, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R8, 9, asm.Byte),
		asm.StoreMem(asm.R10, stProto, asm.R3, asm.Byte),
	)
	b.emit(be16(asm.R4, asm.R8, 6)...)
	b.emit(
		asm.And.Imm(asm.R4, 0x1fff),
		asm.JNE.Imm(asm.R4, 0, "unsupported"),
		asm.Add.Reg(asm.R8, asm.R2),
		asm.Ja.Label("quoted"),
	)

	// IPv6.
	b.label("ipv6")
	b.emit(
		asm.Mov.Reg(asm.R8, asm.R6),
		asm.Add.Imm(asm.R8, 14),
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 40),
		asm.JGT.Reg(asm.R2, asm.R7, "short"),
	)
	b.solicitation(fd)
	b.label("ipv6vip")
	b.emit(
		asm.Mov.Reg(asm.R8, asm.R6),
		asm.Add.Imm(asm.R8, 14),
		asm.LoadMem(asm.R2, asm.R8, 24, asm.DWord),
		asm.StoreMem(asm.R10, stDaddr, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R8, 32, asm.DWord),
		asm.StoreMem(asm.R10, stDaddr+8, asm.R2, asm.DWord),
	)
	b.lookup(fd.vips, stDaddr)
	b.vipMAC()
	b.emit(
		asm.LoadMem(asm.R2, asm.R8, 8, asm.DWord),
		asm.StoreMem(asm.R10, stSaddr, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R8, 16, asm.DWord),
		asm.StoreMem(asm.R10, stSaddr+8, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Byte),
		asm.RSh.Imm(asm.R2, 4),
		asm.JNE.Imm(asm.R2, 6, "malformed"),
	)
	b.emit(be16(asm.R3, asm.R8, 4)...) // payload length
	b.emit(
		asm.Mov.Reg(asm.R4, asm.R8),
		asm.Add.Imm(asm.R4, 40),
		asm.Add.Reg(asm.R4, asm.R3),
		asm.JGT.Reg(asm.R4, asm.R7, "malformed"),
		asm.LoadMem(asm.R3, asm.R8, 6, asm.Byte),
		asm.Add.Imm(asm.R8, 40),
		asm.JNE.Imm(asm.R3, 44, "v6l4"),
		// Fragment header.
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 8),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
		asm.LoadMem(asm.R3, asm.R8, 0, asm.Byte),
		asm.StoreMem(asm.R10, stProto, asm.R3, asm.Byte),
		asm.LoadMem(asm.R4, asm.R8, 4, asm.Word),
		asm.StoreMem(asm.R10, stFragID, asm.R4, asm.Word),
	)
	b.emit(be16(asm.R4, asm.R8, 2)...)
	b.emit(
		asm.Mov.Reg(asm.R5, asm.R4),
		asm.And.Imm(asm.R5, 0xfff8),
		asm.JNE.Imm(asm.R5, 0, "nonfirst"),
		asm.Add.Imm(asm.R8, 8),
		asm.JSet.Imm(asm.R4, 1, "v6first"),
		asm.Ja.Label("v6l4"),
	)
	b.label("v6first")
	b.emit(asm.Or.Imm(asm.R9, flagFirstFrag))
	b.label("v6l4")
	b.emit(asm.StoreMem(asm.R10, stProto, asm.R3, asm.Byte))
	// Extension headers that may hide a TCP or UDP header are not walked.
	for _, nh := range []int32{0, 43, 44, 51, 60, 135, 139, 140} {
		b.emit(asm.JEq.Imm(asm.R3, nh, "unsupported"))
	}
	b.emit(
		asm.JEq.Imm(asm.R3, 58, "icmp6"),
		asm.Ja.Label("l4"),
	)

	// ICMPv6: errors (types 1–4) go by the quoted packet.
	b.label("icmp6")
	b.emit(
		asm.Or.Imm(asm.R9, flagNoInsert),
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 8),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Byte),
		asm.JEq.Imm(asm.R2, 0, "decide"),
		asm.JGE.Imm(asm.R2, 133, "ndpmaybe"),
		asm.JGT.Imm(asm.R2, 4, "decide"),
		asm.Add.Imm(asm.R8, 8), // quoted IPv6 header
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 40),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
		asm.LoadMem(asm.R2, asm.R8, 8, asm.DWord),
		asm.LoadMem(asm.R3, asm.R10, stDaddr, asm.DWord),
		asm.JNE.Reg(asm.R2, asm.R3, "unsupported"),
		asm.LoadMem(asm.R2, asm.R8, 16, asm.DWord),
		asm.LoadMem(asm.R3, asm.R10, stDaddr+8, asm.DWord),
		asm.JNE.Reg(asm.R2, asm.R3, "unsupported"),
		asm.LoadMem(asm.R2, asm.R8, 24, asm.DWord),
		asm.StoreMem(asm.R10, stSaddr, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R8, 32, asm.DWord),
		asm.StoreMem(asm.R10, stSaddr+8, asm.R2, asm.DWord),
		asm.LoadMem(asm.R3, asm.R8, 6, asm.Byte),
		asm.StoreMem(asm.R10, stProto, asm.R3, asm.Byte),
		asm.Add.Imm(asm.R8, 40),
	)
	for _, nh := range []int32{0, 43, 44, 51, 60, 135, 139, 140} {
		b.emit(asm.JEq.Imm(asm.R3, nh, "unsupported"))
	}

	// The quoted packet's ports, swapped: it went from the VIP to the
	// client. R3 is its protocol, R8 its L4 header.
	b.label("quoted")
	b.emit(
		asm.JEq.Imm(asm.R3, 6, "quotedports"),
		asm.JEq.Imm(asm.R3, 17, "quotedports"),
		asm.Ja.Label("decide"),
	)
	b.label("quotedports")
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 4),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Half),
		asm.StoreMem(asm.R10, stDport, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, 2, asm.Half),
		asm.StoreMem(asm.R10, stSport, asm.R2, asm.Half),
		asm.Ja.Label("decide"),
	)

	// TCP and UDP; any other protocol goes by its 3-tuple (ports zero)
	// and is never inserted. R3 is the protocol, R8 the L4 header.
	b.label("l4")
	b.emit(
		asm.JEq.Imm(asm.R3, 6, "tcp"),
		asm.JEq.Imm(asm.R3, 17, "udp"),
		asm.Or.Imm(asm.R9, flagNoInsert),
		asm.Ja.Label("decide"),
	)
	b.label("tcp")
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 20),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
		asm.LoadMem(asm.R2, asm.R8, 13, asm.Byte),
		asm.JSet.Imm(asm.R2, 0x02, "tcpsyn"),
		asm.Ja.Label("ports"),
	)
	b.label("tcpsyn")
	b.emit(asm.Or.Imm(asm.R9, flagSyn), asm.Ja.Label("ports"))
	b.label("udp")
	b.emit(
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, 8),
		asm.JGT.Reg(asm.R2, asm.R7, "malformed"),
	)
	b.label("ports")
	b.emit(
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Word),
		asm.StoreMem(asm.R10, stPorts, asm.R2, asm.Word),
	)

	// The decision.
	b.label("decide")
	// Established table, unless the fast path looked already.
	b.emit(asm.JSet.Imm(asm.R9, flagEstMissed, "trynew"))
	b.flowBackend(fd.est, fd.backends, "trynew", true)
	b.count(st, CountEstHit)
	b.emit(asm.Ja.Label("forward"))
	// New-flow table.
	b.label("trynew")
	b.flowBackend(fd.new, fd.backends, "maglev", false)
	b.count(st, CountNewHit)
	b.emit(
		asm.JSet.Imm(asm.R9, flagSyn|flagNoInsert, "forward"),
	)
	b.fillValue()
	b.update(fd.est)
	b.count(st, CountPromoted)
	b.emit(asm.Ja.Label("forward"))
	// Maglev: entry hash % size of the active half. The hash is computed
	// only here, for flows in neither table.
	b.label("maglev")
	b.flowHash()
	b.lookup(fd.ctl, stScratch)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "nobackend"),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R10, stHash, asm.DWord),
		asm.Mod.Imm(asm.R3, int32(size)),
		asm.JEq.Imm(asm.R2, 0, "half0"),
		asm.Add.Imm(asm.R3, int32(size)),
	)
	b.label("half0")
	b.emit(asm.StoreMem(asm.R10, stScratch, asm.R3, asm.Word))
	b.lookup(fd.table, stScratch)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "nobackend"),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.R10, stBackend, asm.R2, asm.Word),
	)
	b.lookup(fd.backends, stBackend)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "nobackend"),
		asm.LoadMem(asm.R2, asm.R0, 6, asm.Byte),
		asm.JEq.Imm(asm.R2, stateDown, "nobackend"),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.Or.Imm(asm.R9, flagNewFlow),
	)
	b.count(st, CountMaglev)
	b.emit(asm.JSet.Imm(asm.R9, flagNoInsert, "forward"))
	b.fillValue()
	b.update(fd.new)

	// R8 is the backend's entry; stBackend its id.
	b.label("forward")
	b.emit(asm.JSet.Imm(asm.R9, flagFirstFrag, "recordfrag"), asm.Ja.Label("rewrite"))
	b.label("recordfrag")
	b.emit(
		asm.LoadMem(asm.R2, asm.R10, stFragID, asm.Word),
		asm.StoreMem(asm.R10, stPorts, asm.R2, asm.Word),
	)
	b.fillValue()
	b.update(fd.frags)
	b.label("rewrite")
	b.emit(
		asm.LoadMem(asm.R2, asm.R8, 0, asm.Word),
		asm.StoreMem(asm.R6, 0, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, 4, asm.Half),
		asm.StoreMem(asm.R6, 4, asm.R2, asm.Half),
	)
	// Per-backend counting is of new flows only, and "steered" is the sum
	// of the hit counters: an established flow's packet touches as few
	// cache lines as it can.
	b.emit(
		asm.JSet.Imm(asm.R9, flagNewFlow, "bnew"),
		asm.Ja.Label("steered"),
	)
	b.label("bnew")
	b.lookup(fd.bstats, stBackend)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "steered"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
	)
	b.label("steered")
	b.emit(
		asm.LoadMem(asm.R2, asm.R8, beKind, asm.Byte),
		asm.JEq.Imm(asm.R2, kindTunnel, "encap"),
		asm.JEq.Imm(asm.R2, kindGUE, "encapgue"),
		asm.Mov.Imm(asm.R0, ActionPass),
		asm.Return(),
	)
	b.encap(st, false)
	b.encap(st, true)

	// A non-first fragment: where its first fragment went.
	b.label("nonfirst")
	b.emit(
		asm.LoadMem(asm.R2, asm.R10, stFragID, asm.Word),
		asm.StoreMem(asm.R10, stPorts, asm.R2, asm.Word),
		asm.StoreMem(asm.R10, stProto, asm.R3, asm.Byte),
	)
	b.flowBackend(fd.frags, fd.backends, "fragmiss", false)
	b.count(st, CountFragHit)
	b.emit(asm.Ja.Label("rewrite"))

	// NDP (router and neighbour solicitations and advertisements,
	// redirects) for a VIP concerns whichever backend asked: a neighbour
	// advertisement answers the one backend that solicited from the VIP.
	// The frame goes to the broadcast address, so every backend (macvlan
	// child) gets it and the one with a use for it takes it.
	b.label("ndpmaybe")
	b.emit(
		asm.JGT.Imm(asm.R2, 137, "decide"),
		asm.Mov.Imm(asm.R2, -1),
		asm.StoreMem(asm.R6, 0, asm.R2, asm.Word),
		asm.StoreMem(asm.R6, 4, asm.R2, asm.Half),
	)
	b.exit("ndp", st, CountNDP, ActionPass)

	b.exit("pass", st, CountPass, ActionPass)
	b.exit("short", st, CountShort, ActionPass)
	b.exit("malformed", st, CountMalformed, ActionDrop)
	b.exit("unsupported", st, CountUnsupported, ActionDrop)
	b.exit("fragmiss", st, CountFragMiss, ActionDrop)
	b.exit("nobackend", st, CountNoBackend, ActionDrop)
	b.exit("tunnelfail", st, CountTunnelFail, ActionDrop)
	return b.insns
}
