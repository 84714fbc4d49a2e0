package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// Limits on what a response may make the resolver do.
const (
	// maxChain is the longest CNAME chain followed, across responses.
	maxChain = 8
	// maxRecords is the most answer or authority records read from one
	// response; the rest are ignored.
	maxRecords = 256
	// maxTTL is the largest TTL taken at face value: RFC 2181 8 says a
	// TTL with the top bit set is to be read as zero.
	maxTTL = 1<<31 - 1
	// maxNameLen is the longest name in text form without the final dot.
	maxNameLen = 253
)

// errMalformed marks a response that is not a well-formed answer to the
// question asked.
var errMalformed = errors.New("dns: malformed response")

// response is what one DNS response says about its question.
type response struct {
	rcode dnsmessage.RCode
	trunc bool
	// owner is the end of the CNAME chain the response holds, starting at
	// the question name: the name whose records are in addrs or names.
	owner string
	// aliased tells that owner differs from the question name.
	aliased bool
	addrs   []netip.Addr // A or AAAA records of owner, in answer order
	names   []string     // PTR targets of owner that are valid host names
	ttl     uint32       // the smallest TTL along the chain and its records
	// negTTL is the negative-caching TTL from the SOA in the authority
	// section (min of its TTL and MINIMUM, RFC 2308 5); hasNeg tells that
	// there was one.
	negTTL uint32
	hasNeg bool
}

// buildQuery encodes a recursive query for name (a valid name, no final
// dot) and type t with the given id.
func buildQuery(id uint16, name string, t dnsmessage.Type) ([]byte, error) {
	qn, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return nil, fmt.Errorf("dns: query name %q: %w", name, err)
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 64+len(name)), dnsmessage.Header{ID: id, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		return nil, fmt.Errorf("dns: build query: %w", err)
	}
	if err := b.Question(dnsmessage.Question{Name: qn, Type: t, Class: dnsmessage.ClassINET}); err != nil {
		return nil, fmt.Errorf("dns: build query: %w", err)
	}
	out, err := b.Finish()
	if err != nil {
		return nil, fmt.Errorf("dns: build query: %w", err)
	}
	return out, nil
}

