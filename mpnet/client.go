// Package mpnet is the Go client of the isolator: Go programs cannot be
// preloaded with libmpshim.so, so they open their TCP and UDP sockets
// through a Client, which speaks exactly what the shim speaks (registration,
// shared-memory ring, descriptor passing; see docs/protocol.md). The
// returned net.Conn, net.Listener and net.PacketConn are backed by the same
// kernel socketpairs the shim uses, so deadlines, io.Copy and http.Server
// work as usual while the bytes are served by the isolator's network stacks.
package mpnet

import (
	"github.com/mpshim/mpshim/internal/procstat"

	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/unixfd"
	"github.com/mpshim/mpshim/msgproto"
	"github.com/mpshim/mpshim/ring"
)

// DefaultSocket is the registration socket used when MPSHIM_SOCKET is not
// set.
const DefaultSocket = "/run/mpshim/isolator.sock"

// ErrClosed is returned by calls on a closed Client or after the isolator
// ended the session.
var ErrClosed = errors.New("mpnet: session closed")

// Client is one registered session with the isolator. Its methods are safe
// for concurrent use.
type Client struct {
	id   uint64
	conn *net.UnixConn // registration connection
	ring *ring.Producer

	reqID  atomic.Uint64
	closed atomic.Bool
	done   chan struct{}
}

// Register connects to the isolator's registration socket at path and
// registers this process.
func Register(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("mpnet: connect %s: %w", path, err)
	}
	conn := nc.(*net.UnixConn)
	c, err := register(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("mpnet: register with %s: %w", path, err)
	}
	return c, nil
}

func register(ctx context.Context, conn *net.UnixConn) (*Client, error) {
	self, err := procstat.Self()
	if err != nil {
		return nil, fmt.Errorf("mpnet: start time: %w", err)
	}
	reg := &msgproto.Register{PID: uint32(os.Getpid()), ProtoVersion: msgproto.Version, StartTime: self.StartTime}
	copy(reg.Comm[:15], commName())
	b, err := msgproto.Append(nil, 0, 0, reg)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(b); err != nil {
		return nil, err
	}
	buf := make([]byte, msgproto.HeaderSize+64)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	files, _ := unixfd.Rights(oob[:oobn], "mpnet")
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	h, m, err := msgproto.Decode(buf[:n])
	if err != nil {
		return nil, fmt.Errorf("registration reply: %w", err)
	}
	switch m := m.(type) {
	case *msgproto.Reply:
		return nil, unix.Errno(m.Errno)
	case *msgproto.RegisterReply:
		if h.Flags&msgproto.FlagFD == 0 || len(files) == 0 {
			return nil, errors.New("registration reply without ring")
		}
		p, err := ring.Attach(files[0])
		if err != nil {
			return nil, err
		}
		c := &Client{id: m.ClientID, conn: conn, ring: p, done: make(chan struct{})}
		go c.watch()
		return c, nil
	}
	return nil, fmt.Errorf("registration reply of type %v", h.Type)
}

// Probe asks the isolator at path whether this process may register,
// without registering: it returns nil when the isolator would admit it, the
// dial error (wrapping ENOENT, ECONNREFUSED, EACCES, …) when nothing
// answers on path, and a *RefusedError carrying the isolator's errno
// (EACCES: this uid/gid is not allowed; EPROTO: another protocol version)
// when it answers with a refusal.
func Probe(ctx context.Context, path string) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return fmt.Errorf("mpnet: connect %s: %w", path, err)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	self, err := procstat.Self()
	if err != nil {
		return fmt.Errorf("mpnet: start time: %w", err)
	}
	reg := &msgproto.Register{PID: uint32(os.Getpid()), ProtoVersion: msgproto.Version, Flags: msgproto.RegProbe, StartTime: self.StartTime}
	copy(reg.Comm[:15], commName())
	b, err := msgproto.Append(nil, 0, 0, reg)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
	}
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("mpnet: probe %s: %w", path, err)
	}
	buf := make([]byte, msgproto.HeaderSize+64)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if files, _ := unixfd.Rights(oob[:oobn], "mpnet"); len(files) > 0 {
		for _, f := range files {
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("mpnet: probe %s: no answer: %w", path, err)
	}
	if n == 0 {
		return fmt.Errorf("mpnet: probe %s: the isolator hung up without an answer", path)
	}
	h, m, err := msgproto.Decode(buf[:n])
	if err != nil {
		return fmt.Errorf("mpnet: probe %s: answer: %w", path, err)
	}
	r, ok := m.(*msgproto.Reply)
	if !ok {
		return fmt.Errorf("mpnet: probe %s: answer of type %v", path, h.Type)
	}
	if r.Errno != 0 {
		return &RefusedError{Path: path, Errno: unix.Errno(r.Errno)}
	}
	return nil
}

// RefusedError is the isolator's refusal of a registration or probe.
type RefusedError struct {
	// Path is the registration socket.
	Path string
	// Errno is the isolator's answer: EACCES for a uid/gid it does not
	// allow, EPROTO for a protocol version it does not speak.
	Errno unix.Errno
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("mpnet: the isolator at %s refused: %v", e.Path, e.Errno)
}

// Unwrap returns the errno, so errors.Is(err, unix.EACCES) works.
func (e *RefusedError) Unwrap() error { return e.Errno }

// watch notices the isolator hanging up the registration connection.
func (c *Client) watch() {
	buf := make([]byte, 64)
	for {
		n, _, _, _, err := c.conn.ReadMsgUnix(buf, nil)
		if err != nil || n == 0 {
			break
		}
	}
	close(c.done)
}

