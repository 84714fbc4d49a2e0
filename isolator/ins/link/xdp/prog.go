// Package xdp is the AF_XDP receive path of an INS NIC: an XDP program
// that sends every frame an interface receives to the AF_XDP socket bound
// to its receive queue (Redirect), that socket with its UMEM and rings
// (Socket), and the reader that hands the frames to a gVisor netstack
// (Receiver). Nothing the program redirects reaches the kernel's own stack.
//
// The program is a handful of instructions assembled here (no C toolchain,
// no object file): it drops frames too short to hold an Ethernet header, so
// the user-space side never sees one, and redirects everything else through
// an XSKMAP indexed by receive queue; a queue without a socket drops.
//
// The attachment is a BPF link owned by the process that attached it: when
// that process exits (or calls Close) the program is detached and the
// interface goes back to delivering frames to the kernel.
package xdp

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// XDP actions (enum xdp_action).
const (
	ActionAborted  = 0
	ActionDrop     = 1
	ActionPass     = 2
	ActionTX       = 3
	ActionRedirect = 4
)

// MinFrame is the shortest frame the program passes on: an Ethernet header.
const MinFrame = 14

// Offsets in struct xdp_md, the program's context.
const (
	mdData         = 0
	mdDataEnd      = 4
	mdRxQueueIndex = 16
)

// Instructions returns the program for an XSKMAP with file descriptor
// mapFD:
//
//	if data + MinFrame > data_end: return XDP_DROP
//	return bpf_redirect_map(xsks, rx_queue_index, XDP_DROP)
//
// The low bits of bpf_redirect_map's flags are the action taken when the
// map has no socket at that index.
func Instructions(mapFD int) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, mdData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, mdDataEnd, asm.Word),
		asm.Add.Imm(asm.R2, MinFrame),
		asm.JGT.Reg(asm.R2, asm.R3, "drop"),
		asm.LoadMem(asm.R2, asm.R1, mdRxQueueIndex, asm.Word),
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Imm(asm.R3, ActionDrop),
		asm.FnRedirectMap.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, ActionDrop).WithSymbol("drop"),
		asm.Return(),
	}
}

// Redirect is the program attached to one interface with its socket map.
type Redirect struct {
	// Map is the XSKMAP: receive queue -> AF_XDP socket.
	Map *ebpf.Map
	// Program is the loaded program.
	Program *ebpf.Program
	link    link.Link
}

// NewRedirect creates the XSKMAP with one slot per receive queue and loads
// the program, without attaching it.
func NewRedirect(queues int) (_ *Redirect, err error) {
	if queues < 1 || queues > 1024 {
		return nil, fmt.Errorf("xdp: %d queues: want 1..1024", queues)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "mpshim_xsks",
		Type:       ebpf.XSKMap,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: uint32(queues),
	})
	if err != nil {
		return nil, fmt.Errorf("xdp: create XSKMAP: %w", err)
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "mpshim_xsk",
		Type:         ebpf.XDP,
		Instructions: Instructions(m.FD()),
		// The program only calls bpf_redirect_map, which any licence
		// may use.
		License: "Apache-2.0",
	})
	if err != nil {
		return nil, fmt.Errorf("xdp: load program: %w", err)
	}
	return &Redirect{Map: m, Program: prog}, nil
}

// SetSocket sends frames of receive queue queue to the AF_XDP socket fd
// (which must have its rings set up and be bound to that queue).
func (r *Redirect) SetSocket(queue int, fd int) error {
	if err := r.Map.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("xdp: socket %d for queue %d: %w", fd, queue, err)
	}
	return nil
}

// Attach attaches the program in generic (socket buffer) mode, the only
// one a macvlan supports, to the interface with index ifindex in the
// calling thread's network namespace. It fails if a program is attached
// there already.
func (r *Redirect) Attach(ifindex int) error {
	if r.link != nil {
		return errors.New("xdp: program already attached")
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: r.Program, Interface: ifindex, Flags: link.XDPGenericMode})
	if err != nil {
		return fmt.Errorf("xdp: attach to interface %d: %w", ifindex, err)
	}
	r.link = l
	return nil
}

// Close detaches the program (if attached) and releases the map and the
// program.
func (r *Redirect) Close() error {
	var errs []error
	if r.link != nil {
		errs = append(errs, r.link.Close())
		r.link = nil
	}
	errs = append(errs, r.Program.Close(), r.Map.Close())
	return errors.Join(errs...)
}
