package dns

import (
	"encoding/binary"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// seedResponses are well-formed answers for "www.test" of several shapes.
func seedResponses(f *testing.F) [][]byte {
	name := dnsmessage.MustNewName("www.test.")
	alias := dnsmessage.MustNewName("web.test.")
	hdr := func(n dnsmessage.Name, t dnsmessage.Type) dnsmessage.ResourceHeader {
		return dnsmessage.ResourceHeader{Name: n, Type: t, Class: dnsmessage.ClassINET, TTL: 300}
	}
	soa := dnsmessage.Resource{Header: hdr(dnsmessage.MustNewName("test."), dnsmessage.TypeSOA), Body: &dnsmessage.SOAResource{
		NS: dnsmessage.MustNewName("ns.test."), MBox: dnsmessage.MustNewName("h.test."), MinTTL: 30}}
	msgs := []dnsmessage.Message{
		{Questions: []dnsmessage.Question{{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
			Answers: []dnsmessage.Resource{{Header: hdr(name, dnsmessage.TypeA), Body: &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}}}}},
		{Questions: []dnsmessage.Question{{Name: name, Type: dnsmessage.TypeAAAA, Class: dnsmessage.ClassINET}},
			Answers: []dnsmessage.Resource{
				{Header: hdr(name, dnsmessage.TypeCNAME), Body: &dnsmessage.CNAMEResource{CNAME: alias}},
				{Header: hdr(alias, dnsmessage.TypeAAAA), Body: &dnsmessage.AAAAResource{AAAA: [16]byte{0x20, 0x01, 0xd, 0xb8, 15: 1}}}}},
		{Header: dnsmessage.Header{RCode: dnsmessage.RCodeNameError},
			Questions:   []dnsmessage.Question{{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
			Authorities: []dnsmessage.Resource{soa}},
		{Questions: []dnsmessage.Question{{Name: name, Type: dnsmessage.TypePTR, Class: dnsmessage.ClassINET}},
			Answers: []dnsmessage.Resource{{Header: hdr(name, dnsmessage.TypePTR), Body: &dnsmessage.PTRResource{PTR: alias}}}},
		{Header: dnsmessage.Header{Truncated: true},
			Questions: []dnsmessage.Question{{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}},
	}
	var out [][]byte
	for i, m := range msgs {
		m.Header.ID = uint16(0x1000 + i)
		m.Header.Response = true
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzParseResponse: a response of any bytes never panics the parser, and
// what it accepts is bounded and clean: a valid owner name, host names
// only among the PTR targets, at most maxRecords addresses, TTLs below
// 2^31.
func FuzzParseResponse(f *testing.F) {
	for _, b := range seedResponses(f) {
		for _, t := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA, dnsmessage.TypePTR} {
			f.Add(b, uint16(t))
		}
	}
	f.Fuzz(func(t *testing.T, msg []byte, qtype uint16) {
		if len(msg) < 2 {
			return
		}
		id := binary.BigEndian.Uint16(msg)
		r, err := parseResponse(msg, id, "www.test", dnsmessage.Type(qtype))
		if err != nil {
			return
		}
		if r.trunc || (r.rcode != dnsmessage.RCodeSuccess && r.rcode != dnsmessage.RCodeNameError) {
			return
		}
		if !validName(r.owner) {
			t.Fatalf("owner %q is not a valid name", r.owner)
		}
		if len(r.addrs) > maxRecords || len(r.names) > maxRecords {
			t.Fatalf("%d addresses, %d names", len(r.addrs), len(r.names))
		}
		for _, n := range r.names {
			if !validHostname(n) {
				t.Fatalf("PTR target %q is not a host name", n)
			}
		}
		for _, a := range r.addrs {
			if !a.IsValid() || (dnsmessage.Type(qtype) == dnsmessage.TypeA) != a.Is4() {
				t.Fatalf("address %v for type %d", a, qtype)
			}
		}
		if r.ttl > maxTTL || r.negTTL > maxTTL {
			t.Fatalf("ttl %d, negative ttl %d", r.ttl, r.negTTL)
		}
	})
}
