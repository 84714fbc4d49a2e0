package ipfix

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	gf "github.com/netsampler/goflow2/v2/decoders/netflow"

	"github.com/mpshim/mpshim/netflow"
)

// decoded is what an independent decoder (goflow2) read from our messages.
type decoded struct {
	headers    []gf.IPFIXPacket
	templates  map[uint16][]gf.Field
	options    map[uint16]gf.IPFIXOptionsTemplateRecord
	interfaces map[uint32]string
	records    []map[[2]uint32][]byte // (pen, id) -> value
}

func decodeAll(t *testing.T, ts gf.NetFlowTemplateSystem, msgs [][]byte) decoded {
	t.Helper()
	d := decoded{templates: map[uint16][]gf.Field{}, options: map[uint16]gf.IPFIXOptionsTemplateRecord{}, interfaces: map[uint32]string{}}
	for i, m := range msgs {
		var p gf.IPFIXPacket
		if err := gf.DecodeMessageVersion(bytes.NewBuffer(m), ts, nil, &p); err != nil {
			t.Fatalf("message %d: goflow2 cannot decode it: %v", i, err)
		}
		if int(p.Length) != len(m) {
			t.Fatalf("message %d: header length %d, message %d bytes", i, p.Length, len(m))
		}
		d.headers = append(d.headers, p)
		for _, fs := range p.FlowSets {
			switch s := fs.(type) {
			case gf.TemplateFlowSet:
				for _, r := range s.Records {
					d.templates[r.TemplateId] = r.Fields
				}
			case gf.IPFIXOptionsTemplateFlowSet:
				for _, r := range s.Records {
					d.options[r.TemplateId] = r
				}
			case gf.OptionsDataFlowSet:
				for _, r := range s.Records {
					idx := binary.BigEndian.Uint32(r.ScopesValues[0].Value.([]byte))
					d.interfaces[idx] = string(r.OptionsValues[0].Value.([]byte))
				}
			case gf.DataFlowSet:
				for _, r := range s.Records {
					vals := map[[2]uint32][]byte{}
					for _, v := range r.Values {
						vals[[2]uint32{v.Pen, uint32(v.Type)}] = v.Value.([]byte)
					}
					d.records = append(d.records, vals)
				}
			default:
				t.Fatalf("message %d: unexpected set %T (a data set before its template?)", i, fs)
			}
		}
	}
	return d
}

func u(b []byte) uint64 {
	var v uint64
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return v
}

var t0 = time.UnixMilli(1_700_000_000_123)

func sampleRecords() []netflow.ExportRecord {
	return []netflow.ExportRecord{
		{Domain: 3, Key: netflow.Key{Src: netip.MustParseAddr("10.77.0.1"), Dst: netip.MustParseAddr("10.77.0.10"), SrcPort: 40000, DstPort: 80, Proto: 6},
			Uplink: "up0", Interface: 1, Inbound: true,
			Fwd:   netflow.Counters{Bytes: 1234, Packets: 10, TCPFlags: netflow.TCPSyn | netflow.TCPAck | netflow.TCPFin},
			Rev:   netflow.Counters{Bytes: 1_100_000, Packets: 800, TCPFlags: netflow.TCPSyn | netflow.TCPAck | netflow.TCPPsh},
			Start: t0, End: t0.Add(1500 * time.Millisecond), Reason: netflow.EndOfFlow},
		{Domain: 3, Key: netflow.Key{Src: netip.MustParseAddr("fd77:1::10"), Dst: netip.MustParseAddr("2001:db8::53"), SrcPort: 5353, DstPort: 53, Proto: 17},
			Uplink: "up1", Interface: 2, Inbound: false,
			Fwd: netflow.Counters{Bytes: 80, Packets: 1}, Rev: netflow.Counters{Bytes: 200, Packets: 1},
			Start: t0, End: t0, Reason: netflow.EndIdle},
	}
}

var ifaces = []Interface{{Index: 1, Name: "up0"}, {Index: 2, Name: "up1"}}

