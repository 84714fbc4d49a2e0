// Package uplink holds the pure policy and health state that decides which
// uplink a new outbound flow of an INS leaves on. It knows nothing about the
// network stack: callers feed it link-state and probe observations and ask it
// to pick an uplink for a flow key.
package uplink

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// ErrNoUplink is returned by Pick when no uplink is usable (all down,
// draining, or none configured). The INS maps it to ENETUNREACH.
var ErrNoUplink = errors.New("uplink: no usable uplink")

// State is the effective state of an uplink.
type State int

const (
	// StateUp means the uplink carries new flows.
	StateUp State = iota
	// StateDown means the link has no carrier or its probes are failing;
	// it receives no new flows.
	StateDown
	// StateDraining means an operator asked that the uplink take no new
	// flows; existing flows keep running.
	StateDraining
)

// String returns the lower-case name of the state.
func (s State) String() string {
	switch s {
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	case StateDraining:
		return "draining"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Policy selects how Pick spreads new flows over usable uplinks.
type Policy int

const (
	// PolicyWRR is smooth weighted round-robin by uplink weight (capacity).
	PolicyWRR Policy = iota
	// PolicyLowestRTT picks the usable uplink with the lowest smoothed
	// probe RTT, falling back to weighted round-robin while no uplink has
	// an RTT sample.
	PolicyLowestRTT
	// PolicyStickyHash maps a flow key to an uplink by weighted rendezvous
	// hashing: a key keeps its uplink while the usable set is unchanged, and
	// removing one uplink moves only the keys that were on it.
	PolicyStickyHash
)

// String returns the policy name as accepted by ParsePolicy.
func (p Policy) String() string {
	switch p {
	case PolicyWRR:
		return "wrr"
	case PolicyLowestRTT:
		return "lowest-rtt"
	case PolicyStickyHash:
		return "sticky-hash"
	}
	return fmt.Sprintf("policy(%d)", int(p))
}

// ParsePolicy parses a policy name. The empty string selects PolicyWRR.
func ParsePolicy(name string) (Policy, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "", "wrr", "weighted-round-robin":
		return PolicyWRR, nil
	case "lowest-rtt", "rtt":
		return PolicyLowestRTT, nil
	case "sticky-hash", "hash", "sticky":
		return PolicyStickyHash, nil
	}
	return 0, fmt.Errorf("uplink: unknown policy %q (want wrr, lowest-rtt or sticky-hash)", name)
}

const (
	// LossThreshold is the number of consecutive lost probes after which an
	// uplink is considered down. With 200 ms probes this declares a dead
	// path down in 600-800 ms, inside the 1 s budget for steering new flows
	// away, while one or two lost probes on a lossy link do not flap it.
	LossThreshold = 3

	// rttAlpha is the EWMA weight of a new RTT sample (1/8, as TCP's SRTT
	// in RFC 6298) so one delayed probe does not swing the lowest-RTT choice.
	rttAlpha = 0.125
	// lossAlpha is the EWMA weight of one probe outcome in the loss ratio;
	// 1/16 remembers roughly the last few seconds of 200 ms probes.
	lossAlpha = 1.0 / 16
	// maxWeight bounds weights so the smooth-WRR sums cannot overflow.
	maxWeight = 1 << 20
)

// Info is a snapshot of one uplink's policy and health state.
type Info struct {
	Name    string
	Weight  int
	State   State
	Carrier bool
	// RTT is the smoothed probe round-trip time; zero until the first
	// successful probe.
	RTT time.Duration
	// Loss is the smoothed probe loss ratio in [0,1].
	Loss float64
	// ConsecutiveLost is the number of probes lost in a row.
	ConsecutiveLost int
}

type entry struct {
	name     string
	weight   int
	current  int // smooth WRR running weight
	carrier  bool
	drained  bool
	forced   bool // administratively down
	lostRun  int
	rtt      time.Duration
	rttValid bool
	loss     float64
	nameHash uint64
}

func (e *entry) state() State {
	switch {
	case e.drained:
		return StateDraining
	case e.forced || !e.carrier || e.lostRun >= LossThreshold:
		return StateDown
	}
	return StateUp
}

// lastResort reports whether the uplink is down only because its probes
// fail: it has carrier and is neither drained nor administratively down.
func (e *entry) lastResort() bool {
	return e.carrier && !e.drained && !e.forced
}

// Set is the set of uplinks of one INS with their health and the active
// policy. It is safe for concurrent use.
type Set struct {
	mu     sync.Mutex
	policy Policy
	links  []*entry
}

// NewSet returns an empty set using policy p.
func NewSet(p Policy) *Set {
	return &Set{policy: p}
}

// SetPolicy changes the policy used by later Picks.
func (s *Set) SetPolicy(p Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.policy = p
}

// Policy returns the active policy.
func (s *Set) Policy() Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policy
}

