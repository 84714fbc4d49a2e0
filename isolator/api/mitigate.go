package api

import "github.com/mpshim/mpshim/netflow/rules"

// Mitigation operations. Each is answered with applied (OK) or refused
// (an error saying why); a change is answered only once every INS applied
// it, or says which did not.
const (
	// OpBlock adds a block rule for Mitigation.Prefix; with
	// Mitigation.Reset it also resets the connections with peers in it.
	OpBlock = "block"
	// OpUnblock removes the block rule for Mitigation.Prefix.
	OpUnblock = "unblock"
	// OpLimit adds a limit rule: Mitigation.Prefix, PPS or BPS, Burst.
	OpLimit = "limit"
	// OpUnlimit removes the limit rule for Mitigation.Prefix.
	OpUnlimit = "unlimit"
	// OpRules lists the rules with their counters.
	OpRules = "rules"
	// OpRuleRemove removes the rule Mitigation.Rule.
	OpRuleRemove = "rules-rm"
	// OpReset resets the TCP connection Mitigation.Flow (a flow ID).
	OpReset = "reset"
	// OpTune sets Mitigation.Settings (key=value) on Mitigation.INS (an
	// INS id or "all"); without settings it shows the tunings.
	OpTune = "tune"
)

// TuneAll as Mitigation.INS tunes every INS, present and future.
const TuneAll = "all"

// MitigationRequest are the arguments of the mitigation operations.
type MitigationRequest struct {
	Prefix   string   `json:"prefix,omitempty"`
	PPS      uint64   `json:"pps,omitempty"`
	BPS      uint64   `json:"bps,omitempty"`
	Burst    uint64   `json:"burst,omitempty"`
	Reset    bool     `json:"reset,omitempty"`
	Rule     uint64   `json:"rule,omitempty"`
	Flow     string   `json:"flow,omitempty"`
	INS      string   `json:"ins,omitempty"`
	Settings []string `json:"settings,omitempty"`
}

// MitigationReply answers a mitigation operation.
type MitigationReply struct {
	// Applied is true when the change is in force in every INS.
	Applied bool `json:"applied"`
	// Summary says what was done or refused, in one line.
	Summary string `json:"summary"`
	// Rule is the rule added or removed.
	Rule *rules.Rule `json:"rule,omitempty"`
	// Version is the rule set version in force.
	Version uint64 `json:"version"`
	// Rules lists every rule with its counters summed over the INS.
	Rules []rules.Stats `json:"rules,omitempty"`
	// INS has one entry per INS the request went to.
	INS []INSMitigation `json:"ins,omitempty"`
	// Reset is the number of connections reset, over all INS.
	Reset int `json:"reset"`
	// ElapsedMicros is the time from the request's arrival to the last
	// INS's answer.
	ElapsedMicros int64 `json:"elapsed_us"`
	// Tune are the stored overrides of the INS tuned (or of all).
	Tune map[string]string `json:"tune,omitempty"`
}

// INSMitigation is one INS's part of a MitigationReply.
type INSMitigation struct {
	ID            int               `json:"id"`
	Applied       bool              `json:"applied"`
	Error         string            `json:"error,omitempty"`
	ElapsedMicros int64             `json:"elapsed_us"`
	Version       uint64            `json:"version"`
	Reset         int               `json:"reset"`
	Rules         []rules.Stats     `json:"rules,omitempty"`
	Tuning        map[string]string `json:"tuning,omitempty"`
	ConnRefused   uint64            `json:"conn_refused"`
}
