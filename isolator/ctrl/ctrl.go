// Package ctrl is the message channel between the isolator daemon and one
// INS process: an AF_UNIX SOCK_SEQPACKET socketpair carrying one frame per
// packet, with descriptors attached by SCM_RIGHTS. A frame is a fixed
// header (kind, socket group, request id) and a payload: a msgproto message
// for socket calls, JSON for management. Calls are matched to replies by
// request id, so many calls may be in flight at once (a blocking connect
// does not hold up a getsockname).
package ctrl

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/unixfd"
	"github.com/mpshim/mpshim/msgproto"
)

// Frame kinds.
const (
	// KindSocket frames carry a msgproto request or reply.
	KindSocket uint32 = 1
	// KindManage frames carry a JSON management request or reply.
	KindManage uint32 = 2
	// KindNotify frames are unsolicited JSON notices from an INS to the
	// daemon (its load); they are never answered.
	KindNotify uint32 = 3
)

// HeaderSize is the size of a frame header: kind u32, reserved u32,
// group u64, request id u64, little-endian.
const HeaderSize = 24

// MaxMessage bounds one packet on the channel.
const MaxMessage = HeaderSize + msgproto.MaxMessage

// Frame is the header of one packet.
type Frame struct {
	Kind  uint32
	Group uint64 // socket group of the app the call is made for
	ID    uint64 // request id; a reply carries its request's
}

// Append writes f followed by payload to dst.
func (f Frame) Append(dst, payload []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, f.Kind)
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, f.Group)
	dst = binary.LittleEndian.AppendUint64(dst, f.ID)
	return append(dst, payload...)
}

// maxFDs bounds the descriptors accepted with one packet.
const maxFDs = 8

// ErrClosed is returned by calls on a closed channel.
var ErrClosed = errors.New("ctrl: channel closed")

// Msg is one received packet: the message bytes and any descriptors that
// came with it. The receiver owns the descriptors.
type Msg struct {
	Frame
	Payload []byte
	Files   []*os.File
}

// CloseFiles closes every descriptor of m.
func (m *Msg) CloseFiles() {
	for _, f := range m.Files {
		f.Close()
	}
	m.Files = nil
}

// Conn is one end of a daemon↔INS channel.
type Conn struct {
	f       *os.File
	fd      int
	wmu     sync.Mutex
	mu      sync.Mutex
	pending map[uint64]chan Msg
	closed  bool
	nextID  atomic.Uint64
	done    chan struct{}
}

// New wraps one end of a SOCK_SEQPACKET socketpair. The caller must run
// ReadLoop.
func New(f *os.File) *Conn {
	c := &Conn{f: f, fd: int(f.Fd()), pending: map[uint64]chan Msg{}, done: make(chan struct{})}
	c.nextID.Store(1)
	return c
}

// Pair makes a connected pair of channel ends: the first for this process,
// the second to hand to a child.
func Pair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("ctrl: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "ctrl"), os.NewFile(uintptr(fds[1]), "ctrl-peer"), nil
}

// NextID returns a fresh request id.
func (c *Conn) NextID() uint64 { return c.nextID.Add(1) }

// Reply answers the request req with payload.
func (c *Conn) Reply(req Frame, payload []byte, files ...*os.File) error {
	return c.Send(req.Append(make([]byte, 0, HeaderSize+len(payload)), payload), files...)
}

// Send writes one packet (a frame header and its payload) with optional
// descriptors.
func (c *Conn) Send(b []byte, files ...*os.File) error {
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for {
		err := unix.Sendmsg(c.fd, b, oob, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("ctrl: send: %w", err)
		}
		return nil
	}
}

// Call sends a request frame (header and payload) and waits for the packet
// answering it. The frame's ID is filled in from NextID.
func (c *Conn) Call(ctx context.Context, f Frame, payload []byte, files ...*os.File) (Msg, error) {
	id := c.NextID()
	f.ID = id
	req := f.Append(make([]byte, 0, HeaderSize+len(payload)), payload)
	ch := make(chan Msg, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return Msg{}, ErrClosed
	}
	c.pending[id] = ch
	c.mu.Unlock()
	if err := c.Send(req, files...); err != nil {
		c.forget(id)
		return Msg{}, err
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return Msg{}, ErrClosed
		}
		return m, nil
	case <-ctx.Done():
		c.forget(id)
		return Msg{}, ctx.Err()
	}
}

func (c *Conn) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// ReadLoop receives packets until the channel fails or the peer hangs up.
// Replies to pending calls go to their caller; every other packet goes to
// handle (which owns its descriptors). It returns nil on a clean hang-up.
func (c *Conn) ReadLoop(handle func(Msg)) error {
	defer c.shutdown()
	buf := make([]byte, MaxMessage+1)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	for {
		n, oobn, flags, _, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("ctrl: receive: %w", err)
		}
		files, ferr := unixfd.Rights(oob[:oobn], "passed")
		if n == 0 && oobn == 0 {
			return nil // peer hung up
		}
		if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || ferr != nil {
			unixfd.Close(files)
			return fmt.Errorf("ctrl: truncated or malformed packet (flags %#x): %v", flags, ferr)
		}
		if n < HeaderSize {
			unixfd.Close(files)
			return fmt.Errorf("ctrl: packet of %d bytes is shorter than a frame header", n)
		}
		m := Msg{Frame: Frame{
			Kind:  binary.LittleEndian.Uint32(buf[0:]),
			Group: binary.LittleEndian.Uint64(buf[8:]),
			ID:    binary.LittleEndian.Uint64(buf[16:]),
		}, Files: files}
		m.Payload = append([]byte(nil), buf[HeaderSize:n]...)
		c.mu.Lock()
		ch, ok := c.pending[m.ID]
		if ok {
			delete(c.pending, m.ID)
		}
		c.mu.Unlock()
		if ok {
			ch <- m
			continue
		}
		handle(m)
	}
}

func (c *Conn) shutdown() {
	c.mu.Lock()
	c.closed = true
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// Close closes the channel; pending and later calls fail with ErrClosed.
// A ReadLoop blocked in its receive returns (the socket is shut down first:
// closing a descriptor does not wake a system call blocked on it).
func (c *Conn) Close() error {
	c.shutdown()
	_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	return c.f.Close()
}
