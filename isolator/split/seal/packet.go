package seal

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// A sealed packet is
//
//	0  type (u8, TypeData)
//	1  reserved (u8, 0)
//	2  key epoch (u16, big endian, wraps)
//	4  receiver's session id (u32)
//	8  sequence number (u64)
//	16 ChaCha20-Poly1305 ciphertext of the plaintext, then the 16-byte tag
//
// The 16-byte header is the additional data; the nonce is four zero bytes
// and the sequence number little endian, as in Noise's transport messages.
// Sequence numbers count every packet the sender seals in the session and
// never repeat, across epochs too.
const (
	// TypeData is the first byte of a sealed packet.
	TypeData = 4
	// HeaderLen is the length of the clear header.
	HeaderLen = 16
	// Overhead is what sealing adds to a plaintext.
	Overhead = HeaderLen + chacha20poly1305.Overhead
)

// maxSeq is where a sender refuses to go on: far below 2^64 so that the
// receiver's arithmetic never wraps.
const maxSeq = 1 << 60

// Errors returned by Receiver.Open; callers count them by kind.
var (
	// ErrShort: shorter than a header and tag, or not a data packet.
	ErrShort = errors.New("seal: not a sealed packet")
	// ErrSession: addressed to another session.
	ErrSession = errors.New("seal: other session")
	// ErrEpoch: a key epoch this receiver does not hold (too old or too far ahead).
	ErrEpoch = errors.New("seal: unknown key epoch")
	// ErrReplay: a sequence number already seen or older than the window.
	ErrReplay = errors.New("seal: replayed or too old")
	// ErrAuth: the tag does not verify (tampered or wrong key).
	ErrAuth = errors.New("seal: authentication failed")
	// ErrExhausted: the sender used up its sequence numbers.
	ErrExhausted = errors.New("seal: sequence numbers exhausted")
)

// RekeyPolicy says when a sender moves to the next key.
type RekeyPolicy struct {
	// Bytes of plaintext sealed under one key; 0 means DefaultRekeyBytes.
	Bytes uint64
	// After this long under one key; 0 means DefaultRekeyAfter.
	After time.Duration
}

// Defaults of RekeyPolicy and of the receiver's overlap.
const (
	DefaultRekeyBytes = 1 << 30
	DefaultRekeyAfter = 2 * time.Minute
	// DefaultOverlap is how long a receiver keeps the previous key after
	// the first packet under the next one.
	DefaultOverlap = 5 * time.Second
)

func (p RekeyPolicy) bytes() uint64 {
	if p.Bytes == 0 {
		return DefaultRekeyBytes
	}
	return p.Bytes
}

func (p RekeyPolicy) after() time.Duration {
	if p.After <= 0 {
		return DefaultRekeyAfter
	}
	return p.After
}

// NextKey is the key of the following epoch: the first 32 bytes of
// ChaCha20-Poly1305 encrypting 32 zero bytes under k with nonce 2^64-1 and
// no additional data (Noise's REKEY). It is one-way: an old key follows
// from a new one, never the reverse.
func NextKey(k [KeyLen]byte) [KeyLen]byte {
	a, err := chacha20poly1305.New(k[:])
	if err != nil {
		panic(err) // a 32-byte key is always accepted
	}
	var nonce [chacha20poly1305.NonceSize]byte
	binary.LittleEndian.PutUint64(nonce[4:], ^uint64(0))
	var zeros [KeyLen]byte
	out := a.Seal(nil, nonce[:], zeros[:], nil)
	var n [KeyLen]byte
	copy(n[:], out)
	return n
}

func newAEAD(k [KeyLen]byte) cipher.AEAD {
	a, err := chacha20poly1305.New(k[:])
	if err != nil {
		panic(err)
	}
	return a
}

func nonce(seq uint64) [chacha20poly1305.NonceSize]byte {
	var n [chacha20poly1305.NonceSize]byte
	binary.LittleEndian.PutUint64(n[4:], seq)
	return n
}

// Sender seals packets with the send key of a session. It is safe for
// concurrent use.
type Sender struct {
	mu      sync.Mutex
	policy  RekeyPolicy
	now     func() time.Time
	key     [KeyLen]byte
	aead    cipher.AEAD
	epoch   uint16
	seq     uint64
	bytes   uint64
	started time.Time
	rekeys  uint64
}

// NewSender returns a sender starting at epoch 0 with key.
func NewSender(key [KeyLen]byte, policy RekeyPolicy) *Sender {
	return newSender(key, policy, time.Now)
}

func newSender(key [KeyLen]byte, policy RekeyPolicy, now func() time.Time) *Sender {
	return &Sender{policy: policy, now: now, key: key, aead: newAEAD(key), started: now()}
}

