// Package schema describes the msgproto wire format once: constants, the
// fixed header, the address block and every message body, field by field.
// The Go codec, the C header and the C test dump are all generated from it,
// and the msgproto tests check the generated Go codec against it.
package schema

import (
	"fmt"
	"strings"
)

// Kind is the wire kind of one field.
type Kind int

// Field kinds. Integers are little-endian on the wire.
const (
	U16   Kind = iota + 1 // uint16
	U32                   // uint32
	U64                   // uint64
	I32                   // int32
	I64                   // int64
	Addr                  // 28-byte address block
	Bytes                 // fixed-size byte array of Field.Len bytes
	Var                   // variable-length bytes: u32 length in the fixed part, data after it
	Pad                   // reserved u32 that must be zero
)

// Size returns the number of bytes the kind occupies in the fixed part of a
// body (for Var, the u32 length; for Bytes, see Field.Size).
func (k Kind) Size() int {
	switch k {
	case U16:
		return 2
	case U32, I32, Var, Pad:
		return 4
	case U64, I64:
		return 8
	case Addr:
		return AddrSize
	}
	return 0
}

// Align returns the natural alignment of the kind.
func (k Kind) Align() int {
	switch k {
	case Addr:
		return 4
	case Bytes:
		return 1
	}
	return k.Size()
}

// Field is one field of a message body, in wire order.
type Field struct {
	Name string // Go field name; the C name is derived from it
	Kind Kind
	Len  int    // array length for Bytes
	Max  uint64 // for Var: the largest allowed length; for unsigned integers with HasRange: the largest value
	// HasRange enables the range check [Min, Max] (signed: Min/SMax; unsigned: Max).
	HasRange bool
	Min      int64 // signed lower bound when HasRange
	SMax     int64 // signed upper bound when HasRange
	MaxConst string
	Doc      string
	// C overrides the C field name (e.g. to avoid the errno macro).
	C string
}

// Size is the number of bytes the field occupies in the fixed part.
func (f Field) Size() int {
	if f.Kind == Bytes {
		return f.Len
	}
	return f.Kind.Size()
}

// CName is the C spelling of the field name (lower snake case); Var
// fields get a "_len" suffix because only their length lives in the struct.
func (f Field) CName() string {
	n := Snake(f.Name)
	if f.C != "" {
		n = f.C
	}
	if f.Kind == Var {
		n += "_len"
	}
	return n
}

// Message is one message type.
type Message struct {
	Name   string // Go type name, e.g. "Bind"
	Code   uint16 // wire type number
	Doc    string
	Fields []Field
}

// Layout is the byte offset of every field of a message body.
type Layout struct {
	Offsets []int
	Fixed   int // size of the fixed part
	Align   int // alignment of the fixed part
}

// Layout computes offsets. It does not insert padding: Validate rejects
// bodies whose fields are not naturally aligned.
func (m Message) Layout() Layout {
	var l Layout
	l.Align = 1
	off := 0
	for _, f := range m.Fields {
		l.Offsets = append(l.Offsets, off)
		off += f.Size()
		if a := f.Kind.Align(); a > l.Align {
			l.Align = a
		}
	}
	l.Fixed = off
	return l
}

// VarFields returns the variable-length fields in wire order.
func (m Message) VarFields() []Field {
	var v []Field
	for _, f := range m.Fields {
		if f.Kind == Var {
			v = append(v, f)
		}
	}
	return v
}

// MaxBody is the largest body the message can have.
func (m Message) MaxBody() int {
	n := m.Layout().Fixed
	for _, f := range m.VarFields() {
		n += int(f.Max)
	}
	return n
}

// Const is a named numeric constant shared by Go and C.
type Const struct {
	Name  string // Go name
	CName string
	Value uint64
	Hex   bool
	Doc   string
}

// Wire sizes of the fixed blocks.
const (
	HeaderSize = 24
	AddrSize   = 28
)

// Schema is the whole protocol description.
type Schema struct {
	Consts   []Const
	Messages []Message
}

// Const returns the value of the named constant; it panics on an unknown
// name, which is a programming error in the schema itself.
func (s Schema) Const(name string) uint64 {
	for _, c := range s.Consts {
		if c.Name == name {
			return c.Value
		}
	}
	panic("schema: unknown constant " + name)
}