func TestEncodeDecodesWithGoflow2(t *testing.T) {
	enc := NewEncoder(0, time.Minute)
	recs := sampleRecords()
	msgs, err := enc.Encode(3, t0.Add(2*time.Second), recs, ifaces, false)
	if err != nil {
		t.Fatal(err)
	}
	d := decodeAll(t, gf.CreateTemplateSystem(), msgs)
	h := d.headers[0]
	if h.Version != 10 || h.ObservationDomainId != 3 || h.SequenceNumber != 0 || h.ExportTime != uint32(t0.Unix()+2) {
		t.Fatalf("header %+v", h)
	}
	for _, id := range []uint16{TemplateIPv4, TemplateIPv6} {
		if len(d.templates[id]) != len(Templates[0].Fields) {
			t.Fatalf("template %d: %d fields decoded", id, len(d.templates[id]))
		}
	}
	if o := d.options[TemplateInterface]; o.ScopeFieldCount != 1 || o.Scopes[0].Type != IEIngressInterface || o.Options[0].Type != IEInterfaceName {
		t.Fatalf("options template %+v", o)
	}
	if d.interfaces[1] != "up0" || d.interfaces[2] != "up1" {
		t.Fatalf("interface names %v", d.interfaces)
	}
	if len(d.records) != 2 {
		t.Fatalf("%d data records, want 2", len(d.records))
	}
	iana := func(r map[[2]uint32][]byte, id uint16) uint64 { return u(r[[2]uint32{0, uint32(id)}]) }
	rev := func(r map[[2]uint32][]byte, id uint16) uint64 { return u(r[[2]uint32{ReversePEN, uint32(id)}]) }
	for i, r := range d.records {
		want := recs[i]
		src, dst := IESourceIPv4Address, IEDestinationIPv4Address
		if !want.Key.Src.Is4() {
			src, dst = IESourceIPv6Address, IEDestinationIPv6Address
		}
		gotSrc, _ := netip.AddrFromSlice(r[[2]uint32{0, uint32(src)}])
		gotDst, _ := netip.AddrFromSlice(r[[2]uint32{0, uint32(dst)}])
		checks := []struct {
			name      string
			got, want uint64
		}{
			{"sourceTransportPort", iana(r, IESourceTransportPort), uint64(want.Key.SrcPort)},
			{"destinationTransportPort", iana(r, IEDestinationTransportPort), uint64(want.Key.DstPort)},
			{"protocolIdentifier", iana(r, IEProtocolIdentifier), uint64(want.Key.Proto)},
			{"octetDeltaCount", iana(r, IEOctetDeltaCount), want.Fwd.Bytes},
			{"packetDeltaCount", iana(r, IEPacketDeltaCount), want.Fwd.Packets},
			{"tcpControlBits", iana(r, IETCPControlBits), uint64(want.Fwd.TCPFlags)},
			{"flowStartMilliseconds", iana(r, IEFlowStartMilliseconds), uint64(want.Start.UnixMilli())},
			{"flowEndMilliseconds", iana(r, IEFlowEndMilliseconds), uint64(want.End.UnixMilli())},
			{"flowEndReason", iana(r, IEFlowEndReason), uint64(want.Reason)},
			{"biflowDirection", iana(r, IEBiflowDirection), 1},
			{"reverseOctetDeltaCount", rev(r, IEOctetDeltaCount), want.Rev.Bytes},
			{"reversePacketDeltaCount", rev(r, IEPacketDeltaCount), want.Rev.Packets},
			{"reverseTcpControlBits", rev(r, IETCPControlBits), uint64(want.Rev.TCPFlags)},
		}
		if want.Inbound {
			checks = append(checks, struct {
				name      string
				got, want uint64
			}{"ingressInterface", iana(r, IEIngressInterface), uint64(want.Interface)})
		} else {
			checks = append(checks, struct {
				name      string
				got, want uint64
			}{"egressInterface", iana(r, IEEgressInterface), uint64(want.Interface)})
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("record %d %s = %d, want %d", i, c.name, c.got, c.want)
			}
		}
		if gotSrc != want.Key.Src || gotDst != want.Key.Dst {
			t.Errorf("record %d addresses %v -> %v, want %v", i, gotSrc, gotDst, want.Key)
		}
	}
}

func TestSequenceAndTemplateRefresh(t *testing.T) {
	enc := NewEncoder(0, 30*time.Second)
	ts := gf.CreateTemplateSystem()
	recs := sampleRecords()
	type step struct {
		at            time.Duration
		domain        uint32
		n             int
		wantSeq       uint32
		wantTemplates bool
	}
	steps := []step{
		{0, 3, 2, 0, true},
		// Interface names count as data records: 2 of them, then 2 flows.
		{time.Second, 3, 1, 4, false},
		{2 * time.Second, 4, 2, 0, true}, // another domain starts at 0
		{29 * time.Second, 3, 2, 5, false},
		{30 * time.Second, 3, 1, 7, true},
	}
	for i, s := range steps {
		rs := append([]netflow.ExportRecord(nil), recs[:s.n]...)
		for j := range rs {
			rs[j].Domain = s.domain
		}
		msgs, err := enc.Encode(s.domain, t0.Add(s.at), rs, ifaces, false)
		if err != nil {
			t.Fatal(err)
		}
		d := decodeAll(t, ts, msgs)
		if d.headers[0].SequenceNumber != s.wantSeq || d.headers[0].ObservationDomainId != s.domain {
			t.Errorf("step %d: sequence %d domain %d, want %d and %d", i, d.headers[0].SequenceNumber, d.headers[0].ObservationDomainId, s.wantSeq, s.domain)
		}
		if got := len(d.templates) > 0; got != s.wantTemplates {
			t.Errorf("step %d: templates sent %v, want %v", i, got, s.wantTemplates)
		}
		if len(d.records) != s.n {
			t.Errorf("step %d: %d records decoded, want %d", i, len(d.records), s.n)
		}
	}
}

