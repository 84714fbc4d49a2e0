package ins

// Name resolution for the apps: Resolve requests are answered by an
// isolator/dns resolver whose queries leave through this INS's netstack,
// placed on an uplink like any other flow.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/mpshim/mpshim/isolator/dns"
	"github.com/mpshim/mpshim/isolator/uplink"
	"github.com/mpshim/mpshim/msgproto"
)

// DNSConfig configures the resolver of an INS.
type DNSConfig struct {
	// Servers are the nameservers, asked in order; none means every
	// lookup answers ResolveAgain.
	Servers []netip.AddrPort `json:"servers,omitempty"`
	// Timeout bounds one query to one server (0: dns.DefaultTimeout).
	Timeout time.Duration `json:"timeout,omitempty"`
	// Attempts is the number of rounds over the servers (0:
	// dns.DefaultAttempts).
	Attempts int `json:"attempts,omitempty"`
}

// netTransport carries DNS queries over the INS's netstack.
type netTransport struct{ st *Stack }

// Exchange implements dns.Transport. The query leaves by the uplink
// ChooseUplink picks for the server, bound to that uplink's address.
func (t netTransport) Exchange(ctx context.Context, srv netip.AddrPort, stream bool, q []byte) ([]byte, error) {
	proto := tcpip.TransportProtocolNumber(udp.ProtocolNumber)
	if stream {
		proto = tcp.ProtocolNumber
	}
	nic, local, err := t.st.ChooseUplink(srv, proto)
	if err != nil {
		return nil, fmt.Errorf("dns transport: %w", err)
	}
	ra := srv.Addr().Unmap()
	netProto := tcpip.NetworkProtocolNumber(ipv4.ProtocolNumber)
	if ra.Is6() {
		netProto = ipv6.ProtocolNumber
	}
	laddr := tcpip.FullAddress{NIC: nic, Addr: local}
	raddr := tcpip.FullAddress{Addr: tcpAddr(ra), Port: srv.Port()}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(dns.DefaultTimeout)
	}
	if stream {
		c, err := gonet.DialTCPWithBind(ctx, t.st.Stack(), laddr, raddr, netProto)
		if err != nil {
			return nil, fmt.Errorf("dns transport: TCP to %s: %w", srv, err)
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
		defer stop()
		c.SetDeadline(deadline)
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(q)), uint16(len(q))), q...)); err != nil {
			return nil, fmt.Errorf("dns transport: TCP to %s: %w", srv, err)
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return nil, fmt.Errorf("dns transport: TCP from %s: %w", srv, err)
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, fmt.Errorf("dns transport: TCP from %s: %w", srv, err)
		}
		return b, nil
	}
	c, err := gonet.DialUDP(t.st.Stack(), &laddr, &raddr, netProto)
	if err != nil {
		return nil, fmt.Errorf("dns transport: UDP to %s: %w", srv, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c.SetDeadline(deadline)
	if _, err := c.Write(q); err != nil {
		return nil, fmt.Errorf("dns transport: UDP to %s: %w", srv, err)
	}
	// The socket is connected: only the server's datagrams arrive. Those
	// with another id (late answers to earlier queries, forgeries) are
	// skipped.
	b := make([]byte, 65535)
	for {
		n, err := c.Read(b)
		if err != nil {
			return nil, fmt.Errorf("dns transport: UDP from %s: %w", srv, err)
		}
		if n >= 2 && b[0] == q[0] && b[1] == q[1] {
			return b[:n:n], nil
		}
	}
}

// Families returns the msgproto.ResolveHas4/ResolveHas6 bits of the
// address families the stack has an uplink address of.
func (s *Stack) Families() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var f uint32
	for _, l := range s.links {
		if l.cfg.Addr4.IsValid() {
			f |= msgproto.ResolveHas4
		}
		if l.cfg.Addr6.IsValid() {
			f |= msgproto.ResolveHas6
		}
	}
	return f
}

// SourceFor returns the address a flow to a would leave from: that of the
// first healthy uplink (in NIC order) with a route to a, of a's family; false
// when no uplink reaches a. It picks nothing (see ChooseUplink).
func (s *Stack) SourceFor(a netip.Addr) (netip.Addr, bool) {
	a = a.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *nicLink
	for name, l := range s.links {
		if st, err := s.set.State(name); err != nil || st != uplink.StateUp || !l.routes(a) {
			continue
		}
		if best == nil || l.nic < best.nic {
			best = l
		}
	}
	if best == nil {
		return netip.Addr{}, false
	}
	if a.Is4() {
		return best.cfg.Addr4.Addr(), true
	}
	return best.cfg.Addr6.Addr(), true
}

// resolver answers the Resolve requests of one INS.
type resolver struct {
	st  *Stack
	r   *dns.Resolver
	log *slog.Logger

	warnOnce sync.Once
}

func newResolver(st *Stack, log *slog.Logger) *resolver {
	cfg := st.dnsCfg
	return &resolver{
		st:  st,
		log: log,
		r: dns.New(dns.Config{Servers: cfg.Servers, Timeout: cfg.Timeout, Attempts: cfg.Attempts, Logger: log},
			netTransport{st}),
	}
}

// resolve serves one Resolve request.
func (rs *resolver) resolve(ctx context.Context, m *msgproto.Resolve) msgproto.Message {
	if m.Flags&^msgproto.ResolveReverse != 0 {
		return errReply(unix.EINVAL)
	}
	fams := rs.st.Families()
	var res dns.Result
	if m.Flags&msgproto.ResolveReverse != 0 {
		ap, err := m.Addr.AddrPort()
		if err != nil || ap.Port() != 0 || len(m.Name) != 0 {
			return errReply(unix.EINVAL)
		}
		rs.warnNoServers()
		res = rs.r.LookupAddr(ctx, ap.Addr())
	} else {
		if m.Addr.Family != msgproto.FamilyUnspec {
			return errReply(unix.EINVAL)
		}
		fam := dns.Both
		switch m.Family {
		case msgproto.FamilyUnspec:
		case msgproto.FamilyInet:
			fam = dns.IPv4
		case msgproto.FamilyInet6:
			fam = dns.IPv6
		default:
			return errReply(unix.EAFNOSUPPORT)
		}
		if len(m.Name) == 0 {
			// Only the families are asked for (AI_ADDRCONFIG).
			return &msgproto.ResolveReply{Status: msgproto.ResolveOK, Families: fams}
		}
		rs.warnNoServers()
		res = rs.r.LookupHost(ctx, string(m.Name), fam)
		dns.SortAddrs(res.Addrs, rs.st.SourceFor)
	}
	canon := []byte(res.Name)
	if len(canon) > msgproto.MaxName {
		canon = nil
	}
	return &msgproto.ResolveReply{
		Status:   int32(res.Status),
		Families: fams,
		TTL:      uint32(res.TTL / time.Second),
		Canon:    canon,
		Addrs:    msgproto.AppendAddrList(nil, res.Addrs),
	}
}

func (rs *resolver) warnNoServers() {
	if len(rs.r.Servers()) == 0 {
		rs.warnOnce.Do(func() {
			rs.log.Warn("name lookup without nameservers: every lookup fails with EAI_AGAIN (configure them with --dns)")
		})
	}
}
