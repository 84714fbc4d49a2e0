package ins

import (
	"errors"
	"fmt"
	"os"

	"github.com/mpshim/mpshim/isolator/ctrl"
	"github.com/mpshim/mpshim/isolator/ins/netstack"
)

// Management operations on uplinks (KindManage frames with
// ManageRequest.Uplink set). Each is answered with an UplinkReply.
const (
	// ManageUplinkAdd adds the uplink UplinkOp.Config on the AF_PACKET
	// socket attached to the frame (see OpenLinkFile, Stack.AddUplinkFD).
	ManageUplinkAdd = "uplink-add"
	// ManageUplinkDel removes uplink UplinkOp.Name and closes its socket;
	// connections still on it are reset.
	ManageUplinkDel = "uplink-del"
	// ManageUplinkDrain stops (UplinkOp.Drain) or resumes new flows on
	// uplink UplinkOp.Name.
	ManageUplinkDrain = "uplink-drain"
	// ManageUplinkCarrier reports the carrier of the parent interface of
	// uplink UplinkOp.Name (UplinkOp.Up), see Stack.SetParentCarrier.
	ManageUplinkCarrier = "uplink-carrier"
	// ManageUplinkStats asks for the state, counters and connections of
	// every uplink.
	ManageUplinkStats = "uplink-stats"
)

// UplinkOp carries the arguments of an uplink management request.
type UplinkOp struct {
	// Config is the uplink to add (ManageUplinkAdd).
	Config *netstack.UplinkConfig `json:"config,omitempty"`
	// Name names the uplink of the other operations.
	Name string `json:"name,omitempty"`
	// Drain is ManageUplinkDrain's argument.
	Drain bool `json:"drain,omitempty"`
	// Up is ManageUplinkCarrier's argument.
	Up bool `json:"up,omitempty"`
}

// UplinkStatus is one uplink of an INS as ManageUplinkStats reports it.
type UplinkStatus struct {
	netstack.UplinkCounters
	// Conns counts the live TCP connections on the uplink (see
	// Stack.UplinkConns).
	Conns int
}

// UplinkReply answers every uplink management request: the uplinks after
// the operation, or why it failed.
type UplinkReply struct {
	Uplinks []UplinkStatus `json:"uplinks"`
	Error   string         `json:"error,omitempty"`
}

// manageUplink performs one uplink operation. It takes the descriptors of
// m (closing those it does not keep).
func (s *Server) manageUplink(req ManageRequest, m *ctrl.Msg) UplinkReply {
	files := m.Files
	m.Files = nil
	var keep *os.File
	defer func() {
		for _, f := range files {
			if f != keep {
				f.Close()
			}
		}
	}()
	op := req.Uplink
	if op == nil && req.Op != ManageUplinkStats {
		return UplinkReply{Error: fmt.Sprintf("%s: %v", req.Op, errNoUplinkOp)}
	}
	var err error
	switch req.Op {
	case ManageUplinkAdd:
		switch {
		case op.Config == nil:
			err = fmt.Errorf("%s: no uplink configuration", req.Op)
		case len(files) != 1:
			err = fmt.Errorf("%s %q: want one link socket, got %d descriptors", req.Op, op.Config.Name, len(files))
		default:
			cfg := *op.Config
			cfg.Endpoint = nil
			keep = files[0]
			err = s.st.AddUplinkFD(cfg, keep)
		}
	case ManageUplinkDel:
		// Connections still on the uplink are reset, not left to hang.
		s.st.ResetUplinkConns(op.Name)
		err = s.st.RemoveUplink(op.Name)
	case ManageUplinkDrain:
		err = s.st.Drain(op.Name, op.Drain)
	case ManageUplinkCarrier:
		err = s.st.SetParentCarrier(op.Name, op.Up)
	}
	if err != nil {
		return UplinkReply{Error: err.Error()}
	}
	return UplinkReply{Uplinks: s.uplinkStatus()}
}

// uplinkStatus reports every uplink with its connections.
func (s *Server) uplinkStatus() []UplinkStatus {
	conns := s.st.UplinkConns()
	cs := s.st.Counters()
	out := make([]UplinkStatus, len(cs))
	for i, c := range cs {
		out[i] = UplinkStatus{UplinkCounters: c, Conns: conns[c.Name]}
	}
	return out
}

// errNoUplinkOp is returned for an uplink management request without its
// arguments.
var errNoUplinkOp = errors.New("uplink request without arguments")
