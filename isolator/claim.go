package isolator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mpshim/mpshim/isolator/addrcheck"
	"github.com/mpshim/mpshim/isolator/ins/netns"
)

// maxProbeRounds bounds the addresses tried per uplink and family when the
// pool's addresses are taken by other hosts.
const maxProbeRounds = 8

// claim is one uplink's addresses for an INS being started.
type claim struct {
	u      *uplinkState
	link   string // the macvlan in the INS namespace
	a4, a6 netip.Prefix
	kept   bool // a4/a6 came from the INS this one replaces
}

// mac is the stable MAC of the claim: derived from the uplink and its first
// address, so a replaced INS keeps the MAC its neighbours have cached.
func (c *claim) mac() []byte {
	a := c.a4.Addr()
	if !a.IsValid() {
		a = c.a6.Addr()
	}
	return addrcheck.StableMAC(c.u.cfg.Name, a)
}

// claimAddrs gives every claim its stable MAC on the INS's link and probes
// its addresses there (ARP probe, DAD) before the INS may use them. An
// address another host answers for is skipped with a warning naming that
// host's MAC; it stays marked used in the pool, so no other INS of this
// daemon tries it again. The next free address of the pool is probed
// instead. On error the claims hold what they held before.
func (d *Daemon) claimAddrs(ctx context.Context, ns *netns.NS, claims []*claim) error {
	for round := 0; ; round++ {
		for _, c := range claims {
			if err := setLinkMAC(ctx, ns.Name, c.link, c.mac()); err != nil {
				return err
			}
		}
		type job struct {
			c   *claim
			six bool
			err error
		}
		var jobs []*job
		for _, c := range claims {
			if c.a4.IsValid() {
				jobs = append(jobs, &job{c: c})
			}
			if c.a6.IsValid() {
				jobs = append(jobs, &job{c: c, six: true})
			}
		}
		var wg sync.WaitGroup
		for _, j := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := j.c.a4.Addr()
				if j.six {
					a = j.c.a6.Addr()
				}
				j.err = ns.Do(func() error { return addrcheck.Probe(j.c.link, j.c.mac(), a) })
			}()
		}
		wg.Wait()
		again := false
		for _, j := range jobs {
			var cf *addrcheck.Conflict
			if !errors.As(j.err, &cf) {
				if j.err != nil {
					// The probe itself failed: the address is used
					// unprobed rather than not at all.
					d.log.Warn("address probe failed; address used unprobed", "uplink", j.c.u.cfg.Name, "err", j.err)
				}
				continue
			}
			d.log.Warn("address in use on the link by another host; skipped", "uplink", j.c.u.cfg.Name,
				"addr", cf.Addr, "mac", cf.MAC.String())
			if round+1 >= maxProbeRounds {
				return fmt.Errorf("uplink %s: %d addresses of the pool in use by other hosts", j.c.u.cfg.Name, maxProbeRounds)
			}
			pool := j.c.u.pool4
			if j.six {
				pool = j.c.u.pool6
			}
			next, err := pool.get()
			if err != nil {
				return fmt.Errorf("uplink %s: %w", j.c.u.cfg.Name, err)
			}
			// The taken address stays used in the pool.
			if j.six {
				j.c.a6 = next
			} else {
				j.c.a4 = next
			}
			again = true
		}
		if !again {
			return nil
		}
	}
}

// macFreeWait bounds the wait for a dead INS's macvlan to go: deleting a
// namespace destroys its devices asynchronously, once the last reference
// to it is gone, so the replacement may find its MAC still taken on the
// parent for a moment (RTNETLINK: Address already in use).
const macFreeWait = 3 * time.Second

// setLinkMAC sets the hardware address of link dev in namespace ns,
// retrying while another macvlan of the same parent still has it.
func setLinkMAC(ctx context.Context, ns, dev string, mac []byte) error {
	hw := fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5])
	deadline := time.Now().Add(macFreeWait)
	for {
		_, err := netns.RunIP(ctx, ns, "link", "set", "dev", dev, "address", hw)
		if err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), "in use") || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("set MAC %s on %s: %w", hw, dev, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
