// Package rules is mpshim's mitigation filter: the block and rate-limit
// rules an operator sets with `netflow block` and `netflow limit`, their
// validation and JSON form, and the compiled, immutable table every INS
// consults for each packet before TCP sees it.
//
// Semantics, per INS:
//
//   - A block rule drops every packet whose peer address is in its prefix:
//     received packets by source, sent packets by destination. Outbound TCP
//     segments that carry RST pass, so that resetting a blocked peer's
//     connections still tells the peer.
//   - A limit rule meters received packets whose source is in its prefix
//     with one token bucket for the whole prefix (not one per source
//     address: that would need per-source state on the hot path, which a
//     spoofed flood would grow without bound). It caps either packets or IP
//     bytes (bits) per second; packets over the rate are dropped.
//   - When several rules cover an address, any block rule wins; otherwise
//     the most specific limit rule (longest prefix) meters the packet. The
//     rule order (by id) is the order they were added and are listed in.
//
// Every INS enforces the rules on its own traffic: a limit of N packets per
// second admits up to N per second into each INS.
package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Action is what a rule does to the packets it matches.
type Action string

// Actions.
const (
	// Block drops packets from and to the prefix.
	Block Action = "block"
	// Limit rate-limits packets from the prefix.
	Limit Action = "limit"
)

// MaxRules bounds a rule set. The whole set travels in one management
// frame to every INS and in each INS's start configuration.
const MaxRules = 256

// Ranges of limit rates.
const (
	MinPPS = 1
	MaxPPS = 10_000_000
	// MinBPS is 8 kbit/s (1 kB/s); MaxBPS is 100 Gbit/s.
	MinBPS = 8_000
	MaxBPS = 100_000_000_000
	// MinBurstBytes lets a full-size Ethernet packet through.
	MinBurstBytes = 1500
)

// Rule is one mitigation rule.
type Rule struct {
	// ID names the rule; the daemon assigns it and never reuses it.
	ID uint64 `json:"id"`
	// Action is block or limit.
	Action Action `json:"action"`
	// Prefix is the peer (block) or source (limit) prefix, masked.
	Prefix netip.Prefix `json:"prefix"`
	// PPS caps packets per second (limit rules; exclusive with BPS).
	PPS uint64 `json:"pps,omitempty"`
	// BPS caps IP bits per second (limit rules; exclusive with PPS).
	BPS uint64 `json:"bps,omitempty"`
	// Burst is how many packets (PPS) or bytes (BPS) may pass at once
	// after an idle period; 0 means DefaultBurst.
	Burst uint64 `json:"burst,omitempty"`
	// Created is when the daemon accepted the rule.
	Created time.Time `json:"created,omitzero"`
}

// DefaultBurst is the burst a limit rule gets when it names none: for a
// packet rate a tenth of a second's worth (at least one packet); for a bit
// rate half a second's worth (at least two full-size packets), because a
// TCP flow through a policer with a shorter burst backs off far below the
// rate (measured: iperf3 through a 20 Mbit/s limit got 11 Mbit/s with
// 100 ms of burst, 20.5 with 500 ms).
func (r Rule) DefaultBurst() uint64 {
	if r.PPS > 0 {
		return max(1, r.PPS/10)
	}
	return max(2*MinBurstBytes, r.BPS/16)
}

// EffectiveBurst is the burst in force: Burst, or DefaultBurst.
func (r Rule) EffectiveBurst() uint64 {
	if r.Burst > 0 {
		return r.Burst
	}
	return r.DefaultBurst()
}

func (r Rule) String() string {
	switch r.Action {
	case Limit:
		if r.PPS > 0 {
			return fmt.Sprintf("limit %s %d pps (burst %d)", r.Prefix, r.PPS, r.EffectiveBurst())
		}
		return fmt.Sprintf("limit %s %s (burst %d B)", r.Prefix, FormatRate(r.BPS), r.EffectiveBurst())
	default:
		return fmt.Sprintf("%s %s", r.Action, r.Prefix)
	}
}

