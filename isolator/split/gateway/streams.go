package gateway

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// maxListedStreams bounds the streams one peer's status lists.
const maxListedStreams = 1000

// Directions of a carried stream.
const (
	// DirOut: a connection made on this site, carried to a destination
	// behind the peer.
	DirOut = "out"
	// DirIn: a connection the peer carried here, to a destination on this
	// site.
	DirIn = "in"
)

// StreamStatus is one connection carried as a stream of a peer's session.
type StreamStatus struct {
	ID    uint64         `json:"id"`
	Dir   string         `json:"dir"`
	Dst   netip.AddrPort `json:"dst"`
	Since time.Time      `json:"since"`
	// Sent and Received count the connection's bytes into and out of the
	// tunnel on this site.
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
}

// streamRec is a live carried stream.
type streamRec struct {
	id    uint64
	dir   string
	dst   netip.AddrPort
	since time.Time
	sent  atomic.Uint64 // read from the local connection, into the tunnel
	recv  atomic.Uint64 // written to the local connection, out of the tunnel
}

var streamIDs atomic.Uint64

// track registers a stream of p carrying local (the connection on this
// site) and returns local wrapped to count its bytes; closing it forgets
// the stream.
func (p *peer) track(dir string, dst netip.AddrPort, local net.Conn) net.Conn {
	r := &streamRec{id: streamIDs.Add(1), dir: dir, dst: dst, since: time.Now()}
	p.mu.Lock()
	if p.streams == nil {
		p.streams = map[uint64]*streamRec{}
	}
	p.streams[r.id] = r
	p.mu.Unlock()
	c := &countedConn{Conn: local, r: r}
	c.forget = func() {
		p.mu.Lock()
		delete(p.streams, r.id)
		p.mu.Unlock()
	}
	return c
}

// streamListLocked returns p's streams, oldest first, at most maxListedStreams.
// p.mu must be held.
func (p *peer) streamListLocked() []StreamStatus {
	out := make([]StreamStatus, 0, min(len(p.streams), maxListedStreams))
	for _, r := range p.streams {
		out = append(out, StreamStatus{ID: r.id, Dir: r.dir, Dst: r.dst, Since: r.since, Sent: r.sent.Load(), Received: r.recv.Load()})
	}
	slices.SortFunc(out, func(a, b StreamStatus) int { return cmp.Compare(a.ID, b.ID) })
	if len(out) > maxListedStreams {
		out = out[:maxListedStreams]
	}
	return out
}

// countedConn counts what passes through a carried connection; it passes
// a half close on (forward.Pipe).
type countedConn struct {
	net.Conn
	r      *streamRec
	once   sync.Once
	forget func()
}

// Close closes the connection and forgets the stream.
func (c *countedConn) Close() error {
	c.once.Do(c.forget)
	return c.Conn.Close()
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.r.sent.Add(uint64(n))
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.r.recv.Add(uint64(n))
	return n, err
}

// CloseWrite half-closes the connection when it can, and closes it when it
// cannot.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
