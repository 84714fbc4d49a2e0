package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/mpshim/mpshim/internal/dnstest"
)

// kernelTransport exchanges queries over the host kernel's sockets; the
// tests only use it on loopback.
type kernelTransport struct{}

func (kernelTransport) Exchange(ctx context.Context, srv netip.AddrPort, stream bool, q []byte) ([]byte, error) {
	var d net.Dialer
	network := "udp"
	if stream {
		network = "tcp"
	}
	c, err := d.DialContext(ctx, network, srv.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if stream {
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
			return nil, err
		}
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return nil, err
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		_, err := io.ReadFull(c, b)
		return b, err
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	b := make([]byte, 65535)
	for {
		n, err := c.Read(b)
		if err != nil {
			return nil, err
		}
		if n >= 2 && b[0] == q[0] && b[1] == q[1] {
			return b[:n], nil
		}
	}
}

// startServer runs a dnstest server on loopback UDP and TCP (same port).
func startServer(t *testing.T) (*dnstest.Server, netip.AddrPort) {
	t.Helper()
	s := dnstest.New()
	for range 10 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap := netip.MustParseAddrPort(pc.LocalAddr().String())
		ln, err := net.Listen("tcp", ap.String())
		if err != nil {
			pc.Close()
			continue
		}
		s.ServePacket(pc)
		s.ServeStream(ln)
		t.Cleanup(func() { s.Close() })
		return s, ap
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, netip.AddrPort{}
}

var (
	web4  = netip.MustParseAddr("192.0.2.10")
	web6  = netip.MustParseAddr("2001:db8::10")
	other = netip.MustParseAddr("192.0.2.11")
)

func zone(s *dnstest.Server) {
	s.Set("web.test", dnstest.Record{A: []netip.Addr{web4, other}, AAAA: []netip.Addr{web6}, TTL: 120})
	s.Set("v4only.test", dnstest.Record{A: []netip.Addr{web4}})
	s.Set("alias.test", dnstest.Record{CNAME: "web.test", TTL: 30})
	s.Set("alias2.test", dnstest.Record{CNAME: "alias.test"})
	s.Set("out.test", dnstest.Record{CNAME: "web.test", CNAMEOnly: true})
	s.Set("dangling.test", dnstest.Record{CNAME: "gone.test"})
	s.Set("loop1.test", dnstest.Record{CNAME: "loop2.test", CNAMEOnly: true})
	s.Set("loop2.test", dnstest.Record{CNAME: "loop1.test", CNAMEOnly: true})
	s.Set("drop.test", dnstest.Record{A: []netip.Addr{web4}, Behavior: dnstest.Drop})
	s.Set("servfail.test", dnstest.Record{Behavior: dnstest.ServFail})
	s.Set("refused.test", dnstest.Record{Behavior: dnstest.Refused})
	s.Set("tc.test", dnstest.Record{A: []netip.Addr{web4}, Behavior: dnstest.Truncate})
	var many []netip.Addr
	for i := range 40 {
		many = append(many, netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}))
	}
	s.Set("many.test", dnstest.Record{A: many})
	s.SetPTR(web4, "web.test")
	s.SetPTR(web6, "web6.test")
	s.SetPTR(other, "bad\x01name.test")
}

func newTestResolver(t *testing.T, servers ...netip.AddrPort) *Resolver {
	return New(Config{Servers: servers, Timeout: 300 * time.Millisecond}, kernelTransport{})
}