// ID is the client id the isolator gave this session.
func (c *Client) ID() uint64 { return c.id }

// Close ends the session. Sockets already open keep working until closed:
// their data path does not need the session.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	err := c.conn.Close()
	c.ring.Close()
	return err
}

func commName() string {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// call sends one request (with descriptors, which stay owned by the caller
// and may be closed once call returns) and returns the decoded reply. A
// Reply with an errno is returned as that unix.Errno.
func (c *Client) call(m msgproto.Message, files ...*os.File) (msgproto.Message, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	id := c.reqID.Add(1)
	var flags uint32
	var prepare func() error
	if len(files) > 0 {
		flags = msgproto.FlagFD
		fp, err := msgproto.Append(nil, id, msgproto.FlagFD, &msgproto.FDPass{Count: uint32(len(files))})
		if err != nil {
			return nil, err
		}
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		// The descriptors go out only once the request holds a ring slot,
		// so they never wait at the isolator for a request stuck behind
		// other calls.
		prepare = func() error {
			_, _, err := c.conn.WriteMsgUnix(fp, unix.UnixRights(fds...), nil)
			if err != nil {
				return fmt.Errorf("mpnet: passing descriptors: %w", err)
			}
			return nil
		}
	}
	req, err := msgproto.Append(nil, id, flags, m)
	if err != nil {
		return nil, err
	}
	resp := make([]byte, msgproto.MaxMessage)
	n, err := c.ring.CallPrepared(req, resp, prepare)
	if err != nil {
		if errors.Is(err, ring.ErrDead) {
			return nil, ErrClosed
		}
		return nil, err
	}
	h, rm, err := msgproto.Decode(resp[:n])
	if err != nil {
		return nil, fmt.Errorf("mpnet: reply: %w", err)
	}
	if h.ReqID != id {
		return nil, fmt.Errorf("mpnet: reply to request %d, want %d: %w", h.ReqID, id, unix.EPROTO)
	}
	if r, ok := rm.(*msgproto.Reply); ok && r.Errno != 0 {
		return nil, unix.Errno(r.Errno)
	}
	return rm, nil
}

// callReply is call for requests answered by a plain Reply.
func (c *Client) callReply(m msgproto.Message, files ...*os.File) error {
	r, err := c.call(m, files...)
	if err != nil {
		return err
	}
	if _, ok := r.(*msgproto.Reply); !ok {
		return fmt.Errorf("mpnet: %v answered with %v: %w", m.Type(), r.Type(), unix.EPROTO)
	}
	return nil
}

// socket creates an INS socket whose descriptor is end, one end of a
// socketpair.
func (c *Client) socket(domain, typ int, end *os.File) (uint64, error) {
	r, err := c.call(&msgproto.Socket{Domain: int32(domain), SockType: int32(typ)}, end)
	if err != nil {
		return 0, err
	}
	sr, ok := r.(*msgproto.SocketReply)
	if !ok {
		return 0, fmt.Errorf("mpnet: Socket answered with %v: %w", r.Type(), unix.EPROTO)
	}
	return sr.Sock, nil
}

// name asks for the local (peer false) or remote address of sock.
func (c *Client) name(sock uint64, peer bool) (msgproto.Addr, error) {
	var m msgproto.Message = &msgproto.Getsockname{Sock: sock}
	if peer {
		m = &msgproto.Getpeername{Sock: sock}
	}
	r, err := c.call(m)
	if err != nil {
		return msgproto.Addr{}, err
	}
	ar, ok := r.(*msgproto.AddrReply)
	if !ok {
		return msgproto.Addr{}, fmt.Errorf("mpnet: %v answered with %v: %w", m.Type(), r.Type(), unix.EPROTO)
	}
	return ar.Addr, nil
}

// socketpair returns both ends of a new AF_UNIX socketpair of type typ
// (close-on-exec).
func socketpair(typ int) (a, b *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("mpnet: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "mpnet-app"), os.NewFile(uintptr(fds[1]), "mpnet-ins"), nil
}

var (
	defaultMu     sync.Mutex
	defaultClient *Client
)

// Default returns the process-wide client registered at $MPSHIM_SOCKET
// (default DefaultSocket), registering on first use and again after the
// isolator ended the session.
func Default(ctx context.Context) (*Client, error) {
	defaultMu.Lock()
	defer defaultMu.Unlock()
	if defaultClient != nil {
		select {
		case <-defaultClient.done:
			defaultClient.Close()
			defaultClient = nil
		default:
			return defaultClient, nil
		}
	}
	path := os.Getenv("MPSHIM_SOCKET")
	if path == "" {
		path = DefaultSocket
	}
	c, err := Register(ctx, path)
	if err != nil {
		return nil, err
	}
	defaultClient = c
	return c, nil
}

// Dial connects through the default client; see Client.Dial.
func Dial(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := Default(ctx)
	if err != nil {
		return nil, err
	}
	return c.Dial(ctx, network, address)
}

// Listen listens through the default client; see Client.Listen.
func Listen(ctx context.Context, network, address string) (net.Listener, error) {
	c, err := Default(ctx)
	if err != nil {
		return nil, err
	}
	return c.Listen(ctx, network, address)
}

// ListenPacket opens a UDP socket through the default client; see
// Client.ListenPacket.
func ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	c, err := Default(ctx)
	if err != nil {
		return nil, err
	}
	return c.ListenPacket(ctx, network, address)
}
