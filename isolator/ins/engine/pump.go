package engine

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// The data pump is an event loop: one epoll instance per engine watches every
// INS-side kernel end (edge triggered), netstack waiter callbacks report
// endpoint readiness, and both only schedule the item. A small pool of worker
// goroutines runs scheduled items; an item runs on one worker at a time and
// always works until EAGAIN in every direction it can, which is what edge
// triggering requires. Per connection the engine keeps no buffer while bytes
// flow: reads from the socketpair go into the worker's buffer and straight
// into the endpoint, and endpoint reads are written straight into the
// socketpair. Only when the endpoint's send buffer is full does a connection
// hold the bytes already read (at most one chunk).

// chunk is the largest read from a socketpair end in one step.
const chunk = 64 << 10

// Item scheduling states.
const (
	schedIdle    = iota // not queued
	schedQueued         // in the run queue
	schedRunning        // a worker runs it
	schedRerun          // a worker runs it and it must run again
)

type sched struct{ state atomic.Uint32 }

func (s *sched) sch() *sched { return s }

// item is anything the loop runs.
type item interface {
	sch() *sched
	run(w *worker)
}

// fdItem is an item that owns an epoll-registered descriptor.
type fdItem interface {
	item
	fdEvent(ev uint32)
}

type worker struct {
	buf []byte
	rd  sliceReader
}

type loop struct {
	epfd   int
	wakefd int
	log    *slog.Logger

	mu      sync.Mutex
	cond    *sync.Cond
	q       []item
	stopped bool

	fdmu sync.RWMutex
	fds  map[int32]fdItem

	wg sync.WaitGroup
}

func newLoop(workers int, log *slog.Logger) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wfd)}); err != nil {
		unix.Close(epfd)
		unix.Close(wfd)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	l := &loop{epfd: epfd, wakefd: wfd, log: log, fds: make(map[int32]fdItem)}
	l.cond = sync.NewCond(&l.mu)
	l.wg.Add(1)
	go l.poll()
	for i := 0; i < workers; i++ {
		l.wg.Add(1)
		go l.work()
	}
	return l, nil
}

func (l *loop) poll() {
	defer l.wg.Done()
	var evs [256]unix.EpollEvent
	for {
		n, err := unix.EpollWait(l.epfd, evs[:], -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			l.log.Error("epoll_wait failed", "err", err)
			return
		}
		for i := 0; i < n; i++ {
			if int(evs[i].Fd) == l.wakefd {
				return
			}
			l.fdmu.RLock()
			it := l.fds[evs[i].Fd]
			l.fdmu.RUnlock()
			// A stale event for a reused descriptor only causes a
			// spurious run, which every item tolerates.
			if it != nil {
				it.fdEvent(evs[i].Events)
				l.schedule(it)
			}
		}
	}
}

func (l *loop) work() {
	defer l.wg.Done()
	w := &worker{buf: make([]byte, chunk)}
	for {
		l.mu.Lock()
		for len(l.q) == 0 && !l.stopped {
			l.cond.Wait()
		}
		if l.stopped {
			l.mu.Unlock()
			return
		}
		it := l.q[0]
		l.q[0] = nil
		l.q = l.q[1:]
		if len(l.q) == 0 {
			l.q = l.q[:0:0]
		}
		l.mu.Unlock()
		s := it.sch()
		s.state.Store(schedRunning)
		for {
			it.run(w)
			if s.state.CompareAndSwap(schedRunning, schedIdle) {
				break
			}
			s.state.Store(schedRunning)
		}
	}
}

// schedule makes it run soon; it never blocks and may be called from netstack
// callbacks.
func (l *loop) schedule(it item) {
	if l == nil {
		return
	}
	s := it.sch()
	for {
		switch st := s.state.Load(); st {
		case schedIdle:
			if !s.state.CompareAndSwap(st, schedQueued) {
				continue
			}
			l.mu.Lock()
			l.q = append(l.q, it)
			l.mu.Unlock()
			l.cond.Signal()
			return
		case schedRunning:
			if s.state.CompareAndSwap(st, schedRerun) {
				return
			}
		default:
			return
		}
	}
}

// register adds fd to epoll (edge triggered, all directions) and schedules it
// once so that readiness that predates registration is seen.
func (l *loop) register(fd int, it fdItem) error {
	l.fdmu.Lock()
	l.fds[int32(fd)] = it
	l.fdmu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.fdmu.Lock()
		delete(l.fds, int32(fd))
		l.fdmu.Unlock()
		return fmt.Errorf("epoll_ctl add fd %d: %w", fd, err)
	}
	l.schedule(it)
	return nil
}