func TestLookup(t *testing.T) {
	s, srv := startServer(t)
	zone(s)
	r := newTestResolver(t, srv)
	ctx := context.Background()
	cases := []struct {
		name   string
		family Family
		want   Result
	}{
		{"web.test", Both, Result{Status: OK, Name: "web.test", Addrs: []netip.Addr{web6, web4, other}}},
		{"web.test.", IPv4, Result{Status: OK, Name: "web.test", Addrs: []netip.Addr{web4, other}}},
		{"WEB.Test", IPv6, Result{Status: OK, Name: "WEB.Test", Addrs: []netip.Addr{web6}}}, // cached, in the caller's spelling
		{"alias.test", IPv4, Result{Status: OK, Name: "web.test", Addrs: []netip.Addr{web4, other}}},
		{"alias2.test", IPv6, Result{Status: OK, Name: "web.test", Addrs: []netip.Addr{web6}}},
		{"out.test", IPv4, Result{Status: OK, Name: "web.test", Addrs: []netip.Addr{web4, other}}},
		{"v4only.test", IPv6, Result{Status: NoData}},
		{"v4only.test", Both, Result{Status: OK, Name: "v4only.test", Addrs: []netip.Addr{web4}}},
		{"nx.test", Both, Result{Status: NoName}},
		{"dangling.test", IPv4, Result{Status: NoName}},
		{"loop1.test", IPv4, Result{Status: Fail}},
		{"drop.test", IPv4, Result{Status: Again}},
		{"servfail.test", IPv4, Result{Status: Again}},
		{"refused.test", IPv4, Result{Status: Again}}, // as glibc: REFUSED is "try again"
		{"tc.test", IPv4, Result{Status: OK, Name: "tc.test", Addrs: []netip.Addr{web4}}},
		{"many.test", IPv4, Result{Status: OK, Name: "many.test"}}, // 40 addresses, over TCP
		{"", Both, Result{Status: NoName}},
		{"a..b", Both, Result{Status: NoName}},
		{"sp ace.test", Both, Result{Status: NoName}},
		{string(make([]byte, 300)), Both, Result{Status: NoName}},
	}
	for _, tc := range cases {
		got := r.LookupHost(ctx, tc.name, tc.family)
		if tc.name == "many.test" {
			if got.Status != OK || len(got.Addrs) != 40 {
				t.Errorf("many.test: %v with %d addresses, want 40 (TCP fallback)", got.Status, len(got.Addrs))
			}
			continue
		}
		if got.Status != tc.want.Status || got.Name != tc.want.Name || !slices.Equal(got.Addrs, tc.want.Addrs) {
			t.Errorf("LookupHost(%q, %v) = %+v, want %+v", tc.name, tc.family, got, tc.want)
		}
	}
	if n := s.Queries("tc.test", dnsmessage.TypeA); n != 2 {
		t.Errorf("tc.test asked %d times, want 2 (UDP, then TCP)", n)
	}

	for _, tc := range []struct {
		a    netip.Addr
		want Result
	}{
		{web4, Result{Status: OK, Name: "web.test"}},
		{web6, Result{Status: OK, Name: "web6.test"}},
		{netip.MustParseAddr("::ffff:192.0.2.10"), Result{Status: OK, Name: "web.test"}},
		{other, Result{Status: NoData}}, // the only PTR is not a host name
		{netip.MustParseAddr("192.0.2.99"), Result{Status: NoName}},
	} {
		got := r.LookupAddr(ctx, tc.a)
		if got.Status != tc.want.Status || got.Name != tc.want.Name {
			t.Errorf("LookupAddr(%v) = %+v, want %+v", tc.a, got, tc.want)
		}
	}
}

func TestTTLCache(t *testing.T) {
	s, srv := startServer(t)
	zone(s)
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	r := New(Config{Servers: []netip.AddrPort{srv}, Timeout: 300 * time.Millisecond, Now: clock}, kernelTransport{})
	ctx := context.Background()
	ask := func(name string, want int) {
		t.Helper()
		res := r.LookupHost(ctx, name, IPv4)
		if n := s.Queries(name, dnsmessage.TypeA); n != want {
			t.Fatalf("%s: %d queries reached the server, want %d (result %+v)", name, n, want, res)
		}
	}
	ask("web.test", 1)
	ask("web.test", 1) // cached for 120 s
	if res := r.LookupHost(ctx, "web.test", IPv4); res.TTL != 120*time.Second {
		t.Errorf("cached TTL %v, want 120s", res.TTL)
	}
	advance(119 * time.Second)
	ask("web.test", 1)
	advance(2 * time.Second)
	ask("web.test", 2)
	// A CNAME chain is cached for its smallest TTL (alias.test: 30 s).
	ask("alias.test", 1)
	if res := r.LookupHost(ctx, "alias.test", IPv4); res.TTL != 30*time.Second {
		t.Errorf("alias TTL %v, want 30s", res.TTL)
	}
	// NXDOMAIN is cached for the SOA minimum (30 s).
	ask("nx.test", 1)
	ask("nx.test", 1)
	advance(31 * time.Second)
	ask("nx.test", 2)
	// Failures are not cached.
	ask("servfail.test", 2)
	ask("servfail.test", 4)
}

func TestServersInTurn(t *testing.T) {
	s, srv := startServer(t)
	zone(s)
	// A first server that never answers (a bound, silent UDP port), then
	// the real one.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	dead := netip.MustParseAddrPort(silent.LocalAddr().String())
	r := newTestResolver(t, dead, srv)
	start := time.Now()
	res := r.LookupHost(context.Background(), "web.test", IPv4)
	if res.Status != OK || len(res.Addrs) != 2 {
		t.Fatalf("with a dead first server: %+v", res)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("answered after %v: the dead server was not waited for", d)
	}
	// Only dead servers: Again after Attempts rounds of timeouts.
	r = newTestResolver(t, dead)
	start = time.Now()
	if res := r.LookupHost(context.Background(), "web.test", IPv4); res.Status != Again {
		t.Fatalf("only a dead server: %+v, want Again", res)
	}
	if d := time.Since(start); d < 2*300*time.Millisecond {
		t.Errorf("gave up after %v, want two attempts of 300 ms", d)
	}
	// No servers at all.
	if res := New(Config{}, kernelTransport{}).LookupHost(context.Background(), "web.test", Both); res.Status != Again {
		t.Fatalf("no servers: %+v, want Again", res)
	}
	// A cancelled context ends the lookup.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if res := newTestResolver(t, srv).LookupHost(ctx, "web.test", IPv4); res.Status != Again {
		t.Fatalf("cancelled: %+v, want Again", res)
	}
}

