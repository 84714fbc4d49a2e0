package tunnel

import (
	"crypto/subtle"
	"sync"
	"time"

	"golang.org/x/crypto/blake2s"

	"github.com/mpshim/mpshim/isolator/split/seal"
)

// Handshake flood protection. A handshake message costs its receiver
// Diffie-Hellman operations; a flood of them must not cost more than a
// bounded amount of work, whoever sends it.
//
//   - mac1: every INIT and RESP ends with a 16-byte BLAKE2s MAC of the
//     packet before it, keyed with BLAKE2s-256("mpshim split mac1" ·
//     receiver's static public key). A receiver checks it before any
//     Diffie-Hellman, for the price of one hash: packets from anyone who
//     does not know its public key (scans, random floods) stop there.
//   - a token bucket per path (hsRate per second, hsBurst at once) bounds
//     the handshake messages that get as far as Diffie-Hellman; the rest
//     are dropped. The initiator sends one INIT per path every 250 ms,
//     well within it.
//
// Both are counted (HandshakeDrops).

// mac1Len is the length of the MAC that ends a handshake packet.
const mac1Len = 16

// Handshake work allowed per path.
const (
	hsRate  = 8 // per second
	hsBurst = 8
)

// HandshakeDrops counts handshake packets dropped before their Noise
// message was read.
type HandshakeDrops struct {
	// Mac: too short, or mac1 does not verify.
	Mac uint64
	// Limited: over the per-path rate of handshake work.
	Limited uint64
}

// mac1Key returns the key of the mac1 of packets sent to pub.
func mac1Key(pub seal.PublicKey) [32]byte {
	return blake2s.Sum256(append([]byte("mpshim split mac1"), pub[:]...))
}

// mac1 computes the mac1 of b under key.
func mac1(key [32]byte, b []byte) [mac1Len]byte {
	h, _ := blake2s.New128(key[:]) // a 32-byte key is always accepted
	h.Write(b)
	var out [mac1Len]byte
	copy(out[:], h.Sum(nil))
	return out
}

// withMac1 appends the mac1 for a packet to the owner of key.
func withMac1(key [32]byte, pkt []byte) []byte {
	m := mac1(key, pkt)
	return append(pkt, m[:]...)
}

// checkMac1 returns pkt without its mac1 if the mac1 verifies under key.
func checkMac1(key [32]byte, pkt []byte) ([]byte, bool) {
	if len(pkt) < 4+mac1Len {
		return nil, false
	}
	body := pkt[:len(pkt)-mac1Len]
	m := mac1(key, body)
	return body, subtle.ConstantTimeCompare(m[:], pkt[len(body):]) == 1
}

// hsBucket is one path's allowance of handshake work.
type hsBucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// take reports whether one more handshake message may be processed now.
func (b *hsBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last.IsZero() {
		b.tokens = hsBurst
	} else {
		b.tokens = min(hsBurst, b.tokens+now.Sub(b.last).Seconds()*hsRate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
