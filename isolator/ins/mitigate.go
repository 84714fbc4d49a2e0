package ins

import "github.com/mpshim/mpshim/isolator/ins/mitigate"

// ManageMitigate carries a mitigate.Request: rules, resets, tunings, or
// (empty) just the counters.
const ManageMitigate = "mitigate"

// setMitigation gives the server its mitigation and applies the tunings.
func (s *Server) setMitigation(g *mitigate.Mitigator) error {
	s.mit = g
	return g.Attach(s.st.Stack(), s.eng)
}

// mitigate answers a ManageMitigate request.
func (s *Server) mitigate(req *mitigate.Request) Status {
	if s.mit == nil {
		return Status{Error: "mitigation is not set up in this INS"}
	}
	r, err := s.mit.Handle(req)
	if err != nil {
		return Status{Error: err.Error()}
	}
	return Status{Mitigate: r}
}
