// Package ipfix exports flow records in IPFIX (RFC 7011) over UDP, with
// IANA information elements and RFC 5103 reverse elements for the replies
// of a biflow, and in its predecessor NetFlow v9 (RFC 3954) for older
// collectors.
//
// The encoder is written here because the well-kept Go IPFIX libraries
// (github.com/vmware/go-ipfix and its successor) are not available through
// the Go module proxy this project builds with; the tests decode our output
// with an independent decoder (goflow2's) and the end-to-end suite with
// nfcapd/nfdump.
//
// Every observation domain (one per INS) gets, at its first message and
// then every template refresh interval: a Template Set with the IPv4 and the
// IPv6 biflow template, an Options Template Set with the interface template,
// and an options Data Set naming each uplink (interfaceName, scoped by
// ingressInterface). Data Sets follow, packed into messages of at most
// MaxMessage bytes. The sequence number counts the data records of the
// domain sent before each message.
package ipfix

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

// Version is the IPFIX message version.
const Version = 10

// Set ids.
const (
	SetTemplate        = 2
	SetOptionsTemplate = 3
)

// Template ids of the records this package sends.
const (
	TemplateIPv4      = 256
	TemplateIPv6      = 257
	TemplateInterface = 258
)

// IANA information element ids used here.
const (
	IEOctetDeltaCount          = 1
	IEPacketDeltaCount         = 2
	IEProtocolIdentifier       = 4
	IETCPControlBits           = 6
	IESourceTransportPort      = 7
	IESourceIPv4Address        = 8
	IEIngressInterface         = 10
	IEDestinationTransportPort = 11
	IEDestinationIPv4Address   = 12
	IEEgressInterface          = 14
	IESourceIPv6Address        = 27
	IEDestinationIPv6Address   = 28
	IEFlowDirection            = 61
	IEInterfaceName            = 82
	IEFlowEndReason            = 136
	IEFlowStartMilliseconds    = 152
	IEFlowEndMilliseconds      = 153
	IEBiflowDirection          = 239
)

// ReversePEN is the private enterprise number of RFC 5103 reverse
// information elements: the element of the same id, for the reverse
// direction.
const ReversePEN = 29305

// VarLen is the field length of a variable-length element.
const VarLen = 0xffff

// Field is one field specifier of a template.
type Field struct {
	ID     uint16
	Length uint16
	// PEN is the enterprise number, 0 for IANA elements.
	PEN uint32
}

// Template is a template or options template.
type Template struct {
	ID     uint16
	Fields []Field
	// Scope is the number of leading scope fields of an options
	// template; 0 for a plain template.
	Scope int
}

func biflowTemplate(id uint16, src, dst uint16, alen uint16) Template {
	return Template{ID: id, Fields: append(keyFields(src, dst, alen),
		Field{ID: IEOctetDeltaCount, Length: 8},
		Field{ID: IEPacketDeltaCount, Length: 8},
		Field{ID: IEFlowStartMilliseconds, Length: 8},
		Field{ID: IEFlowEndMilliseconds, Length: 8},
		Field{ID: IEFlowEndReason, Length: 1},
		Field{ID: IEBiflowDirection, Length: 1},
		Field{ID: IEOctetDeltaCount, Length: 8, PEN: ReversePEN},
		Field{ID: IEPacketDeltaCount, Length: 8, PEN: ReversePEN},
		Field{ID: IETCPControlBits, Length: 1, PEN: ReversePEN},
	)}
}

// Templates are the templates this package sends, in order.
var Templates = []Template{
	biflowTemplate(TemplateIPv4, IESourceIPv4Address, IEDestinationIPv4Address, 4),
	biflowTemplate(TemplateIPv6, IESourceIPv6Address, IEDestinationIPv6Address, 16),
}

// InterfaceTemplate is the options template naming the uplinks.
var InterfaceTemplate = Template{ID: TemplateInterface, Scope: 1, Fields: []Field{
	{ID: IEIngressInterface, Length: 4},
	{ID: IEInterfaceName, Length: VarLen},
}}

// Length returns the encoded length of a data record, or -1 if the
// template has variable-length fields.
func (t *Template) Length() int {
	n := 0
	for _, f := range t.Fields {
		if f.Length == VarLen {
			return -1
		}
		n += int(f.Length)
	}
	return n
}

// appendTemplateRecord writes t as a (options) template record.
func appendTemplateRecord(b []byte, t *Template) []byte {
	b = binary.BigEndian.AppendUint16(b, t.ID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(t.Fields)))
	if t.Scope > 0 {
		b = binary.BigEndian.AppendUint16(b, uint16(t.Scope))
	}
	for _, f := range t.Fields {
		id := f.ID
		if f.PEN != 0 {
			id |= 0x8000
		}
		b = binary.BigEndian.AppendUint16(b, id)
		b = binary.BigEndian.AppendUint16(b, f.Length)
		if f.PEN != 0 {
			b = binary.BigEndian.AppendUint32(b, f.PEN)
		}
	}
	return b
}

// Interface names one uplink in the options data.
type Interface struct {
	// Index is the uplink's interface index (1-based) in flow records.
	Index uint32
	Name  string
}

// Biflow directions (IANA biflowDirection).
const (
	biflowInitiator = 1
)

// Flow directions (IANA flowDirection).
const (
	dirIngress = 0
	dirEgress  = 1
)

func ms(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixMilli())
}

