// Package resolve answers the apps' name lookups (Resolve requests) in an
// INS: an isolator/dns resolver whose queries leave through the INS's
// netstack, placed on an uplink like any other flow. It reads the netstack's
// uplinks and knows nothing of the control channel or the engine.
package resolve

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
	"github.com/mpshim/mpshim/isolator/ins/netstack"
	"github.com/mpshim/mpshim/msgproto"
)

// Config configures the resolver of an INS.
type Config struct {
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
type netTransport struct{ st *netstack.Stack }

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
	raddr := tcpip.FullAddress{Addr: tcpip.AddrFromSlice(ra.AsSlice()), Port: srv.Port()}
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

// Resolver answers the Resolve requests of one INS.
type Resolver struct {
	st  *netstack.Stack
	r   *dns.Resolver
	log *slog.Logger

	warnOnce sync.Once
}

// New returns the resolver of the INS whose netstack is st.
func New(st *netstack.Stack, cfg Config, log *slog.Logger) *Resolver {
	return &Resolver{
		st:  st,
		log: log,
		r: dns.New(dns.Config{Servers: cfg.Servers, Timeout: cfg.Timeout, Attempts: cfg.Attempts, Logger: log},
			netTransport{st}),
	}
}

// Resolve serves one Resolve request.
func (rs *Resolver) Resolve(ctx context.Context, m *msgproto.Resolve) msgproto.Message {
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

func (rs *Resolver) warnNoServers() {
	if len(rs.r.Servers()) == 0 {
		rs.warnOnce.Do(func() {
			rs.log.Warn("name lookup without nameservers: every lookup fails with EAI_AGAIN (configure them with --dns)")
		})
	}
}

func errReply(e unix.Errno) msgproto.Message { return &msgproto.Reply{Errno: int32(e)} }
