// Package forward carries TCP connections as streams of a split tunnel:
// the side that has the app's connection opens a stream, names the real
// destination in a short header, and pipes bytes; the far side checks the
// destination against its policy, dials it and pipes back. The far side's
// dial is ordinary TCP from its own address.
//
// Stream header (client to server):
//
//	version (u8, 1), kind (u8, 1 = TCP), address length (u16, big endian),
//	destination as text ("10.20.0.5:80", "[fd00::1]:443")
//
// Reply (server to client): one status byte, then the destination's bytes.
package forward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Status bytes of the reply.
const (
	StatusOK      = 0
	StatusRefused = 1 // the policy does not allow the destination
	StatusFailed  = 2 // dialing the destination failed
)

const (
	version  = 1
	kindTCP  = 1
	maxAddr  = 64
	hdrLen   = 4
	hdrWait  = 10 * time.Second
	dialWait = 10 * time.Second
)

// Errors of Dial that say what the far side answered.
var (
	// ErrRefused: the far side's policy does not allow the destination.
	ErrRefused = errors.New("refused by the peer's policy")
	// ErrDialFailed: the far side could not connect to the destination.
	ErrDialFailed = errors.New("the peer could not connect")
)

// StreamOpener opens a stream of the tunnel (yamux.Session.Open).
type StreamOpener interface {
	Open() (net.Conn, error)
}

// StreamAccepter accepts the peer's streams (yamux.Session.Accept).
type StreamAccepter interface {
	Accept() (net.Conn, error)
}

// WriteHeader writes the stream header for dst.
func WriteHeader(w io.Writer, dst netip.AddrPort) error {
	a := dst.String()
	b := make([]byte, hdrLen, hdrLen+len(a))
	b[0], b[1] = version, kindTCP
	binary.BigEndian.PutUint16(b[2:], uint16(len(a)))
	_, err := w.Write(append(b, a...))
	return err
}

// ReadHeader reads and validates a stream header.
func ReadHeader(r io.Reader) (netip.AddrPort, error) {
	var h [hdrLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("forward: header: %w", err)
	}
	if h[0] != version || h[1] != kindTCP {
		return netip.AddrPort{}, fmt.Errorf("forward: header version %d kind %d", h[0], h[1])
	}
	n := int(binary.BigEndian.Uint16(h[2:]))
	if n == 0 || n > maxAddr {
		return netip.AddrPort{}, fmt.Errorf("forward: address length %d", n)
	}
	a := make([]byte, n)
	if _, err := io.ReadFull(r, a); err != nil {
		return netip.AddrPort{}, fmt.Errorf("forward: header: %w", err)
	}
	dst, err := netip.ParseAddrPort(string(a))
	if err != nil || dst.Port() == 0 || !dst.Addr().IsValid() {
		return netip.AddrPort{}, fmt.Errorf("forward: destination %q: invalid", a)
	}
	return dst, nil
}

// Dial opens a stream to dst through the tunnel and waits for the far
// side's verdict.
func Dial(o StreamOpener, dst netip.AddrPort) (net.Conn, error) {
	st, err := o.Open()
	if err != nil {
		return nil, fmt.Errorf("forward: open stream: %w", err)
	}
	if err := WriteHeader(st, dst); err != nil {
		st.Close()
		return nil, fmt.Errorf("forward: %s: %w", dst, err)
	}
	_ = st.SetReadDeadline(time.Now().Add(hdrWait + dialWait))
	var s [1]byte
	if _, err := io.ReadFull(st, s[:]); err != nil {
		st.Close()
		return nil, fmt.Errorf("forward: %s: no reply: %w", dst, err)
	}
	_ = st.SetReadDeadline(time.Time{})
	switch s[0] {
	case StatusOK:
		return st, nil
	case StatusRefused:
		st.Close()
		return nil, fmt.Errorf("forward: %s: %w", dst, ErrRefused)
	default:
		st.Close()
		return nil, fmt.Errorf("forward: %s: %w", dst, ErrDialFailed)
	}
}

// Serve accepts the peer's streams until a fails, and connects each to
// its destination if allow says so, with dial (nil: net.Dialer).
func Serve(ctx context.Context, a StreamAccepter, allow func(netip.AddrPort) bool, dial func(ctx context.Context, dst netip.AddrPort) (net.Conn, error), log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	if dial == nil {
		dial = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		}
	}
	for {
		st, err := a.Accept()
		if err != nil {
			return fmt.Errorf("forward: accept: %w", err)
		}
		go serveStream(ctx, st, allow, dial, log)
	}
}

func serveStream(ctx context.Context, st net.Conn, allow func(netip.AddrPort) bool, dial func(context.Context, netip.AddrPort) (net.Conn, error), log *slog.Logger) {
	_ = st.SetReadDeadline(time.Now().Add(hdrWait))
	dst, err := ReadHeader(st)
	if err != nil {
		log.Warn("split: bad stream header", "err", err)
		st.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	if allow != nil && !allow(dst) {
		log.Warn("split: destination refused", "dst", dst)
		st.Write([]byte{StatusRefused})
		st.Close()
		return
	}
	dctx, cancel := context.WithTimeout(ctx, dialWait)
	c, err := dial(dctx, dst)
	cancel()
	if err != nil {
		log.Info("split: dial failed", "dst", dst, "err", err)
		st.Write([]byte{StatusFailed})
		st.Close()
		return
	}
	if _, err := st.Write([]byte{StatusOK}); err != nil {
		c.Close()
		st.Close()
		return
	}
	Pipe(st, c)
}

// Pipe copies both ways until both directions ended, passing on each
// end-of-stream as a half close: CloseWrite on TCP, Close on a yamux
// stream (which only ends its sending half). An error closes both.
func Pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.Copy(dst, src)
		switch cw, ok := dst.(interface{ CloseWrite() error }); {
		case err != nil:
			dst.Close()
			src.Close()
		case ok:
			cw.CloseWrite()
		default:
			dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// ServeListener carries every connection accepted on ln to dst through the
// tunnel: the local end of a `split:` route.
func ServeListener(ln net.Listener, o StreamOpener, dst netip.AddrPort, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("forward: accept: %w", err)
		}
		go func() {
			st, err := Dial(o, dst)
			if err != nil {
				log.Info("split: stream", "dst", dst, "err", err)
				c.Close()
				return
			}
			Pipe(c, st)
		}()
	}
}
