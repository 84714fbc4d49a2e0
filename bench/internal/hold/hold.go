// Package hold opens many idle TCP connections from several source
// addresses and keeps them open: the client side of the connection-scale
// benchmark.
package hold

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Config says what to open.
type Config struct {
	// N is the number of connections.
	N int
	// Sources are the local addresses, used in turn (none: the kernel
	// picks).
	Sources []netip.Addr
	// Targets are the servers, used in turn.
	Targets []netip.AddrPort
	// Concurrency bounds the connects in flight (0 means 256).
	Concurrency int
	// Timeout bounds each connect (0 means 10 s).
	Timeout time.Duration
}

// Result says how opening went.
type Result struct {
	// Established is the number of connections open, Failed the number
	// that could not be opened.
	Established int `json:"established"`
	Failed      int `json:"failed"`
	// Elapsed is the time from the first connect to the last.
	Elapsed time.Duration `json:"elapsed_ns"`
	// FirstError describes the first failure.
	FirstError string `json:"first_error,omitempty"`
}

// Set is a set of open connections.
type Set struct {
	mu    sync.Mutex
	conns []net.Conn
}

// Close closes every connection.
func (s *Set) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// Len is the number of open connections.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// RaiseNoFile lifts RLIMIT_NOFILE to at least n descriptors.
func RaiseNoFile(n uint64) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur >= n {
		return nil
	}
	rl.Cur = n
	if rl.Max < n {
		rl.Max = n
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", n, err)
	}
	return nil
}

// Open opens cfg.N connections and returns them with how it went. It fails
// only on a bad configuration; failed connects are counted in the Result.
func Open(ctx context.Context, cfg Config) (*Set, Result, error) {
	if cfg.N < 1 || len(cfg.Targets) == 0 {
		return nil, Result{}, errors.New("hold: need N ≥ 1 and at least one target")
	}
	conc := cfg.Concurrency
	if conc <= 0 {
		conc = 256
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	set := &Set{conns: make([]net.Conn, 0, cfg.N)}
	var (
		next     atomic.Int64
		failed   atomic.Int64
		errOnce  sync.Once
		firstErr string
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range min(conc, cfg.N) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.N || ctx.Err() != nil {
					return
				}
				d := net.Dialer{Timeout: timeout}
				if len(cfg.Sources) > 0 {
					d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(cfg.Sources[i%len(cfg.Sources)], 0))
				}
				dst := cfg.Targets[i%len(cfg.Targets)]
				c, err := d.DialContext(ctx, "tcp", dst.String())
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err.Error() })
					continue
				}
				set.mu.Lock()
				set.conns = append(set.conns, c)
				set.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res := Result{Established: set.Len(), Failed: int(failed.Load()), Elapsed: time.Since(start), FirstError: firstErr}
	return set, res, nil
}
