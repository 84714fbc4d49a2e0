package rules

import (
	"math/bits"
	"sync/atomic"
)

// tick is the limiter's unit of time: 1/16 ns, fine enough that a 40-byte
// packet at 100 Gbit/s costs a whole number of units within 2 %, coarse
// enough that an int64 spans 18 years of uptime.
const ticksPerNs = 16

// limiter is a token bucket in its GCRA form (the generic cell rate
// algorithm): one atomic "theoretical arrival time" instead of a token
// count and a refill timestamp, so concurrent NIC dispatchers meter the
// same rule with a compare-and-swap, without a lock. A packet passes when,
// after charging its cost, the bucket is no more than the burst ahead of
// now; a dropped packet costs nothing.
type limiter struct {
	tat  atomic.Int64 // ticks
	pps  uint64
	bps  uint64
	unit int64 // ticks per packet (pps)
	tol  int64 // burst tolerance in ticks
}

func newLimiter(r Rule) *limiter {
	l := &limiter{pps: r.PPS, bps: r.BPS}
	burst := r.EffectiveBurst()
	if r.PPS > 0 {
		l.unit = int64(1e9 * ticksPerNs / r.PPS)
		l.tol = int64(burst) * l.unit
	} else {
		l.tol = l.costBytes(int64(burst))
	}
	return l
}

// costBytes is the time n bytes take at the bit rate, in ticks, computed
// in 128 bits: n is an IP length or a burst of at most 10 s at the rate,
// so the quotient fits.
func (l *limiter) costBytes(n int64) int64 {
	hi, lo := bits.Mul64(uint64(n)*8, 1e9*ticksPerNs)
	q, _ := bits.Div64(hi, lo, l.bps)
	return int64(q)
}

// allow charges one packet of size bytes at time now (ns) and reports
// whether it is within the rate.
func (l *limiter) allow(now int64, size int) bool {
	cost := l.unit
	if l.bps > 0 {
		cost = l.costBytes(int64(size))
	}
	now *= ticksPerNs
	for {
		old := l.tat.Load()
		next := max(old, now) + cost
		if next-now > l.tol {
			return false
		}
		if l.tat.CompareAndSwap(old, next) {
			return true
		}
	}
}
