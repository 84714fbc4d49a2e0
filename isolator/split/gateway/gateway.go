// Package gateway runs an isolator's split tunnels as configured by
// config.Split: one session per peer over UDP subflows (re-established
// when it ends), yamux streams inside it, TCP listeners whose connections
// are carried to a destination behind a peer, the connections of apps
// under the shim that the isolator daemon hands over (handoff.go), the
// peer's streams connected to the destinations it may reach here, and a
// status socket for `isolator peer ls`.
//
// Of two peers, the one whose public key sorts first starts the handshake;
// the other answers. Both therefore use the same configuration shape.
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/isolator/split/forward"
	"github.com/mpshim/mpshim/isolator/split/seal"
	"github.com/mpshim/mpshim/isolator/split/tunnel"
)

// retryAfter is the pause before a failed session is tried again.
const retryAfter = time.Second

// muxWait bounds how long a new connection waits for a peer's session.
const muxWait = 5 * time.Second

// Gateway is a running split configuration.
type Gateway struct {
	// Ready, if set, is called by Run once the key is read and the status
	// and hand-off sockets are open, before any peer's packet is read; an
	// error ends Run. The daemon's gateway drops its privileges there.
	Ready func() error

	key seal.KeyPair
	log *slog.Logger

	mu     sync.RWMutex
	cfg    config.Split
	peers  map[string]*peer
	shim   []shimRoute // routes without a listener, longest prefix first
	runCtx context.Context
	wg     sync.WaitGroup // peers added at run time (AddPeer)
}

type peer struct {
	cfg     config.Peer
	pub     seal.PublicKey
	allow   []netip.Prefix
	mu      sync.Mutex
	cond    *sync.Cond
	sess    *tunnel.Session
	mux     *yamux.Session
	since   time.Time
	starts  int
	streams map[uint64]*streamRec // carried connections (streams.go)
}

// ReadKey reads a private key file written by WriteKey.
func ReadKey(path string) (seal.KeyPair, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return seal.KeyPair{}, fmt.Errorf("gateway: key: %w", err)
	}
	return seal.ParsePrivateKey(strings.TrimSpace(string(b)))
}

// WriteKey writes kp's private key to path, readable by the owner only.
func WriteKey(path string, kp seal.KeyPair) error {
	if err := os.WriteFile(path, []byte(kp.PrivateString()+"\n"), 0o600); err != nil {
		return fmt.Errorf("gateway: key: %w", err)
	}
	return nil
}

// New prepares a gateway; cfg must be valid.
func New(cfg config.Split, log *slog.Logger) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	key, err := ReadKey(cfg.Key)
	if err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, key: key, log: log, peers: map[string]*peer{}}
	for _, pc := range cfg.Peers {
		p, err := g.newPeer(pc, cfg.Expose)
		if err != nil {
			return nil, err
		}
		g.peers[pc.Name] = p
	}
	g.shim = g.shimRoutesOf()
	return g, nil
}

// newPeer prepares peer pc with what expose lets it reach here.
func (g *Gateway) newPeer(pc config.Peer, expose []config.Expose) (*peer, error) {
	pub, err := seal.ParsePublicKey(pc.Key)
	if err != nil {
		return nil, fmt.Errorf("gateway: peer %q: %w", pc.Name, err)
	}
	if pub == g.key.Public {
		return nil, fmt.Errorf("gateway: peer %q has this isolator's own key", pc.Name)
	}
	p := &peer{cfg: pc, pub: pub}
	p.cond = sync.NewCond(&p.mu)
	for _, e := range expose {
		if e.Peer == pc.Name {
			pre, _ := netip.ParsePrefix(e.Dst)
			p.allow = append(p.allow, pre.Masked())
		}
	}
	return p, nil
}