// unregisterClose removes fd from epoll and closes it.
func (l *loop) unregisterClose(fd int) {
	if fd < 0 {
		return
	}
	l.fdmu.Lock()
	delete(l.fds, int32(fd))
	l.fdmu.Unlock()
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	unix.Close(fd)
}

func (l *loop) stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
	l.cond.Broadcast()
	var one [8]byte
	one[0] = 1
	unix.Write(l.wakefd, one[:])
	l.wg.Wait()
	unix.Close(l.epfd)
	unix.Close(l.wakefd)
}

// hungUp reports whether fd's peer is gone (POLLHUP or POLLERR now). Epoll
// flags alone are not trusted: an event read for a descriptor that was closed
// and reused may be attributed to its new owner.
func hungUp(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd)}}
	for {
		n, err := unix.Poll(pfd, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n == 1 && pfd[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
	}
}

// checkHup confirms a recorded hang-up; a stale one is cleared.
func checkHup(flag *atomic.Bool, fd int) bool {
	if !flag.Load() {
		return false
	}
	if hungUp(fd) {
		return true
	}
	flag.Store(false)
	return false
}

// sliceReader is a reusable tcpip.Payloader over a byte slice.
type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// Len implements tcpip.Payloader.
func (r *sliceReader) Len() int { return len(r.b) }

// fdWriter writes endpoint data into a non-blocking socketpair end. A short
// write always comes with an error, as netstack requires.
type fdWriter struct {
	fd  int
	n   int
	err error
}

func (w *fdWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Write(w.fd, p[done:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			w.err = err
			w.n += done
			return done, err
		}
		done += n
	}
	w.n += done
	return done, nil
}

// streamConn pumps one TCP connection between its endpoint and the INS end of
// the app's socketpair. Fields other than hup are touched only by run.
type streamConn struct {
	sched
	s     *sock
	fd    int
	entry waiter.Entry
	hup   atomic.Bool // EPOLLHUP/EPOLLERR seen on fd: no app end is left reading and writing
	// rdhup is set by EPOLLRDHUP (the app end shut its write side or is
	// closed): appToNet then reads until EAGAIN or EOF.
	rdhup atomic.Bool

	connecting bool
	nonblock   bool
	abortConn  atomic.Bool // a shutdown asks to end the connect in progress
	connDone   chan struct{}
	connErr    unix.Errno

	pend     []byte // bytes read from fd the endpoint has not taken yet
	pendBuf  *[]byte
	appEOF   bool // read 0 from fd
	appGone  bool // the EOF came from the release of the app's last descriptor
	finSent  bool // endpoint write side shut
	netEOF   bool // peer FIN delivered as SHUT_WR on fd
	fdNoRecv bool // app no longer reads (EPIPE on fd)
	done     bool
}

var pendPool = sync.Pool{New: func() any { b := make([]byte, chunk); return &b }}

func newStreamConn(s *sock, fd int) *streamConn {
	c := &streamConn{s: s, fd: fd}
	c.entry = waiter.NewFunctionEntry(waiter.ReadableEvents|waiter.WritableEvents|waiter.EventHUp|waiter.EventErr, func(waiter.EventMask) {
		s.e.loop.schedule(c)
	})
	return c
}

func (c *streamConn) fdEvent(ev uint32) {
	if ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.hup.Store(true)
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.rdhup.Store(true)
	}
}

// start registers the connection with the netstack and the event loop.
func (c *streamConn) start() error {
	c.s.wq.EventRegister(&c.entry)
	if err := c.s.e.loop.register(c.fd, c); err != nil {
		c.s.wq.EventUnregister(&c.entry)
		return err
	}
	return nil
}

func (c *streamConn) run(w *worker) {
	if c.done {
		return
	}
	if c.connecting {
		if !c.finishConnect(w) {
			return
		}
	}
	hup := checkHup(&c.hup, c.fd)
	if !c.netEOF && !c.fdNoRecv {
		if c.netToApp() {
			return
		}
	}
	if c.appToNet(w) {
		return
	}
	if c.finSent && (hup || c.netEOF || c.appGone) {
		// Either the app is gone and everything it wrote is queued, or
		// both directions ended with FINs (then, like Linux, the socket
		// is closed though the app may still hold its descriptor).
		// A hang-up before our own SHUT_WR can only mean that the last
		// app descriptor is closed (the shim never shuts its read side
		// in the kernel), and so does an end-of-file the app did not
		// ask for with shutdown: the record goes too. What is left is
		// an app that shut its write side, got the peer's FIN and
		// still holds its descriptor; the shim reports its close of
		// such a finished stream (a Close request).
		gone := (hup && !c.netEOF) || c.appGone
		c.finish()
		if gone {
			c.s.e.forget(c.s.id)
		}
	}
}

