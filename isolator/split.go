package isolator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mpshim/mpshim/isolator/api"
	"github.com/mpshim/mpshim/isolator/config"
	"github.com/mpshim/mpshim/isolator/ins/sandbox"
	"github.com/mpshim/mpshim/isolator/split/gateway"
)

// splitRestart is the pause before a split gateway that exited is started
// again.
const splitRestart = time.Second

// splitState is the daemon's split gateway: its configuration as it is now
// (peers added at run time included) and the file the process reads it
// from.
type splitState struct {
	mu   sync.Mutex // one change at a time; guards cfg
	cfg  config.Split
	file string
}

// write puts cfg where the gateway process reads it when it (re)starts.
func (st *splitState) write(cfg config.Split) error {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("split tunnel: %w", err)
	}
	tmp := st.file + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("split tunnel: %w", err)
	}
	if err := os.Rename(tmp, st.file); err != nil {
		return fmt.Errorf("split tunnel: %w", err)
	}
	return nil
}

// prefixes returns the destinations of apps under the shim that cfg sends
// through a peer.
func splitPrefixes(cfg config.Split) []netip.Prefix {
	var out []netip.Prefix
	for p := range cfg.ShimPrefixes() {
		out = append(out, p)
	}
	return out
}

// startSplit runs the split tunnel gateway when the configuration has a
// split key or peers: `isolator split run` as a child process in the
// uplinks' network namespace, started again when it exits, and tells the
// app server to hand it the connections to the prefixes of the `split:`
// routes without a listener. The gateway parses every packet that arrives
// from the peers (handshakes, sealed frames): it runs apart from the
// daemon, which only passes it stream ends over a unix socket
// (gateway.Handoff).
func (d *Daemon) startSplit(ctx context.Context) error {
	sc, ok := d.cfg.SplitTunnel()
	if !ok {
		return nil
	}
	// A key that cannot be read would only make the gateway exit again
	// and again: say so now.
	if _, err := gateway.ReadKey(sc.Key); err != nil {
		return fmt.Errorf("split_key: %w", err)
	}
	dir := filepath.Dir(d.cfg.API)
	sc.Handoff = filepath.Join(dir, "split-handoff.sock")
	st := &splitState{cfg: sc, file: filepath.Join(dir, "split.yaml")}
	if err := st.write(sc); err != nil {
		return err
	}
	d.mu.Lock()
	d.split = st
	d.mu.Unlock()
	d.app.SetSplit(splitPrefixes(sc), sc.Handoff)
	go func() {
		defer os.Remove(st.file)
		for ctx.Err() == nil {
			err := d.runSplit(ctx, st.file)
			if ctx.Err() != nil {
				return
			}
			d.log.Warn("split gateway exited; starting it again", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(splitRestart):
			}
		}
	}()
	d.log.Info("split gateway", "peers", len(sc.Peers), "status", sc.Status)
	return nil
}

// runSplit runs the gateway process once, until it exits or ctx ends.
func (d *Daemon) runSplit(ctx context.Context, file string) error {
	// It runs as the INS user (ins_user) once its sockets are open.
	c := d.cfg
	c.INSUIDs = ""
	id, err := c.INSIdentity(1)
	if err != nil {
		return fmt.Errorf("split gateway user: %w", err)
	}
	cmd := exec.Command(d.self, "split", "run", "--config", file, "--user", fmt.Sprintf("%d:%d", id.UID, id.GID), "--empty-root")
	out, started, err := insStdio(cmd)
	if err != nil {
		return err
	}
	// It dies with the daemon, and a terminal's ^C goes to the daemon. Its
	// own mount and pid namespaces (those of an INS) let it pivot into an
	// empty root once sealed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true, Cloneflags: sandbox.Cloneflags}
	err = startInNetNS(d.cfg.NetNS, cmd)
	started()
	if err != nil {
		out.Close()
		return fmt.Errorf("start: %w", err)
	}
	go relayOutput("split ", out)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		return ctx.Err()
	}
}

// peerAdd answers api.OpPeerAdd: the running gateway joins the peer, the
// configuration the gateway restarts with keeps it, and connections of
// apps under the shim to the new split prefixes go through it.
func (d *Daemon) peerAdd(ctx context.Context, req *api.PeerAddRequest) api.Response {
	d.mu.Lock()
	st := d.split
	d.mu.Unlock()
	if st == nil {
		return api.Errorf("no split tunnel: the configuration has no split_key")
	}
	if req == nil {
		return api.Errorf("peer-add: no peer")
	}
	parse := func(what string, list []string) ([]netip.Prefix, error) {
		var out []netip.Prefix
		for _, s := range list {
			p, err := config.SplitRoute{Dst: s}.Prefix()
			if err != nil {
				return nil, fmt.Errorf("%s %q: want a prefix such as 10.20.0.0/16", what, s)
			}
			out = append(out, p)
		}
		return out, nil
	}
	split, err1 := parse("split", req.Split)
	expose, err2 := parse("expose", req.Expose)
	if err := errors.Join(err1, err2); err != nil {
		return api.Errorf("%v", err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	cfg := st.cfg
	cfg.Peers = append(append([]config.Peer(nil), cfg.Peers...), req.Peer)
	cfg.Routes = append([]config.SplitRoute(nil), cfg.Routes...)
	cfg.Expose = append([]config.Expose(nil), cfg.Expose...)
	for _, p := range split {
		cfg.Routes = append(cfg.Routes, config.SplitRoute{Dst: p.String(), Peer: req.Peer.Name})
	}
	for _, p := range expose {
		cfg.Expose = append(cfg.Expose, config.Expose{Dst: p.String(), Peer: req.Peer.Name})
	}
	if err := cfg.Validate(); err != nil {
		return api.Errorf("peer %q: %v", req.Peer.Name, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := gateway.RequestAddPeer(cctx, cfg.Status, req.Peer, split, expose); err != nil {
		return api.Errorf("peer %q: %v", req.Peer.Name, err)
	}
	st.cfg = cfg
	if err := st.write(cfg); err != nil {
		d.log.Warn("split: the added peer is not kept across a restart of the gateway", "peer", req.Peer.Name, "err", err)
	}
	d.app.SetSplit(splitPrefixes(cfg), cfg.Handoff)
	d.log.Info("split: peer added", "peer", req.Peer.Name, "paths", len(req.Peer.Paths), "split", req.Split, "expose", req.Expose)
	return api.Response{OK: true}
}

// splitStatus answers api.OpSplitStatus from the gateway's status socket.
func (d *Daemon) splitStatus(ctx context.Context) api.Response {
	d.mu.Lock()
	st := d.split
	d.mu.Unlock()
	if st == nil {
		return api.Response{OK: true}
	}
	st.mu.Lock()
	path := st.cfg.Status
	st.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	peers, err := gateway.ReadStatus(cctx, path)
	if err != nil {
		return api.Errorf("split gateway: %v", err)
	}
	return api.Response{OK: true, Split: peers}
}