func TestMessagesStayWithinSize(t *testing.T) {
	enc := NewEncoder(600, time.Minute)
	var recs []netflow.ExportRecord
	for i := range 500 {
		r := sampleRecords()[i%2]
		r.Key.SrcPort = uint16(i)
		recs = append(recs, r)
	}
	msgs, err := enc.Encode(1, t0, recs, ifaces, false)
	if err != nil {
		t.Fatal(err)
	}
	seq := uint32(0)
	total := 0
	ts := gf.CreateTemplateSystem()
	for i, m := range msgs {
		if len(m) > 600 {
			t.Fatalf("message %d has %d bytes, limit 600", i, len(m))
		}
		d := decodeAll(t, ts, [][]byte{m})
		if d.headers[0].SequenceNumber != seq {
			t.Fatalf("message %d: sequence %d, want %d", i, d.headers[0].SequenceNumber, seq)
		}
		seq += uint32(len(d.records) + len(d.interfaces))
		total += len(d.records)
		for j, r := range d.records {
			if p := u(r[[2]uint32{0, IESourceTransportPort}]); int(p) != total-len(d.records)+j {
				t.Fatalf("message %d record %d: port %d out of order", i, j, p)
			}
		}
	}
	if total != 500 {
		t.Fatalf("%d records decoded, want 500", total)
	}
}

// decodeV9 decodes NetFlow v9 packets with goflow2: data records as
// (type -> value) maps, and the interface names.
func decodeV9(t *testing.T, ts gf.NetFlowTemplateSystem, msgs [][]byte) ([]gf.NFv9Packet, []map[uint16][]byte, map[uint32]string) {
	t.Helper()
	var pkts []gf.NFv9Packet
	var recs []map[uint16][]byte
	names := map[uint32]string{}
	for i, m := range msgs {
		if len(m)%4 != 0 {
			t.Fatalf("packet %d: %d octets, flowsets are padded to 4", i, len(m))
		}
		var p gf.NFv9Packet
		if err := gf.DecodeMessageVersion(bytes.NewBuffer(m), ts, &p, nil); err != nil {
			t.Fatalf("packet %d: goflow2 cannot decode it: %v", i, err)
		}
		n := 0
		for _, fs := range p.FlowSets {
			switch s := fs.(type) {
			case gf.TemplateFlowSet:
				n += len(s.Records)
			case gf.NFv9OptionsTemplateFlowSet:
				n += len(s.Records)
			case gf.OptionsDataFlowSet:
				for _, r := range s.Records {
					idx := binary.BigEndian.Uint32(r.ScopesValues[0].Value.([]byte))
					names[idx] = string(bytes.TrimRight(r.OptionsValues[0].Value.([]byte), "\x00"))
					n++
				}
			case gf.DataFlowSet:
				for _, r := range s.Records {
					vals := map[uint16][]byte{}
					for _, v := range r.Values {
						vals[v.Type] = v.Value.([]byte)
					}
					recs = append(recs, vals)
					n++
				}
			default:
				t.Fatalf("packet %d: unexpected flowset %T", i, fs)
			}
		}
		if int(p.Count) != n {
			t.Fatalf("packet %d: count %d, %d records", i, p.Count, n)
		}
		pkts = append(pkts, p)
	}
	return pkts, recs, names
}

