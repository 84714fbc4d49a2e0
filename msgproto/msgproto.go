// Package msgproto is the wire format of every message that crosses the
// shim's control ring (and of AcceptNotify, sent on a listener's SEQPACKET
// fd): a 24-byte little-endian header followed by a body with a fixed part
// and then the bytes of its variable-length fields.
//
// The layout is described once, in internal/schema. "go generate" derives
// from it the Go codec (messages_gen.go), the C header used by the shim
// (mpproto.h) and the C test helpers; tests check all three agree with the
// schema and with the golden vectors under testdata/golden.
//
// Everything decoded here is treated as hostile: decoding never panics,
// never reads out of bounds, rejects anything non-canonical with an error
// wrapping one of the Err* sentinels, and copies variable-length fields so
// that a decoded message never aliases the input buffer.
package msgproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Sentinel errors; every decode or encode error wraps exactly one of them.
var (
	ErrTruncated   = errors.New("truncated")
	ErrOversized   = errors.New("oversized")
	ErrUnknownType = errors.New("unknown type")
	ErrBadVersion  = errors.New("bad version")
	ErrBadMagic    = errors.New("bad magic")
	ErrBadLength   = errors.New("bad length")
	ErrBadField    = errors.New("bad field")
	// ErrWrongType reports a DecodeTo whose buffer holds another message type.
	ErrWrongType = errors.New("wrong message type")
)

// Type is a message type code.
type Type uint16

// Header is the fixed 24-byte message header.
type Header struct {
	Magic   uint32
	Version uint16
	Type    Type
	Length  uint32 // total message length including the header
	Flags   uint32 // FlagFD and future flags
	ReqID   uint64 // request id; a reply carries its request's id
}

// Message is implemented by every message type of this package (always as
// a pointer, e.g. *Bind).
type Message interface {
	// Type returns the message's type code.
	Type() Type
	bodySize() int
	validate() error
	encode(body []byte)
	decode(body []byte) error
}

// Size returns the encoded length of m including the header. It does not
// validate m.
func Size(m Message) int { return HeaderSize + m.bodySize() }

// Append validates m, appends its encoding with the given request id and
// header flags to dst and returns the extended slice. It does not allocate
// when dst has enough spare capacity. On error dst is returned unchanged.
func Append(dst []byte, reqID uint64, flags uint32, m Message) ([]byte, error) {
	if m == nil {
		return dst, fmt.Errorf("msgproto: nil message: %w", ErrBadField)
	}
	if flags&^KnownFlags != 0 {
		return dst, fmt.Errorf("msgproto: %v: header flags %#x have unknown bits: %w", m.Type(), flags, ErrBadField)
	}
	if err := m.validate(); err != nil {
		return dst, err
	}
	n := HeaderSize + m.bodySize()
	if n > MaxMessage {
		return dst, fmt.Errorf("msgproto: %v: length %d > %d: %w", m.Type(), n, MaxMessage, ErrOversized)
	}
	start := len(dst)
	if cap(dst)-start < n {
		grown := make([]byte, start, start+n)
		copy(grown, dst)
		dst = grown
	}
	dst = dst[:start+n]
	b := dst[start:]
	binary.LittleEndian.PutUint32(b[0:], Magic)
	binary.LittleEndian.PutUint16(b[4:], Version)
	binary.LittleEndian.PutUint16(b[6:], uint16(m.Type()))
	binary.LittleEndian.PutUint32(b[8:], uint32(n))
	binary.LittleEndian.PutUint32(b[12:], flags)
	binary.LittleEndian.PutUint64(b[16:], reqID)
	m.encode(b[HeaderSize:])
	return dst, nil
}

// DecodeHeader parses and validates the header at the start of b. b may
// hold only the header or more than one message; use Header.Length to
// delimit the message.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("msgproto: header needs %d bytes, have %d: %w", HeaderSize, len(b), ErrTruncated)
	}
	h := Header{
		Magic:   binary.LittleEndian.Uint32(b[0:]),
		Version: binary.LittleEndian.Uint16(b[4:]),
		Type:    Type(binary.LittleEndian.Uint16(b[6:])),
		Length:  binary.LittleEndian.Uint32(b[8:]),
		Flags:   binary.LittleEndian.Uint32(b[12:]),
		ReqID:   binary.LittleEndian.Uint64(b[16:]),
	}
	switch {
	case h.Magic != Magic:
		return h, fmt.Errorf("msgproto: magic %#x, want %#x: %w", h.Magic, Magic, ErrBadMagic)
	case h.Version != Version:
		return h, fmt.Errorf("msgproto: version %d, want %d: %w", h.Version, Version, ErrBadVersion)
	case h.Length > MaxMessage:
		return h, fmt.Errorf("msgproto: length %d > %d: %w", h.Length, MaxMessage, ErrOversized)
	case h.Length < HeaderSize:
		return h, fmt.Errorf("msgproto: length %d < header size %d: %w", h.Length, HeaderSize, ErrBadLength)
	case !knownType(h.Type):
		return h, fmt.Errorf("msgproto: type %d: %w", uint16(h.Type), ErrUnknownType)
	case h.Flags&^KnownFlags != 0:
		return h, fmt.Errorf("msgproto: %v: header flags %#x have unknown bits: %w", h.Type, h.Flags, ErrBadField)
	}
	return h, nil
}

