package isolator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mpshim/mpshim/internal/unixfd"
	"github.com/mpshim/mpshim/msgproto"
	"github.com/mpshim/mpshim/ring"
)

// maxFDsPerPass is the most descriptors one FDPass may carry.
const maxFDsPerPass = 8

// client is one registered app process.
type client struct {
	s     *AppServer
	id    uint64
	pid   int32
	uid   uint32
	group uint64
	comm  string
	conn  *net.UnixConn
	ring  *ring.Ring
	log   *slog.Logger

	fdMu    sync.Mutex
	fds     map[uint64]pendingFDs      // FDPass received, request not yet seen
	nfds    int                        // descriptors held in fds
	waiters map[uint64]chan []*os.File // request seen, FDPass not yet received
}

// pendingFDs are descriptors that arrived ahead of their request.
type pendingFDs struct {
	files []*os.File
	at    time.Time
}

// run serves the client until its registration connection hangs up, its
// ring turns out corrupt or ctx ends.
func (c *client) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer cancel()
		c.readConn()
	}()
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	c.serveRing(ctx)
	cancel()
	stop()
	c.conn.Close()
	c.ring.Close()
	wg.Wait()
	c.fdMu.Lock()
	for id, p := range c.fds {
		closeFiles(p.files)
		delete(c.fds, id)
	}
	c.nfds = 0
	c.fdMu.Unlock()
}

// readConn reads FDPass messages from the registration connection until it
// hangs up.
func (c *client) readConn() {
	buf := make([]byte, msgproto.HeaderSize+64)
	oob := make([]byte, unix.CmsgSpace(4*maxFDsPerPass))
	for {
		n, oobn, flags, _, err := c.conn.ReadMsgUnix(buf, oob)
		files, _ := unixfd.Rights(oob[:oobn], "passed-fd")
		if err != nil || (n == 0 && len(files) == 0) {
			closeFiles(files)
			return
		}
		var fp msgproto.FDPass
		h, derr := msgproto.DecodeTo(buf[:n], &fp)
		switch {
		case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
			derr = errors.New("truncated message or control data")
		case derr != nil:
		case h.Flags&msgproto.FlagFD == 0 || int(fp.Count) != len(files) || len(files) == 0:
			derr = fmt.Errorf("FDPass says %d descriptors, carries %d", fp.Count, len(files))
		}
		if derr != nil {
			closeFiles(files)
			c.log.Debug("app: bad message on registration connection", "err", derr)
			continue
		}
		c.deliverFDs(h.ReqID, files)
	}
}

// deliverFDs pairs descriptors with their request or keeps them until it
// arrives.
func (c *client) deliverFDs(reqID uint64, files []*os.File) {
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	if w, ok := c.waiters[reqID]; ok {
		delete(c.waiters, reqID)
		w <- files
		return
	}
	if _, dup := c.fds[reqID]; dup || c.nfds+len(files) > c.s.cfg.MaxPendingFDs {
		closeFiles(files)
		c.log.Debug("app: descriptors dropped", "reqid", reqID, "pending", c.nfds)
		return
	}
	c.fds[reqID] = pendingFDs{files: files, at: time.Now()}
	c.nfds += len(files)
}

// takeFDs waits for the descriptors of request reqID, at most the FD
// timeout. It returns nil if they do not come.
func (c *client) takeFDs(ctx context.Context, reqID uint64) []*os.File {
	c.fdMu.Lock()
	if p, ok := c.fds[reqID]; ok {
		delete(c.fds, reqID)
		c.nfds -= len(p.files)
		c.fdMu.Unlock()
		return p.files
	}
	if _, dup := c.waiters[reqID]; dup {
		c.fdMu.Unlock()
		return nil
	}
	w := make(chan []*os.File, 1)
	c.waiters[reqID] = w
	c.fdMu.Unlock()
	t := time.NewTimer(c.s.cfg.FDTimeout)
	defer t.Stop()
	select {
	case f := <-w:
		return f
	case <-t.C:
	case <-ctx.Done():
	}
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	if c.waiters[reqID] == w {
		delete(c.waiters, reqID)
		return nil
	}
	return <-w // delivered meanwhile
}

// expireFDs closes descriptors that waited longer than the FD timeout for
// their request.
func (c *client) expireFDs(now time.Time) {
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	for id, p := range c.fds {
		if now.Sub(p.at) > c.s.cfg.FDTimeout {
			closeFiles(p.files)
			c.nfds -= len(p.files)
			delete(c.fds, id)
		}
	}
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// serveRing reads requests from the ring and handles each in its own
// goroutine, so that a blocking call (Connect) holds up no other. The
// number in flight is bounded by the ring's slot count: a slot takes no new
// request before its reply.
func (c *client) serveRing(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		req, err := c.ring.Next(ctx)
		if err != nil {
			if errors.Is(err, ring.ErrCorrupt) {
				c.log.Warn("app: corrupt ring; ending client", "err", err)
			}
			return
		}
		data := append([]byte(nil), req.Data...)
		wg.Add(1)
		go func(slot uint32) {
			defer wg.Done()
			reply := c.handle(ctx, data)
			if err := c.ring.Reply(slot, reply); err != nil && !errors.Is(err, ring.ErrClosed) {
				c.log.Warn("app: reply", "err", err)
			}
		}(req.Slot)
	}
}

// errReply encodes Reply{errno} for request reqID.
func errReply(reqID uint64, errno unix.Errno) []byte {
	b, _ := msgproto.Append(nil, reqID, 0, &msgproto.Reply{Errno: int32(errno)})
	return b
}

// rawReqID is the request id of a message whose header may be invalid, so
// that even a refusal names the request it answers.
func rawReqID(b []byte) uint64 {
	if len(b) < msgproto.HeaderSize {
		return 0
	}
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[16+i])
	}
	return v
}

// handle serves one request and returns the encoded reply.
func (c *client) handle(ctx context.Context, data []byte) (reply []byte) {
	reqID := rawReqID(data)
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("app: request handler panicked", "panic", p)
			reply = errReply(reqID, unix.EIO)
		}
	}()
	h, m, err := msgproto.Decode(data)
	if err != nil {
		if errors.Is(err, msgproto.ErrBadField) {
			return errReply(reqID, unix.EINVAL)
		}
		return errReply(reqID, unix.EPROTO)
	}
	var files []*os.File
	if h.Flags&msgproto.FlagFD != 0 {
		files = c.takeFDs(ctx, h.ReqID)
		if files == nil {
			return errReply(h.ReqID, unix.EBADF)
		}
	}
	out, errno := c.s.dispatch(ctx, c, m, files)
	if errno != 0 {
		return errReply(h.ReqID, errno)
	}
	b, err := msgproto.Append(nil, h.ReqID, 0, out)
	if err != nil {
		c.log.Warn("app: INS reply does not encode", "type", out.Type(), "err", err)
		return errReply(h.ReqID, unix.EIO)
	}
	return b
}
