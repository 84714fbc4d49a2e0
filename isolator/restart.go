package isolator

import (
	"context"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

// Restart policy for INS that die: the first death is replaced at once;
// an INS that dies again within stableUptime of its start waits
// firstBackoff, doubled for every further such death up to maxBackoff, so
// a crash-looping INS does not spin. An INS that ran stableUptime or longer
// starts the count afresh.
const (
	firstBackoff = 250 * time.Millisecond
	maxBackoff   = 30 * time.Second
	stableUptime = 60 * time.Second
)

// insHistory is what the daemon remembers of an INS id across restarts.
type insHistory struct {
	restarts int       // replacements started
	lastExit string    // how the last process of this id ended
	lastAt   time.Time // when
	crashes  int       // consecutive deaths within stableUptime
}

// backoff is the wait before the replacement after n consecutive early
// deaths.
func backoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := firstBackoff
	for i := 2; i < n && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}

// exitReason says how a process ended: "killed by signal 9 (killed)",
// "exit status 1", "exited".
func exitReason(ps *os.ProcessState, err error) string {
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Signaled():
				return fmt.Sprintf("killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
			case ws.Exited() && ws.ExitStatus() != 0:
				return fmt.Sprintf("exit status %d", ws.ExitStatus())
			case ws.Exited():
				return "exited"
			}
		}
	}
	if err != nil {
		return err.Error()
	}
	return "exited"
}

// history returns the record of INS id; d.mu must be held.
func (d *Daemon) historyLocked(id int) *insHistory {
	if d.hist == nil {
		d.hist = map[int]*insHistory{}
	}
	h := d.hist[id]
	if h == nil {
		h = &insHistory{}
		d.hist[id] = h
	}
	return h
}

// onINSGone tells the app side that INS id is gone (its listeners are
// re-created on the replacement).
func (d *Daemon) onINSGone(id int) {
	d.mu.Lock()
	app := d.app
	d.mu.Unlock()
	if app != nil {
		app.OnINSGone(id)
	}
}

// replace starts an INS with the id and addresses (keep) of one that died,
// after the backoff of its history, retrying with growing backoff until it
// runs or the daemon stops; then the addresses go back to their pools.
func (d *Daemon) replace(id int, keep []netstack.UplinkConfig, reason string, uptime time.Duration) {
	d.mu.Lock()
	h := d.historyLocked(id)
	h.lastExit, h.lastAt = reason, time.Now()
	if uptime < stableUptime {
		h.crashes++
	} else {
		h.crashes = 1
	}
	ctx := d.runCtx
	d.mu.Unlock()
	if ctx == nil {
		ctx = context.Background()
	}
	log := d.log.With("ins", id)
	for {
		d.mu.Lock()
		wait := backoff(h.crashes)
		d.mu.Unlock()
		if wait > 0 {
			log.Warn("INS dies repeatedly; waiting before the next restart", "wait", wait, "deaths", h.crashes)
		}
		select {
		case <-ctx.Done():
			d.releaseKept(keep)
			d.lb.Forget(id)
			return
		case <-time.After(wait):
		}
		start := time.Now()
		d.spawnMu.Lock()
		d.mu.Lock()
		stopping := d.stopping
		_, taken := d.ins[id]
		total := len(d.ins) + 1
		d.mu.Unlock()
		if stopping || taken {
			d.spawnMu.Unlock()
			d.releaseKept(keep)
			d.lb.Forget(id)
			return
		}
		p, err := d.startINS(ctx, id, total, keep)
		if err != nil {
			d.spawnMu.Unlock()
			log.Error("INS restart failed", "err", err)
			d.mu.Lock()
			h.crashes++
			h.lastExit, h.lastAt = "restart failed: "+err.Error(), time.Now()
			d.mu.Unlock()
			continue
		}
		d.mu.Lock()
		h.restarts++
		p.restarts = h.restarts
		d.ins[id] = p
		onSpawn := d.onSpawn
		d.mu.Unlock()
		d.saveState()
		d.catchUp(ctx, p)
		p.kickCarrier()
		d.spawnMu.Unlock()
		var gone []netstack.UplinkConfig // kept for uplinks removed meanwhile
		for _, k := range keep {
			if !slices.ContainsFunc(p.uplinkConfigs(), func(x netstack.UplinkConfig) bool { return x.Name == k.Name }) {
				gone = append(gone, k)
			}
		}
		d.releaseKept(gone)
		if onSpawn != nil {
			onSpawn(p)
		}
		d.lbUp(p)
		log.Info("INS replaced", "pid", p.pid(), "restarts", h.restarts, "after", time.Since(start).Round(time.Millisecond),
			"previous_exit", reason, "uplinks", addrList(p.cfg.Stack.Uplinks))
		return
	}
}

// releaseKept returns the addresses of a dead INS that will not be
// replaced to their pools.
func (d *Daemon) releaseKept(keep []netstack.UplinkConfig) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range keep {
		for _, u := range d.uplinks {
			if u.cfg.Name == k.Name {
				u.pool4.put(k.Addr4)
				u.pool6.put(k.Addr6)
			}
		}
	}
}
