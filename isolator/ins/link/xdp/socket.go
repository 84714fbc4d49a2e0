package xdp

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Config sizes a socket's UMEM and rings.
type Config struct {
	// FrameSize is the UMEM chunk per frame: 2048 or 4096 bytes. In copy
	// mode the kernel writes a received frame RXHeadroom bytes into its
	// chunk; a longer frame than fits is dropped (and counted).
	FrameSize uint32
	// RingSize is the number of descriptors of the fill and RX rings, a
	// power of two, and the number of UMEM frames: every frame is either
	// waiting in the fill ring or holding a received frame in the RX ring.
	RingSize uint32
}

// RXHeadroom is where in its chunk the kernel places a received frame
// (XDP_PACKET_HEADROOM).
const RXHeadroom = 256

// DefaultConfig is 2 KiB frames (an MTU of up to 1778 bytes) and rings of
// 2048 descriptors: a 4 MiB UMEM that absorbs a burst of about 3 MB of
// full-size frames while the reader is descheduled, as the packet
// backend's 4 MiB socket buffer does.
var DefaultConfig = Config{FrameSize: 2048, RingSize: 2048}

func (c Config) validate() error {
	if c.FrameSize != 2048 && c.FrameSize != 4096 {
		return fmt.Errorf("xdp: frame size %d: want 2048 or 4096", c.FrameSize)
	}
	if c.RingSize < 64 || c.RingSize > 1<<16 || bits.OnesCount32(c.RingSize) != 1 {
		return fmt.Errorf("xdp: ring size %d: want a power of two in 64..65536", c.RingSize)
	}
	return nil
}

// Socket is an AF_XDP socket bound in copy mode to one receive queue of an
// interface, with its UMEM and its fill and RX rings. It only receives: the
// kernel's copy-mode transmit path costs as much per frame as AF_PACKET's
// and cannot take the 64 KiB segments that host GSO splits, so frames are
// sent through a packet socket instead.
//
// One goroutine at a time may call Receive; Close must not race with it.
type Socket struct {
	fd        int
	umem      []byte
	frameSize uint32
	fill      addrRing
	rx        descRing

	maps      [][]byte
	closed    atomic.Bool
	closeOnce sync.Once
}

// ring is the part of a ring shared with the kernel: the producer and
// consumer indices live in the mapping, the descriptors follow. local is
// the index this side advances.
type ring struct {
	prod, cons *atomic.Uint32
	mask       uint32
	local      uint32
}

type addrRing struct {
	ring
	addrs []uint64
}

type descRing struct {
	ring
	descs []unix.XDPDesc
}

// Open creates an AF_XDP socket bound to queue of the interface ifindex in
// the calling thread's network namespace. Registering the UMEM locks its
// memory: it needs CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK.
func Open(ifindex, queue int, cfg Config) (_ *Socket, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if ifindex < 1 || queue < 0 {
		return nil, fmt.Errorf("xdp: bad interface %d or queue %d", ifindex, queue)
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("xdp: AF_XDP socket: %w", err)
	}
	s := &Socket{fd: fd, frameSize: cfg.FrameSize}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	n := cfg.RingSize
	s.umem, err = unix.Mmap(-1, 0, int(n*cfg.FrameSize), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("xdp: map UMEM: %w", err)
	}
	s.maps = append(s.maps, s.umem)
	reg := unix.XDPUmemReg{
		Addr: uint64(uintptr(unsafe.Pointer(&s.umem[0]))),
		Len:  uint64(len(s.umem)),
		Size: cfg.FrameSize,
	}
	if err := setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		return nil, fmt.Errorf("xdp: register UMEM: %w", err)
	}
	// The kernel insists on a completion ring even for a socket that
	// never transmits; it stays empty.
	for _, o := range []struct{ opt, n int }{
		{unix.XDP_UMEM_FILL_RING, int(n)}, {unix.XDP_UMEM_COMPLETION_RING, 64}, {unix.XDP_RX_RING, int(n)},
	} {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, o.opt, o.n); err != nil {
			return nil, fmt.Errorf("xdp: ring size (option %d): %w", o.opt, err)
		}
	}
	var off unix.XDPMmapOffsets
	size := uint32(unsafe.Sizeof(off))
	if _, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&size)), 0); errno != 0 {
		return nil, fmt.Errorf("xdp: ring offsets: %w", errno)
	}
	if size != uint32(unsafe.Sizeof(off)) {
		return nil, fmt.Errorf("xdp: ring offsets: kernel returned %d bytes, want %d", size, unsafe.Sizeof(off))
	}
	mem, err := s.mapRing(off.Fr, unix.XDP_UMEM_PGOFF_FILL_RING, n, 8)
	if err != nil {
		return nil, err
	}
	s.fill = addrRing{ring: newRing(mem, off.Fr, n), addrs: unsafe.Slice((*uint64)(unsafe.Pointer(&mem[off.Fr.Desc])), n)}
	if mem, err = s.mapRing(off.Rx, unix.XDP_PGOFF_RX_RING, n, uint64(unsafe.Sizeof(unix.XDPDesc{}))); err != nil {
		return nil, err
	}
	s.rx = descRing{ring: newRing(mem, off.Rx, n), descs: unsafe.Slice((*unix.XDPDesc)(unsafe.Pointer(&mem[off.Rx.Desc])), n)}

	// Every frame starts in the fill ring, ready for the kernel.
	for i := uint32(0); i < n; i++ {
		s.fill.addrs[i] = uint64(i) * uint64(cfg.FrameSize)
	}
	s.fill.local = n
	s.fill.prod.Store(n)
	s.rx.local = s.rx.cons.Load()

	if err := unix.Bind(fd, &unix.SockaddrXDP{Flags: unix.XDP_COPY, Ifindex: uint32(ifindex), QueueID: uint32(queue)}); err != nil {
		return nil, fmt.Errorf("xdp: bind to interface %d queue %d: %w", ifindex, queue, err)
	}
	return s, nil
}

