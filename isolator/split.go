package isolator

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
)

// splitRestart is the pause before a split gateway that exited is started
// again.
const splitRestart = time.Second

// startSplit runs the split tunnel gateway when the configuration has
// peers: `isolator split run` as a child process in the uplinks' network
// namespace, restarted when it exits, and tells the app server to hand it
// the connections to the prefixes of the `split:` routes without a
// listener. The gateway parses every packet that arrives from the peers
// (handshakes, sealed frames): it runs apart from the daemon, which only
// passes it stream ends over a unix socket (gateway.Handoff).
func (d *Daemon) startSplit(ctx context.Context) error {
	sc, ok := d.cfg.SplitTunnel()
	if !ok {
		return nil
	}
	dir := filepath.Dir(d.cfg.API)
	sc.Handoff = filepath.Join(dir, "split-handoff.sock")
	b, err := yaml.Marshal(sc)
	if err != nil {
		return fmt.Errorf("split tunnel: %w", err)
	}
	file := filepath.Join(dir, "split.yaml")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return fmt.Errorf("split tunnel: %w", err)
	}
	var prefixes []netip.Prefix
	for p := range sc.ShimPrefixes() {
		prefixes = append(prefixes, p)
	}
	d.app.SetSplit(prefixes, sc.Handoff)
	go func() {
		defer os.Remove(file)
		for ctx.Err() == nil {
			err := d.runSplit(ctx, file)
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
	d.log.Info("split gateway", "peers", len(sc.Peers), "prefixes", len(prefixes), "status", sc.Status)
	return nil
}

// runSplit runs the gateway process once, until it exits or ctx ends.
func (d *Daemon) runSplit(ctx context.Context, file string) error {
	cmd := exec.Command(d.self, "split", "run", "--config", file)
	out, started, err := insStdio(cmd)
	if err != nil {
		return err
	}
	// It dies with the daemon, and a terminal's ^C goes to the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
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
