package ins

import (
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins/engine"
	"github.com/mpshim/mpshim/msgproto"
	"github.com/mpshim/mpshim/netflow"
	"github.com/mpshim/mpshim/netflow/flowtable"
)

// ManageFlows asks an INS for its next batch of flow records. Unlike the
// other management operations its reply is not a JSON Status but a
// flowtable batch (see flowtable.DecodeBatch); an INS without accounting
// answers an empty one.
const ManageFlows = "flows"

// EnableFlows counts every packet of every uplink into a flow table (a tap
// on each NIC) unless cfg disables accounting.
func (s *Server) EnableFlows(cfg flowtable.Config) {
	if cfg.Disable {
		return
	}
	s.flows = flowtable.New(cfg)
	s.st.AddTap(s.flows)
}

// Flows returns the flow table, nil when accounting is off.
func (s *Server) Flows() *flowtable.Table { return s.flows }

// maxFlowBatch is the largest batch that fits one control packet.
const maxFlowBatch = msgproto.MaxMessage

// replyFlows answers ManageFlows with the table's next batch.
func (s *Server) replyFlows(req ctrl.Frame) {
	var b []byte
	if s.flows == nil {
		b, _ = flowtable.AppendBatch(nil, &flowtable.Batch{})
	} else {
		b = s.flows.Collect(time.Now(), maxFlowBatch, s.flowOwners)
	}
	if err := s.conn().Reply(req, b); err != nil {
		s.log.Debug("flow batch reply", "err", err)
	}
}

// localEnd is a socket's local address for matching flows to listeners and
// unconnected sockets; Addr is invalid for a wildcard bind.
type localEnd struct {
	proto uint8
	addr  netip.Addr
	port  uint16
}

func fromTCPIP(a tcpip.Address) netip.Addr {
	if a.Len() == 0 {
		return netip.Addr{}
	}
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return netip.Addr{}
	}
	return ip
}

// flowOwners finds the socket group owning each flow: the connected socket
// with the flow's 5-tuple, else the listener or unconnected socket bound to
// the flow's local end (an accepted connection belongs to its listener's
// group). It runs once per collection with flows of unknown owner, outside
// the table's locks, and costs one pass over the sockets.
func (s *Server) flowOwners(recs []*flowtable.Record) {
	socks := s.eng.Ends()
	conns := make(map[netflow.Key]engine.SockID, len(socks))
	locals := map[localEnd]engine.SockID{}
	for _, k := range socks {
		local := fromTCPIP(k.Local.Addr)
		if k.Connected && local.IsValid() {
			key := netflow.Key{Src: local, Dst: fromTCPIP(k.Remote.Addr), SrcPort: k.Local.Port, DstPort: k.Remote.Port, Proto: uint8(k.Proto)}
			conns[key.Canonical()] = k.ID
			continue
		}
		if k.Local.Port != 0 {
			locals[localEnd{uint8(k.Proto), local, k.Local.Port}] = k.ID
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		id, ok := conns[r.Key.Canonical()]
		if !ok {
			addr, port := r.Key.Src, r.Key.SrcPort
			if r.Inbound {
				addr, port = r.Key.Dst, r.Key.DstPort
			}
			if id, ok = locals[localEnd{r.Key.Proto, addr, port}]; !ok {
				id, ok = locals[localEnd{r.Key.Proto, netip.Addr{}, port}]
			}
		}
		if ok {
			r.Group = s.owner[id]
		}
	}
}
