package ipfix

import (
	"encoding/binary"

	"github.com/mpshim/mpshim/netflow"
)

// sets frames the sets of an IPFIX message or the flowsets of a NetFlow v9
// packet, which share a layout: a 2-octet id and a 2-octet length, the
// length written when the set closes. Records of the same id go into the
// open set; another id closes it and opens a new one.
type sets struct {
	b     []byte
	setAt int // start of the open set, -1 if none
	setID uint16
	// pad4 pads each set to a multiple of four octets (NetFlow v9 asks
	// for it; IPFIX sets are not padded).
	pad4 bool
}

// opens reports whether a record of set id would open a new set (and so
// cost a set header).
func (s *sets) opens(id uint16) bool { return s.setAt < 0 || s.setID != id }

// open starts a set of id unless one is open already.
func (s *sets) open(id uint16) {
	if !s.opens(id) {
		return
	}
	s.close()
	s.setAt, s.setID = len(s.b), id
	s.b = append(s.b, 0, 0, 0, 0)
	binary.BigEndian.PutUint16(s.b[s.setAt:], id)
}

// close ends the open set, if any, writing its length.
func (s *sets) close() {
	if s.setAt < 0 {
		return
	}
	for s.pad4 && (len(s.b)-s.setAt)%4 != 0 {
		s.b = append(s.b, 0)
	}
	binary.BigEndian.PutUint16(s.b[s.setAt+2:], uint16(len(s.b)-s.setAt))
	s.setAt = -1
}

// keyFields are the leading fields of every flow template, IPFIX and v9
// alike: the flow key, the uplink and the direction. src and dst are the
// address elements and alen their length.
func keyFields(src, dst, alen uint16) []Field {
	return []Field{
		{ID: src, Length: alen},
		{ID: dst, Length: alen},
		{ID: IESourceTransportPort, Length: 2},
		{ID: IEDestinationTransportPort, Length: 2},
		{ID: IEProtocolIdentifier, Length: 1},
		// tcpControlBits is unsigned16; one octet is its reduced-size
		// encoding (RFC 7011 6.2) and holds every flag we see.
		{ID: IETCPControlBits, Length: 1},
		{ID: IEIngressInterface, Length: 4},
		{ID: IEEgressInterface, Length: 4},
		{ID: IEFlowDirection, Length: 1},
	}
}

// appendKey writes the values of keyFields for r, with flags as the TCP
// control bits.
func appendKey(b []byte, r *netflow.ExportRecord, flags uint8) []byte {
	if r.Key.Src.Is4() {
		s, d := r.Key.Src.As4(), r.Key.Dst.As4()
		b = append(append(b, s[:]...), d[:]...)
	} else {
		s, d := r.Key.Src.As16(), r.Key.Dst.As16()
		b = append(append(b, s[:]...), d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, r.Key.SrcPort)
	b = binary.BigEndian.AppendUint16(b, r.Key.DstPort)
	b = append(b, r.Key.Proto, flags)
	// The initiator's packets enter from the uplink (ingress) when it is
	// on the network side and leave by it (egress) when the app is.
	in, out, dir := uint32(0), r.Interface, byte(dirEgress)
	if r.Inbound {
		in, out, dir = r.Interface, 0, dirIngress
	}
	b = binary.BigEndian.AppendUint32(b, in)
	b = binary.BigEndian.AppendUint32(b, out)
	return append(b, dir)
}
