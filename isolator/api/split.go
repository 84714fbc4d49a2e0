package api

import "github.com/mpshim/mpshim/isolator/config"

// OpSplitStatus returns the split gateway's peers, with their paths and the
// connections carried inside their sessions (Response.Split); empty when
// the daemon runs no split gateway.
const OpSplitStatus = "split-status"

// OpPeerAdd joins another isolator to the daemon's split tunnel while it
// runs (Request.PeerAdd).
const OpPeerAdd = "peer-add"

// PeerAddRequest is the argument of OpPeerAdd: the peer, the prefixes
// whose connections of apps under the shim go through it and those it may
// reach through this isolator.
type PeerAddRequest struct {
	Peer   config.Peer `json:"peer"`
	Split  []string    `json:"split,omitempty"`
	Expose []string    `json:"expose,omitempty"`
}