// Validate checks that the schema is well formed: unique names and codes,
// natural alignment with no implicit padding (so that a plain C struct has
// exactly the wire layout), bounded variable fields and a maximum message
// size that fits every message.
func (s Schema) Validate() error {
	names := map[string]bool{}
	codes := map[uint16]string{}
	for _, c := range s.Consts {
		if names[c.Name] {
			return fmt.Errorf("schema: duplicate name %s", c.Name)
		}
		names[c.Name] = true
	}
	maxMsg := -1
	for _, c := range s.Consts {
		if c.Name == "MaxMessage" {
			maxMsg = int(c.Value)
		}
	}
	if maxMsg < 0 {
		return fmt.Errorf("schema: no MaxMessage constant")
	}
	for _, m := range s.Messages {
		if names[m.Name] {
			return fmt.Errorf("schema: duplicate name %s", m.Name)
		}
		names[m.Name] = true
		if m.Code == 0 {
			return fmt.Errorf("schema: %s: type code 0 is reserved", m.Name)
		}
		if other, ok := codes[m.Code]; ok {
			return fmt.Errorf("schema: %s and %s share type code %d", m.Name, other, m.Code)
		}
		codes[m.Code] = m.Name
		l := m.Layout()
		fnames := map[string]bool{}
		for i, f := range m.Fields {
			if fnames[f.Name] {
				return fmt.Errorf("schema: %s: duplicate field %s", m.Name, f.Name)
			}
			fnames[f.Name] = true
			if f.Kind < U16 || f.Kind > Pad {
				return fmt.Errorf("schema: %s.%s: bad kind %d", m.Name, f.Name, f.Kind)
			}
			if f.Kind == Bytes && f.Len <= 0 {
				return fmt.Errorf("schema: %s.%s: byte array needs a positive length", m.Name, f.Name)
			}
			if f.Kind == Var && (f.Max == 0 || f.MaxConst == "") {
				return fmt.Errorf("schema: %s.%s: variable field needs a named maximum", m.Name, f.Name)
			}
			if f.Kind == Pad && !strings.HasPrefix(f.Name, "pad") {
				return fmt.Errorf("schema: %s.%s: pad fields are named pad*", m.Name, f.Name)
			}
			if f.Kind != Pad && (f.Name == "" || f.Name[0] < 'A' || f.Name[0] > 'Z') {
				return fmt.Errorf("schema: %s.%s: field names must be exported", m.Name, f.Name)
			}
			if f.MaxConst != "" && s.constValue(f.MaxConst) != f.Max {
				return fmt.Errorf("schema: %s.%s: Max %d disagrees with %s", m.Name, f.Name, f.Max, f.MaxConst)
			}
			if off := l.Offsets[i]; off%f.Kind.Align() != 0 {
				return fmt.Errorf("schema: %s.%s: offset %d is not %d-aligned (add a pad field)", m.Name, f.Name, off, f.Kind.Align())
			}
		}
		if l.Fixed%l.Align != 0 {
			return fmt.Errorf("schema: %s: fixed size %d is not a multiple of its alignment %d (add a pad field)", m.Name, l.Fixed, l.Align)
		}
		if n := HeaderSize + m.MaxBody(); n > maxMsg {
			return fmt.Errorf("schema: %s: largest message %d > MaxMessage %d", m.Name, n, maxMsg)
		}
	}
	return nil
}

func (s Schema) constValue(name string) uint64 {
	for _, c := range s.Consts {
		if c.Name == name {
			return c.Value
		}
	}
	return 0
}

// Snake converts a Go identifier such as "ScopeID" or "MaxLen" to
// "scope_id" or "max_len".
func Snake(s string) string {
	var b strings.Builder
	rs := []rune(s)
	for i, r := range rs {
		upper := r >= 'A' && r <= 'Z'
		if upper && i > 0 {
			prevLower := rs[i-1] >= 'a' && rs[i-1] <= 'z' || rs[i-1] >= '0' && rs[i-1] <= '9'
			nextLower := i+1 < len(rs) && rs[i+1] >= 'a' && rs[i+1] <= 'z'
			prevUpper := rs[i-1] >= 'A' && rs[i-1] <= 'Z'
			if prevLower || (prevUpper && nextLower) {
				b.WriteByte('_')
			}
		}
		if upper {
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
