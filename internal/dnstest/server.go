// Package dnstest is a small authoritative DNS server for tests. It answers
// A, AAAA, CNAME and PTR queries from a zone held in memory, over UDP and
// TCP, the way an authoritative server does (CNAME chains inside the zone
// are followed in the answer, NXDOMAIN and NODATA carry the zone's SOA), and
// can be told to misbehave per name — never answer, SERVFAIL, REFUSED,
// truncate over UDP — so that a resolver's error paths meet a real peer.
package dnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Behavior is how the server treats queries for one name.
type Behavior int

// Behaviors.
const (
	// Answer answers from the zone.
	Answer Behavior = iota
	// Drop never answers (the resolver times out).
	Drop
	// ServFail answers SERVFAIL.
	ServFail
	// Refused answers REFUSED.
	Refused
	// Truncate answers over UDP with the TC bit and no records; over TCP
	// it answers from the zone.
	Truncate
)

// Record is what the zone holds for one name.
type Record struct {
	A    []netip.Addr
	AAAA []netip.Addr
	// CNAME makes the name an alias; the server follows it inside the
	// zone unless CNAMEOnly is set, in which case the answer holds the
	// CNAME record alone and the resolver must ask for the target.
	CNAME     string
	CNAMEOnly bool
	// PTR is the target of a PTR record (reverse names, see ReverseName).
	PTR string
	// TTL of the records; 0 means the server's DefaultTTL.
	TTL      uint32
	Behavior Behavior
}

// Server is the DNS server. Its zero value is not usable; use New.
type Server struct {
	// DefaultTTL is the TTL of records without one; NegTTL is the SOA
	// minimum (RFC 2308 negative caching) of NXDOMAIN and NODATA answers.
	DefaultTTL, NegTTL uint32

	mu      sync.Mutex
	zone    map[string]Record
	queries map[string]int
	closers []io.Closer
	wg      sync.WaitGroup
}

// New returns a server with an empty zone, DefaultTTL 60 and NegTTL 30.
func New() *Server {
	return &Server{DefaultTTL: 60, NegTTL: 30, zone: map[string]Record{}, queries: map[string]int{}}
}

func key(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

// Set puts r into the zone under name (case-insensitive, trailing dot
// optional).
func (s *Server) Set(name string, r Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zone[key(name)] = r
}

// SetPTR makes the reverse name of a point at host.
func (s *Server) SetPTR(a netip.Addr, host string) {
	s.Set(ReverseName(a), Record{PTR: host})
}

// ReverseName is the in-addr.arpa or ip6.arpa name of a, without the
// trailing dot.
func ReverseName(a netip.Addr) string {
	a = a.Unmap()
	var b strings.Builder
	if a.Is4() {
		v := a.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.in-addr.arpa", v[3], v[2], v[1], v[0])
		return b.String()
	}
	v := a.As16()
	for i := 15; i >= 0; i-- {
		fmt.Fprintf(&b, "%x.%x.", v[i]&0xf, v[i]>>4)
	}
	b.WriteString("ip6.arpa")
	return b.String()
}

// Queries returns how many queries for name and type t the server has
// received (both transports).
func (s *Server) Queries(name string, t dnsmessage.Type) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[key(name)+"/"+t.String()]
}

// ServePacket answers queries arriving on pc in the background until pc is
// closed (Close closes it).
func (s *Server) ServePacket(pc net.PacketConn) {
	s.track(pc)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			resp := s.answer(buf[:n], true)
			if resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
}

// ServeStream answers queries on connections accepted from ln (two-byte
// length prefix, RFC 1035 4.2.2) in the background until ln is closed.
func (s *Server) ServeStream(ln net.Listener) {
	s.track(ln)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.track(c)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				s.serveConn(c)
			}()
		}
	}()
}

