// Package query selects, orders and groups flows for `netflow watch` and
// `netflow ls`: filters in the style of `hubble observe` (source and
// destination prefixes, ports, protocol, TCP flags, INS, uplink, each
// negatable), top-N ordering by rate, bytes or packets, and aggregation by
// source, destination, port, INS or uplink.
//
// A filter is a list of terms, "[!]KIND=VALUE". Terms of the same kind
// are alternatives (any may match), terms of different kinds must all
// match, and a negated term ("!port=22") excludes every flow it matches.
// The same terms travel in API requests, so the daemon filters with the
// same code; they are parsed as untrusted input.
package query

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/mpshim/mpshim/netflow"
)

// Filter kinds, the KIND of a term.
const (
	KindSrc      = "src"       // the initiator's address is in a prefix
	KindDst      = "dst"       // the responder's address is in a prefix
	KindIP       = "ip"        // either address is in a prefix
	KindPort     = "port"      // either port is N or in N-M
	KindProto    = "proto"     // tcp, udp, icmp, icmpv6 or a number
	KindTCPFlags = "tcp-flags" // the flow saw all of these flags
	KindINS      = "ins"       // the INS id
	KindUplink   = "uplink"    // the uplink name
)

// Kinds lists every filter kind in the order they are documented.
var Kinds = []string{KindSrc, KindDst, KindIP, KindPort, KindProto, KindTCPFlags, KindINS, KindUplink}

// Bounds on filters from untrusted sources.
const (
	MaxTerms   = 256
	MaxTermLen = 256
)

type matcher func(*netflow.Flow) bool

// Filter is a parsed list of terms. The zero value (and nil) matches
// every flow.
type Filter struct {
	include map[string][]matcher
	exclude []matcher
	terms   []string
}

// ParseFilter parses terms ("[!]KIND=VALUE"); it says which term is wrong
// and why.
func ParseFilter(terms []string) (*Filter, error) {
	if len(terms) > MaxTerms {
		return nil, fmt.Errorf("filter: %d terms (at most %d)", len(terms), MaxTerms)
	}
	f := &Filter{include: map[string][]matcher{}}
	for _, t := range terms {
		if len(t) > MaxTermLen {
			return nil, fmt.Errorf("filter term of %d bytes (at most %d)", len(t), MaxTermLen)
		}
		neg := strings.HasPrefix(t, "!")
		kind, value, ok := strings.Cut(strings.TrimPrefix(t, "!"), "=")
		if !ok {
			return nil, fmt.Errorf("filter term %q: want [!]KIND=VALUE with KIND one of %s", t, strings.Join(Kinds, ", "))
		}
		m, err := parseTerm(kind, value)
		if err != nil {
			return nil, fmt.Errorf("filter term %q: %w", t, err)
		}
		if neg {
			f.exclude = append(f.exclude, m)
		} else {
			f.include[kind] = append(f.include[kind], m)
		}
		f.terms = append(f.terms, t)
	}
	return f, nil
}

// Terms returns the terms the filter was parsed from.
func (f *Filter) Terms() []string {
	if f == nil {
		return nil
	}
	return slices.Clone(f.terms)
}

// Match reports whether the filter accepts fl.
func (f *Filter) Match(fl *netflow.Flow) bool {
	if f == nil {
		return true
	}
	for _, m := range f.exclude {
		if m(fl) {
			return false
		}
	}
	for _, ms := range f.include {
		if !slices.ContainsFunc(ms, func(m matcher) bool { return m(fl) }) {
			return false
		}
	}
	return true
}

func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return p, fmt.Errorf("want an address or a prefix such as 10.0.0.0/8: %w", err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("want an address or a prefix such as 10.0.0.0/8: %w", err)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func parsePortRange(v string) (lo, hi uint16, err error) {
	a, b, isRange := strings.Cut(v, "-")
	if !isRange {
		b = a
	}
	l, err1 := strconv.ParseUint(a, 10, 16)
	h, err2 := strconv.ParseUint(b, 10, 16)
	if err1 != nil || err2 != nil || l > h {
		return 0, 0, errors.New("want a port 0-65535 or a range N-M")
	}
	return uint16(l), uint16(h), nil
}

func parseTerm(kind, v string) (matcher, error) {
	switch kind {
	case KindSrc, KindDst, KindIP:
		p, err := parsePrefix(v)
		if err != nil {
			return nil, err
		}
		switch kind {
		case KindSrc:
			return func(f *netflow.Flow) bool { return p.Contains(f.Src.Unmap()) }, nil
		case KindDst:
			return func(f *netflow.Flow) bool { return p.Contains(f.Dst.Unmap()) }, nil
		}
		return func(f *netflow.Flow) bool { return p.Contains(f.Src.Unmap()) || p.Contains(f.Dst.Unmap()) }, nil
	case KindPort:
		lo, hi, err := parsePortRange(v)
		if err != nil {
			return nil, err
		}
		return func(f *netflow.Flow) bool {
			return (f.SrcPort >= lo && f.SrcPort <= hi) || (f.DstPort >= lo && f.DstPort <= hi)
		}, nil
	case KindProto:
		p, err := netflow.ParseProto(v)
		if err != nil {
			return nil, err
		}
		return func(f *netflow.Flow) bool { return f.Proto == p }, nil
	case KindTCPFlags:
		fl, err := netflow.ParseTCPFlags(v)
		if err != nil {
			return nil, err
		}
		if fl == 0 {
			return nil, errors.New("want at least one flag, e.g. SYN or SYN,ACK")
		}
		return func(f *netflow.Flow) bool { return (f.Fwd.TCPFlags|f.Rev.TCPFlags)&fl == fl }, nil
	case KindINS:
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, errors.New("want an INS id (see `isolator ls`)")
		}
		return func(f *netflow.Flow) bool { return f.INS == int(n) }, nil
	case KindUplink:
		if v == "" {
			return nil, errors.New("want an uplink name (see `isolator uplink ls`)")
		}
		return func(f *netflow.Flow) bool { return f.Uplink == v }, nil
	}
	return nil, fmt.Errorf("unknown kind %q: want one of %s", kind, strings.Join(Kinds, ", "))
}

