package msgproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func mustAppend(t testing.TB, reqID uint64, flags uint32, m Message) []byte {
	t.Helper()
	b, err := Append(nil, reqID, flags, m)
	if err != nil {
		t.Fatalf("Append(%T): %v", m, err)
	}
	return b
}

// edit returns a copy of b changed by f.
func edit(b []byte, f func(c []byte)) []byte {
	c := bytes.Clone(b)
	f(c)
	return c
}

func TestDecodeErrors(t *testing.T) {
	set := mustAppend(t, 9, 0, &Setsockopt{Sock: 1, Level: 6, Name: 1, Value: le32(1)})
	bind := mustAppend(t, 9, 0, &Bind{Sock: 1, Addr: ap("127.0.0.1:80")})
	reply := mustAppend(t, 9, 0, &Reply{Errno: 4})
	send := mustAppend(t, 9, 0, &SendTo{Sock: 1, Payload: []byte("x")})
	tests := []struct {
		name string
		in   []byte
		err  error
		text string
	}{
		{"empty", nil, ErrTruncated, "header needs 24 bytes, have 0"},
		{"short header", set[:23], ErrTruncated, "have 23"},
		{"short body", set[:len(set)-1], ErrTruncated, "have 51 of 52 bytes"},
		{"extra byte", append(bytes.Clone(set), 0), ErrBadLength, "buffer has 53 bytes, header says 52"},
		{"bad magic", edit(set, func(c []byte) { c[3] = 'X' }), ErrBadMagic, "magic 0x5850534d"},
		{"bad version", edit(set, func(c []byte) { c[4] = 2 }), ErrBadVersion, "version 2, want 1"},
		{"unknown type", edit(set, func(c []byte) { binary.LittleEndian.PutUint16(c[6:], 4000) }), ErrUnknownType, "type 4000"},
		{"type zero", edit(set, func(c []byte) { binary.LittleEndian.PutUint16(c[6:], 0) }), ErrUnknownType, "type 0"},
		{"oversized", edit(set, func(c []byte) { binary.LittleEndian.PutUint32(c[8:], MaxMessage+1) }), ErrOversized, "length 66049 > 66048"},
		{"length below header", edit(set, func(c []byte) { binary.LittleEndian.PutUint32(c[8:], 10) }), ErrBadLength, "length 10 < header size 24"},
		{"unknown flag", edit(set, func(c []byte) { c[12] = 0x80 }), ErrBadField, "header flags 0x80"},
		{"value too long", edit(set, func(c []byte) { binary.LittleEndian.PutUint32(c[40:], 300) }), ErrBadField, "msgproto: setsockopt: value length 300 > 256"},
		{"value length mismatch", edit(set, func(c []byte) { binary.LittleEndian.PutUint32(c[40:], 5) }), ErrBadLength, "setsockopt: body 28 bytes, fields say 29"},
		{"body below fixed part", edit(bind[:HeaderSize+8], func(c []byte) { binary.LittleEndian.PutUint32(c[8:], HeaderSize+8) }), ErrBadLength, "bind: body 8 bytes < fixed part 40"},
		{"nonzero pad", edit(set, func(c []byte) { c[HeaderSize+20] = 1 }), ErrBadField, "reserved field pad0"},
		{"bad family", edit(bind, func(c []byte) { c[HeaderSize+8] = 3 }), ErrBadField, "bind: addr: family 3 unknown"},
		{"ipv4 stray bytes", edit(bind, func(c []byte) { c[HeaderSize+8+12+5] = 1 }), ErrBadField, "stray address bytes"},
		{"ipv4 scope", edit(bind, func(c []byte) { c[HeaderSize+8+8] = 1 }), ErrBadField, "scope 1"},
		{"negative errno", edit(reply, func(c []byte) { binary.LittleEndian.PutUint32(c[HeaderSize:], 0xFFFFFFFF) }), ErrBadField, "errno -1 out of range [0, 4095]"},
		{"huge errno", edit(reply, func(c []byte) { binary.LittleEndian.PutUint32(c[HeaderSize:], 4096) }), ErrBadField, "errno 4096"},
		{"payload length 2^32-1", edit(send, func(c []byte) { binary.LittleEndian.PutUint32(c[HeaderSize+40:], 0xFFFFFFFF) }), ErrBadField, "payload length 4294967295 > 65535"},
		{"unspec with port", edit(send, func(c []byte) { c[HeaderSize+12+2] = 1 }), ErrBadField, "unspecified family with port 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, m, err := Decode(tc.in)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Decode err = %v, want %v", err, tc.err)
			}
			if m != nil {
				t.Errorf("Decode returned a message with an error: %#v", m)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not contain %q", err, tc.text)
			}
			errKind(t, err)
		})
	}
}

