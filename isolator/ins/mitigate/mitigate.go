// Package mitigate owns an INS's half of mitigation: the rules filter that
// sees every packet of every NIC (a link tap), resets of the connections a
// request names, and the tunings in force. It acts on the netstack and the
// engine it is attached to and knows nothing of the control channel.
package mitigate

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/isolator/ins/link"
	"github.com/mpshim/mpshim/isolator/ins/tune"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/rules"
)

// Mitigation is the rule set and tunings an INS starts with (in its
// ProcessConfig), so it filters from its first packet.
type Mitigation struct {
	Rules       rules.Set   `json:"rules"`
	Tune        tune.Tuning `json:"tune,omitempty"`
	TuneVersion uint64      `json:"tune_version,omitempty"`
}

// Request is the payload of a ManageMitigate request. Each part is
// optional; they are applied in the order of the fields.
type Request struct {
	// Rules replaces the rule set if it is newer than the one in force.
	Rules *rules.Set `json:"rules,omitempty"`
	// Tune replaces the tuning overrides if TuneVersion is newer than
	// the one in force (an empty Tuning restores every default).
	Tune        *tune.Tuning `json:"tune,omitempty"`
	TuneVersion uint64       `json:"tune_version,omitempty"`
	// ResetPeers resets every TCP connection with a peer in the prefix.
	ResetPeers *netip.Prefix `json:"reset_peers,omitempty"`
	// ResetFlow resets the TCP connection whose netflow.FlowID this is.
	ResetFlow string `json:"reset_flow,omitempty"`
}

// Reply is what an INS answers to every ManageMitigate request.
type Reply struct {
	// Version is the rule set version in force.
	Version uint64 `json:"version"`
	// Rules are the rules' counters in this INS.
	Rules []rules.Stats `json:"rules,omitempty"`
	// Reset is how many connections the request reset.
	Reset int `json:"reset"`
	// Tuning are the effective tunings; ConnRefused counts connections
	// reset by max-conn-per-src.
	Tuning      map[string]string `json:"tuning,omitempty"`
	ConnRefused uint64            `json:"conn_refused"`
}

// Mitigator is an INS's half of mitigation: the rules tap on every NIC,
// connection resets and tunings.
type Mitigator struct {
	id     int
	filter *rules.Filter
	log    *slog.Logger

	mu          sync.Mutex // serialises requests; guards below
	ns          *stack.Stack
	eng         *engine.Engine
	tune        tune.Values
	tuneVersion uint64
}

// New loads the start configuration of INS id into a filter; Attach then
// connects it to the netstack and engine. The filter is a tap: put it in
// the netstack's Config.Taps so it sees the NICs' first packets.
func New(id int, m Mitigation, log *slog.Logger) (*Mitigator, error) {
	g := &Mitigator{id: id, filter: rules.NewFilter(nil), log: log, tune: tune.Base}
	if _, err := g.filter.Load(m.Rules); err != nil {
		return nil, fmt.Errorf("start rules: %w", err)
	}
	v, err := m.Tune.Values()
	if err != nil {
		return nil, fmt.Errorf("start tunings: %w", err)
	}
	g.tune, g.tuneVersion = v, m.TuneVersion
	return g, nil
}

// Tap returns the rules tap.
func (g *Mitigator) Tap() link.Tap { return g.filter }

// Attach applies the tunings to the netstack ns and the engine eng and
// keeps both for resets and later tunings.
func (g *Mitigator) Attach(ns *stack.Stack, eng *engine.Engine) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ns, g.eng = ns, eng
	return tune.Apply(ns, eng, g.tune)
}