// finishConnect completes a connect in progress; it reports whether the
// connection is now established.
func (c *streamConn) finishConnect(w *worker) bool {
	s := c.s
	if c.abortConn.Load() {
		c.failConnect(unix.ECONNRESET)
		return false
	}
	if s.ep.Readiness(waiter.WritableEvents|waiter.EventErr|waiter.EventHUp) == 0 {
		// Still in SYN-SENT: a hang-up of the app's end (its last
		// close) abandons the connect. One that completed meanwhile
		// is closed like any other stream the app closes (a FIN, as
		// Linux's loopback has the connection by then), not reset.
		if checkHup(&c.hup, c.fd) {
			c.failConnect(unix.ECONNABORTED)
		}
		return false
	}
	if err := s.ep.LastError(); err != nil {
		errno := ErrnoOf(err)
		if errno == 0 {
			errno = unix.ECONNREFUSED
		}
		c.failConnectDrained(errno, w)
		return false
	}
	fa, err := s.ep.GetRemoteAddress()
	s.mu.Lock()
	if err == nil {
		s.peer = fromFull(s.family, fa)
	}
	// Connected before the app can see it: the filler is discarded
	// (making the app fd writable) only after this.
	s.state = stConnected
	s.connUnreported = c.nonblock
	s.mu.Unlock()
	if c.nonblock && !c.dropFiller(w) {
		c.failConnect(unix.ECONNABORTED)
		return false
	}
	c.connecting = false
	close(c.connDone)
	return true
}

// dropFiller discards the filler the shim wrote before a nonblocking
// connect to make its end unwritable. Nothing else can be queued before
// the first read: the app's send buffer was full.
func (c *streamConn) dropFiller(w *worker) bool {
	n, err := unix.IoctlGetInt(c.fd, unix.SIOCINQ)
	if err != nil {
		return false
	}
	for n > 0 {
		m, err := unix.Read(c.fd, w.buf[:min(n, len(w.buf))])
		if err == unix.EINTR {
			continue
		}
		if err != nil || m == 0 {
			break
		}
		n -= m
	}
	return true
}

func (c *streamConn) failConnect(errno unix.Errno) { c.failConnectDrained(errno, nil) }

// failConnectDrained ends a connect that failed. With w, the filler of a
// nonblocking connect is discarded first: closing our end with it unread
// would make the app's reads fail with ECONNRESET, where Linux reads EOF
// once SO_ERROR is taken. The error is recorded and our end shut both ways
// (the app's end hangs up) before the filler goes, so the app never sees
// its end writable without the hang-up and the error.
func (c *streamConn) failConnectDrained(errno unix.Errno, w *worker) {
	s := c.s
	c.connErr = errno
	s.mu.Lock()
	if c.nonblock {
		s.soErr = errno
	}
	s.state = stFailed
	s.mu.Unlock()
	if w != nil && c.nonblock {
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
		c.dropFiller(w)
	}
	c.connecting = false
	c.teardown(true)
	close(c.connDone)
	s.attachmentDone()
}

// netToApp moves endpoint data into fd. It reports whether the connection
// ended.
func (c *streamConn) netToApp() bool {
	fw := fdWriter{fd: c.fd}
	for {
		fw.err = nil
		res, err := c.s.ep.Read(&fw, tcpip.ReadOptions{})
		c.s.e.bytesFromNet.Add(uint64(res.Count))
		if fw.err != nil {
			if fw.err == unix.EAGAIN {
				return false // EPOLLOUT reschedules
			}
			// EPIPE: the app shut its read side or is gone.
			c.fdNoRecv = true
			return false
		}
		if err == nil {
			if res.Count == 0 {
				return false
			}
			continue
		}
		switch err.(type) {
		case *tcpip.ErrWouldBlock:
			return false
		case *tcpip.ErrClosedForReceive:
			unix.Shutdown(c.fd, unix.SHUT_WR)
			c.netEOF = true
			return false
		default:
			c.reset(err)
			return true
		}
	}
}

