package msgproto

import "fmt"

// DatagramSize is the size of the framing in front of every datagram on a
// UDP socket's SEQPACKET socketpair: the fixed body of Datagram, sent
// without a message header (MP_DATAGRAM_FIXED in mpproto.h). One message
// on the socketpair is DatagramSize bytes of framing followed by exactly
// Datagram.Len bytes of payload.
const DatagramSize = 36

// PutDatagram writes d as datagram framing into b[:DatagramSize]. It fails
// with ErrTruncated when b is shorter than DatagramSize and with
// ErrBadField for a non-canonical address or a Len above MaxDatagram.
func PutDatagram(b []byte, d *Datagram) error {
	if len(b) < DatagramSize {
		return fmt.Errorf("msgproto: datagram: buffer %d bytes < %d: %w", len(b), DatagramSize, ErrTruncated)
	}
	if err := d.validate(); err != nil {
		return err
	}
	d.encode(b[:DatagramSize])
	return nil
}

// GetDatagram decodes the framing at the start of b (b[:DatagramSize];
// the payload, if b holds one, is not looked at: a receiver whose buffer
// was short sees fewer than d.Len payload bytes). It fails with
// ErrTruncated for fewer than DatagramSize bytes and with ErrBadField for
// a non-canonical address or a Len above MaxDatagram.
func GetDatagram(b []byte, d *Datagram) error {
	if len(b) < DatagramSize {
		return fmt.Errorf("msgproto: datagram: %d bytes < %d: %w", len(b), DatagramSize, ErrTruncated)
	}
	return d.decode(b[:DatagramSize])
}
