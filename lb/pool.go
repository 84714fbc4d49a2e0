package lb

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/mpshim/mpshim/lb/xdp"
)

// State is a pool member's state as `isolator lb status` shows it.
type State string

// Member states.
const (
	// Up members get new flows by their weight.
	Up State = "up"
	// Draining members get no new flows and keep their connections.
	Draining State = "draining"
)

// Member is one INS in a pool.
type Member struct {
	// ID is the INS id.
	ID int
	// Name places the INS in the Maglev table: the same name on every LB
	// host of a fleet gives the same table.
	Name string
	// MAC is the address of the INS's NIC on the balanced interface.
	MAC net.HardwareAddr
	// Weight is its relative share of new flows.
	Weight uint32
	// State is Up or Draining.
	State State
	// Tunnel, if set, makes the member a host behind this one, reached in
	// an IP-in-IP header (MAC is then the next hop's; see xdp.Tunnel).
	Tunnel *xdp.Tunnel
}

// MemberStatus is a member with what the data path says about it.
type MemberStatus struct {
	Member
	// Share is the fraction of the Maglev table the member holds.
	Share float64
	// Connections counts the member's entries in the established-flow
	// table (flows past their first packet, not yet aged out).
	Connections int
	// NewFlows counts the new flows the table sent it since it joined.
	NewFlows uint64
	// NewFlowsPerSec is the rate of new flows the table sent it since the
	// previous Status call (0 on the first).
	NewFlowsPerSec float64
}

// Pool is the set of INS behind one balancer (one interface and its VIPs).
// Every change rebuilds the table and applies it before it returns.
type Pool struct {
	bal *xdp.Balancer

	mu       sync.Mutex
	members  map[int]*poolMember
	slots    []bool // backend slots in use
	nextSlot int
	lastAt   time.Time
}

type poolMember struct {
	Member
	slot     uint32
	newFlows uint64 // counter at the last Status
	base     uint64 // counter when it joined (slots are reused)
}

// ErrUnknown is returned for an INS id that is not in the pool.
var ErrUnknown = errors.New("lb: no such INS in the pool")

// NewPool returns an empty pool steering through bal.
func NewPool(bal *xdp.Balancer, maxBackends int) *Pool {
	if maxBackends <= 0 {
		maxBackends = xdp.DefaultMaxBackends
	}
	return &Pool{bal: bal, members: map[int]*poolMember{}, slots: make([]bool, maxBackends)}
}

// Add puts an INS into the pool, up with weight w (w ≥ 1).
func (p *Pool) Add(m Member) error {
	if m.Weight == 0 {
		return fmt.Errorf("lb: INS %d: weight 0 (drain it instead)", m.ID)
	}
	if len(m.MAC) != 6 {
		return fmt.Errorf("lb: INS %d: MAC %v is not 6 bytes", m.ID, m.MAC)
	}
	if m.Name == "" {
		m.Name = fmt.Sprintf("ins-%d", m.ID)
	}
	m.State = Up
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.members[m.ID]; ok {
		return fmt.Errorf("lb: INS %d is in the pool already", m.ID)
	}
	for _, o := range p.members {
		if o.Name == m.Name {
			return fmt.Errorf("lb: INS %d: name %q taken by INS %d", m.ID, m.Name, o.ID)
		}
	}
	// Slots are taken round-robin so that a slot freed by a dead INS is
	// reused as late as possible (flow entries still naming it fall back
	// to the table while it is free).
	// A balancer taken over from a previous daemon may have had this INS:
	// the same slot keeps its established flows pointing at it.
	slot := -1
	if s, ok := p.bal.StaleSlot(m.MAC); ok && int(s) < len(p.slots) && !p.slots[s] {
		slot = int(s)
	}
	for i := range p.slots {
		if slot >= 0 {
			break
		}
		s := (p.nextSlot + i) % len(p.slots)
		if !p.slots[s] {
			slot = s
			break
		}
	}
	if slot < 0 {
		return fmt.Errorf("lb: INS %d: pool full (%d)", m.ID, len(p.slots))
	}
	pm := &poolMember{Member: m, slot: uint32(slot)}
	if st, err := p.bal.BackendStats(pm.slot); err == nil {
		pm.newFlows, pm.base = st.NewFlows, st.NewFlows
	}
	p.members[m.ID] = pm
	p.slots[slot] = true
	p.nextSlot = (slot + 1) % len(p.slots)
	if err := p.applyLocked(); err != nil {
		delete(p.members, m.ID)
		p.slots[slot] = false
		return err
	}
	return nil
}

