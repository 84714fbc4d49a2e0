// Package seal holds the cryptography of a split session between two
// isolators: static keys, the Noise IK handshake
// (Noise_IK_25519_ChaChaPoly_BLAKE2s) that authenticates both sides and
// yields one key per direction, the ChaCha20-Poly1305 sealing of every
// tunnel packet with its sequence number as nonce, the sliding anti-replay
// window, and rekeying by bytes and by time with an overlap of the old and
// the new key at the receiver.
//
// Nothing here does I/O; the tunnel package carries the messages.
package seal

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"

	"github.com/flynn/noise"
	"golang.org/x/crypto/curve25519"
)

// Protocol is the Noise protocol name of the handshake.
const Protocol = "Noise_IK_25519_ChaChaPoly_BLAKE2s"

// prologue binds the handshake to this use; both sides must agree on it.
var prologue = []byte("mpshim split v1")

var suite = noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashBLAKE2s)

// KeyLen is the length of a Curve25519 key.
const KeyLen = 32

// PublicKey is a Curve25519 public key, written as standard base64.
type PublicKey [KeyLen]byte

// String returns the key in standard base64, the form `key=` takes.
func (k PublicKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParsePublicKey parses a base64 (standard or URL alphabet, padded or not)
// Curve25519 public key.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	b, err := decodeKey(s)
	if err != nil {
		return k, fmt.Errorf("seal: public key %q: %w", s, err)
	}
	copy(k[:], b)
	if k == (PublicKey{}) {
		return k, fmt.Errorf("seal: public key %q is all zero", s)
	}
	return k, nil
}

func decodeKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.DecodeString(s)
		if err == nil {
			if len(b) != KeyLen {
				return nil, fmt.Errorf("%d bytes, want %d", len(b), KeyLen)
			}
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// KeyPair is a static Curve25519 key pair of an isolator.
type KeyPair struct {
	Private [KeyLen]byte
	Public  PublicKey
}

// GenerateKeyPair draws a new key pair from crypto/rand.
func GenerateKeyPair() (KeyPair, error) {
	var priv [KeyLen]byte
	if _, err := io.ReadFull(rand.Reader, priv[:]); err != nil {
		return KeyPair{}, fmt.Errorf("seal: generate key: %w", err)
	}
	return KeyPairFromPrivate(priv)
}

// KeyPairFromPrivate derives the public key of priv.
func KeyPairFromPrivate(priv [KeyLen]byte) (KeyPair, error) {
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return KeyPair{}, fmt.Errorf("seal: derive public key: %w", err)
	}
	kp := KeyPair{Private: priv}
	copy(kp.Public[:], pub)
	return kp, nil
}

// ParsePrivateKey parses a base64 private key and derives its pair.
func ParsePrivateKey(s string) (KeyPair, error) {
	b, err := decodeKey(s)
	if err != nil {
		return KeyPair{}, fmt.Errorf("seal: private key: %w", err)
	}
	var priv [KeyLen]byte
	copy(priv[:], b)
	return KeyPairFromPrivate(priv)
}

// PrivateString returns the private key in standard base64.
func (k KeyPair) PrivateString() string { return base64.StdEncoding.EncodeToString(k.Private[:]) }

func (k KeyPair) dh() noise.DHKey {
	return noise.DHKey{Private: append([]byte(nil), k.Private[:]...), Public: append([]byte(nil), k.Public[:]...)}
}

// SessionKeys are the result of a handshake: one key per direction and
// the handshake hash that names the session.
type SessionKeys struct {
	// Send seals what this side sends, Recv opens what it receives.
	Send, Recv [KeyLen]byte
	// Hash is the Noise handshake hash (channel binding).
	Hash []byte
}

// Initiator is the initiating side of a handshake in progress.
type Initiator struct {
	hs *noise.HandshakeState
}

// StartHandshake begins a handshake from local to the responder whose
// static key is remote, and returns the first message carrying payload
// (encrypted to remote, authenticating local).
func StartHandshake(local KeyPair, remote PublicKey, payload []byte) (*Initiator, []byte, error) {
	return startHandshake(local, remote, payload, rand.Reader, prologue)
}

func startHandshake(local KeyPair, remote PublicKey, payload []byte, rng io.Reader, pro []byte) (*Initiator, []byte, error) {
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:   suite,
		Random:        rng,
		Pattern:       noise.HandshakeIK,
		Initiator:     true,
		Prologue:      pro,
		StaticKeypair: local.dh(),
		PeerStatic:    append([]byte(nil), remote[:]...),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("seal: handshake: %w", err)
	}
	msg, _, _, err := hs.WriteMessage(nil, payload)
	if err != nil {
		return nil, nil, fmt.Errorf("seal: handshake message 1: %w", err)
	}
	return &Initiator{hs: hs}, msg, nil
}

// Finish reads the responder's message and returns its payload and the
// session keys.
func (h *Initiator) Finish(msg []byte) ([]byte, SessionKeys, error) {
	payload, cs1, cs2, err := h.hs.ReadMessage(nil, msg)
	if err != nil {
		return nil, SessionKeys{}, fmt.Errorf("seal: handshake message 2: %w", err)
	}
	if cs1 == nil || cs2 == nil {
		return nil, SessionKeys{}, errors.New("seal: handshake did not complete")
	}
	return payload, SessionKeys{Send: cs1.UnsafeKey(), Recv: cs2.UnsafeKey(), Hash: h.hs.ChannelBinding()}, nil
}

// Accepted is what a responder learned from a first handshake message.
type Accepted struct {
	// Peer is the initiator's authenticated static key.
	Peer PublicKey
	// Payload is the initiator's decrypted payload.
	Payload []byte
	hs      *noise.HandshakeState
}

// ReadHandshake reads a first handshake message addressed to local. The
// caller checks Peer and Payload, then calls Reply.
func ReadHandshake(local KeyPair, msg []byte) (*Accepted, error) {
	return readHandshake(local, msg, rand.Reader, prologue)
}

func readHandshake(local KeyPair, msg []byte, rng io.Reader, pro []byte) (*Accepted, error) {
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:   suite,
		Random:        rng,
		Pattern:       noise.HandshakeIK,
		Initiator:     false,
		Prologue:      pro,
		StaticKeypair: local.dh(),
	})
	if err != nil {
		return nil, fmt.Errorf("seal: handshake: %w", err)
	}
	payload, _, _, err := hs.ReadMessage(nil, msg)
	if err != nil {
		return nil, fmt.Errorf("seal: handshake message 1: %w", err)
	}
	a := &Accepted{Payload: payload, hs: hs}
	copy(a.Peer[:], hs.PeerStatic())
	return a, nil
}

// Reply writes the responder's message carrying payload and returns it
// with the session keys.
func (a *Accepted) Reply(payload []byte) ([]byte, SessionKeys, error) {
	msg, cs1, cs2, err := a.hs.WriteMessage(nil, payload)
	if err != nil {
		return nil, SessionKeys{}, fmt.Errorf("seal: handshake message 2: %w", err)
	}
	if cs1 == nil || cs2 == nil {
		return nil, SessionKeys{}, errors.New("seal: handshake did not complete")
	}
	return msg, SessionKeys{Send: cs2.UnsafeKey(), Recv: cs1.UnsafeKey(), Hash: a.hs.ChannelBinding()}, nil
}
