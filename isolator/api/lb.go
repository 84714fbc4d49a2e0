package api

import "time"

// Load balancer operations (`isolator lb`): the status of every balanced
// uplink, an INS's weight, draining and undraining an INS.
const (
	OpLBStatus  = "lb-status"
	OpLBWeight  = "lb-weight" // ID, N the weight
	OpLBDrain   = "lb-drain"  // ID
	OpLBUndrain = "lb-undrain"
)

// LBStatus answers OpLBStatus.
type LBStatus struct {
	Uplinks []LBUplink `json:"uplinks"`
	// Autoscale is the autoscaling policy ("" when off) and Decisions its
	// last decisions that did something, oldest first, with the last one
	// whatever it was.
	Autoscale string       `json:"autoscale,omitempty"`
	Decisions []LBDecision `json:"decisions,omitempty"`
}

// LBUplink is the balancer on one uplink's interface.
type LBUplink struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface"`
	VIPs      []string `json:"vips"`
	// Established and New count the entries of the flow tables.
	Established int        `json:"established"`
	New         int        `json:"new"`
	Members     []LBMember `json:"members"`
}

// LBMember is one INS behind a balancer.
type LBMember struct {
	ID     int    `json:"id"`
	Name   string `json:"name"`
	MAC    string `json:"mac"`
	Weight uint32 `json:"weight"`
	// State is up, draining or down (dead, its replacement not up yet).
	State string `json:"state"`
	// Share is its fraction of the Maglev table.
	Share float64 `json:"share"`
	// Connections counts the INS's live connections (its engine's count,
	// over all its uplinks); -1 when it could not be asked (a remote host,
	// a dead INS).
	Connections int `json:"connections"`
	// Flows counts its entries in the established-flow table (flows past
	// their first packet, not yet evicted).
	Flows int `json:"flows"`
	// NewFlows counts the new flows the table gave it since it joined;
	// NewFlowsPerSec is their rate since the previous status.
	NewFlows       uint64  `json:"new_flows"`
	NewFlowsPerSec float64 `json:"new_flows_per_sec"`
	// Remote is, for another host behind the balancer, its tunnel
	// address (MAC is then the next hop's).
	Remote string `json:"remote,omitempty"`
}

// LBDecision is one autoscaling decision.
type LBDecision struct {
	At     time.Time `json:"at"`
	Action string    `json:"action"` // hold, grow, shrink
	Count  int       `json:"count,omitempty"`
	// INS are the INS spawned (grow) or drained (shrink).
	INS    []int  `json:"ins,omitempty"`
	Reason string `json:"reason"`
}
