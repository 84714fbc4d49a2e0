package netflow

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// EndReason says why a flow record ended. The values are IPFIX's
// flowEndReason (IANA element 136).
type EndReason uint8

// End reasons. A flow that is still going has EndNone.
const (
	EndNone EndReason = iota
	// EndIdle: no packet for the idle (inactive) timeout.
	EndIdle
	// EndActive: the active timeout split a long flow for export; the
	// flow goes on.
	EndActive
	// EndOfFlow: TCP FIN in both directions or a RST.
	EndOfFlow
	// EndForced: the INS or the isolator stopped.
	EndForced
	// EndEvicted: the flow table was full (lackOfResources).
	EndEvicted
)

var endNames = [...]string{"", "idle", "active-timeout", "end", "forced", "evicted"}

func (r EndReason) String() string {
	if int(r) < len(endNames) {
		return endNames[r]
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// MarshalText writes the reason's name ("" for a live flow).
func (r EndReason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a name written by MarshalText.
func (r *EndReason) UnmarshalText(b []byte) error {
	for i, n := range endNames {
		if string(b) == n {
			*r = EndReason(i)
			return nil
		}
	}
	return fmt.Errorf("end reason %q: want one of idle, active-timeout, end, forced, evicted", b)
}

// TCPFlags is an OR of TCP header flags (TCPFin … TCPCwr).
type TCPFlags uint8

var flagNames = [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

// String lists the flags set, e.g. "SYN,ACK,FIN" ("" for none).
func (f TCPFlags) String() string {
	var b strings.Builder
	for i, n := range flagNames {
		if f&(1<<i) != 0 {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n)
		}
	}
	return b.String()
}

// Short writes the flags in a fixed-width form as flow tools print them:
// one letter per flag, most significant first, '.' where a flag is unset
// ("CEUAPRSF").
func (f TCPFlags) Short() string {
	const letters = "FSRPAUEC"
	b := []byte("........")
	for i := range 8 {
		if f&(1<<i) != 0 {
			b[7-i] = letters[i]
		}
	}
	return string(b)
}

// MarshalText writes String.
func (f TCPFlags) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText reads ParseTCPFlags.
func (f *TCPFlags) UnmarshalText(b []byte) error {
	v, err := ParseTCPFlags(string(b))
	*f = v
	return err
}

// ParseTCPFlags reads a comma- or '|'-separated list of flag names (case
// does not matter), as String writes it.
func ParseTCPFlags(s string) (TCPFlags, error) {
	var f TCPFlags
	if s == "" {
		return 0, nil
	}
	for _, n := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '|' }) {
		i := indexFold(flagNames[:], strings.TrimSpace(n))
		if i < 0 {
			return 0, fmt.Errorf("TCP flag %q: want FIN, SYN, RST, PSH, ACK, URG, ECE or CWR", n)
		}
		f |= 1 << i
	}
	return f, nil
}

func indexFold(list []string, s string) int {
	for i, n := range list {
		if strings.EqualFold(n, s) {
			return i
		}
	}
	return -1
}

// Proto is an IP protocol number that reads and writes as its name.
type Proto uint8

func (p Proto) String() string { return protoName(uint8(p)) }

// MarshalText writes the protocol's name ("tcp", "udp", "icmp", "icmpv6",
// or "proto-N").
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads ParseProto.
func (p *Proto) UnmarshalText(b []byte) error {
	v, err := ParseProto(string(b))
	*p = v
	return err
}

// ParseProto reads a protocol name as Proto.String writes it, or a number
// 0–255.
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	case "icmpv6", "ipv6-icmp":
		return ProtoICMPv6, nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "proto-"), 10, 8)
	if err != nil {
		return 0, fmt.Errorf("protocol %q: want tcp, udp, icmp, icmpv6 or a number 0-255", s)
	}
	return Proto(n), nil
}

// MarshalText writes "in" or "out".
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads "in" or "out".
func (d *Direction) UnmarshalText(b []byte) error {
	switch string(b) {
	case "in":
		*d = In
	case "out":
		*d = Out
	default:
		return fmt.Errorf("direction %q: want in or out", b)
	}
	return nil
}

// Counters are one direction's totals of a flow.
type Counters struct {
	// Bytes counts IP bytes (IP header included, link header excluded).
	Bytes uint64 `json:"bytes"`
	// Packets counts IP packets.
	Packets uint64 `json:"packets"`
	// Payload counts transport payload bytes (Packet.Payload).
	Payload uint64 `json:"payload"`
	// TCPFlags is the OR of the TCP flags seen.
	TCPFlags TCPFlags `json:"tcp_flags"`
}

// Add counts one packet.
func (c *Counters) Add(p *Packet) {
	pkts, bytes := p.Wire()
	c.Bytes += uint64(bytes)
	c.Packets += uint64(pkts)
	c.Payload += uint64(p.Payload)
	c.TCPFlags |= TCPFlags(p.TCPFlags)
}

// Sub returns c minus o, per counter (flags are c's).
func (c Counters) Sub(o Counters) Counters {
	return Counters{Bytes: c.Bytes - o.Bytes, Packets: c.Packets - o.Packets, Payload: c.Payload - o.Payload, TCPFlags: c.TCPFlags}
}