// Validate checks one rule (its ID excepted) and says what is wrong.
func (r Rule) Validate() error {
	if err := checkPrefix(r.Prefix); err != nil {
		return err
	}
	switch r.Action {
	case Block:
		if r.PPS != 0 || r.BPS != 0 || r.Burst != 0 {
			return errors.New("a block rule takes no rate or burst")
		}
	case Limit:
		switch {
		case (r.PPS == 0) == (r.BPS == 0):
			return errors.New("a limit takes exactly one of pps or bps")
		case r.PPS != 0 && (r.PPS < MinPPS || r.PPS > MaxPPS):
			return fmt.Errorf("pps %d out of range %d..%d", r.PPS, MinPPS, MaxPPS)
		case r.BPS != 0 && (r.BPS < MinBPS || r.BPS > MaxBPS):
			return fmt.Errorf("bps %d out of range %s..%s", r.BPS, FormatRate(MinBPS), FormatRate(MaxBPS))
		}
		if r.Burst != 0 {
			if r.PPS != 0 && r.Burst > 10*r.PPS {
				return fmt.Errorf("burst %d packets exceeds 10 s at %d pps", r.Burst, r.PPS)
			}
			if r.BPS != 0 && (r.Burst < MinBurstBytes || r.Burst > 10*(r.BPS/8)) {
				return fmt.Errorf("burst %d bytes out of range %d..%d (10 s at the rate)", r.Burst, MinBurstBytes, 10*(r.BPS/8))
			}
		}
	default:
		return fmt.Errorf("unknown action %q (block, limit)", r.Action)
	}
	return nil
}

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("no valid prefix")
	case p.Addr().Zone() != "":
		return fmt.Errorf("prefix %s: zones are not allowed", p)
	case p.Addr().Is4In6():
		return fmt.Errorf("prefix %s: use the IPv4 form %s", p, unmapPrefix(p))
	case p != p.Masked():
		return fmt.Errorf("prefix %s has host bits set (did you mean %s?)", p, p.Masked())
	}
	return nil
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	bits := p.Bits() - 96
	if bits < 0 {
		bits = 0
	}
	return netip.PrefixFrom(p.Addr().Unmap(), bits).Masked()
}

// ParsePrefix reads a prefix as operators write it: "10.0.0.0/8",
// "2001:db8::/32", or a bare address meaning that one host. Host bits set
// and IPv4-mapped IPv6 forms are refused with the form to use instead.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("bad prefix %q: want ADDR/LEN such as 10.0.0.0/8 or 2001:db8::/32", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad prefix %q: want ADDR/LEN such as 10.0.0.0/8, or an address", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("bad prefix %q: zones are not allowed", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if err := checkPrefix(p); err != nil {
		return netip.Prefix{}, fmt.Errorf("bad prefix: %w", err)
	}
	return p, nil
}

// Set is an ordered rule set as the daemon keeps it, persists it and sends
// it to every INS. Version grows with every change so an INS never goes
// back to an older set.
type Set struct {
	Version uint64 `json:"version"`
	NextID  uint64 `json:"next_id"`
	Rules   []Rule `json:"rules"`
}

// Errors of Set operations, wrapped with details.
var (
	ErrDuplicate = errors.New("duplicate rule")
	ErrNotFound  = errors.New("no such rule")
	ErrFull      = errors.New("rule set full")
)

// Clone returns a deep copy.
func (s Set) Clone() Set {
	s.Rules = slices.Clone(s.Rules)
	return s
}

// Find returns the rule with this action and prefix.
func (s *Set) Find(a Action, p netip.Prefix) (Rule, bool) {
	for _, r := range s.Rules {
		if r.Action == a && r.Prefix == p {
			return r, true
		}
	}
	return Rule{}, false
}

// Add validates r, gives it the next ID and appends it. A rule with the
// same action and prefix as one present is refused (remove that one
// first).
func (s *Set) Add(r Rule) (Rule, error) {
	if err := r.Validate(); err != nil {
		return Rule{}, err
	}
	if old, ok := s.Find(r.Action, r.Prefix); ok {
		return Rule{}, fmt.Errorf("%w: rule %d is already %s", ErrDuplicate, old.ID, old)
	}
	if len(s.Rules) >= MaxRules {
		return Rule{}, fmt.Errorf("%w: %d rules is the most", ErrFull, MaxRules)
	}
	if s.NextID == 0 {
		s.NextID = 1
	}
	r.ID = s.NextID
	s.NextID++
	s.Rules = append(s.Rules, r)
	s.Version++
	return r, nil
}

// Remove deletes the rule with this ID.
func (s *Set) Remove(id uint64) (Rule, error) {
	for i, r := range s.Rules {
		if r.ID == id {
			s.Rules = slices.Delete(s.Rules, i, i+1)
			s.Version++
			return r, nil
		}
	}
	return Rule{}, fmt.Errorf("%w: %d (see `netflow rules`)", ErrNotFound, id)
}

// Validate checks a whole set as read from a file or a message: every rule
// valid, IDs unique and below NextID, no duplicates, at most MaxRules.
func (s Set) Validate() error {
	if len(s.Rules) > MaxRules {
		return fmt.Errorf("%w: %d rules, the most is %d", ErrFull, len(s.Rules), MaxRules)
	}
	ids := make(map[uint64]bool, len(s.Rules))
	type key struct {
		a Action
		p netip.Prefix
	}
	seen := make(map[key]uint64, len(s.Rules))
	for _, r := range s.Rules {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("rule %d: %w", r.ID, err)
		}
		if r.ID == 0 || r.ID >= s.NextID {
			return fmt.Errorf("rule %d: id outside 1..%d", r.ID, s.NextID-1)
		}
		if ids[r.ID] {
			return fmt.Errorf("rule %d: id used twice", r.ID)
		}
		ids[r.ID] = true
		k := key{r.Action, r.Prefix}
		if other, ok := seen[k]; ok {
			return fmt.Errorf("rule %d: %w of rule %d", r.ID, ErrDuplicate, other)
		}
		seen[k] = r.ID
	}
	return nil
}