// AddPeer joins another isolator while the gateway runs, with the prefixes
// whose connections of apps under the shim go through it (split, routes
// without a listener) and those it may reach here (expose).
func (g *Gateway) AddPeer(pc config.Peer, split, expose []netip.Prefix) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.runCtx == nil || g.runCtx.Err() != nil {
		return errors.New("gateway: not running")
	}
	cfg := g.cfg
	cfg.Peers = append(append([]config.Peer(nil), cfg.Peers...), pc)
	cfg.Routes = append([]config.SplitRoute(nil), cfg.Routes...)
	cfg.Expose = append([]config.Expose(nil), cfg.Expose...)
	for _, pre := range split {
		cfg.Routes = append(cfg.Routes, config.SplitRoute{Dst: pre.String(), Peer: pc.Name})
	}
	for _, pre := range expose {
		cfg.Expose = append(cfg.Expose, config.Expose{Dst: pre.String(), Peer: pc.Name})
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("gateway: peer %q: %w", pc.Name, err)
	}
	p, err := g.newPeer(pc, cfg.Expose)
	if err != nil {
		return err
	}
	g.cfg = cfg
	g.peers[pc.Name] = p
	g.shim = g.shimRoutesOf()
	ctx := g.runCtx
	g.wg.Go(func() { g.runPeer(ctx, p) })
	g.log.Info("split: peer added", "peer", pc.Name, "paths", len(pc.Paths), "split", len(split), "expose", len(expose))
	return nil
}

// Run serves until ctx ends.
func (g *Gateway) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer g.wg.Wait()
	g.mu.Lock()
	g.runCtx = ctx
	g.mu.Unlock()
	if g.cfg.Status != "" {
		ln, err := listenStatus(g.cfg.Status)
		if err != nil {
			return err
		}
		defer ln.Close()
		wg.Go(func() { g.serveStatus(ln) })
		context.AfterFunc(ctx, func() { ln.Close() })
	}
	if g.cfg.Handoff != "" {
		ln, err := listenHandoff(g.cfg.Handoff)
		if err != nil {
			return err
		}
		defer ln.Close()
		context.AfterFunc(ctx, func() { ln.Close() })
		wg.Go(func() { g.serveHandoff(ctx, ln) })
	}
	for _, r := range g.cfg.Routes {
		if r.Listen == "" {
			continue // carried for apps under the shim (handoff.go)
		}
		ln, err := net.Listen("tcp", r.Listen)
		if err != nil {
			return fmt.Errorf("gateway: split %s: %w", r.Dst, err)
		}
		context.AfterFunc(ctx, func() { ln.Close() })
		dst, _ := netip.ParseAddrPort(r.Dst)
		p := g.peers[r.Peer]
		wg.Go(func() { g.serveRoute(ctx, ln, p, dst) })
	}
	if g.Ready != nil {
		if err := g.Ready(); err != nil {
			cancel()
			return fmt.Errorf("gateway: %w", err)
		}
	}
	g.mu.RLock()
	for _, p := range g.peers {
		wg.Go(func() { g.runPeer(ctx, p) })
	}
	g.mu.RUnlock()
	<-ctx.Done()
	g.mu.RLock()
	for _, p := range g.peers {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	}
	g.mu.RUnlock()
	return nil
}

// runPeer keeps a session with p up until ctx ends.
func (g *Gateway) runPeer(ctx context.Context, p *peer) {
	initiator := bytes.Compare(g.key.Public[:], p.pub[:]) < 0
	log := g.log.With("peer", p.cfg.Name)
	for ctx.Err() == nil {
		err := g.session(ctx, p, initiator, log)
		if ctx.Err() != nil {
			return
		}
		log.Warn("split: session ended", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryAfter):
		}
	}
}