func TestAppendErrors(t *testing.T) {
	var nilBind *Bind
	tests := []struct {
		name  string
		flags uint32
		m     Message
		text  string
	}{
		{"nil interface", 0, nil, "nil message"},
		{"nil pointer", 0, nilBind, "bind: nil message"},
		{"unknown flag", 2, &Close{Sock: 1}, "header flags 0x2"},
		{"option too long", 0, &Setsockopt{Value: make([]byte, 300)}, "msgproto: setsockopt: value length 300 > 256"},
		{"payload too long", 0, &SendTo{Payload: make([]byte, MaxDatagram+1)}, "payload length 65536 > 65535"},
		{"control too long", 0, &SendMsg{Control: make([]byte, MaxControl+1)}, "control length 257 > 256"},
		{"ioctl arg too long", 0, &IoctlReply{Arg: make([]byte, MaxIoctlArg+1)}, "arg length 257 > 256"},
		{"bad family", 0, &Connect{Addr: Addr{Family: 1}}, "connect: addr: family 1 unknown"},
		{"getsockopt max", 0, &Getsockopt{MaxLen: MaxOptLen + 1}, "max_len 257 > 256"},
		{"recvmsg control max", 0, &RecvMsg{MaxControl: MaxControl + 1}, "max_control 257 > 256"},
		{"negative errno", 0, &Reply{Errno: -4}, "errno -4 out of range"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte("keep")
			out, err := Append(dst, 1, tc.flags, tc.m)
			if !errors.Is(err, ErrBadField) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("Append err = %v, want ErrBadField containing %q", err, tc.text)
			}
			if string(out) != "keep" {
				t.Errorf("dst changed on error: %q", out)
			}
		})
	}
}

func TestAppendAppends(t *testing.T) {
	a := mustAppend(t, 1, 0, &Close{Sock: 5})
	b := mustAppend(t, 2, FlagFD, &SendTo{Sock: 6, Payload: []byte("xyz")})
	both, err := Append(bytes.Clone(a), 2, FlagFD, &SendTo{Sock: 6, Payload: []byte("xyz")})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(both, append(bytes.Clone(a), b...)) {
		t.Fatalf("Append did not append: %x", both)
	}
	// Two messages back to back are delimited by DecodeHeader.
	h, err := DecodeHeader(both)
	if err != nil || int(h.Length) != len(a) {
		t.Fatalf("DecodeHeader = %+v, %v", h, err)
	}
	h2, m, err := Decode(both[h.Length:])
	if err != nil || h2.ReqID != 2 || h2.Flags != FlagFD || string(m.(*SendTo).Payload) != "xyz" {
		t.Fatalf("second message: %+v %#v %v", h2, m, err)
	}
}

func TestMaxSizes(t *testing.T) {
	for _, m := range []Message{
		&SendTo{Addr: ap("[::1]:1"), Payload: make([]byte, MaxDatagram)},
		&SendMsg{Control: make([]byte, MaxControl), Payload: make([]byte, MaxDatagram)},
		&RecvMsgReply{Control: make([]byte, MaxControl), Payload: make([]byte, MaxDatagram)},
		&Setsockopt{Value: make([]byte, MaxOptLen)},
	} {
		b := mustAppend(t, 1, 0, m)
		if len(b) > MaxMessage {
			t.Errorf("%T: %d bytes > MaxMessage", m, len(b))
		}
		if _, _, err := Decode(b); err != nil {
			t.Errorf("%T at maximum size: %v", m, err)
		}
	}
}

// TestNoAliasing: a decoded message must not change when the (shared,
// hostile) input buffer changes afterwards.
func TestNoAliasing(t *testing.T) {
	b := mustAppend(t, 1, 0, &SendMsg{Control: []byte("ctl"), Payload: []byte("payload"), Addr: ap("1.2.3.4:5")})
	_, m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0xEE
	}
	sm := m.(*SendMsg)
	if string(sm.Control) != "ctl" || string(sm.Payload) != "payload" || sm.Addr != ap("1.2.3.4:5") {
		t.Fatalf("decoded message aliases the input: %#v", sm)
	}
}

func TestDecodeTo(t *testing.T) {
	b := mustAppend(t, 3, 0, &SendTo{Sock: 8, Payload: []byte("one")})
	var m SendTo
	m.Payload = make([]byte, 0, 64)
	p := &m.Payload[:1][0]
	h, err := DecodeTo(b, &m)
	if err != nil || h.ReqID != 3 || m.Sock != 8 || string(m.Payload) != "one" {
		t.Fatalf("DecodeTo = %+v %#v %v", h, m, err)
	}
	if &m.Payload[0] != p {
		t.Errorf("DecodeTo did not reuse the payload buffer")
	}
	if _, err := DecodeTo(b, &Bind{}); !errors.Is(err, ErrWrongType) || !strings.Contains(err.Error(), "got SendTo, want Bind") {
		t.Errorf("DecodeTo wrong type: %v", err)
	}
}

