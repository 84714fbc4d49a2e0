package ipfix

import (
	"encoding/binary"
	"time"

	"github.com/mpshim/mpshim/netflow"
)

// NetFlow v9 (RFC 3954), for collectors that predate IPFIX. The records
// carry the same flows with v9 field types: IN_BYTES/IN_PKTS for the
// initiator's direction and OUT_BYTES/OUT_PKTS for the replies (v9 has no
// reverse elements), FIRST_SWITCHED/LAST_SWITCHED in milliseconds of the
// exporter's uptime, INPUT_SNMP/OUTPUT_SNMP for the uplink. An options
// template names the uplinks (scope Interface, IF_NAME in 32 octets).

// V9Version is the NetFlow v9 message version.
const V9Version = 9

// v9 FlowSet ids and field types used here.
const (
	v9SetTemplate        = 0
	v9SetOptionsTemplate = 1
	v9ScopeInterface     = 2
	v9FirstSwitched      = 22
	v9LastSwitched       = 21
	v9OutBytes           = 23
	v9OutPkts            = 24
	v9IfNameLen          = 32
)

func v9Template(id, src, dst, alen uint16) Template {
	return Template{ID: id, Fields: append(keyFields(src, dst, alen),
		Field{ID: IEOctetDeltaCount, Length: 8},
		Field{ID: IEPacketDeltaCount, Length: 8},
		Field{ID: v9OutBytes, Length: 8},
		Field{ID: v9OutPkts, Length: 8},
		Field{ID: v9FirstSwitched, Length: 4},
		Field{ID: v9LastSwitched, Length: 4},
	)}
}

// V9Templates are the NetFlow v9 templates, IPv4 then IPv6.
var V9Templates = []Template{
	v9Template(TemplateIPv4, IESourceIPv4Address, IEDestinationIPv4Address, 4),
	v9Template(TemplateIPv6, IESourceIPv6Address, IEDestinationIPv6Address, 16),
}

// V9Encoder turns records into NetFlow v9 packets, keeping each source
// id's packet sequence and template schedule. It is not safe for
// concurrent use.
type V9Encoder struct {
	MaxMessage      int
	TemplateRefresh time.Duration
	// Boot is the exporter's start; uptimes count from it.
	Boot    time.Time
	domains map[uint32]*domain
}

// NewV9Encoder returns an encoder (0: default size and refresh).
func NewV9Encoder(maxMessage int, refresh time.Duration, boot time.Time) *V9Encoder {
	e := NewEncoder(maxMessage, refresh)
	return &V9Encoder{MaxMessage: e.MaxMessage, TemplateRefresh: e.TemplateRefresh, Boot: boot, domains: map[uint32]*domain{}}
}

func (e *V9Encoder) uptime(t time.Time) uint32 {
	if t.Before(e.Boot) {
		return 0
	}
	return uint32(t.Sub(e.Boot).Milliseconds())
}

// TemplatesDue reports whether source id needs its templates at now.
func (e *V9Encoder) TemplatesDue(id uint32, now time.Time) bool {
	d := e.domains[id]
	return d == nil || d.templates.IsZero() || now.Sub(d.templates) >= e.TemplateRefresh
}

// Forget drops a source id's state.
func (e *V9Encoder) Forget(id uint32) { delete(e.domains, id) }

// v9msg builds one packet: header, then flowsets padded to 4 octets.
type v9msg struct {
	sets
	count int // records (template and data) in the packet
}