func (g *Gateway) session(ctx context.Context, p *peer, initiator bool, log *slog.Logger) error {
	var links []tunnel.Link
	for i, pp := range p.cfg.Paths {
		local, endpoint, _ := pp.Parse()
		l, err := tunnel.DialUDP(local, endpoint)
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			return fmt.Errorf("path %d: %w", i, err)
		}
		links = append(links, l)
	}
	cfg := tunnel.Config{Local: g.key, Peer: p.pub, Links: links, Log: log}
	var (
		sess *tunnel.Session
		err  error
	)
	if initiator {
		hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		sess, err = tunnel.Dial(hctx, cfg)
		cancel()
	} else {
		sess, err = tunnel.Accept(ctx, cfg)
	}
	if err != nil {
		return err
	}
	mux, err := tunnel.Mux(sess)
	if err != nil {
		sess.Close()
		return err
	}
	log.Info("split: session up", "paths", len(links), "initiator", initiator)
	p.mu.Lock()
	p.sess, p.mux, p.since = sess, mux, time.Now()
	p.starts++
	p.cond.Broadcast()
	p.mu.Unlock()
	served := make(chan error, 1)
	dial := func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return nil, err
		}
		return p.track(DirIn, dst, c), nil
	}
	go func() { served <- forward.Serve(ctx, mux, p.allows, dial, log) }()
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-sess.Done():
		err = sess.Err()
	case <-mux.CloseChan():
		err = errors.New("streams closed")
	case err = <-served:
	}
	p.mu.Lock()
	p.sess, p.mux = nil, nil
	p.mu.Unlock()
	mux.Close()
	sess.Close()
	return err
}

// allows says whether the peer may reach dst through this isolator.
func (p *peer) allows(dst netip.AddrPort) bool {
	for _, pre := range p.allow {
		if pre.Contains(dst.Addr().Unmap()) {
			return true
		}
	}
	return false
}

// currentMux waits up to muxWait for p's session.
func (p *peer) currentMux(ctx context.Context) *yamux.Session {
	deadline := time.Now().Add(muxWait)
	t := time.AfterFunc(muxWait, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer t.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.mux == nil && ctx.Err() == nil && time.Now().Before(deadline) {
		p.cond.Wait()
	}
	return p.mux
}

// serveRoute carries each connection accepted on ln to dst through p.
func (g *Gateway) serveRoute(ctx context.Context, ln net.Listener, p *peer, dst netip.AddrPort) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			m := p.currentMux(ctx)
			if m == nil {
				g.log.Info("split: no session", "peer", p.cfg.Name, "dst", dst)
				c.Close()
				return
			}
			st, err := forward.Dial(m, dst)
			if err != nil {
				g.log.Info("split: stream", "peer", p.cfg.Name, "err", err)
				c.Close()
				return
			}
			forward.Pipe(p.track(DirOut, dst, c), st)
		}()
	}
}

// PeerStatus is what `isolator peer ls` shows of one peer.
type PeerStatus struct {
	Name     string             `json:"name"`
	Key      string             `json:"key"`
	Up       bool               `json:"up"`
	Since    time.Time          `json:"since,omitzero"`
	Sessions int                `json:"sessions"`
	Streams  int                `json:"streams"`
	Paths    []tunnel.PathStats `json:"paths"`
	Counters tunnel.Counters    `json:"counters"`
	// Carried are the connections carried as streams (at most 1,000,
	// oldest first), both directions.
	Carried []StreamStatus `json:"carried,omitempty"`
}

// Status returns the state of every peer.
func (g *Gateway) Status() []PeerStatus {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []PeerStatus
	for _, pc := range g.cfg.Peers {
		p := g.peers[pc.Name]
		p.mu.Lock()
		st := PeerStatus{Name: pc.Name, Key: pc.Key, Sessions: p.starts, Since: p.since, Carried: p.streamListLocked()}
		sess, mux := p.sess, p.mux
		p.mu.Unlock()
		if sess != nil {
			st.Up = true
			st.Paths, st.Counters = sess.Stats()
			st.Streams = mux.NumStreams()
		} else {
			st.Since = time.Time{}
		}
		out = append(out, st)
	}
	return out
}