// parseResponse checks that msg answers the query with id for name (no
// final dot) and type t, and extracts what it says. Every count, length,
// name and TTL in msg is untrusted: the parser bounds its work, and a
// response that does not answer the question is an error wrapping
// errMalformed.
func parseResponse(msg []byte, id uint16, name string, t dnsmessage.Type) (response, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return response{}, fmt.Errorf("%w: header: %v", errMalformed, err)
	}
	if h.ID != id || !h.Response || h.OpCode != 0 {
		return response{}, fmt.Errorf("%w: id %d response %v opcode %d", errMalformed, h.ID, h.Response, h.OpCode)
	}
	q, err := p.Question()
	if err != nil {
		return response{}, fmt.Errorf("%w: question: %v", errMalformed, err)
	}
	if !sameName(q.Name.String(), name+".") || q.Type != t || q.Class != dnsmessage.ClassINET {
		return response{}, fmt.Errorf("%w: answers %q %v, not %q %v", errMalformed, q.Name.String(), q.Type, name, t)
	}
	if _, err := p.Question(); !errors.Is(err, dnsmessage.ErrSectionDone) {
		return response{}, fmt.Errorf("%w: more than one question", errMalformed)
	}
	r := response{rcode: h.RCode, trunc: h.Truncated, ttl: maxTTL}
	if r.trunc || (r.rcode != dnsmessage.RCodeSuccess && r.rcode != dnsmessage.RCodeNameError) {
		return r, nil
	}

	cnames := map[string]string{} // lower-case owner -> target as given
	owners := map[string]string{} // lower-case -> as given
	ttls := map[string]uint32{}   // lower-case owner -> smallest TTL of its records of type t or CNAME
	addrs := map[string][]netip.Addr{}
	names := map[string][]string{}
	for i := 0; i < maxRecords; i++ {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return response{}, fmt.Errorf("%w: answer %d: %v", errMalformed, i, err)
		}
		owner := strings.TrimSuffix(rh.Name.String(), ".")
		lo := lower(owner)
		if rh.Class != dnsmessage.ClassINET {
			if err := p.SkipAnswer(); err != nil {
				return response{}, fmt.Errorf("%w: answer %d: %v", errMalformed, i, err)
			}
			continue
		}
		ttl := rh.TTL
		if ttl > maxTTL {
			ttl = 0
		}
		keep := func() {
			owners[lo] = owner
			if old, ok := ttls[lo]; !ok || ttl < old {
				ttls[lo] = ttl
			}
		}
		switch {
		case rh.Type == dnsmessage.TypeCNAME:
			c, err := p.CNAMEResource()
			if err != nil {
				return response{}, fmt.Errorf("%w: CNAME: %v", errMalformed, err)
			}
			target := strings.TrimSuffix(c.CNAME.String(), ".")
			if !validName(target) {
				return response{}, fmt.Errorf("%w: CNAME target %q", errMalformed, target)
			}
			if prev, ok := cnames[lo]; ok && !sameName(prev, target) {
				return response{}, fmt.Errorf("%w: %q has two CNAMEs", errMalformed, owner)
			}
			cnames[lo] = target
			keep()
		case rh.Type == dnsmessage.TypeA && t == dnsmessage.TypeA:
			a, err := p.AResource()
			if err != nil {
				return response{}, fmt.Errorf("%w: A: %v", errMalformed, err)
			}
			addrs[lo] = appendUnique(addrs[lo], netip.AddrFrom4(a.A))
			keep()
		case rh.Type == dnsmessage.TypeAAAA && t == dnsmessage.TypeAAAA:
			a, err := p.AAAAResource()
			if err != nil {
				return response{}, fmt.Errorf("%w: AAAA: %v", errMalformed, err)
			}
			addrs[lo] = appendUnique(addrs[lo], netip.AddrFrom16(a.AAAA))
			keep()
		case rh.Type == dnsmessage.TypePTR && t == dnsmessage.TypePTR:
			ptr, err := p.PTRResource()
			if err != nil {
				return response{}, fmt.Errorf("%w: PTR: %v", errMalformed, err)
			}
			// A name handed to applications must be a plain host name:
			// anything else is ignored, as glibc's res_hnok does.
			if host := strings.TrimSuffix(ptr.PTR.String(), "."); validHostname(host) {
				names[lo] = append(names[lo], host)
				keep()
			}
		default:
			if err := p.SkipAnswer(); err != nil {
				return response{}, fmt.Errorf("%w: answer %d: %v", errMalformed, i, err)
			}
		}
	}

	// Follow the chain from the question name.
	cur := lower(name)
	r.owner = name
	for hops := 0; ; hops++ {
		if tt, ok := ttls[cur]; ok && tt < r.ttl {
			r.ttl = tt
		}
		target, ok := cnames[cur]
		if !ok {
			break
		}
		if hops == maxChain {
			return response{}, fmt.Errorf("%w: CNAME chain longer than %d", errMalformed, maxChain)
		}
		r.owner, r.aliased = target, true
		cur = lower(target)
		if o, ok := owners[cur]; ok {
			r.owner = o
		}
	}
	r.addrs, r.names = addrs[cur], names[cur]

	if len(r.addrs) == 0 && len(r.names) == 0 {
		for i := 0; i < maxRecords; i++ {
			rh, err := p.AuthorityHeader()
			if errors.Is(err, dnsmessage.ErrSectionDone) {
				break
			}
			if err != nil {
				// A broken authority section only costs the
				// negative TTL; the answer itself was read.
				break
			}
			if rh.Type != dnsmessage.TypeSOA || rh.Class != dnsmessage.ClassINET {
				if p.SkipAuthority() != nil {
					break
				}
				continue
			}
			soa, err := p.SOAResource()
			if err != nil {
				break
			}
			neg := min(rh.TTL, soa.MinTTL)
			if neg > maxTTL {
				neg = 0
			}
			r.negTTL, r.hasNeg = neg, true
			break
		}
	}
	return r, nil
}

func appendUnique(list []netip.Addr, a netip.Addr) []netip.Addr {
	for _, x := range list {
		if x == a {
			return list
		}
	}
	return append(list, a)
}

// lower lowers ASCII letters only: DNS compares names case-insensitively in
// ASCII (RFC 4343), other bytes are compared as they are.
func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

func sameName(a, b string) bool { return lower(a) == lower(b) }

// validName reports whether s (no final dot) can be asked for: 1 to 253
// bytes, labels of 1 to 63 bytes, and no byte that text form cannot carry
// unescaped (controls, space, DEL, backslash). Bytes above 0x7f pass, as
// with glibc's resolver.
func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c <= ' ' || c == 0x7f || c == '\\':
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}

// validHostname reports whether s is a host name in the sense of RFC 952
// and 1123 (letters, digits, hyphens inside labels), also allowing
// underscores, which real PTR data carries.
func validHostname(s string) bool {
	if !validName(s) {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// reverseName is the in-addr.arpa or ip6.arpa name of a (RFC 1035 3.5,
// RFC 3596 2.5), without the final dot.
func reverseName(a netip.Addr) string {
	const hex = "0123456789abcdef"
	a = a.Unmap()
	if a.Is4() {
		v := a.As4()
		return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa", v[3], v[2], v[1], v[0])
	}
	v := a.As16()
	b := make([]byte, 0, 72)
	for i := 15; i >= 0; i-- {
		b = append(b, hex[v[i]&0xf], '.', hex[v[i]>>4], '.')
	}
	return string(b) + "ip6.arpa"
}
