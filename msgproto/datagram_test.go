package msgproto

import (
	"bytes"
	"errors"
	"testing"
)

func TestDatagramFraming(t *testing.T) {
	if got := (&Datagram{}).bodySize(); got != DatagramSize {
		t.Fatalf("Datagram body %d bytes, DatagramSize %d", got, DatagramSize)
	}
	d := Datagram{Addr: ap("[2001:db8::5]:5353"), Flags: 0x40, Len: 3}
	msg := make([]byte, DatagramSize+3)
	if err := PutDatagram(msg, &d); err != nil {
		t.Fatal(err)
	}
	copy(msg[DatagramSize:], "abc")
	// The framing is the body of a whole Datagram message.
	whole, err := Append(nil, 0, 0, &d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(whole[HeaderSize:], msg[:DatagramSize]) {
		t.Fatalf("framing %x, message body %x", msg[:DatagramSize], whole[HeaderSize:])
	}
	var got Datagram
	if err := GetDatagram(msg, &got); err != nil || got != d {
		t.Fatalf("GetDatagram = %+v %v, want %+v", got, err, d)
	}
	if err := GetDatagram(msg[:DatagramSize-1], &got); !errors.Is(err, ErrTruncated) {
		t.Errorf("short framing: %v, want ErrTruncated", err)
	}
	if err := PutDatagram(msg[:DatagramSize-1], &d); !errors.Is(err, ErrTruncated) {
		t.Errorf("short buffer: %v, want ErrTruncated", err)
	}
	bad := Datagram{Addr: Addr{Family: 7}}
	if err := PutDatagram(msg, &bad); !errors.Is(err, ErrBadField) {
		t.Errorf("bad family: %v, want ErrBadField", err)
	}
	if err := PutDatagram(msg, &Datagram{Len: MaxDatagram + 1}); !errors.Is(err, ErrBadField) {
		t.Errorf("oversized Len: %v, want ErrBadField", err)
	}
	msg[0] = 7 // family 7
	if err := GetDatagram(msg, &got); !errors.Is(err, ErrBadField) {
		t.Errorf("decode bad family: %v, want ErrBadField", err)
	}
}
