package msgproto

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func addGoldenSeeds(f *testing.F, add func(b []byte)) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.bin"))
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
	}
}

// FuzzDecode: Decode never panics, every error wraps exactly one sentinel,
// and whatever decodes re-encodes to the identical bytes.
func FuzzDecode(f *testing.F) {
	addGoldenSeeds(f, func(b []byte) { f.Add(b) })
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		h, m, err := Decode(b)
		if err != nil {
			errKind(t, err)
			return
		}
		if !bytes.Equal(b, in) {
			t.Fatal("Decode modified its input")
		}
		enc, err := Append(nil, h.ReqID, h.Flags, m)
		if err != nil {
			t.Fatalf("decoded message does not encode: %v", err)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", enc, b)
		}
		fresh := newMessage(h.Type)
		if _, err := DecodeTo(b, fresh); err != nil || !msgEqual(fresh, m) {
			t.Fatalf("DecodeTo disagrees with Decode: %v", err)
		}
	})
}

// FuzzBody fuzzes message bodies behind a valid header, so that the
// fuzzer spends its time in the per-type decoders.
func FuzzBody(f *testing.F) {
	addGoldenSeeds(f, func(b []byte) {
		f.Add(binary.LittleEndian.Uint16(b[6:]), b[HeaderSize:])
	})
	f.Fuzz(func(t *testing.T, typ uint16, body []byte) {
		m := newMessage(Type(typ % 160))
		if m == nil || HeaderSize+len(body) > MaxMessage {
			return
		}
		b := make([]byte, HeaderSize, HeaderSize+len(body))
		binary.LittleEndian.PutUint32(b[0:], Magic)
		binary.LittleEndian.PutUint16(b[4:], Version)
		binary.LittleEndian.PutUint16(b[6:], uint16(m.Type()))
		binary.LittleEndian.PutUint32(b[8:], uint32(HeaderSize+len(body)))
		binary.LittleEndian.PutUint64(b[16:], 42)
		b = append(b, body...)
		if _, err := DecodeTo(b, m); err != nil {
			errKind(t, err)
			return
		}
		enc, err := Append(nil, 42, 0, m)
		if err != nil {
			t.Fatalf("decoded %v does not encode: %v", m.Type(), err)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("%v re-encoding differs:\n got %x\nwant %x", m.Type(), enc, b)
		}
	})
}

// FuzzAddr: address conversion to netip and back is lossless for every
// valid address (Flowinfo, which netip cannot hold, excepted) and rejects
// the rest.
func FuzzAddr(f *testing.F) {
	f.Add(uint16(2), uint16(80), uint32(0), uint32(0), []byte{10, 0, 0, 1})
	f.Add(uint16(10), uint16(443), uint32(5), uint32(3), []byte{0xfe, 0x80, 15: 1})
	f.Add(uint16(0), uint16(0), uint32(0), uint32(0), []byte{})
	f.Add(uint16(7), uint16(1), uint32(0), uint32(0), []byte{1})
	f.Fuzz(func(t *testing.T, fam, port uint16, flow, scope uint32, ip []byte) {
		a := Addr{Family: fam, Port: port, Flowinfo: flow, ScopeID: scope}
		copy(a.IP[:], ip)
		ap, err := a.AddrPort()
		if err != nil {
			errKind(t, err)
			if a.check() == nil && a.Family != FamilyUnspec {
				t.Fatalf("valid %+v rejected: %v", a, err)
			}
			return
		}
		back := AddrFromNetip(ap)
		want := a
		want.Flowinfo = 0
		if back != want {
			t.Fatalf("%+v -> %v -> %+v", a, ap, back)
		}
		if again, err := netip.ParseAddrPort(ap.String()); err != nil || again != ap {
			t.Fatalf("netip round trip of %v: %v %v", ap, again, err)
		}
	})
}
