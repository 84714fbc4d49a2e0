package seal

// WindowBits is the width of the anti-replay window: a sequence number more
// than WindowBits-64 below the highest one accepted is refused. Striping
// over paths whose delays differ by tens of milliseconds reorders packets
// by hundreds of sequence numbers at full rate, hence far more than
// IPsec's 64 or WireGuard's 2048.
const WindowBits = 8192

const windowWords = WindowBits / 64

// Window is a sliding anti-replay bitmap over sequence numbers, kept as a
// ring of 64-bit words (RFC 6479): advancing clears whole words, so both
// operations are O(1) amortised. The zero Window accepts any first number.
type Window struct {
	top  uint64 // highest number marked, valid when any
	any  bool
	bits [windowWords]uint64
}

// Check reports whether seq is acceptable: newer than the window or inside
// it and not yet marked. It changes nothing.
func (w *Window) Check(seq uint64) bool {
	if !w.any || seq > w.top {
		return true
	}
	if w.top-seq >= WindowBits-64 {
		return false
	}
	word := (seq / 64) % windowWords
	return w.bits[word]&(1<<(seq%64)) == 0
}

// Mark records seq as seen; call it only after Check and after the packet
// authenticated, so that forged numbers cannot move the window.
func (w *Window) Mark(seq uint64) {
	if !w.any {
		w.any = true
		w.top = seq
		w.bits = [windowWords]uint64{}
	} else if seq > w.top {
		cur, next := w.top/64, seq/64
		if next-cur >= windowWords {
			w.bits = [windowWords]uint64{}
		} else {
			for i := cur + 1; i <= next; i++ {
				w.bits[i%windowWords] = 0
			}
		}
		w.top = seq
	} else if w.top-seq >= WindowBits-64 {
		return
	}
	w.bits[(seq/64)%windowWords] |= 1 << (seq % 64)
}