// Orders flows and groups can be sorted by.
const (
	ByRate    = "rate"
	ByBytes   = "bytes"
	ByPackets = "packets"
)

// SortKeys lists the orders.
var SortKeys = []string{ByRate, ByBytes, ByPackets}

// Group is the sum of a set of flows (or one flow).
type Group struct {
	// Key names the group (the flow's ID for a single flow).
	Key           string  `json:"key"`
	Flows         int     `json:"flows"`
	Bytes         uint64  `json:"bytes"`
	Packets       uint64  `json:"packets"`
	BytesPerSec   float64 `json:"bytes_per_sec"`
	PacketsPerSec float64 `json:"packets_per_sec"`
}

func (g *Group) add(f *netflow.Flow) {
	g.Flows++
	g.Bytes += f.Bytes()
	g.Packets += f.Packets()
	g.BytesPerSec += f.BytesPerSec
	g.PacketsPerSec += f.PacketsPerSec
}

func metric(by string, bps, pps float64, bytes, pkts uint64) float64 {
	switch by {
	case ByBytes:
		return float64(bytes)
	case ByPackets:
		return float64(pkts)
	}
	return bps
}

// CheckSort reports an unknown order.
func CheckSort(by string) error {
	if !slices.Contains(SortKeys, by) {
		return fmt.Errorf("sort %q: want one of %s", by, strings.Join(SortKeys, ", "))
	}
	return nil
}

// SortFlows orders flows by by (rate, bytes or packets), largest first;
// ties go by ID and start time so the order is stable between refreshes.
func SortFlows(flows []netflow.Flow, by string) {
	slices.SortStableFunc(flows, func(a, b netflow.Flow) int {
		ma := metric(by, a.BytesPerSec, a.PacketsPerSec, a.Bytes(), a.Packets())
		mb := metric(by, b.BytesPerSec, b.PacketsPerSec, b.Bytes(), b.Packets())
		return cmp.Or(cmp.Compare(mb, ma), cmp.Compare(a.ID, b.ID), a.First.Compare(b.First))
	})
}

// Aggregations flows can be grouped by.
const (
	AggSrc    = "src"
	AggDst    = "dst"
	AggPort   = "port"
	AggINS    = "ins"
	AggUplink = "uplink"
)

// AggregateKeys lists the aggregations.
var AggregateKeys = []string{AggSrc, AggDst, AggPort, AggINS, AggUplink}

// GroupKey returns the key of f's group under aggregation by, or an error
// for an unknown aggregation.
func GroupKey(f *netflow.Flow, by string) (string, error) {
	switch by {
	case AggSrc:
		return f.Src.String(), nil
	case AggDst:
		return f.Dst.String(), nil
	case AggPort:
		// The responder's port names the service.
		return f.Proto.String() + "/" + strconv.Itoa(int(f.DstPort)), nil
	case AggINS:
		return strconv.Itoa(f.INS), nil
	case AggUplink:
		return f.Uplink, nil
	}
	return "", fmt.Errorf("aggregate by %q: want one of %s", by, strings.Join(AggregateKeys, ", "))
}

// Aggregate sums flows into groups by by and orders the groups by sort.
func Aggregate(flows []netflow.Flow, by, sort string) ([]Group, error) {
	idx := map[string]int{}
	var out []Group
	for i := range flows {
		k, err := GroupKey(&flows[i], by)
		if err != nil {
			return nil, err
		}
		j, ok := idx[k]
		if !ok {
			j = len(out)
			idx[k] = j
			out = append(out, Group{Key: k})
		}
		out[j].add(&flows[i])
	}
	slices.SortStableFunc(out, func(a, b Group) int {
		ma := metric(sort, a.BytesPerSec, a.PacketsPerSec, a.Bytes, a.Packets)
		mb := metric(sort, b.BytesPerSec, b.PacketsPerSec, b.Bytes, b.Packets)
		return cmp.Or(cmp.Compare(mb, ma), cmp.Compare(a.Key, b.Key))
	})
	return out, nil
}