func listenStatus(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("gateway: status socket: %w", err)
	}
	// A stale socket of an earlier run is replaced; a live one is not.
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("gateway: status socket %s is in use", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("gateway: status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("gateway: status socket: %w", err)
	}
	return ln, nil
}

// Control requests on the status socket.
const (
	// OpStatus asks for every peer's status.
	OpStatus = "ls"
	// OpAddPeer joins a peer (AddPeer).
	OpAddPeer = "add"
	// OpSandboxProbe makes the gateway try, under its confinement, the
	// acts of sandbox.Probe and answer how each ended. It is refused
	// unless sandbox.ProbeEnv is set in the gateway's environment (tests
	// set it).
	OpSandboxProbe = "sandbox-probe"
)

// ControlRequest is one request on the status socket: one JSON line.
type ControlRequest struct {
	Op string `json:"op"`
	// Peer, Split and Expose are the arguments of OpAddPeer.
	Peer   config.Peer    `json:"peer,omitzero"`
	Split  []netip.Prefix `json:"split,omitempty"`
	Expose []netip.Prefix `json:"expose,omitempty"`
}

// ControlReply answers a ControlRequest.
type ControlReply struct {
	Error string       `json:"error,omitempty"`
	Peers []PeerStatus `json:"peers,omitempty"`
	// Probe answers OpSandboxProbe.
	Probe []sandbox.ProbeResult `json:"probe,omitempty"`
}

// maxControl bounds a control request.
const maxControl = 64 << 10

// serveStatus answers one request per connection.
func (g *Gateway) serveStatus(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			var req ControlRequest
			var reply ControlReply
			if err := json.NewDecoder(io.LimitReader(c, maxControl)).Decode(&req); err != nil {
				reply.Error = fmt.Sprintf("bad request: %v", err)
			} else {
				switch req.Op {
				case OpStatus:
					reply.Peers = g.Status()
				case OpAddPeer:
					if err := g.AddPeer(req.Peer, req.Split, req.Expose); err != nil {
						reply.Error = err.Error()
					}
				case OpSandboxProbe:
					if !sandbox.ProbeEnabled() {
						reply.Error = "sandbox probe not enabled"
					} else {
						reply.Probe = sandbox.Probe(sandbox.ProbeTarget{})
					}
				default:
					reply.Error = fmt.Sprintf("unknown operation %q (ls, add)", req.Op)
				}
			}
			_ = json.NewEncoder(c).Encode(reply)
		}()
	}
}

// control sends req to the gateway's status socket at path.
func control(ctx context.Context, path string, req ControlRequest) (ControlReply, error) {
	var d net.Dialer
	var reply ControlReply
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return reply, fmt.Errorf("split gateway %s: %w", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return reply, fmt.Errorf("split gateway %s: %w", path, err)
	}
	if err := json.NewDecoder(c).Decode(&reply); err != nil {
		return reply, fmt.Errorf("split gateway %s: %w", path, err)
	}
	if reply.Error != "" {
		return reply, errors.New(reply.Error)
	}
	return reply, nil
}

// SandboxProbe asks the gateway at the status socket path for
// OpSandboxProbe.
func SandboxProbe(ctx context.Context, path string) ([]sandbox.ProbeResult, error) {
	r, err := control(ctx, path, ControlRequest{Op: OpSandboxProbe})
	if err != nil {
		return nil, err
	}
	return r.Probe, nil
}

// ReadStatus asks a gateway's status socket.
func ReadStatus(ctx context.Context, path string) ([]PeerStatus, error) {
	r, err := control(ctx, path, ControlRequest{Op: OpStatus})
	return r.Peers, err
}

// RequestAddPeer asks the gateway at path to join a peer (AddPeer).
func RequestAddPeer(ctx context.Context, path string, pc config.Peer, split, expose []netip.Prefix) error {
	_, err := control(ctx, path, ControlRequest{Op: OpAddPeer, Peer: pc, Split: split, Expose: expose})
	return err
}