// checkMessage validates the header and that b holds exactly one message.
func checkMessage(b []byte) (Header, error) {
	h, err := DecodeHeader(b)
	if err != nil {
		return h, err
	}
	switch {
	case len(b) < int(h.Length):
		return h, fmt.Errorf("msgproto: %v: have %d of %d bytes: %w", h.Type, len(b), h.Length, ErrTruncated)
	case len(b) > int(h.Length):
		return h, fmt.Errorf("msgproto: %v: buffer has %d bytes, header says %d: %w", h.Type, len(b), h.Length, ErrBadLength)
	}
	return h, nil
}

// Decode decodes the single message that b holds exactly. The returned
// message is a pointer (e.g. *Bind) and shares no memory with b.
func Decode(b []byte) (Header, Message, error) {
	h, err := checkMessage(b)
	if err != nil {
		return h, nil, err
	}
	m := newMessage(h.Type)
	if err := m.decode(b[HeaderSize:]); err != nil {
		return h, nil, err
	}
	return h, m, nil
}

// DecodeTo is Decode into a caller-provided message of the expected type;
// it reuses the capacity of m's variable-length fields, so a caller that
// keeps m decodes without allocating. It fails with ErrWrongType if b holds
// another type. On error m may be partly overwritten.
func DecodeTo(b []byte, m Message) (Header, error) {
	h, err := checkMessage(b)
	if err != nil {
		return h, err
	}
	if h.Type != m.Type() {
		return h, fmt.Errorf("msgproto: got %v, want %v: %w", h.Type, m.Type(), ErrWrongType)
	}
	return h, m.decode(b[HeaderSize:])
}

// Addr is an encoded socket address (28 bytes on the wire).
type Addr struct {
	Family   uint16   // FamilyUnspec, FamilyInet or FamilyInet6
	Port     uint16   // port number
	Flowinfo uint32   // IPv6 flow information
	ScopeID  uint32   // IPv6 scope (interface index)
	IP       [16]byte // IPv4 uses the first 4 bytes
}

func (a *Addr) put(b []byte) {
	_ = b[AddrSize-1]
	binary.LittleEndian.PutUint16(b[0:], a.Family)
	binary.LittleEndian.PutUint16(b[2:], a.Port)
	binary.LittleEndian.PutUint32(b[4:], a.Flowinfo)
	binary.LittleEndian.PutUint32(b[8:], a.ScopeID)
	copy(b[12:28], a.IP[:])
}

func getAddr(b []byte) Addr {
	_ = b[AddrSize-1]
	a := Addr{
		Family:   binary.LittleEndian.Uint16(b[0:]),
		Port:     binary.LittleEndian.Uint16(b[2:]),
		Flowinfo: binary.LittleEndian.Uint32(b[4:]),
		ScopeID:  binary.LittleEndian.Uint32(b[8:]),
	}
	copy(a.IP[:], b[12:28])
	return a
}

// check enforces the canonical form: FamilyUnspec is all zero, FamilyInet
// uses only Port and IP[:4], FamilyInet6 may use every field.
func (a Addr) check() error {
	var from int
	switch a.Family {
	case FamilyUnspec:
		if a.Port != 0 {
			return fmt.Errorf("unspecified family with port %d: %w", a.Port, ErrBadField)
		}
	case FamilyInet:
		from = 4
	case FamilyInet6:
		return nil
	default:
		return fmt.Errorf("family %d unknown: %w", a.Family, ErrBadField)
	}
	if a.Flowinfo != 0 || a.ScopeID != 0 {
		return fmt.Errorf("family %d with flowinfo %d scope %d: %w", a.Family, a.Flowinfo, a.ScopeID, ErrBadField)
	}
	for _, c := range a.IP[from:] {
		if c != 0 {
			return fmt.Errorf("family %d with stray address bytes: %w", a.Family, ErrBadField)
		}
	}
	return nil
}

// AddrFromNetip converts ap. An IPv4 address becomes FamilyInet; an IPv6
// address, including an IPv4-mapped one, becomes FamilyInet6 with its zone turned into ScopeID
// (a numeric zone directly, a named one by interface lookup; 0 if unknown).
// An invalid ap gives the zero (FamilyUnspec) Addr.
func AddrFromNetip(ap netip.AddrPort) Addr {
	ip := ap.Addr()
	var a Addr
	switch {
	case ip.Is4():
		a.Family = FamilyInet
		v4 := ip.As4()
		copy(a.IP[:4], v4[:])
	case ip.Is6():
		a.Family = FamilyInet6
		a.IP = ip.As16()
		if z := ip.Zone(); z != "" {
			if n, err := strconv.ParseUint(z, 10, 32); err == nil {
				a.ScopeID = uint32(n)
			} else if ifi, err := net.InterfaceByName(z); err == nil {
				a.ScopeID = uint32(ifi.Index)
			}
		}
	default:
		return Addr{}
	}
	a.Port = ap.Port()
	return a
}

// AddrPort converts a to a netip.AddrPort. It fails for FamilyUnspec, for
// unknown families and for non-canonical addresses. A nonzero ScopeID
// becomes a numeric zone; Flowinfo has no netip equivalent and is dropped.
func (a Addr) AddrPort() (netip.AddrPort, error) {
	if err := a.check(); err != nil {
		return netip.AddrPort{}, fmt.Errorf("msgproto: address: %w", err)
	}
	switch a.Family {
	case FamilyInet:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a.IP[:4])), a.Port), nil
	case FamilyInet6:
		ip := netip.AddrFrom16(a.IP)
		if a.ScopeID != 0 {
			ip = ip.WithZone(strconv.FormatUint(uint64(a.ScopeID), 10))
		}
		return netip.AddrPortFrom(ip, a.Port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("msgproto: address: unspecified family: %w", ErrBadField)
}