// appToNet moves fd data into the endpoint and turns the app's EOF into a
// FIN. It reports whether the connection ended.
func (c *streamConn) appToNet(w *worker) bool {
	ep := c.s.ep
	for !c.appEOF || len(c.pend) > 0 {
		if len(c.pend) > 0 {
			w.rd.b = c.pend
			n, err := ep.Write(&w.rd, tcpip.WriteOptions{})
			c.s.e.bytesToNet.Add(uint64(n))
			c.pend = c.pend[n:]
			if len(c.pend) == 0 {
				c.releasePend()
			}
			if err != nil {
				if _, ok := err.(*tcpip.ErrWouldBlock); ok {
					return false // EventOut reschedules
				}
				return c.writeFailed(err)
			}
			continue
		}
		if ep.Readiness(waiter.WritableEvents) == 0 {
			return false
		}
		n, err := unix.Read(c.fd, w.buf)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return false
		}
		if err != nil || n == 0 {
			// The shim records a write shutdown before it applies it
			// to the app's end: without one, only the release of the
			// last app descriptor (close, exit) ends the stream.
			c.appEOF = true
			c.appGone = !c.s.appShutWR.Load()
			if err == unix.ECONNRESET || (c.appGone && c.lingerZero()) {
				// The app closed its end with bytes unread (the
				// kernel reports ECONNRESET to this end) or with
				// SO_LINGER {1, 0}: Linux resets the connection
				// instead of closing it.
				c.abort()
				return true
			}
			break
		}
		w.rd.b = w.buf[:n]
		m, terr := ep.Write(&w.rd, tcpip.WriteOptions{})
		c.s.e.bytesToNet.Add(uint64(m))
		if int(m) < n {
			pb := pendPool.Get().(*[]byte)
			c.pendBuf = pb
			c.pend = (*pb)[:copy(*pb, w.buf[m:n])]
		}
		if terr != nil {
			if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
				return false
			}
			return c.writeFailed(terr)
		}
		if n < len(w.buf) && len(c.pend) == 0 && !c.rdhup.Load() {
			// A read of an AF_UNIX stream socket returns less than
			// asked only when it took everything queued, and bytes
			// queued after it raise a new edge: skip the read that
			// would only say EAGAIN. An end of stream raises
			// EPOLLRDHUP, after which reads go on until EOF.
			return false
		}
	}
	if c.appEOF && len(c.pend) == 0 && !c.finSent {
		ep.Shutdown(tcpip.ShutdownWrite)
		c.finSent = true
	}
	return false
}

func (c *streamConn) releasePend() {
	c.pend = nil
	if c.pendBuf != nil {
		pendPool.Put(c.pendBuf)
		c.pendBuf = nil
	}
}

// writeFailed handles an endpoint write error other than would-block.
func (c *streamConn) writeFailed(err tcpip.Error) bool {
	switch err.(type) {
	case *tcpip.ErrClosedForSend:
		// Our own write side is shut (cannot happen before appEOF) or the
		// peer reset: the read side reports a reset; drop app bytes.
		c.releasePend()
		if le := c.s.ep.LastError(); le != nil {
			c.reset(le)
			return true
		}
		c.appEOF, c.finSent = true, true
		return false
	default:
		c.reset(err)
		return true
	}
}

// lingerZero reports whether the socket has SO_LINGER {1, 0}.
func (c *streamConn) lingerZero() bool {
	l := c.s.ep.SocketOptions().GetLinger()
	return l.Enabled && l.Timeout == 0
}

// abort resets the connection once the app has released its end (closed
// with unread bytes or SO_LINGER {1, 0}) and drops the socket record.
func (c *streamConn) abort() {
	c.teardown(true)
	c.s.mu.Lock()
	c.s.state = stDone
	c.s.mu.Unlock()
	c.s.attachmentDone()
	c.s.e.forget(c.s.id)
}

// reset ends the connection after a peer reset or fatal error: SO_ERROR will
// report the errno once, and the INS end is closed so the app reads EOF and
// its writes fail with EPIPE.
func (c *streamConn) reset(err tcpip.Error) {
	errno := ErrnoOf(err)
	if errno == 0 || errno == unix.EPIPE {
		errno = unix.ECONNRESET
	}
	c.s.mu.Lock()
	c.s.soErr = errno
	c.s.mu.Unlock()
	c.finish()
}

// finish ends the pump gracefully: the descriptor is closed and the endpoint
// closed (queued data, then FIN; Linux-like RST if unread data remains). The
// socket record stays until Close.
func (c *streamConn) finish() {
	c.teardown(false)
	c.s.mu.Lock()
	c.s.state = stDone
	c.s.mu.Unlock()
	c.s.attachmentDone()
}

// teardown releases the descriptor, the waiter entry and the endpoint.
func (c *streamConn) teardown(abort bool) {
	if c.done {
		return
	}
	c.done = true
	c.s.e.unadmit(c.s)
	c.s.wq.EventUnregister(&c.entry)
	c.s.e.loop.unregisterClose(c.fd)
	c.fd = -1
	c.releasePend()
	if abort {
		c.s.ep.Abort()
	} else {
		c.s.ep.Close()
	}
}