// Seal appends the sealed packet of plaintext, addressed to the peer's
// session id, to dst.
func (s *Sender) Seal(dst []byte, session uint32, plaintext []byte) ([]byte, error) {
	s.mu.Lock()
	if s.seq >= maxSeq {
		s.mu.Unlock()
		return dst, ErrExhausted
	}
	if s.bytes >= s.policy.bytes() || s.now().Sub(s.started) >= s.policy.after() {
		s.key = NextKey(s.key)
		s.aead = newAEAD(s.key)
		s.epoch++
		s.bytes = 0
		s.started = s.now()
		s.rekeys++
	}
	seq, epoch, aead := s.seq, s.epoch, s.aead
	s.seq++
	s.bytes += uint64(len(plaintext))
	s.mu.Unlock()

	var h [HeaderLen]byte
	h[0] = TypeData
	binary.BigEndian.PutUint16(h[2:], epoch)
	binary.BigEndian.PutUint32(h[4:], session)
	binary.BigEndian.PutUint64(h[8:], seq)
	dst = append(dst, h[:]...)
	n := nonce(seq)
	return aead.Seal(dst, n[:], plaintext, h[:]), nil
}

// Stats of a sender.
func (s *Sender) Stats() (epoch uint16, seq, rekeys uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch, s.seq, s.rekeys
}

// maxEpochAhead is how many epochs past the current one a receiver derives
// keys for, so that a sender that rekeyed while all packets of an epoch
// were lost is still understood.
const maxEpochAhead = 4

// Receiver opens packets with the receive key of a session: it holds the
// current epoch's key, the previous one for an overlap period, checks the
// anti-replay window after the tag verified, and counts what it dropped.
// It is safe for concurrent use.
type Receiver struct {
	mu      sync.Mutex
	session uint32
	overlap time.Duration
	now     func() time.Time
	epoch   uint16
	key     [KeyLen]byte
	aead    cipher.AEAD
	prev    cipher.AEAD // epoch-1, nil when none or expired
	prevEnd time.Time
	window  Window
	drops   Drops
}

// Drops counts the packets a receiver refused, by reason.
type Drops struct {
	Short, Session, Epoch, Replay, Auth uint64
}

// NewReceiver returns a receiver for packets addressed to session, starting
// at epoch 0 with key; overlap ≤ 0 means DefaultOverlap.
func NewReceiver(key [KeyLen]byte, session uint32, overlap time.Duration) *Receiver {
	return newReceiver(key, session, overlap, time.Now)
}

func newReceiver(key [KeyLen]byte, session uint32, overlap time.Duration, now func() time.Time) *Receiver {
	if overlap <= 0 {
		overlap = DefaultOverlap
	}
	return &Receiver{session: session, overlap: overlap, now: now, key: key, aead: newAEAD(key)}
}

// Open verifies and decrypts packet, appending the plaintext to dst, and
// returns it with the packet's sequence number.
func (r *Receiver) Open(dst, packet []byte) ([]byte, uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(packet) < Overhead || packet[0] != TypeData || packet[1] != 0 {
		r.drops.Short++
		return dst, 0, ErrShort
	}
	h := packet[:HeaderLen]
	if binary.BigEndian.Uint32(h[4:]) != r.session {
		r.drops.Session++
		return dst, 0, ErrSession
	}
	seq := binary.BigEndian.Uint64(h[8:])
	if seq >= maxSeq || !r.window.Check(seq) {
		r.drops.Replay++
		return dst, 0, ErrReplay
	}
	epoch := binary.BigEndian.Uint16(h[2:])
	ahead := epoch - r.epoch // wraps: 0 current, 1..4 next, 0xffff previous
	n := nonce(seq)
	var (
		out []byte
		err error
	)
	switch {
	case ahead == 0:
		out, err = r.aead.Open(dst, n[:], packet[HeaderLen:], h)
	case ahead == 0xffff:
		if r.prev == nil || r.now().After(r.prevEnd) {
			r.prev = nil
			r.drops.Epoch++
			return dst, 0, ErrEpoch
		}
		out, err = r.prev.Open(dst, n[:], packet[HeaderLen:], h)
	case ahead <= maxEpochAhead:
		k := r.key
		for range ahead {
			k = NextKey(k)
		}
		a := newAEAD(k)
		out, err = a.Open(dst, n[:], packet[HeaderLen:], h)
		if err == nil {
			r.prev = nil // epoch-1 was never heard from when ahead > 1
			if ahead == 1 {
				r.prev = r.aead
			}
			r.prevEnd = r.now().Add(r.overlap)
			r.epoch, r.key, r.aead = epoch, k, a
		}
	default:
		r.drops.Epoch++
		return dst, 0, ErrEpoch
	}
	if err != nil {
		r.drops.Auth++
		return dst, 0, ErrAuth
	}
	r.window.Mark(seq)
	return out, seq, nil
}

// Drops returns the counts of refused packets.
func (r *Receiver) Drops() Drops {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.drops
}

// Epoch returns the receiver's current key epoch.
func (r *Receiver) Epoch() uint16 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epoch
}

// String describes the counts.
func (d Drops) String() string {
	return fmt.Sprintf("short=%d session=%d epoch=%d replay=%d auth=%d", d.Short, d.Session, d.Epoch, d.Replay, d.Auth)
}

// Total is the sum of all counts.
func (d Drops) Total() uint64 { return d.Short + d.Session + d.Epoch + d.Replay + d.Auth }