func setsockopt(fd, opt int, p unsafe.Pointer, size uintptr) error {
	if _, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), size, 0); errno != 0 {
		return errno
	}
	return nil
}

func (s *Socket) mapRing(off unix.XDPRingOffset, pgoff int64, n uint32, descSize uint64) ([]byte, error) {
	mem, err := unix.Mmap(s.fd, pgoff, int(off.Desc+uint64(n)*descSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("xdp: map ring at %#x: %w", pgoff, err)
	}
	s.maps = append(s.maps, mem)
	return mem, nil
}

func newRing(mem []byte, off unix.XDPRingOffset, n uint32) ring {
	return ring{
		prod: (*atomic.Uint32)(unsafe.Pointer(&mem[off.Producer])),
		cons: (*atomic.Uint32)(unsafe.Pointer(&mem[off.Consumer])),
		mask: n - 1,
	}
}

// FD is the socket's descriptor, to poll for POLLIN and to put in an
// XSKMAP.
func (s *Socket) FD() int { return s.fd }

// MaxFrame is the longest frame (link header included) the socket can
// receive.
func (s *Socket) MaxFrame() int { return int(s.frameSize) - RXHeadroom }

// Receive calls f with each frame waiting in the RX ring, up to max of
// them, then hands their buffers back to the kernel; f must copy what it
// keeps. It returns the number of frames seen.
func (s *Socket) Receive(max int, f func(frame []byte)) int {
	r := &s.rx
	avail := r.prod.Load() - r.local // acquire: descriptors are written
	n := min(avail, uint32(max))
	if n == 0 {
		return 0
	}
	size := uint64(len(s.umem))
	mask := ^(uint64(s.frameSize) - 1)
	for i := uint32(0); i < n; i++ {
		d := r.descs[(r.local+i)&r.mask]
		if d.Addr < size && uint64(d.Len) <= size-d.Addr {
			f(s.umem[d.Addr : d.Addr+uint64(d.Len)])
		}
		// The fill ring holds as many slots as there are receive
		// frames, so there is always room for the ones handed back.
		s.fill.addrs[(s.fill.local+i)&s.fill.mask] = d.Addr & mask
	}
	s.fill.local += n
	s.fill.prod.Store(s.fill.local)
	r.local += n
	r.cons.Store(r.local)
	return int(n)
}

// Statistics returns the kernel's counters of the socket.
func (s *Socket) Statistics() (unix.XDPStatistics, error) {
	var st unix.XDPStatistics
	if s.closed.Load() {
		return st, errors.New("xdp: statistics: socket closed")
	}
	size := uint32(unsafe.Sizeof(st))
	if _, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&size)), 0); errno != 0 {
		return st, fmt.Errorf("xdp: statistics: %w", errno)
	}
	return st, nil
}

// Close unmaps the rings and the UMEM and closes the socket. Nothing may
// use the socket afterwards.
func (s *Socket) Close() error {
	var errs []error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		for _, m := range s.maps {
			if err := unix.Munmap(m); err != nil {
				errs = append(errs, fmt.Errorf("xdp: unmap: %w", err))
			}
		}
		s.maps = nil
		if err := unix.Close(s.fd); err != nil {
			errs = append(errs, fmt.Errorf("xdp: close: %w", err))
		}
	})
	return errors.Join(errs...)
}