// appendRecord writes r as a data record of the IPv4 or IPv6 template.
func appendRecord(b []byte, r *netflow.ExportRecord) []byte {
	b = appendKey(b, r, uint8(r.Fwd.TCPFlags))
	b = binary.BigEndian.AppendUint64(b, r.Fwd.Bytes)
	b = binary.BigEndian.AppendUint64(b, r.Fwd.Packets)
	b = binary.BigEndian.AppendUint64(b, ms(r.Start))
	b = binary.BigEndian.AppendUint64(b, ms(r.End))
	b = append(b, byte(r.Reason), biflowInitiator)
	b = binary.BigEndian.AppendUint64(b, r.Rev.Bytes)
	b = binary.BigEndian.AppendUint64(b, r.Rev.Packets)
	return append(b, byte(r.Rev.TCPFlags))
}

// appendVarString writes a variable-length string field (RFC 7011 7).
func appendVarString(b []byte, s string) []byte {
	if len(s) < 255 {
		b = append(b, byte(len(s)))
	} else {
		if len(s) > 0xffff {
			s = s[:0xffff]
		}
		b = append(b, 255)
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	}
	return append(b, s...)
}

// message builds one IPFIX message.
type message struct {
	sets
	domain uint32
	seq    uint32
	recs   uint32 // data records in this message
}

const headerLen = 16

func newMessage(domain, seq uint32, exportTime time.Time, max int) *message {
	m := &message{sets: sets{b: make([]byte, headerLen, max), setAt: -1}, domain: domain, seq: seq}
	binary.BigEndian.PutUint16(m.b[0:], Version)
	binary.BigEndian.PutUint32(m.b[4:], uint32(exportTime.Unix()))
	binary.BigEndian.PutUint32(m.b[8:], seq)
	binary.BigEndian.PutUint32(m.b[12:], domain)
	return m
}

func (m *message) finish() []byte {
	m.close()
	binary.BigEndian.PutUint16(m.b[2:], uint16(len(m.b)))
	return m.b
}

// Encoder turns records into IPFIX messages, keeping each observation
// domain's sequence number and template schedule. It is not safe for
// concurrent use.
type Encoder struct {
	// MaxMessage bounds a message's size (default 1400: one datagram on
	// an Ethernet path).
	MaxMessage int
	// TemplateRefresh is how often templates and interface names are
	// re-sent to a domain (default 60 s).
	TemplateRefresh time.Duration
	domains         map[uint32]*domain
}

type domain struct {
	seq       uint32
	templates time.Time // when they were last sent
}

// NewEncoder returns an encoder with the given message size and refresh
// interval (0: defaults).
func NewEncoder(maxMessage int, refresh time.Duration) *Encoder {
	if maxMessage <= 0 {
		maxMessage = 1400
	}
	maxMessage = max(min(maxMessage, 65535), 512)
	if refresh <= 0 {
		refresh = 60 * time.Second
	}
	return &Encoder{MaxMessage: maxMessage, TemplateRefresh: refresh, domains: map[uint32]*domain{}}
}

func (e *Encoder) domain(id uint32) *domain {
	d := e.domains[id]
	if d == nil {
		d = &domain{}
		e.domains[id] = d
	}
	return d
}

// TemplatesDue reports whether domain id needs its templates at now.
func (e *Encoder) TemplatesDue(id uint32, now time.Time) bool {
	d := e.domains[id]
	return d == nil || d.templates.IsZero() || now.Sub(d.templates) >= e.TemplateRefresh
}

// Forget drops a domain's state (its INS is gone); a new INS with the same
// id starts over with templates.
func (e *Encoder) Forget(id uint32) { delete(e.domains, id) }

// Encode returns the messages carrying recs (all of one domain) at now,
// led by the templates and interface names when they are due (or when
// templates is set).
func (e *Encoder) Encode(id uint32, now time.Time, recs []netflow.ExportRecord, ifaces []Interface, templates bool) ([][]byte, error) {
	d := e.domain(id)
	templates = templates || d.templates.IsZero() || now.Sub(d.templates) >= e.TemplateRefresh
	var out [][]byte
	m := newMessage(id, d.seq, now, e.MaxMessage)
	flush := func() {
		if len(m.b) > headerLen {
			out = append(out, m.finish())
		}
		d.seq += m.recs
		m = newMessage(id, d.seq, now, e.MaxMessage)
	}
	if templates {
		m.open(SetTemplate)
		for i := range Templates {
			m.b = appendTemplateRecord(m.b, &Templates[i])
		}
		m.open(SetOptionsTemplate)
		m.b = appendTemplateRecord(m.b, &InterfaceTemplate)
		for _, ifc := range ifaces {
			need := 4 + 3 + len(ifc.Name) + 4
			if len(m.b)+need > e.MaxMessage {
				flush()
			}
			if 16+4+need > e.MaxMessage {
				return nil, fmt.Errorf("ipfix: interface name %q does not fit a message of %d bytes", ifc.Name, e.MaxMessage)
			}
			m.open(TemplateInterface)
			m.b = binary.BigEndian.AppendUint32(m.b, ifc.Index)
			m.b = appendVarString(m.b, ifc.Name)
			m.recs++
		}
		d.templates = now
	}
	for i := range recs {
		r := &recs[i]
		if !r.Key.Src.IsValid() || r.Key.Src.Is4() != r.Key.Dst.Is4() {
			return nil, errAddresses(i, r)
		}
		set, size := uint16(TemplateIPv4), Templates[0].Length()
		if !r.Key.Src.Is4() {
			set, size = TemplateIPv6, Templates[1].Length()
		}
		need := size
		if m.opens(set) {
			need += 4
		}
		if len(m.b)+need > e.MaxMessage {
			flush()
			need = size + 4
		}
		m.open(set)
		m.b = appendRecord(m.b, r)
		m.recs++
	}
	flush()
	return out, nil
}

func errAddresses(i int, r *netflow.ExportRecord) error {
	return fmt.Errorf("ipfix: record %d: addresses %v, %v", i, r.Key.Src, r.Key.Dst)
}