func TestV9DecodesWithGoflow2(t *testing.T) {
	boot := t0.Add(-time.Minute)
	enc := NewV9Encoder(0, time.Minute, boot)
	ts := gf.CreateTemplateSystem()
	recs := sampleRecords()
	pkts, got, names := decodeV9(t, ts, must(enc.Encode(3, t0.Add(2*time.Second), recs, ifaces, false)))
	if pkts[0].Version != 9 || pkts[0].SourceId != 3 || pkts[0].SequenceNumber != 0 || pkts[0].SystemUptime != 62000 {
		t.Fatalf("header %+v", pkts[0])
	}
	if names[1] != "up0" || names[2] != "up1" || len(got) != 2 {
		t.Fatalf("names %v, %d records", names, len(got))
	}
	for i, r := range got {
		want := recs[i]
		checks := map[string][2]uint64{
			"IN_BYTES":       {u(r[IEOctetDeltaCount]), want.Fwd.Bytes},
			"IN_PKTS":        {u(r[IEPacketDeltaCount]), want.Fwd.Packets},
			"OUT_BYTES":      {u(r[v9OutBytes]), want.Rev.Bytes},
			"OUT_PKTS":       {u(r[v9OutPkts]), want.Rev.Packets},
			"L4_DST_PORT":    {u(r[IEDestinationTransportPort]), uint64(want.Key.DstPort)},
			"TCP_FLAGS":      {u(r[IETCPControlBits]), uint64(want.Fwd.TCPFlags | want.Rev.TCPFlags)},
			"FIRST_SWITCHED": {u(r[v9FirstSwitched]), uint64(want.Start.Sub(boot).Milliseconds())},
			"LAST_SWITCHED":  {u(r[v9LastSwitched]), uint64(want.End.Sub(boot).Milliseconds())},
		}
		for name, c := range checks {
			if c[0] != c[1] {
				t.Errorf("record %d %s = %d, want %d", i, name, c[0], c[1])
			}
		}
	}
	// The next packet: no templates, sequence counts packets.
	pkts, got, _ = decodeV9(t, ts, must(enc.Encode(3, t0.Add(3*time.Second), recs[:1], ifaces, false)))
	if len(pkts) != 1 || pkts[0].SequenceNumber != 1 || pkts[0].Count != 1 || len(got) != 1 {
		t.Fatalf("second packet %+v, %d records", pkts, len(got))
	}
	// Many records: packets within the size limit, every record once.
	var many []netflow.ExportRecord
	for i := range 300 {
		r := recs[i%2]
		r.Key.SrcPort = uint16(i)
		many = append(many, r)
	}
	msgs := must(NewV9Encoder(700, time.Minute, boot).Encode(1, t0, many, ifaces, false))
	for i, m := range msgs {
		if len(m) > 700 {
			t.Fatalf("packet %d: %d octets", i, len(m))
		}
	}
	if _, got, _ := decodeV9(t, gf.CreateTemplateSystem(), msgs); len(got) != 300 {
		t.Fatalf("%d records decoded, want 300", len(got))
	}
}

func must(m [][]byte, err error) [][]byte {
	if err != nil {
		panic(err)
	}
	return m
}

func TestExporterSendsToEveryCollector(t *testing.T) {
	var lns []*net.UDPConn
	var cols []Collector
	for _, format := range []string{FormatIPFIX, FormatNetFlow9} {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		lns = append(lns, c)
		cols = append(cols, Collector{Addr: c.LocalAddr().String(), Format: format})
	}
	if _, err := NewExporter(context.Background(), []Collector{{Addr: cols[0].Addr, Format: "sflow"}}, 0); err == nil {
		t.Fatal("unknown format accepted")
	}
	ex, err := NewExporter(context.Background(), cols, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	if err := ex.Refresh(t0, []uint32{3}, ifaces); err != nil {
		t.Fatal(err)
	}
	if err := ex.Export(t0.Add(time.Second), sampleRecords(), ifaces); err != nil {
		t.Fatal(err)
	}
	for i, c := range lns {
		ts := gf.CreateTemplateSystem()
		var msgs [][]byte
		buf := make([]byte, 65535)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for range 2 {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("collector %d: %v", i, err)
			}
			msgs = append(msgs, append([]byte(nil), buf[:n]...))
		}
		if cols[i].Format == FormatNetFlow9 {
			pkts, recs, names := decodeV9(t, ts, msgs)
			if len(recs) != 2 || len(names) != 2 || pkts[1].SequenceNumber != 1 {
				t.Fatalf("netflow9 collector: %d records, %d names, second sequence %d", len(recs), len(names), pkts[1].SequenceNumber)
			}
			continue
		}
		d := decodeAll(t, ts, msgs)
		if len(d.records) != 2 || len(d.interfaces) != 2 || d.headers[1].SequenceNumber != 2 {
			t.Fatalf("ipfix collector: %d records, %d interfaces, second sequence %d", len(d.records), len(d.interfaces), d.headers[1].SequenceNumber)
		}
	}
	if m, r, e := ex.Stats(); m != 4 || r != 2 || e != 0 {
		t.Fatalf("stats: %d messages, %d records, %d errors", m, r, e)
	}
}