// Handle serves one request. An error leaves what was applied before it
// in place and says what was not.
func (g *Mitigator) Handle(req *Request) (*Reply, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := &Reply{}
	if req == nil {
		req = &Request{}
	}
	if req.Rules != nil {
		applied, err := g.filter.Load(*req.Rules)
		if err != nil {
			return nil, err
		}
		if applied {
			g.log.Info("rules loaded", "version", req.Rules.Version, "rules", len(req.Rules.Rules))
		}
	}
	if req.Tune != nil && req.TuneVersion > g.tuneVersion {
		v, err := req.Tune.Values()
		if err != nil {
			return nil, fmt.Errorf("tune: %w", err)
		}
		if g.ns != nil {
			if err := tune.Apply(g.ns, g.eng, v); err != nil {
				return nil, fmt.Errorf("tune: %w", err)
			}
		}
		g.tune, g.tuneVersion = v, req.TuneVersion
		g.log.Info("tunings applied", "tune", *req.Tune)
	}
	if req.ResetPeers != nil {
		p := *req.ResetPeers
		if !p.IsValid() {
			return nil, errors.New("reset: invalid prefix")
		}
		out.Reset += g.resetWhere(func(k netflow.Key) bool { return p.Contains(k.Src) })
		g.log.Info("connections reset", "peers", p, "count", out.Reset)
	}
	if req.ResetFlow != "" {
		ins, _, err := netflow.ParseFlowID(req.ResetFlow)
		if err != nil {
			return nil, err
		}
		if ins != g.id {
			return nil, fmt.Errorf("flow %s belongs to INS %d, this is INS %d", req.ResetFlow, ins, g.id)
		}
		out.Reset += g.resetWhere(func(k netflow.Key) bool { return netflow.FlowID(g.id, k) == req.ResetFlow })
	}
	out.Version = g.filter.Version()
	out.Rules = g.filter.Stats()
	out.Tuning = g.tune.Map()
	if g.eng != nil {
		out.ConnRefused = g.eng.ConnRefused()
	}
	return out, nil
}

// connectedState reports whether a TCP endpoint in state s has a peer to
// reset: a connection whose handshake is done and that is not yet closed.
func connectedState(s tcp.EndpointState) bool {
	switch s {
	case tcp.StateEstablished, tcp.StateSynRecv, tcp.StateFinWait1, tcp.StateFinWait2,
		tcp.StateCloseWait, tcp.StateClosing, tcp.StateLastAck:
		return true
	}
	return false
}

// resetWhere aborts every connected TCP endpoint of the stack whose key
// (peer as source, this INS as destination) satisfies match: the peer
// gets a RST, and the pump ends the app's stream as after a peer reset
// (EOF on its socketpair end, SO_ERROR ECONNRESET). Endpoints still in the
// accept queue are reset too. It returns how many it reset.
func (g *Mitigator) resetWhere(match func(netflow.Key) bool) int {
	if g.ns == nil {
		return 0
	}
	var hits []stack.TransportEndpoint
	var keys []netflow.Key
	for _, te := range g.ns.RegisteredEndpoints() {
		ep, ok := te.(interface {
			State() uint32
			Info() tcpip.EndpointInfo
		})
		if !ok {
			continue
		}
		info, ok := ep.Info().(*stack.TransportEndpointInfo)
		if !ok || info.TransProto != tcp.ProtocolNumber || !connectedState(tcp.EndpointState(ep.State())) {
			continue
		}
		id := info.ID
		peer, ok1 := netip.AddrFromSlice(id.RemoteAddress.AsSlice())
		local, ok2 := netip.AddrFromSlice(id.LocalAddress.AsSlice())
		if !ok1 || !ok2 {
			continue
		}
		k := netflow.Key{Src: peer.Unmap(), Dst: local.Unmap(), SrcPort: id.RemotePort, DstPort: id.LocalPort, Proto: netflow.ProtoTCP}
		if !match(k) {
			continue
		}
		hits = append(hits, te)
		keys = append(keys, k)
	}
	// The peer's answers to the RST must reach TCP even through a block
	// (see rules.Filter.Exempt); exempt them before the first RST goes.
	g.filter.Exempt(keys, resetExemption)
	for i, te := range hits {
		te.Abort()
		g.log.Debug("connection reset", "flow", netflow.FlowID(g.id, keys[i]), "peer", netip.AddrPortFrom(keys[i].Src, keys[i].SrcPort))
	}
	return len(hits)
}

// resetExemption is how long a reset connection's packets pass blocks.
const resetExemption = 5 * time.Second