// Add adds an uplink with the given weight (its relative capacity). A new
// uplink starts up with carrier, so it takes flows until an observation says
// otherwise.
func (s *Set) Add(name string, weight int) error {
	if name == "" {
		return errors.New("uplink: empty uplink name")
	}
	if weight <= 0 || weight > maxWeight {
		return fmt.Errorf("uplink %q: weight %d out of range 1..%d", name, weight, maxWeight)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.links {
		if e.name == name {
			return fmt.Errorf("uplink %q: already present", name)
		}
	}
	s.links = append(s.links, &entry{name: name, weight: weight, carrier: true, nameHash: hashString(name)})
	return nil
}

// Remove deletes an uplink.
func (s *Set) Remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.links {
		if e.name == name {
			s.links = append(s.links[:i], s.links[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("uplink %q: not found", name)
}

func (s *Set) find(name string) (*entry, error) {
	for _, e := range s.links {
		if e.name == name {
			return e, nil
		}
	}
	return nil, fmt.Errorf("uplink %q: not found", name)
}

func (s *Set) update(name string, f func(*entry)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.find(name)
	if err != nil {
		return err
	}
	f(e)
	return nil
}

// SetWeight changes an uplink's weight.
func (s *Set) SetWeight(name string, weight int) error {
	if weight <= 0 || weight > maxWeight {
		return fmt.Errorf("uplink %q: weight %d out of range 1..%d", name, weight, maxWeight)
	}
	return s.update(name, func(e *entry) { e.weight = weight })
}

// ObserveCarrier records the link state of an uplink's interface.
func (s *Set) ObserveCarrier(name string, up bool) error {
	return s.update(name, func(e *entry) { e.carrier = up })
}

// ObserveProbe records the outcome of one active probe: ok with its rtt, or
// a loss.
func (s *Set) ObserveProbe(name string, rtt time.Duration, ok bool) error {
	return s.update(name, func(e *entry) {
		if !ok {
			e.lostRun++
			e.loss += lossAlpha * (1 - e.loss)
			return
		}
		e.lostRun = 0
		e.loss -= lossAlpha * e.loss
		if !e.rttValid {
			e.rtt, e.rttValid = rtt, true
			return
		}
		e.rtt += time.Duration(rttAlpha * float64(rtt-e.rtt))
	})
}

// Drain stops new flows on an uplink (true) or lets them resume (false).
func (s *Set) Drain(name string, drain bool) error {
	return s.update(name, func(e *entry) { e.drained = drain })
}

// SetAdminDown forces an uplink down (true) regardless of its health, or
// returns it to health-driven state (false).
func (s *Set) SetAdminDown(name string, down bool) error {
	return s.update(name, func(e *entry) { e.forced = down })
}

// State returns the effective state of an uplink.
func (s *Set) State(name string) (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.find(name)
	if err != nil {
		return 0, err
	}
	return e.state(), nil
}

// Snapshot returns the state of every uplink in insertion order.
func (s *Set) Snapshot() []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Info, 0, len(s.links))
	for _, e := range s.links {
		out = append(out, Info{
			Name: e.name, Weight: e.weight, State: e.state(), Carrier: e.carrier,
			RTT: e.rtt, Loss: e.loss, ConsecutiveLost: e.lostRun,
		})
	}
	return out
}

// Pick returns the name of the uplink a new flow with the given key should
// use. The key only matters for PolicyStickyHash; callers derive it from the
// remote address (see HashBytes). When no uplink is up, an uplink that is
// down only by failed probes is used as a last resort; ErrNoUplink means
// none has carrier, or all are drained or administratively down.
func (s *Set) Pick(key uint64) (string, error) {
	return s.PickWhere(key, nil)
}

// PickWhere is Pick restricted to the uplinks for which eligible returns true
// (for example those with an address of the remote's family); a nil eligible
// admits every uplink. eligible is called with the set locked and must not
// call back into the set.
func (s *Set) PickWhere(key uint64, eligible func(name string) bool) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	usable := make([]*entry, 0, len(s.links))
	for _, e := range s.links {
		if e.state() == StateUp && (eligible == nil || eligible(e.name)) {
			usable = append(usable, e)
		}
	}
	if len(usable) == 0 {
		// Probes are evidence, carrier and the operator are facts: when
		// every eligible uplink is down only because its probes fail,
		// trying one beats refusing the flow (ENETUNREACH). A loaded
		// gateway that drops pings while it still forwards traffic would
		// otherwise cut every new connection.
		for _, e := range s.links {
			if e.lastResort() && (eligible == nil || eligible(e.name)) {
				usable = append(usable, e)
			}
		}
	}
	if len(usable) == 0 {
		return "", fmt.Errorf("%w (%d configured)", ErrNoUplink, len(s.links))
	}
	switch s.policy {
	case PolicyLowestRTT:
		var best *entry
		for _, e := range usable {
			if e.rttValid && (best == nil || e.rtt < best.rtt) {
				best = e
			}
		}
		if best != nil {
			return best.name, nil
		}
		return smoothWRR(usable).name, nil
	case PolicyStickyHash:
		return rendezvous(usable, key).name, nil
	default:
		return smoothWRR(usable).name, nil
	}
}

// smoothWRR is the smooth weighted round-robin of nginx's upstream module:
// every pick raises each candidate's running weight by its weight, picks the
// largest and lowers it by the total. Over any window of sum(weights) picks
// each uplink is chosen exactly weight times, interleaved rather than in
// bursts.
func smoothWRR(usable []*entry) *entry {
	total := 0
	var best *entry
	for _, e := range usable {
		e.current += e.weight
		total += e.weight
		if best == nil || e.current > best.current {
			best = e
		}
	}
	best.current -= total
	return best
}

// rendezvous is weighted highest-random-weight hashing: each uplink scores
// -weight/ln(u) with u uniform from hash(key, uplink); the highest wins. The
// result depends only on the key and the usable set.
func rendezvous(usable []*entry, key uint64) *entry {
	var best *entry
	bestScore := 0.0
	for _, e := range usable {
		h := mix64(key ^ e.nameHash)
		// u in (0,1): 53 random bits, never 0.
		u := (float64(h>>11) + 0.5) / (1 << 53)
		score := float64(e.weight) / -ln(u)
		if best == nil || score > bestScore {
			best, bestScore = e, score
		}
	}
	return best
}