// Flow is one flow (a conversation's 5-tuple on one uplink of one INS) as
// operators see it: one object of `netflow watch -o json`, one element of
// the isolator API's flow list. Src is the side that started the
// conversation (sent the first packet, or the SYN); Fwd counts what Src
// sent, Rev what Dst sent. Counters are totals since First.
type Flow struct {
	// Time is when these counters were read.
	Time time.Time `json:"time"`
	// ID names the conversation (FlowID); `netflow reset` takes it.
	ID string `json:"id"`
	// INS is the INS that carries the flow, Uplink the uplink it uses.
	INS    int    `json:"ins"`
	Uplink string `json:"uplink"`
	// PID is the app process owning the flow's socket, 0 if unknown.
	PID int `json:"pid,omitempty"`
	// Dir is In when the conversation started from the network, Out
	// when the app started it.
	Dir     Direction  `json:"dir"`
	Proto   Proto      `json:"proto"`
	Src     netip.Addr `json:"src"`
	SrcPort uint16     `json:"src_port"`
	Dst     netip.Addr `json:"dst"`
	DstPort uint16     `json:"dst_port"`
	Fwd     Counters   `json:"fwd"`
	Rev     Counters   `json:"rev"`
	// First and Last are the times of the first and the latest packet.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// BytesPerSec and PacketsPerSec are the rates, both directions
	// together, over the interval before Time.
	BytesPerSec   float64 `json:"bytes_per_sec"`
	PacketsPerSec float64 `json:"packets_per_sec"`
	// End says why the flow ended; EndNone while it goes on.
	End EndReason `json:"end,omitempty"`
}

// Key returns the flow's 5-tuple, Src first.
func (f *Flow) Key() Key {
	return Key{Src: f.Src, Dst: f.Dst, SrcPort: f.SrcPort, DstPort: f.DstPort, Proto: uint8(f.Proto)}
}

// Bytes and Packets are the totals of both directions.
func (f *Flow) Bytes() uint64   { return f.Fwd.Bytes + f.Rev.Bytes }
func (f *Flow) Packets() uint64 { return f.Fwd.Packets + f.Rev.Packets }

// Validate reports what makes f impossible: bad addresses, a mismatched
// family, an ID that is not the flow's, negative or non-finite rates.
func (f *Flow) Validate() error {
	switch {
	case !f.Src.IsValid() || !f.Dst.IsValid():
		return errors.New("flow: src and dst addresses are required")
	case f.Src.Is4() != f.Dst.Is4():
		return fmt.Errorf("flow: src %v and dst %v are of different families", f.Src, f.Dst)
	case f.INS < 0 || f.INS > 0xffff:
		return fmt.Errorf("flow: INS id %d outside 0..65535", f.INS)
	case f.PID < 0:
		return fmt.Errorf("flow: pid %d", f.PID)
	case !(f.BytesPerSec >= 0) || !(f.PacketsPerSec >= 0) || f.BytesPerSec > 1e18 || f.PacketsPerSec > 1e18:
		return fmt.Errorf("flow: rates %v B/s, %v pkt/s", f.BytesPerSec, f.PacketsPerSec)
	case f.ID != "" && f.ID != FlowID(f.INS, f.Key()):
		return fmt.Errorf("flow: id %q is not the id of %v in INS %d", f.ID, f.Key(), f.INS)
	}
	return nil
}

// MaxFlowLine bounds one line of a flow stream.
const MaxFlowLine = 64 << 10

// DecodeFlows reads a stream of flows as `netflow watch -o json` writes it
// (one JSON object per line; blank lines are skipped) and calls fn for each.
// A line that is not a valid flow is an error naming the line; the stream
// is not trusted. A flow without an ID gets the one its 5-tuple names.
func DecodeFlows(r io.Reader, fn func(Flow) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), MaxFlowLine)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		var f Flow
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return fmt.Errorf("flow stream line %d: %w", line, err)
		}
		if dec.More() {
			return fmt.Errorf("flow stream line %d: more than one JSON value", line)
		}
		if err := f.Validate(); err != nil {
			return fmt.Errorf("flow stream line %d: %w", line, err)
		}
		if f.ID == "" {
			f.ID = FlowID(f.INS, f.Key())
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("flow stream after line %d: %w", line, err)
	}
	return nil
}

// ExportRecord is one flow's counts over one export interval, as flow
// exporters send it (IPFIX delta counters). Key has the initiator first;
// Fwd counts what it sent, Rev the replies.
type ExportRecord struct {
	// Domain is the observation domain: the INS id.
	Domain uint32
	Key    Key
	// Uplink is the uplink's name; Interface its index (1-based, 0
	// unknown) as the export names it.
	Uplink    string
	Interface uint32
	// Inbound is set when the initiator is on the network side.
	Inbound bool
	// Fwd and Rev are the counts of this interval; their TCPFlags are
	// the flags seen so far.
	Fwd, Rev Counters
	// Start and End bound the interval: the first and last packet seen.
	Start, End time.Time
	Reason     EndReason
}
