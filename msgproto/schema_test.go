package msgproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/msgproto/internal/gen"
	"github.com/mpshim/mpshim/msgproto/internal/schema"
)

// TestHeaderFresh fails when a generated file differs from what the schema
// generates now.
func TestHeaderFresh(t *testing.T) {
	for _, c := range []struct {
		path string
		fn   func(schema.Schema) ([]byte, error)
	}{
		{"mpproto.h", gen.CHeader},
		{"messages_gen.go", gen.Go},
		{"testdata/ctest/mpdump.h", gen.CDump},
	} {
		want, err := c.fn(schema.Proto)
		if err != nil {
			t.Fatalf("generate %s: %v", c.path, err)
		}
		got, err := os.ReadFile(c.path)
		if err != nil {
			t.Fatalf("%s: %v (run go generate ./msgproto)", c.path, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run go generate ./msgproto", c.path)
		}
	}
}

func kindType(f schema.Field) reflect.Type {
	switch f.Kind {
	case schema.U16:
		return reflect.TypeFor[uint16]()
	case schema.U32:
		return reflect.TypeFor[uint32]()
	case schema.U64:
		return reflect.TypeFor[uint64]()
	case schema.I32:
		return reflect.TypeFor[int32]()
	case schema.I64:
		return reflect.TypeFor[int64]()
	case schema.Addr:
		return reflect.TypeFor[Addr]()
	case schema.Bytes:
		return reflect.ArrayOf(f.Len, reflect.TypeFor[byte]())
	case schema.Var:
		return reflect.TypeFor[[]byte]()
	}
	return nil
}

// fill sets every field of the message to a distinct, valid, non-zero
// value derived from the field index.
func fill(t *testing.T, sm schema.Message, v reflect.Value) {
	t.Helper()
	for i, f := range sm.Fields {
		if f.Kind == schema.Pad {
			continue
		}
		fv := v.FieldByName(f.Name)
		seed := uint64(0x0102030405060708) + uint64(i)*0x1111111111111111
		switch f.Kind {
		case schema.U16, schema.U32, schema.U64:
			x := seed
			if f.HasRange {
				x = f.Max - uint64(i)
			}
			if f.Size() < 8 {
				x &= 1<<(8*f.Size()) - 1
			}
			fv.SetUint(x)
		case schema.I32, schema.I64:
			x := -int64(seed >> 8)
			if f.Kind == schema.I32 {
				x = int64(int32(x))
			}
			if f.HasRange {
				x = f.SMax - int64(i)
			}
			fv.SetInt(x)
		case schema.Addr:
			a := Addr{Family: FamilyInet6, Port: uint16(1000 + i), Flowinfo: uint32(seed), ScopeID: uint32(seed >> 32)}
			for j := range a.IP {
				a.IP[j] = byte(j*13 + i)
			}
			fv.Set(reflect.ValueOf(a))
		case schema.Bytes:
			for j := 0; j < f.Len; j++ {
				fv.Index(j).SetUint(uint64(j + i + 1))
			}
		case schema.Var:
			fv.SetBytes(seq(min(int(f.Max), 5+3*i), byte(i)))
		}
	}
}

// refEncode encodes v by walking the schema with reflection: an encoder
// that shares nothing with the generated code.
func refEncode(sm schema.Message, v reflect.Value, reqID uint64, flags uint32) []byte {
	l := sm.Layout()
	body := make([]byte, l.Fixed)
	var tail []byte
	for i, f := range sm.Fields {
		off := l.Offsets[i]
		if f.Kind == schema.Pad {
			continue
		}
		fv := v.FieldByName(f.Name)
		switch f.Kind {
		case schema.U16:
			binary.LittleEndian.PutUint16(body[off:], uint16(fv.Uint()))
		case schema.U32:
			binary.LittleEndian.PutUint32(body[off:], uint32(fv.Uint()))
		case schema.U64:
			binary.LittleEndian.PutUint64(body[off:], fv.Uint())
		case schema.I32:
			binary.LittleEndian.PutUint32(body[off:], uint32(fv.Int()))
		case schema.I64:
			binary.LittleEndian.PutUint64(body[off:], uint64(fv.Int()))
		case schema.Addr:
			a := fv.Interface().(Addr)
			binary.LittleEndian.PutUint16(body[off:], a.Family)
			binary.LittleEndian.PutUint16(body[off+2:], a.Port)
			binary.LittleEndian.PutUint32(body[off+4:], a.Flowinfo)
			binary.LittleEndian.PutUint32(body[off+8:], a.ScopeID)
			copy(body[off+12:], a.IP[:])
		case schema.Bytes:
			reflect.Copy(reflect.ValueOf(body[off:off+f.Len]), fv)
		case schema.Var:
			binary.LittleEndian.PutUint32(body[off:], uint32(fv.Len()))
			tail = append(tail, fv.Bytes()...)
		}
	}
	body = append(body, tail...)
	hdr := make([]byte, HeaderSize)
	binary.LittleEndian.PutUint32(hdr[0:], Magic)
	binary.LittleEndian.PutUint16(hdr[4:], Version)
	binary.LittleEndian.PutUint16(hdr[6:], sm.Code)
	binary.LittleEndian.PutUint32(hdr[8:], uint32(HeaderSize+len(body)))
	binary.LittleEndian.PutUint32(hdr[12:], flags)
	binary.LittleEndian.PutUint64(hdr[16:], reqID)
	return append(hdr, body...)
}

// TestCodecMatchesSchema checks the generated Go codec against the schema:
// the Go struct has the schema's fields in order with the right types, the
// encoding equals an independent schema-walking encoder, and every bound
// the schema declares is enforced on decode.
func TestCodecMatchesSchema(t *testing.T) {
	if err := schema.Proto.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(allTypes) != len(schema.Proto.Messages) {
		t.Fatalf("codec has %d types, schema %d", len(allTypes), len(schema.Proto.Messages))
	}
	for _, sm := range schema.Proto.Messages {
		t.Run(sm.Name, func(t *testing.T) {
			m := newMessage(Type(sm.Code))
			if m == nil {
				t.Fatalf("type %d unknown to the codec", sm.Code)
			}
			if m.Type() != Type(sm.Code) || m.Type().String() != sm.Name {
				t.Fatalf("Type() = %d %q, want %d %q", m.Type(), m.Type(), sm.Code, sm.Name)
			}
			v := reflect.ValueOf(m).Elem()
			if v.Type().Name() != sm.Name {
				t.Fatalf("Go type %s, want %s", v.Type().Name(), sm.Name)
			}
			var want []schema.Field
			for _, f := range sm.Fields {
				if f.Kind != schema.Pad {
					want = append(want, f)
				}
			}
			if v.NumField() != len(want) {
				t.Fatalf("Go struct has %d fields, schema %d", v.NumField(), len(want))
			}
			for i, f := range want {
				sf := v.Type().Field(i)
				if sf.Name != f.Name || sf.Type != kindType(f) {
					t.Fatalf("field %d is %s %v, schema says %s %v", i, sf.Name, sf.Type, f.Name, kindType(f))
				}
			}

			fill(t, sm, v)
			got, err := Append(nil, 0xA1B2C3D4E5F60718, FlagFD, m)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			ref := refEncode(sm, v, 0xA1B2C3D4E5F60718, FlagFD)
			if !bytes.Equal(got, ref) {
				t.Fatalf("codec and schema disagree:\ncodec  %x\nschema %x", got, ref)
			}
			if Size(m) != len(got) {
				t.Errorf("Size = %d, encoded %d", Size(m), len(got))
			}
			_, dm, err := Decode(got)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(dm, m) {
				t.Fatalf("decoded %#v, want %#v", dm, m)
			}

			// Every declared bound is enforced.
			l := sm.Layout()
			for i, f := range sm.Fields {
				off := HeaderSize + l.Offsets[i]
				var bad []byte
				switch {
				case f.Kind == schema.Pad:
					bad = bytes.Clone(got)
					binary.LittleEndian.PutUint32(bad[off:], 1)
				case f.Kind == schema.Var:
					bad = bytes.Clone(got)
					binary.LittleEndian.PutUint32(bad[off:], uint32(f.Max+1))
				case f.Kind == schema.Addr:
					bad = bytes.Clone(got)
					binary.LittleEndian.PutUint16(bad[off:], 7)
				case f.HasRange && (f.Kind == schema.I32 || f.Kind == schema.I64):
					bad = bytes.Clone(got)
					binary.LittleEndian.PutUint32(bad[off:], uint32(f.SMax+1))
				case f.HasRange:
					bad = bytes.Clone(got)
					binary.LittleEndian.PutUint32(bad[off:], uint32(f.Max+1))
				default:
					continue
				}
				_, _, err := Decode(bad)
				if !errors.Is(err, ErrBadField) {
					t.Errorf("field %s out of bounds: err = %v, want ErrBadField", f.Name, err)
				} else if !strings.Contains(err.Error(), "msgproto: "+schema.Snake(sm.Name)+": ") {
					t.Errorf("field %s: error %q does not name the message", f.Name, err)
				}
			}
		})
	}
}

func TestSchemaValidate(t *testing.T) {
	base := func() schema.Schema {
		return schema.Schema{
			Consts: []schema.Const{{Name: "MaxMessage", Value: 1024}, {Name: "MaxX", Value: 64}},
			Messages: []schema.Message{{Name: "A", Code: 1, Fields: []schema.Field{
				{Name: "Sock", Kind: schema.U64},
				{Name: "Data", Kind: schema.Var, Max: 64, MaxConst: "MaxX"},
				{Name: "pad0", Kind: schema.Pad},
			}}},
		}
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid schema rejected: %v", err)
	}
	tests := []struct {
		name string
		edit func(s *schema.Schema)
		want string
	}{
		{"misaligned", func(s *schema.Schema) {
			s.Messages[0].Fields = []schema.Field{{Name: "X", Kind: schema.U32}, {Name: "Y", Kind: schema.U64}}
		}, "not 8-aligned"},
		{"trailing padding", func(s *schema.Schema) {
			s.Messages[0].Fields = s.Messages[0].Fields[:2]
		}, "not a multiple"},
		{"duplicate code", func(s *schema.Schema) {
			s.Messages = append(s.Messages, schema.Message{Name: "B", Code: 1})
		}, "share type code"},
		{"code zero", func(s *schema.Schema) { s.Messages[0].Code = 0 }, "reserved"},
		{"unbounded var", func(s *schema.Schema) { s.Messages[0].Fields[1].MaxConst = "" }, "named maximum"},
		{"max disagrees", func(s *schema.Schema) { s.Messages[0].Fields[1].Max = 65 }, "disagrees"},
		{"too big", func(s *schema.Schema) {
			s.Consts[1].Value = 2000
			s.Messages[0].Fields[1].Max = 2000
		}, "MaxMessage"},
		{"duplicate field", func(s *schema.Schema) { s.Messages[0].Fields[1].Name = "Sock" }, "duplicate field"},
		{"unexported", func(s *schema.Schema) { s.Messages[0].Fields[0].Name = "sock" }, "exported"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			tc.edit(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestSnake(t *testing.T) {
	for in, want := range map[string]string{
		"ScopeID": "scope_id", "MaxLen": "max_len", "PID": "pid", "SendTo": "send_to",
		"Setsockopt": "setsockopt", "RecvMsgReply": "recv_msg_reply", "ClientID": "client_id",
	} {
		if got := schema.Snake(in); got != want {
			t.Errorf("Snake(%q) = %q, want %q", in, got, want)
		}
	}
}
