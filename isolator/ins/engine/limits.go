package engine

import (
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
)

// engineLimits are the limits `isolator tune` sets on an engine: the listen
// backlog cap and the number of concurrent accepted connections per source
// address.
type engineLimits struct {
	backlogCap atomic.Int32 // 0 means MaxBacklog
	maxPerSrc  atomic.Int64 // 0 means no limit
	refused    atomic.Uint64

	mu    sync.Mutex
	bySrc map[netip.Addr]int // accepted connections alive, by peer address
}

// SetBacklogCap caps the backlog of every listener, present and future,
// at n (listen(2) clamps to net.core.somaxconn the same way). A listener
// whose accept queue already holds more keeps its backlog until it drains
// and listens again.
func (e *Engine) SetBacklogCap(n int) {
	if n <= 0 || n > 1<<16 {
		n = MaxBacklog
	}
	e.limits.backlogCap.Store(int32(n))
	e.mu.Lock()
	var ls []*sock
	for _, s := range e.socks {
		ls = append(ls, s)
	}
	e.mu.Unlock()
	for _, s := range ls {
		s.mu.Lock()
		if s.state == stListening {
			_ = s.ep.Listen(e.netBacklog(s.backlog))
		}
		s.mu.Unlock()
	}
}

// netBacklog is the netstack's accept queue capacity for a backlog asked
// for by listen(2): Linux's queue is full only above the (clamped) backlog,
// so it holds one more connection (one for listen(fd, 0)); the netstack's
// is full at its capacity.
func (e *Engine) netBacklog(backlog int) int { return e.clampBacklog(backlog) + 1 }

// clampBacklog applies the cap to a backlog asked for by listen(2).
func (e *Engine) clampBacklog(backlog int) int {
	c := int(e.limits.backlogCap.Load())
	if c == 0 {
		c = MaxBacklog
	}
	if uint(backlog) > uint(c) {
		return c
	}
	return backlog
}

// SetMaxConnPerSource limits the connections accepted from one source
// address that are alive at once; 0 lifts the limit. Connections already
// accepted count, whenever the limit is set.
func (e *Engine) SetMaxConnPerSource(n int) {
	e.limits.maxPerSrc.Store(int64(max(n, 0)))
}

// ConnRefused is the number of accepted connections reset because their
// source had too many.
func (e *Engine) ConnRefused() uint64 { return e.limits.refused.Load() }

// admit counts a connection just accepted from s.peer; false means its
// source is at the limit and the connection must be refused.
func (e *Engine) admit(s *sock) bool {
	a := s.peer.Addr().Unmap()
	lim := &e.limits
	lim.mu.Lock()
	defer lim.mu.Unlock()
	if m := lim.maxPerSrc.Load(); m > 0 && int64(lim.bySrc[a]) >= m {
		lim.refused.Add(1)
		return false
	}
	if lim.bySrc == nil {
		lim.bySrc = map[netip.Addr]int{}
	}
	lim.bySrc[a]++
	s.mu.Lock()
	s.counted = true
	s.mu.Unlock()
	return true
}

// unadmit ends the count of an accepted connection; it is idempotent.
func (e *Engine) unadmit(s *sock) {
	s.mu.Lock()
	counted := s.counted
	s.counted = false
	s.mu.Unlock()
	if !counted {
		return
	}
	a := s.peer.Addr().Unmap()
	lim := &e.limits
	lim.mu.Lock()
	if lim.bySrc[a] <= 1 {
		delete(lim.bySrc, a)
	} else {
		lim.bySrc[a]--
	}
	lim.mu.Unlock()
}

// BacklogCap returns the cap on listen backlogs (SetBacklogCap).
func (e *Engine) BacklogCap() int { return e.clampBacklog(math.MaxInt32) }

// MaxConnPerSource returns the limit of accepted connections per source
// address; 0 means none (SetMaxConnPerSource).
func (e *Engine) MaxConnPerSource() int { return int(e.limits.maxPerSrc.Load()) }