// Remove takes an INS out (it stopped or died): its flows fall back to the
// table, which no longer names it.
func (p *Pool) Remove(id int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	pm, ok := p.members[id]
	if !ok {
		return fmt.Errorf("lb: INS %d: %w", id, ErrUnknown)
	}
	delete(p.members, id)
	if err := p.applyLocked(); err != nil {
		p.members[id] = pm
		return err
	}
	p.slots[pm.slot] = false
	return nil
}

// SetWeight changes an INS's weight (≥ 1); a draining INS stays draining
// and gets the weight when it is undrained.
func (p *Pool) SetWeight(id int, w uint32) error {
	if w == 0 {
		return fmt.Errorf("lb: INS %d: weight 0 (drain it instead)", id)
	}
	return p.change(id, func(m *Member) { m.Weight = w })
}

// SetMAC changes the MAC a member's frames get (a next hop that changed).
func (p *Pool) SetMAC(id int, mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("lb: INS %d: MAC %v is not 6 bytes", id, mac)
	}
	return p.change(id, func(m *Member) { m.MAC = slices.Clone(mac) })
}

// Drain stops new flows to an INS; its connections stay.
func (p *Pool) Drain(id int) error {
	return p.change(id, func(m *Member) { m.State = Draining })
}

// Undrain gives a draining INS new flows again.
func (p *Pool) Undrain(id int) error {
	return p.change(id, func(m *Member) { m.State = Up })
}

func (p *Pool) change(id int, f func(*Member)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	pm, ok := p.members[id]
	if !ok {
		return fmt.Errorf("lb: INS %d: %w", id, ErrUnknown)
	}
	old := pm.Member
	f(&pm.Member)
	if err := p.applyLocked(); err != nil {
		pm.Member = old
		return err
	}
	return nil
}

func (p *Pool) applyLocked() error {
	bs := make([]xdp.Backend, 0, len(p.members))
	for _, pm := range p.members {
		st := xdp.Up
		if pm.State == Draining {
			st = xdp.Draining
		}
		bs = append(bs, xdp.Backend{ID: pm.slot, Name: pm.Name, MAC: pm.MAC, Weight: pm.Weight, State: st, Tunnel: pm.Tunnel})
	}
	return p.bal.SetBackends(bs)
}

// Members returns every member, by INS id, without asking the data path.
func (p *Pool) Members() []Member {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Member, 0, len(p.members))
	for _, pm := range p.members {
		m := pm.Member
		m.MAC = slices.Clone(m.MAC)
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return a.ID - b.ID })
	return out
}

// Status returns every member (by INS id) with its share of the table, its
// connections and its new flows per second.
func (p *Pool) Status() ([]MemberStatus, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _, perSlot, err := p.bal.Flows()
	if err != nil {
		return nil, err
	}
	tab, bs := p.bal.Table()
	counts := map[uint32]int{}
	if tab != nil {
		c := tab.Counts()
		for i, b := range bs {
			counts[b.ID] = c[i]
		}
	}
	now := time.Now()
	elapsed := now.Sub(p.lastAt).Seconds()
	first := p.lastAt.IsZero()
	p.lastAt = now
	out := make([]MemberStatus, 0, len(p.members))
	for _, pm := range p.members {
		ms := MemberStatus{Member: pm.Member, Connections: perSlot[pm.slot]}
		ms.MAC = slices.Clone(pm.MAC)
		if tab != nil {
			ms.Share = float64(counts[pm.slot]) / float64(tab.Size())
		}
		st, err := p.bal.BackendStats(pm.slot)
		if err != nil {
			return nil, err
		}
		ms.NewFlows = st.NewFlows - pm.base
		if !first && elapsed > 0 {
			ms.NewFlowsPerSec = float64(st.NewFlows-pm.newFlows) / elapsed
		}
		pm.newFlows = st.NewFlows
		out = append(out, ms)
	}
	slices.SortFunc(out, func(a, b MemberStatus) int { return a.ID - b.ID })
	return out, nil
}