func (s *Server) serveConn(c net.Conn) {
	for {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		resp := s.answer(q, false)
		if resp == nil {
			continue
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
		if _, err := c.Write(append(out, resp...)); err != nil {
			return
		}
	}
}

func (s *Server) track(c io.Closer) {
	s.mu.Lock()
	s.closers = append(s.closers, c)
	s.mu.Unlock()
}

// Close closes every socket the server serves and waits for its
// goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	cs := s.closers
	s.closers = nil
	s.mu.Unlock()
	var errs []error
	for _, c := range cs {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// answer builds the response to query q, or nil to stay silent.
func (s *Server) answer(q []byte, udp bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return s.build(h, nil, dnsmessage.RCodeFormatError, nil, false, udp)
	}
	qn := qs[0]
	k := key(qn.Name.String())
	s.mu.Lock()
	s.queries[k+"/"+qn.Type.String()]++
	rec, ok := s.zone[k]
	s.mu.Unlock()
	if h.OpCode != 0 {
		return s.build(h, &qn, dnsmessage.RCodeNotImplemented, nil, false, udp)
	}
	switch rec.Behavior {
	case Drop:
		return nil
	case ServFail:
		return s.build(h, &qn, dnsmessage.RCodeServerFailure, nil, false, udp)
	case Refused:
		return s.build(h, &qn, dnsmessage.RCodeRefused, nil, false, udp)
	case Truncate:
		if udp {
			return s.build(h, &qn, dnsmessage.RCodeSuccess, nil, true, udp)
		}
	}
	if !ok {
		return s.build(h, &qn, dnsmessage.RCodeNameError, nil, false, udp)
	}
	var ans []dnsmessage.Resource
	name := qn.Name
	s.mu.Lock()
	defer s.mu.Unlock()
	for hops := 0; hops < 16; hops++ {
		ttl := rec.TTL
		if ttl == 0 {
			ttl = s.DefaultTTL
		}
		rh := dnsmessage.ResourceHeader{Name: name, Class: dnsmessage.ClassINET, TTL: ttl}
		if rec.CNAME != "" && qn.Type != dnsmessage.TypeCNAME {
			target := dnsmessage.MustNewName(key(rec.CNAME) + ".")
			rh.Type = dnsmessage.TypeCNAME
			ans = append(ans, dnsmessage.Resource{Header: rh, Body: &dnsmessage.CNAMEResource{CNAME: target}})
			next, ok := s.zone[key(rec.CNAME)]
			if rec.CNAMEOnly || !ok {
				break
			}
			name, rec = target, next
			continue
		}
		switch qn.Type {
		case dnsmessage.TypeA:
			for _, a := range rec.A {
				rh.Type = dnsmessage.TypeA
				ans = append(ans, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AResource{A: a.As4()}})
			}
		case dnsmessage.TypeAAAA:
			for _, a := range rec.AAAA {
				rh.Type = dnsmessage.TypeAAAA
				ans = append(ans, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
			}
		case dnsmessage.TypePTR:
			if rec.PTR != "" {
				rh.Type = dnsmessage.TypePTR
				ans = append(ans, dnsmessage.Resource{Header: rh, Body: &dnsmessage.PTRResource{PTR: dnsmessage.MustNewName(key(rec.PTR) + ".")}})
			}
		case dnsmessage.TypeCNAME:
			if rec.CNAME != "" {
				rh.Type = dnsmessage.TypeCNAME
				ans = append(ans, dnsmessage.Resource{Header: rh, Body: &dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(key(rec.CNAME) + ".")}})
			}
		}
		break
	}
	return s.buildLocked(h, &qn, dnsmessage.RCodeSuccess, ans, false, udp)
}

func (s *Server) build(h dnsmessage.Header, q *dnsmessage.Question, rc dnsmessage.RCode, ans []dnsmessage.Resource, tc, udp bool) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buildLocked(h, q, rc, ans, tc, udp)
}

// buildLocked encodes a response; over UDP an answer beyond 512 bytes is
// replaced by a truncated one (TC, no records), as RFC 1035 servers do.
func (s *Server) buildLocked(h dnsmessage.Header, q *dnsmessage.Question, rc dnsmessage.RCode, ans []dnsmessage.Resource, tc, udp bool) []byte {
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: true, RCode: rc, Truncated: tc}
	m := dnsmessage.Message{Header: rh, Answers: ans}
	if q != nil {
		m.Questions = []dnsmessage.Question{*q}
	}
	if q != nil && len(ans) == 0 && (rc == dnsmessage.RCodeNameError || rc == dnsmessage.RCodeSuccess) && !tc {
		soa := dnsmessage.SOAResource{NS: dnsmessage.MustNewName("ns.test."), MBox: dnsmessage.MustNewName("hostmaster.test."),
			Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, MinTTL: s.NegTTL}
		m.Authorities = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("test."),
			Type: dnsmessage.TypeSOA, Class: dnsmessage.ClassINET, TTL: s.NegTTL}, Body: &soa}}
	}
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	if udp && len(b) > 512 {
		m.Header.Truncated = true
		m.Answers, m.Authorities = nil, nil
		if b, err = m.Pack(); err != nil {
			return nil
		}
	}
	return b
}