// spoofTransport answers every query with a forged datagram built by
// forge, the way an attacker on the path or a broken server would. Like
// glibc, the resolver takes nothing from an answer that does not answer its
// query, and ends in Again.
type spoofTransport struct {
	forge func(q []byte) []byte
}

func (s spoofTransport) Exchange(_ context.Context, _ netip.AddrPort, _ bool, q []byte) ([]byte, error) {
	b := s.forge(q)
	if b == nil {
		return nil, errors.New("no answer")
	}
	return b, nil
}

func TestHostileAnswers(t *testing.T) {
	answer := func(q []byte, edit func(*dnsmessage.Message)) []byte {
		var m dnsmessage.Message
		if err := m.Unpack(q); err != nil {
			t.Fatalf("unpack own query: %v", err)
		}
		m.Header.Response = true
		a := dnsmessage.Resource{Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
			Body: &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}}}
		m.Answers = []dnsmessage.Resource{a}
		edit(&m)
		b, err := m.Pack()
		if err != nil {
			t.Fatalf("pack: %v", err)
		}
		return b
	}
	srv := netip.MustParseAddrPort("192.0.2.53:53")
	cases := []struct {
		name  string
		forge func(q []byte) []byte
		want  Status
	}{
		{"honest", func(q []byte) []byte { return answer(q, func(*dnsmessage.Message) {}) }, OK},
		{"wrong id", func(q []byte) []byte { return answer(q, func(m *dnsmessage.Message) { m.Header.ID++ }) }, Again},
		{"not a response", func(q []byte) []byte { return answer(q, func(m *dnsmessage.Message) { m.Header.Response = false }) }, Again},
		{"other question", func(q []byte) []byte {
			return answer(q, func(m *dnsmessage.Message) { m.Questions[0].Name = dnsmessage.MustNewName("evil.test.") })
		}, Again},
		{"other type", func(q []byte) []byte {
			return answer(q, func(m *dnsmessage.Message) { m.Questions[0].Type = dnsmessage.TypeMX })
		}, Again},
		{"record for another name", func(q []byte) []byte {
			return answer(q, func(m *dnsmessage.Message) { m.Answers[0].Header.Name = dnsmessage.MustNewName("evil.test.") })
		}, NoData},
		{"two questions", func(q []byte) []byte {
			return answer(q, func(m *dnsmessage.Message) { m.Questions = append(m.Questions, m.Questions[0]) })
		}, Again},
		{"no question", func(q []byte) []byte {
			return answer(q, func(m *dnsmessage.Message) { m.Questions = nil })
		}, Again},
		{"truncated garbage", func(q []byte) []byte { b := answer(q, func(*dnsmessage.Message) {}); return b[:len(b)-3] }, Again},
		{"header only", func(q []byte) []byte { return q[:12] }, Again},
		{"empty", func(q []byte) []byte { return []byte{} }, Again},
		{"silence", func(q []byte) []byte { return nil }, Again},
		{"truncated forever", func(q []byte) []byte {
			return answer(q, func(m *dnsmessage.Message) { m.Header.Truncated = true; m.Answers = nil })
		}, Again},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Config{Servers: []netip.AddrPort{srv}, Timeout: 50 * time.Millisecond}, spoofTransport{tc.forge})
			if got := r.LookupHost(context.Background(), "www.test", IPv4); got.Status != tc.want {
				t.Errorf("status %v, want %v (%+v)", got.Status, tc.want, got)
			}
		})
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		s           string
		name, ehost bool
	}{
		{"web.test", true, true},
		{"a-b_c.example", true, true},
		{"-a.test", true, false},
		{"a.b-.test", true, false},
		{"xn--bcher-kva.example", true, true},
		{"b\xc3\xbccher.example", true, false},
		{"a..b", false, false},
		{".a", false, false},
		{"a\\.b", false, false},
		{"tab\t.test", false, false},
		{fmt.Sprintf("%063d.test", 0), true, true},
		{fmt.Sprintf("%064d.test", 0), false, false},
	} {
		if got := validName(tc.s); got != tc.name {
			t.Errorf("validName(%q) = %v", tc.s, got)
		}
		if got := validHostname(tc.s); got != tc.ehost {
			t.Errorf("validHostname(%q) = %v", tc.s, got)
		}
	}
	if got := reverseName(netip.MustParseAddr("2001:db8::567:89ab")); got != "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa" {
		t.Errorf("reverse name %s", got)
	}
	if got, want := reverseName(netip.MustParseAddr("192.0.2.10")), dnstest.ReverseName(netip.MustParseAddr("192.0.2.10")); got != want || got != "10.2.0.192.in-addr.arpa" {
		t.Errorf("reverse name %s, test server's %s", got, want)
	}
}