// Encode returns the packets carrying recs (all of source id) at now, led
// by the templates and interface names when they are due or templates is
// set.
func (e *V9Encoder) Encode(id uint32, now time.Time, recs []netflow.ExportRecord, ifaces []Interface, templates bool) ([][]byte, error) {
	d := e.domains[id]
	if d == nil {
		d = &domain{}
		e.domains[id] = d
	}
	templates = templates || d.templates.IsZero() || now.Sub(d.templates) >= e.TemplateRefresh
	var out [][]byte
	var m *v9msg
	start := func() {
		m = &v9msg{sets: sets{b: make([]byte, 20, e.MaxMessage), setAt: -1, pad4: true}}
	}
	flush := func() {
		if m.count > 0 {
			m.close()
			binary.BigEndian.PutUint16(m.b[0:], V9Version)
			binary.BigEndian.PutUint16(m.b[2:], uint16(m.count))
			binary.BigEndian.PutUint32(m.b[4:], e.uptime(now))
			binary.BigEndian.PutUint32(m.b[8:], uint32(now.Unix()))
			binary.BigEndian.PutUint32(m.b[12:], d.seq)
			binary.BigEndian.PutUint32(m.b[16:], id)
			d.seq++
			out = append(out, m.b)
		}
		start()
	}
	// fits reports whether n more octets (plus a set header and padding
	// if a new set of id opens) fit the packet.
	fits := func(set uint16, n int) bool {
		if m.opens(set) {
			n += 4 + 3
		}
		return len(m.b)+n+3 <= e.MaxMessage
	}
	start()
	if templates {
		m.open(v9SetTemplate)
		for i := range V9Templates {
			t := &V9Templates[i]
			m.b = binary.BigEndian.AppendUint16(m.b, t.ID)
			m.b = binary.BigEndian.AppendUint16(m.b, uint16(len(t.Fields)))
			for _, f := range t.Fields {
				m.b = binary.BigEndian.AppendUint16(m.b, f.ID)
				m.b = binary.BigEndian.AppendUint16(m.b, f.Length)
			}
			m.count++
		}
		m.open(v9SetOptionsTemplate)
		m.b = binary.BigEndian.AppendUint16(m.b, TemplateInterface)
		m.b = binary.BigEndian.AppendUint16(m.b, 4) // scope: one field
		m.b = binary.BigEndian.AppendUint16(m.b, 4) // options: one field
		m.b = binary.BigEndian.AppendUint16(m.b, v9ScopeInterface)
		m.b = binary.BigEndian.AppendUint16(m.b, 4)
		m.b = binary.BigEndian.AppendUint16(m.b, IEInterfaceName)
		m.b = binary.BigEndian.AppendUint16(m.b, v9IfNameLen)
		m.count++
		for _, ifc := range ifaces {
			if !fits(TemplateInterface, 4+v9IfNameLen) {
				flush()
			}
			m.open(TemplateInterface)
			m.b = binary.BigEndian.AppendUint32(m.b, ifc.Index)
			var name [v9IfNameLen]byte
			copy(name[:], ifc.Name)
			m.b = append(m.b, name[:]...)
			m.count++
		}
		d.templates = now
	}
	for i := range recs {
		r := &recs[i]
		if !r.Key.Src.IsValid() || r.Key.Src.Is4() != r.Key.Dst.Is4() {
			return nil, errAddresses(i, r)
		}
		set, size := uint16(TemplateIPv4), V9Templates[0].Length()
		if !r.Key.Src.Is4() {
			set, size = TemplateIPv6, V9Templates[1].Length()
		}
		if !fits(set, size) {
			flush()
		}
		m.open(set)
		m.b = e.appendRecord(m.b, r)
		m.count++
	}
	flush()
	return out, nil
}

func (e *V9Encoder) appendRecord(b []byte, r *netflow.ExportRecord) []byte {
	b = appendKey(b, r, uint8(r.Fwd.TCPFlags|r.Rev.TCPFlags))
	b = binary.BigEndian.AppendUint64(b, r.Fwd.Bytes)
	b = binary.BigEndian.AppendUint64(b, r.Fwd.Packets)
	b = binary.BigEndian.AppendUint64(b, r.Rev.Bytes)
	b = binary.BigEndian.AppendUint64(b, r.Rev.Packets)
	b = binary.BigEndian.AppendUint32(b, e.uptime(r.Start))
	return binary.BigEndian.AppendUint32(b, e.uptime(r.End))
}
