package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/isolator/split/forward"
)

// The hand-off: the isolator daemon gives the gateway the connections that
// apps under the shim make to destinations of a `split:` route without a
// listener. Per connection the daemon connects to the gateway's hand-off
// socket (unix, SOCK_SEQPACKET) and sends one message: a JSON
// HandoffRequest with the socket's stream end (the end an INS would serve)
// attached. The gateway answers one JSON HandoffReply once the far side
// connected or failed; after a success it waits for one byte from the
// daemon (the daemon has recorded the socket as connected), discards the
// filler the shim wrote into the stream end (making the app's descriptor
// writable, see docs/protocol.md "Connect and writability") and pipes the
// stream end to a yamux stream until both directions ended. Then it closes
// the hand-off connection, which tells the daemon the socket is over.

// maxHandoff bounds a hand-off request.
const maxHandoff = 512

// HandoffRequest asks the gateway to carry one connection.
type HandoffRequest struct {
	// Dst is the destination the app connects to.
	Dst netip.AddrPort `json:"dst"`
	// Filler is the number of bytes the shim wrote into the stream end to
	// hold the app's descriptor unwritable while connecting.
	Filler int `json:"filler"`
}

// HandoffReply is the outcome of the connect: 0 or the errno the app sees.
type HandoffReply struct {
	Errno unix.Errno `json:"errno"`
}

// shimRoute sends destinations inside prefix through peer.
type shimRoute struct {
	prefix netip.Prefix
	peer   *peer
}

// shimRoutesOf orders the routes without a listener longest prefix first.
func (g *Gateway) shimRoutesOf() []shimRoute {
	var out []shimRoute
	for pre, name := range g.cfg.ShimPrefixes() {
		out = append(out, shimRoute{prefix: pre, peer: g.peers[name]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].prefix.Bits() > out[j].prefix.Bits() })
	return out
}

// routeFor returns the peer that carries connections to dst.
func (g *Gateway) routeFor(dst netip.AddrPort) *peer {
	g.mu.RLock()
	defer g.mu.RUnlock()
	a := dst.Addr().Unmap()
	for _, r := range g.shim {
		if r.prefix.Contains(a) {
			return r.peer
		}
	}
	return nil
}

func listenHandoff(path string) (*net.UnixListener, error) {
	os.Remove(path)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("gateway: hand-off socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("gateway: hand-off socket: %w", err)
	}
	return ln, nil
}

// serveHandoff serves the daemon's hand-offs until ln is closed.
func (g *Gateway) serveHandoff(ctx context.Context, ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		go g.handoff(ctx, c)
	}
}

// readHandoff reads one request and its stream end from c.
func readHandoff(c *net.UnixConn) (HandoffRequest, *os.File, error) {
	var req HandoffRequest
	buf := make([]byte, maxHandoff)
	oob := make([]byte, unix.CmsgSpace(4*4))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		return req, nil, fmt.Errorf("read: %w", err)
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if r, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, r...)
			}
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return req, nil, fmt.Errorf("%d descriptors, want 1", len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "handoff")
	if err := json.Unmarshal(buf[:n], &req); err != nil {
		f.Close()
		return req, nil, fmt.Errorf("request: %w", err)
	}
	if !req.Dst.IsValid() || req.Dst.Port() == 0 || req.Filler < 0 || req.Filler > 1<<24 {
		f.Close()
		return req, nil, fmt.Errorf("request: destination %v, filler %d", req.Dst, req.Filler)
	}
	if t, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_STREAM {
		f.Close()
		return req, nil, fmt.Errorf("the descriptor is not a stream socket")
	}
	return req, f, nil
}

// handoff carries one connection handed over on c.
func (g *Gateway) handoff(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	req, f, err := readHandoff(c)
	if err != nil {
		g.log.Warn("split: bad hand-off", "err", err)
		return
	}
	p, st, errno := g.carry(ctx, req.Dst)
	reply, _ := json.Marshal(HandoffReply{Errno: errno})
	if _, err := c.Write(reply); err != nil || errno != 0 {
		f.Close()
		if st != nil {
			st.Close()
		}
		return
	}
	// The daemon's go-ahead: it knows the socket is connected.
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		f.Close()
		st.Close()
		return
	}
	if err := discard(f, req.Filler); err != nil {
		g.log.Info("split: hand-off filler", "dst", req.Dst, "err", err)
		f.Close()
		st.Close()
		return
	}
	app, err := net.FileConn(f)
	f.Close()
	if err != nil {
		st.Close()
		return
	}
	forward.Pipe(p.track(DirOut, req.Dst, app), st)
}

// carry opens a stream to dst through the peer of its route and returns
// the peer and the stream, or the errno the app sees.
func (g *Gateway) carry(ctx context.Context, dst netip.AddrPort) (*peer, net.Conn, unix.Errno) {
	p := g.routeFor(dst)
	if p == nil {
		return nil, nil, unix.ENETUNREACH
	}
	m := p.currentMux(ctx)
	if m == nil {
		g.log.Info("split: no session", "peer", p.cfg.Name, "dst", dst)
		return p, nil, unix.ENETUNREACH
	}
	st, err := forward.Dial(m, dst)
	switch {
	case err == nil:
		return p, st, 0
	case errors.Is(err, forward.ErrRefused), errors.Is(err, forward.ErrDialFailed):
		g.log.Info("split: stream", "peer", p.cfg.Name, "err", err)
		return p, nil, unix.ECONNREFUSED
	default:
		g.log.Info("split: stream", "peer", p.cfg.Name, "err", err)
		return p, nil, unix.ETIMEDOUT
	}
}

// discard reads and drops exactly n bytes queued on f.
func discard(f *os.File, n int) error {
	fd := int(f.Fd())
	buf := make([]byte, min(n, 64<<10))
	for n > 0 {
		m, err := unix.Read(fd, buf[:min(n, len(buf))])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if m == 0 {
			return io.ErrUnexpectedEOF
		}
		n -= m
	}
	return nil
}

// Handoff gives the gateway listening on path the stream end f of a
// socket that connects to dst (f's ownership passes). It returns once the
// far side connected or failed, with 0 or the errno for the app; after a
// success, connected is called before the app's descriptor turns writable,
// and over is closed when the connection has ended.
func Handoff(ctx context.Context, path string, dst netip.AddrPort, filler int, f *os.File, connected func()) (errno unix.Errno, over <-chan struct{}) {
	defer f.Close()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return unix.ENETUNREACH, nil
	}
	c := nc.(*net.UnixConn)
	req, _ := json.Marshal(HandoffRequest{Dst: dst, Filler: filler})
	if _, _, err := c.WriteMsgUnix(req, unix.UnixRights(int(f.Fd())), nil); err != nil {
		c.Close()
		return unix.ENETUNREACH, nil
	}
	f.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	buf := make([]byte, maxHandoff)
	n, err := c.Read(buf)
	stop()
	var reply HandoffReply
	if err != nil || json.Unmarshal(buf[:n], &reply) != nil {
		c.Close()
		return unix.ECONNABORTED, nil
	}
	if reply.Errno != 0 {
		c.Close()
		return reply.Errno, nil
	}
	connected()
	if _, err := c.Write([]byte{1}); err != nil {
		c.Close()
		return unix.ECONNABORTED, nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer c.Close()
		var b [1]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				return
			}
		}
	}()
	return 0, done
}
