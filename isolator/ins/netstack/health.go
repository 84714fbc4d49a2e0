package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/waiter"
)

// monitor runs the health checks of one uplink until ctx ends: every
// interval it reads the carrier and sends one ICMP echo to the gateway
// through the netstack (so the probe takes exactly the path of the flows).
func (s *Stack) monitor(ctx context.Context, l *nicLink) {
	name := l.cfg.Name
	var pr *prober
	if gw, local := probeTarget(l.cfg); gw.IsValid() {
		p, err := newProber(s, l.nic, local, gw)
		if err != nil {
			s.log.Warn("uplink probe disabled", "uplink", name, "err", err)
		} else {
			pr = p
			defer pr.close()
		}
	}
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for seq := uint16(1); ; seq++ {
		if l.pkt != nil {
			up, err := l.pkt.Carrier()
			if err != nil {
				s.log.Warn("uplink carrier", "uplink", name, "err", err)
				up = false
			}
			_ = s.set.ObserveCarrier(name, up && !l.parentDown.Load())
		}
		if pr != nil {
			rtt, ok := pr.probe(ctx, seq, s.interval)
			if ctx.Err() != nil {
				return
			}
			_ = s.set.ObserveProbe(name, rtt, ok)
		}
		s.noteState(l, "health check")
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// noteState logs a change of an uplink's state since it was last noted,
// with its cause.
func (s *Stack) noteState(l *nicLink, cause string) {
	st := s.stateOf(l.cfg.Name)
	l.stateMu.Lock()
	from := l.lastState
	l.lastState = st
	l.stateMu.Unlock()
	if st != from {
		s.log.Info("uplink state", "uplink", l.cfg.Name, "from", from, "to", st, "cause", cause)
	}
}

func (s *Stack) stateOf(name string) string {
	v, err := s.set.State(name)
	if err != nil {
		return "removed"
	}
	return v.String()
}

// probeTarget prefers the IPv4 gateway and falls back to the IPv6 one.
func probeTarget(u UplinkConfig) (gw, local netip.Addr) {
	if u.Gateway4.IsValid() {
		return u.Gateway4, u.Addr4.Addr()
	}
	if u.Gateway6.IsValid() {
		return u.Gateway6, u.Addr6.Addr()
	}
	return netip.Addr{}, netip.Addr{}
}

// prober is an ICMP echo ("ping socket") endpoint of the netstack bound to
// one NIC and connected to its gateway.
type prober struct {
	ep  tcpip.Endpoint
	wq  waiter.Queue
	v6  bool
	buf bytes.Buffer
}

func newProber(s *Stack, nic tcpip.NICID, local, gw netip.Addr) (*prober, error) {
	p := &prober{v6: gw.Is6()}
	tp, np := header.ICMPv4ProtocolNumber, ipv4.ProtocolNumber
	if p.v6 {
		tp, np = header.ICMPv6ProtocolNumber, ipv6.ProtocolNumber
	}
	ep, terr := s.ns.NewEndpoint(tp, np, &p.wq)
	if terr != nil {
		return nil, fmt.Errorf("probe endpoint: %s", terr)
	}
	if terr := ep.Bind(tcpip.FullAddress{NIC: nic, Addr: tcpAddr(local)}); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("probe bind %v: %s", local, terr)
	}
	if terr := ep.Connect(tcpip.FullAddress{NIC: nic, Addr: tcpAddr(gw)}); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("probe connect %v: %s", gw, terr)
	}
	p.ep = ep
	return p, nil
}

func (p *prober) close() { p.ep.Close() }

// probe sends echo request seq and waits up to timeout for its reply.
func (p *prober) probe(ctx context.Context, seq uint16, timeout time.Duration) (time.Duration, bool) {
	var req [header.ICMPv4MinimumSize + 8]byte
	if p.v6 {
		req[0] = byte(header.ICMPv6EchoRequest)
	} else {
		req[0] = byte(header.ICMPv4Echo)
	}
	// Identifier (bytes 4-5) is set by the netstack from the bound port.
	binary.BigEndian.PutUint16(req[6:], seq)
	start := time.Now()
	binary.BigEndian.PutUint64(req[8:], uint64(start.UnixNano()))

	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	p.wq.EventRegister(&entry)
	defer p.wq.EventUnregister(&entry)
	if _, terr := p.ep.Write(bytes.NewReader(req[:]), tcpip.WriteOptions{}); terr != nil {
		// No route or neighbour yet counts as a lost probe.
		sleepCtx(ctx, timeout)
		return 0, false
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.buf.Reset()
		_, terr := p.ep.Read(&p.buf, tcpip.ReadOptions{})
		if terr == nil {
			b := p.buf.Bytes()
			// Replies to earlier, timed-out probes are skipped.
			if len(b) >= 8 && binary.BigEndian.Uint16(b[6:]) == seq {
				return time.Since(start), true
			}
			continue
		}
		if _, wouldBlock := terr.(*tcpip.ErrWouldBlock); !wouldBlock {
			sleepCtx(ctx, timeout-time.Since(start))
			return 0, false
		}
		select {
		case <-ch:
		case <-deadline.C:
			return 0, false
		case <-ctx.Done():
			return 0, false
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