func TestAllocs(t *testing.T) {
	bind := &Bind{Sock: 7, Addr: ap("[2001:db8::1]:443")}
	send := &SendTo{Sock: 7, Addr: ap("192.0.2.1:53"), Payload: make([]byte, 1024)}
	buf := make([]byte, 0, MaxMessage)
	for _, m := range []Message{bind, send} {
		if n := testing.AllocsPerRun(100, func() {
			if _, err := Append(buf[:0], 1, 0, m); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("Append(%T) with capacity: %v allocs, want 0", m, n)
		}
	}
	bb := mustAppend(t, 1, 0, bind)
	sb := mustAppend(t, 1, 0, send)
	var db Bind
	var ds SendTo
	for name, f := range map[string]func(){
		"Bind":   func() { _, _ = DecodeTo(bb, &db) },
		"SendTo": func() { _, _ = DecodeTo(sb, &ds) },
	} {
		f()
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("DecodeTo(%s) reusing the message: %v allocs, want 0", name, n)
		}
	}
}

func TestAddrNetip(t *testing.T) {
	tests := []struct {
		in   string
		want Addr
		back string
	}{
		{"10.1.2.3:80", Addr{Family: FamilyInet, Port: 80, IP: [16]byte{10, 1, 2, 3}}, "10.1.2.3:80"},
		{"0.0.0.0:0", Addr{Family: FamilyInet}, "0.0.0.0:0"},
		{"[::1]:443", Addr{Family: FamilyInet6, Port: 443, IP: [16]byte{15: 1}}, "[::1]:443"},
		{"[fe80::1%7]:22", Addr{Family: FamilyInet6, Port: 22, ScopeID: 7, IP: [16]byte{0: 0xfe, 1: 0x80, 15: 1}}, "[fe80::1%7]:22"},
		{"[::ffff:1.2.3.4]:9", Addr{Family: FamilyInet6, Port: 9, IP: [16]byte{10: 0xff, 11: 0xff, 12: 1, 13: 2, 14: 3, 15: 4}}, "[::ffff:1.2.3.4]:9"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			a := AddrFromNetip(netip.MustParseAddrPort(tc.in))
			if a != tc.want {
				t.Fatalf("AddrFromNetip = %+v, want %+v", a, tc.want)
			}
			back, err := a.AddrPort()
			if err != nil || back.String() != tc.back {
				t.Fatalf("AddrPort = %v, %v; want %s", back, err, tc.back)
			}
		})
	}
	if a := AddrFromNetip(netip.AddrPort{}); a != (Addr{}) {
		t.Errorf("invalid AddrPort gave %+v", a)
	}
	for _, bad := range []Addr{{}, {Family: 1}, {Family: 17}, {Family: FamilyInet, IP: [16]byte{4: 1}}, {Family: FamilyInet, Flowinfo: 1}} {
		if _, err := bad.AddrPort(); !errors.Is(err, ErrBadField) {
			t.Errorf("AddrPort(%+v) err = %v, want ErrBadField", bad, err)
		}
	}
}

func TestTypeString(t *testing.T) {
	if s := TypeSetsockopt.String(); s != "Setsockopt" {
		t.Errorf("String = %q", s)
	}
	if s := Type(999).String(); s != "Type(999)" {
		t.Errorf("String = %q", s)
	}
	seen := map[string]bool{}
	for _, typ := range allTypes {
		s := typ.String()
		if seen[s] || strings.HasPrefix(s, "Type(") {
			t.Errorf("bad or duplicate name %q for %d", s, typ)
		}
		seen[s] = true
	}
}

func BenchmarkAppendBind(b *testing.B) {
	m := &Bind{Sock: 7, Addr: ap("[2001:db8::1]:443")}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Append(buf[:0], 1, 0, m)
	}
}

func BenchmarkDecodeBind(b *testing.B) {
	enc := mustAppend(b, 1, 0, &Bind{Sock: 7, Addr: ap("[2001:db8::1]:443")})
	b.ReportAllocs()
	for b.Loop() {
		_, _, _ = Decode(enc)
	}
}

func BenchmarkDecodeToBind(b *testing.B) {
	enc := mustAppend(b, 1, 0, &Bind{Sock: 7, Addr: ap("[2001:db8::1]:443")})
	var m Bind
	b.ReportAllocs()
	for b.Loop() {
		_, _ = DecodeTo(enc, &m)
	}
}

func BenchmarkAppendSendTo1K(b *testing.B) {
	m := &SendTo{Sock: 7, Addr: ap("192.0.2.1:53"), Payload: make([]byte, 1024)}
	buf := make([]byte, 0, 2048)
	b.SetBytes(int64(Size(m)))
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Append(buf[:0], 1, 0, m)
	}
}

func BenchmarkDecodeToSendTo1K(b *testing.B) {
	enc := mustAppend(b, 1, 0, &SendTo{Sock: 7, Addr: ap("192.0.2.1:53"), Payload: make([]byte, 1024)})
	var m SendTo
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		_, _ = DecodeTo(enc, &m)
	}
}
